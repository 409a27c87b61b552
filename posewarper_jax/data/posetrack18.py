"""PoseTrack18 annotations and predictions: reader and writer.

One COCO-style JSON per video (a file holding several videos is split by image folder).
``images`` entries carry ``file_name`` (``images/val/<video>/%06d.jpg``, relative to the data
root), ``id`` (= ``frame_id``), ``vid_id``, ``nframes``, ``is_labeled`` and optionally
``ignore_regions_x/y``; ``annotations`` carry ``image_id``, ``id``, ``track_id``, ``bbox``,
``bbox_head`` and ``keypoints`` (17 x (x, y, v); the ears are never labeled), and in prediction
files ``scores`` (one per joint) and ``score`` (the box score), as the official evaluation
(poseval) reads them. Image ids are kept. The rules shared with the other formats (labeled
joints, person boxes, frame order) are in ``formats.py``.
"""

from __future__ import annotations

import os

import numpy as np

from posewarper_jax import storage
from posewarper_jax.data.formats import (
    _LEADING_NUMBER,
    AnnotationError,
    _annotation_files,
    _box,
    _flag,
    _flat_keypoints,
    _frame_number,
    _get,
    _image_path,
    _image_record,
    _integer,
    _joint_slots,
    _number,
    _numbers,
    _ordered,
    _person_box,
    _person_rows,
    _records,
    _relative_name,
    _short_floats,
    check_image_files,
    person_category,
    read_json,
    write_videos,
)
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset

# ------------------------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------------------------


def load_posetrack18(
    ann: str, image_root: str, *, check_images: bool = False, _cache: dict | None = None
) -> VideoDataset:
    """Reads PoseTrack18 annotations (or predictions in that format).

    Args:
      ann: a JSON file or a directory of per-video JSON files (read in sorted order).
      image_root: the directory ``file_name`` is relative to (the one holding ``images/``).
      check_images: also check that every frame's image file exists (slow on a full data set).

    Returns a ``VideoDataset`` with fmt "posetrack18"; ``Video.extra["vid_id"]`` keeps ``vid_id``.
    """
    root = storage.abspath(image_root)
    videos: list[Video] = []
    for path in _annotation_files(ann):
        videos.extend(_posetrack18_videos(read_json(path, _cache), path, root))
    dataset = VideoDataset(videos, "posetrack18", root)
    if check_images:
        check_image_files(dataset)
    return dataset


def _posetrack18_videos(data, path: str, root: str) -> list[Video]:
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object, found a {type(data).__name__}")
    images = _records(_get(data, "images", path), path, "images")
    annotations = _records(data.get("annotations"), path, "annotations")
    slots = np.arange(NUM_JOINTS)
    for c, category in enumerate(_records(data.get("categories"), path, "categories")):
        if isinstance(category, dict) and "keypoints" in category:
            slots = _joint_slots(
                category["keypoints"], f"{path}: categories[{c}]", drop_unknown=False
            )
            break

    # Group the images into videos by folder, in order of first appearance.
    groups: dict[str, list] = {}
    for i, image in enumerate(images):
        where = f"{path}: images[{i}]"
        name, image_id = _image_record(image, where)
        ignore = _posetrack18_ignore_regions(image, where)
        frame = Frame(_image_path(root, name), -1, image_id, False, [], ignore)
        labeled = image.get("is_labeled")
        entry = (frame, None if labeled is None else _flag(labeled), image, where)
        groups.setdefault(os.path.dirname(name), []).append((_frame_number(name, where), entry))

    videos, by_image_id = [], {}
    for folder, entries in groups.items():
        name = os.path.basename(folder) or os.path.splitext(os.path.basename(path))[0]
        ordered = _ordered(entries, path, name)
        extra = {}
        for _, _, image, _ in ordered:
            if "vid_id" in image:
                extra["vid_id"] = image["vid_id"]
                break
        for frame_entry in ordered:
            _, _, image, where = frame_entry
            if "nframes" in image:
                nframes = _integer(image["nframes"], where, "nframes")
                if nframes != len(ordered):
                    raise AnnotationError(
                        f"{where}: video '{name}' has nframes={nframes} but {len(ordered)} of "
                        f"its images are listed"
                    )
        frames = []
        for index, (frame, _, _, where) in enumerate(ordered):
            frame.index = index
            if frame.image_id in by_image_id:
                raise AnnotationError(f"{where}: image id {frame.image_id} is used twice")
            by_image_id[frame.image_id] = frame
            frames.append(frame)
        videos.append((Video(name, frames, path, extra), ordered))

    for j, annotation in enumerate(annotations):
        where = f"{path}: annotations[{j}]"
        image_id = _integer(_get(annotation, "image_id", where), where, "image_id")
        if image_id not in by_image_id:
            raise AnnotationError(f"{where}: image_id {image_id} matches no entry of 'images'")
        by_image_id[image_id].people.append(_posetrack18_person(annotation, where, slots))

    for _, ordered in videos:
        for frame, labeled, _, _ in ordered:
            frame.is_labeled = bool(frame.people) if labeled is None else labeled
    return [video for video, _ in videos]


def _posetrack18_ignore_regions(image: dict, where: str) -> list[np.ndarray]:
    xs, ys = image.get("ignore_regions_x"), image.get("ignore_regions_y")
    if xs is None and ys is None:
        return []
    if not isinstance(xs, list) or not isinstance(ys, list):
        raise AnnotationError(f"{where}: 'ignore_regions_x' and 'ignore_regions_y' must be lists")
    # A single polygon may be stored flat instead of as a list of polygons.
    if xs and not isinstance(xs[0], list):
        xs = [xs]
    if ys and not isinstance(ys[0], list):
        ys = [ys]
    if len(xs) != len(ys):
        raise AnnotationError(
            f"{where}: 'ignore_regions_x' has {len(xs)} regions, 'ignore_regions_y' {len(ys)}"
        )
    regions = []
    for r, (x, y) in enumerate(zip(xs, ys)):
        x = _numbers(x, where, f"ignore_regions_x[{r}]")
        y = _numbers(y, where, f"ignore_regions_y[{r}]", len(x))
        regions.append(np.stack([x, y], axis=1).astype(np.float32).reshape(-1, 2))
    return regions


def _posetrack18_person(annotation: dict, where: str, slots: np.ndarray) -> Person:
    annotation_id = _integer(annotation.get("id", -1), where, "id")
    keypoints = _flat_keypoints(
        _get(annotation, "keypoints", where), slots, where, annotation_id, "posetrack"
    )
    keypoint_scores = None
    scores = annotation.get("scores")
    if isinstance(scores, list) and scores:
        values = _numbers(scores, where, "scores", len(slots))
        keypoint_scores = np.zeros(NUM_JOINTS, np.float32)
        keypoint_scores[slots[slots >= 0]] = values[slots >= 0]
    head = _box(annotation.get("bbox_head"), where, "bbox_head")
    bbox = _box(annotation.get("bbox"), where, "bbox")
    return Person(
        keypoints=keypoints,
        bbox=_person_box(keypoints, head) if bbox is None else bbox,
        head_bbox=head,
        track_id=_integer(annotation.get("track_id", -1), where, "track_id"),
        score=_number(annotation.get("score", 1.0), where, "score"),
        annotation_id=annotation_id,
        keypoint_scores=keypoint_scores,
    )


# ------------------------------------------------------------------------------------------------
# Writing.
# ------------------------------------------------------------------------------------------------


def _default_vid_id(name: str) -> str:
    match = _LEADING_NUMBER.match(name)
    return match.group(1) if match else name


def posetrack18_video_json(video: Video, root: str) -> dict:
    """One video as a PoseTrack18 JSON object (all frames; predictions add ``scores``/``score``)."""
    vid_id = video.extra.get("vid_id", _default_vid_id(video.name))
    rows = _person_rows(video)
    images, annotations = [], []
    for frame in video.frames:
        image = {
            "file_name": _relative_name(frame.path, root),
            "id": frame.image_id,
            "frame_id": frame.image_id,
            "vid_id": vid_id,
            "nframes": video.nframes,
            "is_labeled": bool(frame.is_labeled),
            "has_no_densepose": True,
        }
        if frame.ignore_regions:
            image["ignore_regions_x"] = [_short_floats(r[:, 0]) for r in frame.ignore_regions]
            image["ignore_regions_y"] = [_short_floats(r[:, 1]) for r in frame.ignore_regions]
        images.append(image)
        for k, person in enumerate(frame.people):
            keypoints, bbox, head, scores = next(rows)
            annotation_id = person.annotation_id
            annotation = {
                "id": annotation_id if annotation_id >= 0 else frame.image_id * 100 + k,
                "image_id": frame.image_id,
                "category_id": 1,
                "track_id": person.track_id,
                "keypoints": keypoints,
                "num_keypoints": int((person.keypoints[:, 2] > 0).sum()),
                "bbox": bbox,
            }
            if person.head_bbox is not None:
                annotation["bbox_head"] = head
            if person.keypoint_scores is not None:
                annotation["scores"] = scores
            if person.keypoint_scores is not None or person.score != 1.0:
                annotation["score"] = float(person.score)
            annotations.append(annotation)
    return {"images": images, "annotations": annotations, "categories": [person_category()]}


def write_posetrack18(dataset: VideoDataset, out_dir: str) -> list[str]:
    """Writes one PoseTrack18 JSON per video into ``out_dir``; returns the paths written.

    Image names are written relative to ``dataset.root``, so reading the files back with the same
    image root gives the same data set (``Video.source`` aside). Unlabeled joints are written as
    (0, 0, 0), labeled ones as (x, y, 1); persons with ``keypoint_scores`` get ``scores`` (one
    per joint, poseval's prediction field) and ``score`` (the box score). Annotations without an
    id get ``image_id * 100 + position``.
    """
    return write_videos(dataset, out_dir, posetrack18_video_json)

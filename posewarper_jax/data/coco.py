"""COCO keypoints files: reader and writer.

A plain keypoints JSON of single images; on reading, each image becomes a one-frame video.
COCO joints are mapped by name: nose, ears, shoulders, elbows, wrists, hips, knees and ankles
land in the same-named slots; the eyes have no slot and are dropped; head_bottom and head_top
stay unlabeled. The layout stays the one of ``types.py``, so a model trained on COCO-format
data reads PoseTrack directly. A joint is labeled when ``v > 0``; the other rules shared with
the PoseTrack formats (person boxes) are in ``formats.py``.

``coco_keypoints_json`` writes a data set the other way: every frame an image, every person an
annotation with the 17 PoseTrack18 joints (the file's ``person`` category names them).
"""

from __future__ import annotations

import os

import numpy as np

from posewarper_jax import storage
from posewarper_jax.data.formats import (
    AnnotationError,
    _box,
    _flag,
    _flat_keypoints,
    _get,
    _image_path,
    _image_record,
    _integer,
    _joint_slots,
    _person_box,
    _records,
    check_image_files,
    person_category,
    read_json,
)
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset

COCO_JOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------------------------


def load_coco_keypoints(
    json_file: str, image_root: str, *, check_images: bool = False, _cache: dict | None = None
) -> VideoDataset:
    """Reads a COCO keypoints JSON; each image becomes a one-frame, labeled video.

    Joints are mapped by name into the PoseTrack18 layout (eyes dropped, head_bottom/head_top
    unlabeled; see the module notes); a joint is labeled when v > 0. Crowd annotations
    (``iscrowd`` = 1) and annotations of categories without keypoints are skipped. Video names
    are the image file names without extension; ``Video.extra`` keeps ``width``/``height``.
    Returns a ``VideoDataset`` with fmt "coco".
    """
    root = storage.abspath(image_root)
    data = read_json(json_file, _cache)
    if not isinstance(data, dict):
        raise AnnotationError(f"{json_file}: expected a JSON object, found {type(data).__name__}")
    images = _records(_get(data, "images", json_file), json_file, "images")
    annotations = _records(_get(data, "annotations", json_file), json_file, "annotations")
    slots_by_category = {}
    for c, category in enumerate(_records(data.get("categories"), json_file, "categories")):
        if isinstance(category, dict) and "keypoints" in category:
            cwhere = f"{json_file}: categories[{c}]"
            cid = _integer(_get(category, "id", cwhere), cwhere, "id")
            slots_by_category[cid] = _joint_slots(category["keypoints"], cwhere, drop_unknown=True)
    default_slots = _joint_slots(list(COCO_JOINT_NAMES), json_file, drop_unknown=True)

    videos, by_image_id = [], {}
    for i, image in enumerate(images):
        where = f"{json_file}: images[{i}]"
        name, image_id = _image_record(image, where, by_image_id)
        frame = Frame(_image_path(root, name), 0, image_id, True, [], [])
        extra = {k: image[k] for k in ("width", "height") if k in image}
        videos.append(Video(os.path.splitext(os.path.basename(name))[0], [frame], json_file, extra))
        by_image_id[image_id] = frame

    for j, annotation in enumerate(annotations):
        where = f"{json_file}: annotations[{j}]"
        if _flag(annotation.get("iscrowd", 0) if isinstance(annotation, dict) else 0):
            continue
        image_id = _integer(_get(annotation, "image_id", where), where, "image_id")
        if slots_by_category:
            category_id = _integer(_get(annotation, "category_id", where), where, "category_id")
            if category_id not in slots_by_category:
                continue
            slots = slots_by_category[category_id]
        else:
            slots = default_slots
        if image_id not in by_image_id:
            raise AnnotationError(f"{where}: image_id {image_id} matches no entry of 'images'")
        annotation_id = _integer(annotation.get("id", -1), where, "id")
        keypoints = _flat_keypoints(
            _get(annotation, "keypoints", where), slots, where, annotation_id, "coco"
        )
        bbox = _box(annotation.get("bbox"), where, "bbox")
        person = Person(
            keypoints=keypoints,
            bbox=_person_box(keypoints, None) if bbox is None else bbox,
            annotation_id=annotation_id,
        )
        by_image_id[image_id].people.append(person)

    dataset = VideoDataset(videos, "coco", root)
    if check_images:
        check_image_files(dataset)
    return dataset


# ------------------------------------------------------------------------------------------------
# Writing.
# ------------------------------------------------------------------------------------------------


def coco_keypoints_json(dataset: VideoDataset, labeled: VideoDataset | None = None) -> dict:
    """A COCO keypoints file of every frame and person of ``dataset`` (one video or more).

    ``images``: every frame (``id`` = its ``image_id``, ``file_name`` relative to the data
    set's root, ``frame``: the 0-based index, ``video``); ``annotations``: every person with
    ``keypoints`` (x, y, v: 2 where present, else 0, 0, 0), ``scores`` (per joint, the
    confidence), ``score``, ``track_id``, ``bbox``, ``num_keypoints`` and ``labeled`` (True on
    the frames ``labeled`` marks as labeled); one ``person`` category with the PoseTrack18
    joint names and skeleton.
    """
    images, annotations = [], []
    for vi, video in enumerate(dataset.videos):
        lvideo = labeled.videos[vi] if labeled is not None else None
        for frame in video.frames:
            rel = os.path.relpath(frame.path, dataset.root) if dataset.root else frame.path
            images.append(
                {
                    "id": int(frame.image_id),
                    "file_name": rel.replace(os.sep, "/"),
                    "video": video.name,
                    "frame": int(frame.index),
                }
            )
            is_labeled = bool(lvideo.frames[frame.index].is_labeled) if lvideo else False
            for person in frame.people:
                kp = np.asarray(person.keypoints, np.float64)
                has = kp[:, 2] > 0
                flat = np.zeros((NUM_JOINTS, 3))
                flat[has, :2] = kp[has, :2]
                flat[has, 2] = 2
                scores = person.keypoint_scores
                scores = has.astype(np.float64) if scores is None else np.asarray(scores, float)
                box = [round(float(v), 3) for v in person.bbox]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": int(frame.image_id),
                        "category_id": 1,
                        "track_id": int(person.track_id),
                        "keypoints": [round(float(v), 3) for v in flat.reshape(-1)],
                        "scores": [round(float(v), 4) for v in np.where(has, scores, 0.0)],
                        "score": round(float(person.score), 4),
                        "num_keypoints": int(has.sum()),
                        "bbox": box,
                        "area": round(box[2] * box[3], 3),
                        "iscrowd": 0,
                        "labeled": is_labeled,
                    }
                )
    return {"images": images, "annotations": annotations, "categories": [person_category()]}

"""PoseTrack17, PoseTrack18 and COCO keypoint annotations: readers and writers.

Everything is read into the shared types of ``types.py``: keypoints in the 17-joint PoseTrack18
layout (``JOINT_NAMES``), float32 ``[17, 3]`` rows ``(x, y, v)`` with ``v`` 1 for a labeled joint
and all three 0 otherwise; boxes ``[x, y, w, h]``; pixel centres at integers, x right, y down.
Every video lists all of its frames in order, labeled or not.

Formats
-------
PoseTrack18: one COCO-style JSON per video (a file holding several videos is split by image
folder). ``images`` entries carry ``file_name`` (``images/val/<video>/%06d.jpg``, relative to the
data root), ``id`` (= ``frame_id``), ``vid_id``, ``nframes``, ``is_labeled`` and optionally
``ignore_regions_x/y``; ``annotations`` carry ``image_id``, ``id``, ``track_id``, ``bbox``,
``bbox_head`` and ``keypoints`` (17 x (x, y, v); the ears are never labeled), and in prediction
files ``scores`` (one per joint) and ``score`` (the box score).

PoseTrack17: one ``annolist`` JSON per video, converted from MATLAB, so scalars are usually
wrapped in one-element lists and one-element struct arrays may arrive as a bare object. Frames
are ``%08d.jpg``, numbered from 1. Each ``annorect`` has a head box ``x1, y1, x2, y2``, a
``track_id`` and ``annopoints[0].point[k]`` with joint ``id`` (0..14), ``x``, ``y``,
``is_visible`` and, in predictions, ``score``. Joints go into the 17-joint layout through
``PT17_TO_PT18``; the ears stay unlabeled.

COCO: a plain keypoints JSON of single images; each image becomes a one-frame video.

Decisions
---------
* Labeled joint. PoseTrack (both versions): a joint is labeled unless it is absent or stored as
  ``(0, 0, 0)``; this is the rule of the official evaluation (poseval), which keeps PoseTrack17
  points with ``is_visible = 0`` and PoseTrack18 joints with ``v = 0`` but non-zero coordinates.
  The occluded/visible distinction is therefore not kept. COCO: labeled when ``v > 0``.
* Person box when the file has none (always in PoseTrack17): the tight box of the labeled joints,
  width and height scaled by ``PERSON_BOX_ENLARGE`` (1.3) about its centre, as poseval's format
  converter does; without labeled joints, the head box; without either, zeros.
* COCO joints are mapped by name: nose, ears, shoulders, elbows, wrists, hips, knees and ankles
  land in the same-named slots; the eyes have no slot and are dropped; head_bottom and head_top
  stay unlabeled. The layout stays the one of ``types.py``, so a model trained on COCO-format
  data reads PoseTrack directly.
* Frames are ordered by the number in their file name and must be contiguous; a frame's
  ``index`` is its rank (0-based) whatever the file numbering starts at.
* Image ids. PoseTrack18 ids are kept. PoseTrack17 has none: a video folder named like
  ``000342_mpii`` gets poseval's ``T SSSSSS FFFF`` ids (T: 1 mpii, 2 bonn, 3 mpiinew; S: the
  sequence number; F: the 0-based frame index); any other name gets
  ``(video position in the data set + 1) * 10000 + frame index``.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from posewarper_jax import storage
from posewarper_jax.cli import ExpectedError
from posewarper_jax.data.types import (
    JOINT_NAMES,
    NUM_JOINTS,
    PT17_TO_PT18,
    Frame,
    Person,
    Video,
    VideoDataset,
)

PERSON_BOX_ENLARGE = 1.3

COCO_JOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

# The skeleton written into PoseTrack18 ``categories`` (1-based, as in the official files).
_PT18_FILE_SKELETON = (
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
)  # fmt: skip

_NAME_ALIASES = {"neck": "head_bottom"}
_SEQUENCE_NAME = re.compile(r"^(\d+)_(mpii|bonn|mpiinew)(?:_|$)")
_SEQUENCE_SOURCE = {"mpii": 1, "bonn": 2, "mpiinew": 3}
_LEADING_NUMBER = re.compile(r"^(\d+)")
FORMATS = ("posetrack18", "posetrack17", "coco")


class AnnotationError(ValueError, ExpectedError):
    """Bad annotation input. The message names the file, the record and the field at fault."""


# ------------------------------------------------------------------------------------------------
# Parsing helpers.
# ------------------------------------------------------------------------------------------------


def read_json(path: str, cache: dict | None = None):
    """Parses a JSON file; malformed JSON raises ``AnnotationError`` with file and position."""
    if cache is not None and path in cache:
        return cache.pop(path)
    try:
        with storage.open_file(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _annotation_files(ann: str) -> list[str]:
    if storage.isdir(ann):
        files = storage.glob(ann, "*.json")
        if not files:
            raise AnnotationError(f"{ann}: no .json annotation files in this directory")
        return files
    if storage.isfile(ann):
        return [ann]
    raise FileNotFoundError(f"annotation file or directory not found: {ann}")


def _unwrap(value):
    """MATLAB-converted files wrap scalars in one-element lists: [[3]] -> 3."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def _as_list(value) -> list:
    """A struct array of one element may arrive as a bare object; None means empty."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return value
    raise TypeError(type(value).__name__)


def _records(value, where: str, field: str) -> list:
    try:
        return _as_list(value)
    except TypeError as e:
        raise AnnotationError(f"{where}: field '{field}' must be a list, found {e}") from None


def _get(record, field: str, where: str):
    if not isinstance(record, dict):
        raise AnnotationError(f"{where}: expected an object, found {type(record).__name__}")
    if field not in record:
        raise AnnotationError(f"{where}: missing required field '{field}'")
    return record[field]


def _number(value, where: str, field: str) -> float:
    """A finite number; NaN and infinities (which Python's JSON reader accepts) are errors."""
    value = _unwrap(value)
    if isinstance(value, bool) or value is None:
        raise AnnotationError(f"{where}: field '{field}' is not a number: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: field '{field}' is not a number: {value!r}") from None
    if not np.isfinite(number):
        raise AnnotationError(f"{where}: field '{field}' is {number}, not a finite number")
    return number


def _integer(value, where: str, field: str) -> int:
    value = _unwrap(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _number(value, where, field)
    if not number.is_integer():
        raise AnnotationError(f"{where}: field '{field}' is not an integer: {value!r}")
    return int(number)


def _numbers(
    value, where: str, field: str, count: int | None = None, *, finite: bool = True
) -> np.ndarray:
    """A flat list of numbers; with ``finite`` (the default) NaN and infinities are errors
    naming the position."""
    if not isinstance(value, list):
        raise AnnotationError(f"{where}: field '{field}' must be a list of numbers")
    if count is not None and len(value) != count:
        raise AnnotationError(
            f"{where}: field '{field}' holds {len(value)} numbers, expected {count}"
        )
    array = None
    try:  # Fast path: a flat list of numbers.
        array = np.asarray(value, np.float64)
        if array.ndim != 1 or any(isinstance(v, bool) or v is None for v in value):
            array = None
    except (TypeError, ValueError):
        array = None
    if array is None:
        array = np.array([_number(_unwrap(v), where, field) for v in value], np.float64)
    if finite and not np.all(np.isfinite(array)):
        i = int(np.argmax(~np.isfinite(array)))
        raise AnnotationError(
            f"{where}: field '{field}' holds {array[i]} at position {i}, not a finite number"
        )
    return array


def _box_size_checked(box: np.ndarray, where: str, field: str) -> np.ndarray:
    """A box ``[x, y, w, h]`` whose width and height are not negative."""
    if box[2] < 0 or box[3] < 0:
        raise AnnotationError(
            f"{where}: field '{field}' {box.tolist()} has a negative width or height "
            "(expected [x, y, w, h] with w, h >= 0)"
        )
    return box


def _flag(value) -> bool:
    value = _unwrap(value)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value) if not isinstance(value, list) else False


def _frame_number(name: str, where: str) -> int:
    stem = os.path.splitext(os.path.basename(name))[0]
    match = _LEADING_NUMBER.match(stem)
    if match is None:
        raise AnnotationError(f"{where}: cannot read a frame number from file name {name!r}")
    return int(match.group(1))


def _joint_slots(names, where: str, *, drop_unknown: bool) -> np.ndarray:
    """Maps a file's keypoint names to ``JOINT_NAMES`` slots (-1: no slot, dropped)."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise AnnotationError(f"{where}: field 'keypoints' must be a list of joint names")
    slots = []
    for name in names:
        name = _NAME_ALIASES.get(name, name)
        if name in JOINT_NAMES:
            slots.append(JOINT_NAMES.index(name))
        elif drop_unknown:
            slots.append(-1)
        else:
            raise AnnotationError(
                f"{where}: unknown keypoint name {name!r}; known names: {', '.join(JOINT_NAMES)}"
            )
    used = [s for s in slots if s >= 0]
    if len(set(used)) != len(used):
        raise AnnotationError(f"{where}: a joint name appears twice in 'keypoints'")
    return np.array(slots, np.int64)


def box_from_keypoints(keypoints: np.ndarray, enlarge: float = PERSON_BOX_ENLARGE):
    """Tight box of the labeled joints, width and height scaled by ``enlarge`` about its centre.

    keypoints: [17, 3] (x, y, v), v > 0 labeled. Returns float32 [4] (x, y, w, h), or None when
    no joint is labeled.
    """
    labeled = keypoints[:, 2] > 0
    if not labeled.any():
        return None
    points = keypoints[labeled, :2].astype(np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    centre, size = (low + high) / 2, (high - low) * enlarge
    return np.array([*(centre - size / 2), *size], np.float32)


def _person_box(keypoints: np.ndarray, head_bbox: np.ndarray | None) -> np.ndarray:
    box = box_from_keypoints(keypoints)
    if box is not None:
        return box
    return head_bbox.copy() if head_bbox is not None else np.zeros(4, np.float32)


def _flat_keypoints(values, slots: np.ndarray, where: str, annotation_id, rule: str):
    """Flat [x1, y1, v1, ...] in a file's joint order -> float32 [17, 3] in JOINT_NAMES order."""
    keypoints = np.zeros((NUM_JOINTS, 3), np.float32)
    if isinstance(values, list) and not values:
        return keypoints  # An annotation with a box only.
    if not isinstance(values, list) or len(values) != 3 * len(slots):
        found = len(values) if isinstance(values, list) else type(values).__name__
        raise AnnotationError(
            f"{where} (annotation id {annotation_id}): 'keypoints' holds {found} numbers, "
            f"expected {3 * len(slots)} ({len(slots)} joints x (x, y, v))"
        )
    where = f"{where} (annotation id {annotation_id})"
    array = _numbers(values, where, "keypoints", finite=False).reshape(len(slots), 3)
    bad = ~np.isfinite(array)
    if bad.any():
        j, c = (int(i) for i in np.argwhere(bad)[0])
        name = JOINT_NAMES[slots[j]] if slots[j] >= 0 else f"joint {j}"
        raise AnnotationError(
            f"{where}: 'keypoints' of joint {j} ({name}) has {'xyv'[c]} = {array[j, c]}, "
            "not a finite number"
        )
    flags = array[:, 2]
    odd = ~np.isin(flags, (0.0, 1.0, 2.0))
    if odd.any():
        j = int(np.argmax(odd))
        name = JOINT_NAMES[slots[j]] if slots[j] >= 0 else f"joint {j}"
        raise AnnotationError(
            f"{where}: 'keypoints' of joint {j} ({name}) has visibility flag v = {flags[j]:g}; "
            "expected 0, 1 or 2 (a prediction's joint confidences go in 'scores')"
        )
    if rule == "posetrack":
        labeled = np.any(array != 0, axis=1)
    else:
        labeled = array[:, 2] > 0
    keep = labeled & (slots >= 0)
    keypoints[slots[keep], :2] = array[keep, :2]
    keypoints[slots[keep], 2] = 1.0
    return keypoints


def _box(value, where: str, field: str) -> np.ndarray | None:
    if value is None or (isinstance(value, list) and not value):
        return None
    return _box_size_checked(_numbers(value, where, field, 4), where, field).astype(np.float32)


def _relative_name(path: str, root: str) -> str:
    if root and path.startswith(root.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, root).replace(os.sep, "/")
    return path


def _image_path(root: str, name: str) -> str:
    return storage.normpath(os.path.join(root, name))


def sequence_image_id(video_name: str, index: int, video_position: int) -> int:
    """PoseTrack image id of frame ``index`` (0-based) of a video (see the module notes)."""
    match = _SEQUENCE_NAME.match(video_name)
    if match:
        return _SEQUENCE_SOURCE[match.group(2)] * 10**10 + int(match.group(1)) * 10**4 + index
    return (video_position + 1) * 10**4 + index


def _ordered(entries: list, source: str, video: str) -> list:
    """entries: (frame number, payload) -> payloads sorted by number; numbers must be contiguous."""
    entries.sort(key=lambda e: e[0])
    numbers = [e[0] for e in entries]
    seen = set()
    for n in numbers:
        if n in seen:
            raise AnnotationError(f"{source}: video '{video}': frame number {n} is listed twice")
        seen.add(n)
    if numbers[-1] - numbers[0] + 1 != len(numbers):
        missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - seen)
        raise AnnotationError(
            f"{source}: video '{video}': frames are not contiguous; frame numbers "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''} are not listed"
        )
    return [e[1] for e in entries]


def check_image_files(dataset: VideoDataset) -> None:
    """Raises ``AnnotationError`` naming the annotation file and frame of a missing image."""
    for video in dataset.videos:
        for frame in video.frames:
            if not storage.isfile(frame.path):
                raise AnnotationError(
                    f"{video.source}: image file missing for video '{video.name}' "
                    f"frame {frame.index}: {frame.path}"
                )


# ------------------------------------------------------------------------------------------------
# PoseTrack18.
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
        name = _get(image, "file_name", where)
        if not isinstance(name, str):
            raise AnnotationError(f"{where}: field 'file_name' must be a string")
        image_id = _integer(_get(image, "id", where), where, "id")
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
# PoseTrack17.
# ------------------------------------------------------------------------------------------------


def load_posetrack17(
    ann: str, image_root: str, *, check_images: bool = False, _cache: dict | None = None
) -> VideoDataset:
    """Reads PoseTrack17 ``annolist`` annotations (or predictions in that format).

    Args:
      ann: a JSON file or a directory of per-video JSON files (read in sorted order).
      image_root: the directory the ``image.name`` paths are relative to.
      check_images: also check that every frame's image file exists.

    The 15 joints go into the 17-joint layout with ``PT17_TO_PT18`` (ears unlabeled); the head box
    ``x1, y1, x2, y2`` becomes ``head_bbox`` (x, y, w, h); the person box is derived from the
    joints (see the module notes). Returns a ``VideoDataset`` with fmt "posetrack17".
    """
    root = storage.abspath(image_root)
    videos: list[Video] = []
    for path in _annotation_files(ann):
        videos.extend(_posetrack17_videos(read_json(path, _cache), path, root, len(videos)))
    dataset = VideoDataset(videos, "posetrack17", root)
    if check_images:
        check_image_files(dataset)
    return dataset


def _posetrack17_videos(data, path: str, root: str, first_position: int) -> list[Video]:
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object, found a {type(data).__name__}")
    groups: dict[str, list] = {}
    for i, entry in enumerate(_records(_get(data, "annolist", path), path, "annolist")):
        where = f"{path}: annolist[{i}]"
        images = _records(_get(entry, "image", where), where, "image")
        if not images:
            raise AnnotationError(f"{where}: field 'image' is empty")
        name = _unwrap(_get(images[0], "name", f"{where}.image[0]"))
        if not isinstance(name, str):
            raise AnnotationError(f"{where}.image[0]: field 'name' must be a string")
        rects = _records(entry.get("annorect"), where, "annorect")
        people = [_posetrack17_person(r, f"{where}.annorect[{j}]") for j, r in enumerate(rects)]
        if "is_labeled" in entry:
            labeled = _flag(entry["is_labeled"])
        else:
            labeled = any(bool((p.keypoints[:, 2] > 0).any()) for p in people)
        ignore = _posetrack17_ignore_regions(entry.get("ignore_regions"), where)
        frame = Frame(_image_path(root, name), -1, -1, labeled, people, ignore)
        groups.setdefault(os.path.dirname(name), []).append((_frame_number(name, where), frame))

    videos = []
    for folder, entries in groups.items():
        name = os.path.basename(folder) or os.path.splitext(os.path.basename(path))[0]
        frames = _ordered(entries, path, name)
        position = first_position + len(videos)
        for index, frame in enumerate(frames):
            frame.index = index
            frame.image_id = sequence_image_id(name, index, position)
        videos.append(Video(name, frames, path, {}))
    return videos


def _posetrack17_ignore_regions(value, where: str) -> list[np.ndarray]:
    regions = []
    for r, region in enumerate(_records(value, where, "ignore_regions")):
        rwhere = f"{where}.ignore_regions[{r}]"
        points = _records(_get(region, "point", rwhere), rwhere, "point")
        xy = [
            (_number(_get(p, "x", f"{rwhere}.point[{k}]"), f"{rwhere}.point[{k}]", "x"),
             _number(_get(p, "y", f"{rwhere}.point[{k}]"), f"{rwhere}.point[{k}]", "y"))
            for k, p in enumerate(points)
        ]  # fmt: skip
        regions.append(np.array(xy, np.float32).reshape(-1, 2))
    return regions


def _head_box_from_corners(rect: dict, where: str) -> np.ndarray | None:
    if not all(k in rect for k in ("x1", "y1", "x2", "y2")):
        return None
    x1, y1, x2, y2 = (_number(rect[k], where, k) for k in ("x1", "y1", "x2", "y2"))
    if x2 < x1 or y2 < y1:
        raise AnnotationError(
            f"{where}: head box corners x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}: the "
            "bottom-right corner (x2, y2) lies left of or above (x1, y1)"
        )
    # Width from the float32-rounded corner, so that writing x1 + w back reads back exactly.
    x1, y1 = float(np.float32(x1)), float(np.float32(y1))
    return np.array([x1, y1, x2 - x1, y2 - y1], np.float32)


def _posetrack17_person(rect, where: str) -> Person:
    if not isinstance(rect, dict):
        raise AnnotationError(f"{where}: expected an object, found {type(rect).__name__}")
    keypoints = np.zeros((NUM_JOINTS, 3), np.float32)
    keypoint_scores = np.zeros(NUM_JOINTS, np.float32)
    has_scores = False
    annopoints = _records(rect.get("annopoints"), where, "annopoints")
    points = []
    if annopoints and isinstance(annopoints[0], dict):
        # An empty object (or list) stands for a person without points.
        points = _records(annopoints[0].get("point"), f"{where}.annopoints[0]", "point")
    seen = set()
    for k, point in enumerate(points):
        pwhere = f"{where}.annopoints[0].point[{k}]"
        joint = _integer(_get(point, "id", pwhere), pwhere, "id")
        if not 0 <= joint < len(PT17_TO_PT18):
            raise AnnotationError(f"{pwhere}: joint id {joint} is outside 0..14")
        if joint in seen:
            continue  # The first one counts, as in the official evaluation.
        seen.add(joint)
        if "is_visible" in point:
            visible = _number(point["is_visible"], pwhere, "is_visible")
            if visible not in (0.0, 1.0, 2.0):
                raise AnnotationError(
                    f"{pwhere}: field 'is_visible' is {visible:g}; expected 0, 1 or 2"
                )
        slot = PT17_TO_PT18[joint]
        keypoints[slot] = (
            _number(_get(point, "x", pwhere), pwhere, "x"),
            _number(_get(point, "y", pwhere), pwhere, "y"),
            1.0,
        )
        if "score" in point:
            keypoint_scores[slot] = _number(point["score"], pwhere, "score")
            has_scores = True
    head = _head_box_from_corners(rect, where)
    return Person(
        keypoints=keypoints,
        bbox=_person_box(keypoints, head),
        head_bbox=head,
        track_id=_integer(rect.get("track_id", -1), where, "track_id"),
        score=_number(rect.get("score", 1.0), where, "score"),
        annotation_id=-1,
        keypoint_scores=keypoint_scores if has_scores else None,
    )


# ------------------------------------------------------------------------------------------------
# COCO.
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
        name = _get(image, "file_name", where)
        if not isinstance(name, str):
            raise AnnotationError(f"{where}: field 'file_name' must be a string")
        image_id = _integer(_get(image, "id", where), where, "id")
        if image_id in by_image_id:
            raise AnnotationError(f"{where}: image id {image_id} is used twice")
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
# Format detection.
# ------------------------------------------------------------------------------------------------


def _format_of(data, path: str) -> str:
    if isinstance(data, list):
        raise AnnotationError(
            f"{path}: a JSON list is not an annotation file (a detection or results file?)"
        )
    if isinstance(data, dict) and "annolist" in data:
        return "posetrack17"
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        fields = ("vid_id", "nframes", "frame_id")
        if any(isinstance(im, dict) and any(k in im for k in fields) for im in data["images"]):
            return "posetrack18"
        return "coco"
    raise AnnotationError(
        f"{path}: cannot tell the format: expected 'annolist' (PoseTrack17) or 'images' "
        "(PoseTrack18, COCO)"
    )


def _first_image_name(data, fmt: str) -> str | None:
    try:
        if fmt == "posetrack17":
            return _unwrap(_as_list(_as_list(data["annolist"])[0]["image"])[0]["name"])
        return data["images"][0]["file_name"]
    except (KeyError, IndexError, TypeError):
        return None


def _guess_image_root(path: str, first_file: str, data, fmt: str) -> str:
    """The nearest ancestor of the annotation path under which the first image exists; else the
    parent of an ``annotations`` folder on the path; else the annotation file's folder."""
    start = storage.abspath(path if storage.isdir(path) else storage.dirname(path))
    name = _first_image_name(data, fmt)
    stem_token = os.path.splitext(os.path.basename(first_file))[0].split("_")[-1]
    candidates = []
    directory = start
    while True:
        candidates.append(directory)
        if fmt == "coco":
            candidates.append(os.path.join(directory, stem_token))
        parent = storage.dirname(directory)
        if parent == directory:
            break
        directory = parent
    if isinstance(name, str):
        for candidate in candidates:
            if storage.isfile(os.path.join(candidate, name)):
                return candidate
    directory = start
    while storage.dirname(directory) != directory:
        if os.path.basename(directory) == "annotations":
            return storage.dirname(directory)
        directory = storage.dirname(directory)
    return start


def detect_format(path: str) -> str:
    """ "posetrack18", "posetrack17" or "coco", from the first JSON file at ``path``."""
    first = _annotation_files(path)[0]
    return _format_of(read_json(first), first)


def load_dataset(
    path: str, image_root: str | None = None, fmt: str = "auto", *, check_images: bool = False
) -> VideoDataset:
    """Reads an annotation file or directory in any supported format.

    Args:
      path: a JSON file, or a directory of per-video JSON files.
      image_root: the directory image names are relative to; None guesses it (see
        ``_guess_image_root``: the nearest ancestor under which the first image exists).
      fmt: "auto" (from the first file: ``annolist`` -> posetrack17; ``images`` with
        ``vid_id``/``nframes``/``frame_id`` -> posetrack18; other ``images`` -> coco), or one of
        "posetrack18", "posetrack17", "coco".
      check_images: also check that every image file exists.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: expected 'auto' or one of {', '.join(FORMATS)}")
    first = _annotation_files(path)[0]
    data = read_json(first)
    if fmt == "auto":
        fmt = _format_of(data, first)
    if image_root is None:
        image_root = _guess_image_root(path, first, data, fmt)
    cache = {first: data}
    if fmt == "coco":
        if storage.isdir(path):
            raise AnnotationError(f"{path}: COCO annotations are read from a single JSON file")
        return load_coco_keypoints(path, image_root, check_images=check_images, _cache=cache)
    loader = load_posetrack18 if fmt == "posetrack18" else load_posetrack17
    return loader(path, image_root, check_images=check_images, _cache=cache)


# ------------------------------------------------------------------------------------------------
# Writers.
# ------------------------------------------------------------------------------------------------


def _short_floats(values) -> list:
    """float32 values as Python numbers that read back as the same float32, with few digits.

    Each value gets the fewest decimals (0..8) whose rounding still maps to the same float32;
    integers are written as integers. Vectorised: formatting numbers one by one dominates the
    time to write a data set.
    """
    f32 = np.asarray(values, np.float32).reshape(-1)
    exact = f32.astype(np.float64)
    out = exact.copy()
    done = ~np.isfinite(exact)
    for digits in range(9):
        if done.all():
            break
        rounded = np.round(exact, digits)
        ok = ~done & (rounded.astype(np.float32) == f32)
        out[ok] = rounded[ok]
        done |= ok
    return [int(v) if v.is_integer() and abs(v) < 2**53 else v for v in out.tolist()]


def _rows(arrays: list, width: int) -> list[list]:
    """``_short_floats`` of a list of equal-size arrays, one list per array."""
    if not arrays:
        return []
    flat = _short_floats(np.stack([np.asarray(a, np.float32).reshape(width) for a in arrays]))
    return [flat[i * width : (i + 1) * width] for i in range(len(arrays))]


def _corner(origin: float, size: float) -> float | int:
    """x1 + w written so that reading it back and subtracting the float32 x1 gives w exactly."""
    value = float(np.float32(origin)) + float(np.float32(size))
    return int(value) if value.is_integer() else value


def _labeled_flat(person: Person) -> np.ndarray:
    """[17, 3]: (x, y, 1) for labeled joints, (0, 0, 0) otherwise."""
    labeled = person.keypoints[:, 2] > 0
    flat = np.where(labeled[:, None], person.keypoints, 0.0).astype(np.float32)
    flat[:, 2] = labeled
    return flat


def _person_rows(video: Video):
    """Per person of the video, in frame order: keypoint, box, head box and score rows."""
    people = [p for frame in video.frames for p in frame.people]
    zeros4, zeros17 = np.zeros(4, np.float32), np.zeros(NUM_JOINTS, np.float32)
    return zip(
        _rows([_labeled_flat(p) for p in people], 3 * NUM_JOINTS),
        _rows([p.bbox for p in people], 4),
        _rows([zeros4 if p.head_bbox is None else p.head_bbox for p in people], 4),
        _rows([zeros17 if p.keypoint_scores is None else p.keypoint_scores for p in people],
              NUM_JOINTS),
    )  # fmt: skip


def _output_names(dataset: VideoDataset) -> list[str]:
    """File name per video: the source file's name when the video was alone in it (so that
    prediction files pair with ground-truth files by name), else ``<video name>.json``."""
    per_source: dict[str, int] = {}
    for video in dataset.videos:
        per_source[video.source] = per_source.get(video.source, 0) + 1
    names = []
    for video in dataset.videos:
        if video.source.endswith(".json") and per_source[video.source] == 1:
            names.append(os.path.basename(video.source))
        else:
            names.append(f"{video.name}.json")
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"two videos would be written to the same file {name!r}")
        seen.add(name)
    return names


def _write_json(path: str, data) -> None:
    from posewarper_jax import fileio

    # One-shot dumps uses the C encoder; written whole or not at all.
    fileio.atomic_write(path, json.dumps(data))


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
    category = {
        "supercategory": "person",
        "id": 1,
        "name": "person",
        "keypoints": list(JOINT_NAMES),
        "skeleton": [list(limb) for limb in _PT18_FILE_SKELETON],
    }
    return {"images": images, "annotations": annotations, "categories": [category]}


def write_posetrack18(dataset: VideoDataset, out_dir: str) -> list[str]:
    """Writes one PoseTrack18 JSON per video into ``out_dir``; returns the paths written.

    Image names are written relative to ``dataset.root``, so reading the files back with the same
    image root gives the same data set (``Video.source`` aside). Unlabeled joints are written as
    (0, 0, 0), labeled ones as (x, y, 1); persons with ``keypoint_scores`` get ``scores`` (one
    per joint, poseval's prediction field) and ``score`` (the box score). Annotations without an
    id get ``image_id * 100 + position``.
    """
    storage.makedirs(out_dir)
    paths = []
    for video, name in zip(dataset.videos, _output_names(dataset)):
        path = os.path.join(out_dir, name)
        _write_json(path, posetrack18_video_json(video, dataset.root))
        paths.append(path)
    return paths


def posetrack17_video_json(video: Video, root: str) -> dict:
    """One video as a PoseTrack17 ``annolist`` object (15 joints; ears are not written)."""
    rows = _person_rows(video)
    annolist = []
    for frame in video.frames:
        rects = []
        for person in frame.people:
            keypoints, _, head, scores = next(rows)
            points = []
            for joint, slot in enumerate(PT17_TO_PT18):
                if person.keypoints[slot, 2] <= 0:
                    continue
                point = {
                    "id": [joint],
                    "x": [keypoints[3 * slot]],
                    "y": [keypoints[3 * slot + 1]],
                    "is_visible": [1],
                }
                if person.keypoint_scores is not None:
                    point["score"] = [scores[slot]]
                points.append(point)
            rect = {
                "track_id": [person.track_id],
                "annopoints": [{"point": points}] if points else [],
            }
            if person.head_bbox is not None:
                x, y, w, h = person.head_bbox
                rect.update(x1=head[:1], y1=head[1:2], x2=[_corner(x, w)], y2=[_corner(y, h)])
            if person.keypoint_scores is not None or person.score != 1.0:
                rect["score"] = [float(person.score)]
            rects.append(rect)
        entry = {
            "image": [{"name": _relative_name(frame.path, root)}],
            "imgnum": [frame.index + 1],
            "is_labeled": [int(frame.is_labeled)],
            "annorect": rects,
        }
        if frame.ignore_regions:
            entry["ignore_regions"] = [
                {"point": [{"x": [x], "y": [y]} for x, y in zip(*map(_short_floats, region.T))]}
                for region in frame.ignore_regions
            ]
        annolist.append(entry)
    return {"annolist": annolist}


def write_posetrack17(dataset: VideoDataset, out_dir: str) -> list[str]:
    """Writes one PoseTrack17 ``annolist`` JSON per video into ``out_dir``; returns the paths.

    Every frame is written, in order (the official evaluation pairs prediction and ground-truth
    frames by position). Joints go back to the 15 PoseTrack17 ids; persons with
    ``keypoint_scores`` get a ``score`` per point and a ``score`` per person (poseval's
    prediction fields). A person without labeled joints is written with empty ``annopoints``.
    """
    storage.makedirs(out_dir)
    paths = []
    for video, name in zip(dataset.videos, _output_names(dataset)):
        path = os.path.join(out_dir, name)
        _write_json(path, posetrack17_video_json(video, dataset.root))
        paths.append(path)
    return paths

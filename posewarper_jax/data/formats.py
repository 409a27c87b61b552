"""What the annotation readers and writers share: errors, field checks, joints, boxes, frames.

Every reader (``posetrack18``, ``posetrack17``, ``coco``, ``detections``, ``user_labels``)
reads into the shared types of ``types.py``: keypoints in the 17-joint PoseTrack18 layout
(``JOINT_NAMES``), float32 ``[17, 3]`` rows ``(x, y, v)`` with ``v`` 1 for a labeled joint
and all three 0 otherwise; boxes ``[x, y, w, h]``; pixel centres at integers, x right, y down.
Every video lists all of its frames in order, labeled or not. Bad input raises
``AnnotationError``, whose message names the file, the record and the field at fault.

Decisions
---------
* Labeled joint. PoseTrack (both versions): a joint is labeled unless it is absent or stored as
  ``(0, 0, 0)``; this is the rule of the official evaluation (poseval), which keeps PoseTrack17
  points with ``is_visible = 0`` and PoseTrack18 joints with ``v = 0`` but non-zero coordinates.
  The occluded/visible distinction is therefore not kept. COCO: labeled when ``v > 0``.
* Person box when the file has none (always in PoseTrack17): the tight box of the labeled joints,
  width and height scaled by ``PERSON_BOX_ENLARGE`` (1.3) about its centre, as poseval's format
  converter does; without labeled joints, the head box; without either, zeros.
* Frames are ordered by the number in their file name and must be contiguous; a frame's
  ``index`` is its rank (0-based) whatever the file numbering starts at.
* Written files: numbers as the fewest digits that read back as the same float32; one file per
  video, named like the file the video was read from when it was alone in it.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from posewarper_jax import storage
from posewarper_jax.cli import ExpectedError
from posewarper_jax.data.types import JOINT_NAMES, NUM_JOINTS, Person, Video, VideoDataset

PERSON_BOX_ENLARGE = 1.3

# The skeleton of ``person_category`` (1-based, as in the official PoseTrack18 files).
_PT18_FILE_SKELETON = (
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
)  # fmt: skip

_NAME_ALIASES = {"neck": "head_bottom"}
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


def _image_record(image, where: str, seen=None) -> tuple[str, int]:
    """An ``images`` entry's ``file_name`` and ``id``; an id already in ``seen`` is an error."""
    name = _get(image, "file_name", where)
    if not isinstance(name, str):
        raise AnnotationError(f"{where}: field 'file_name' must be a string")
    image_id = _integer(_get(image, "id", where), where, "id")
    if seen is not None and image_id in seen:
        raise AnnotationError(f"{where}: image id {image_id} is used twice")
    return name, image_id


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


def write_videos(dataset: VideoDataset, out_dir: str, video_json) -> list[str]:
    """Writes ``video_json(video, dataset.root)`` of each video into ``out_dir`` (created if
    needed), one file per video named by ``_output_names``; returns the paths written."""
    storage.makedirs(out_dir)
    paths = []
    for video, name in zip(dataset.videos, _output_names(dataset)):
        path = os.path.join(out_dir, name)
        _write_json(path, video_json(video, dataset.root))
        paths.append(path)
    return paths


def person_category() -> dict:
    """The ``person`` category of the files written here: the PoseTrack18 joint names and
    skeleton."""
    return {
        "supercategory": "person",
        "id": 1,
        "name": "person",
        "keypoints": list(JOINT_NAMES),
        "skeleton": [list(limb) for limb in _PT18_FILE_SKELETON],
    }

"""PoseTrack17 annotations and predictions: reader and writer.

One ``annolist`` JSON per video, converted from MATLAB, so scalars are usually wrapped in
one-element lists and one-element struct arrays may arrive as a bare object. Frames are
``%08d.jpg``, numbered from 1. Each ``annorect`` has a head box ``x1, y1, x2, y2``, a
``track_id`` and ``annopoints[0].point[k]`` with joint ``id`` (0..14), ``x``, ``y``,
``is_visible`` and, in predictions, ``score``. Joints go into the 17-joint layout through
``PT17_TO_PT18``; the ears stay unlabeled. The rules shared with the other formats (labeled
joints, person boxes, frame order) are in ``formats.py``.

Image ids: the files have none. A video folder named like ``000342_mpii`` gets poseval's
``T SSSSSS FFFF`` ids (T: 1 mpii, 2 bonn, 3 mpiinew; S: the sequence number; F: the 0-based
frame index); any other name gets ``(video position in the data set + 1) * 10000 + frame
index``.
"""

from __future__ import annotations

import os
import re

import numpy as np

from posewarper_jax import storage
from posewarper_jax.data.formats import (
    AnnotationError,
    _annotation_files,
    _flag,
    _frame_number,
    _get,
    _image_path,
    _integer,
    _number,
    _ordered,
    _person_box,
    _person_rows,
    _records,
    _relative_name,
    _short_floats,
    _unwrap,
    check_image_files,
    read_json,
    write_videos,
)
from posewarper_jax.data.types import NUM_JOINTS, PT17_TO_PT18, Frame, Person, Video, VideoDataset

_SEQUENCE_NAME = re.compile(r"^(\d+)_(mpii|bonn|mpiinew)(?:_|$)")
_SEQUENCE_SOURCE = {"mpii": 1, "bonn": 2, "mpiinew": 3}


def sequence_image_id(video_name: str, index: int, video_position: int) -> int:
    """PoseTrack image id of frame ``index`` (0-based) of a video (see the module notes)."""
    match = _SEQUENCE_NAME.match(video_name)
    if match:
        return _SEQUENCE_SOURCE[match.group(2)] * 10**10 + int(match.group(1)) * 10**4 + index
    return (video_position + 1) * 10**4 + index


# ------------------------------------------------------------------------------------------------
# Reading.
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
    joints (see ``formats``). Returns a ``VideoDataset`` with fmt "posetrack17".
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
# Writing.
# ------------------------------------------------------------------------------------------------


def _corner(origin: float, size: float) -> float | int:
    """x1 + w written so that reading it back and subtracting the float32 x1 gives w exactly."""
    value = float(np.float32(origin)) + float(np.float32(size))
    return int(value) if value.is_integer() else value


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
    return write_videos(dataset, out_dir, posetrack17_video_json)

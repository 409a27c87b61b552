"""Person detections in COCO results format, attached to the frames of a data set.

A detection file is a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
records (pixel coordinates, x right, y down). Records are matched to frames by ``image_id``; files
written by the original PoseWarper release also carry ``image_name`` (the image path relative to
the data root), used when the id matches no frame.
"""

from __future__ import annotations

import os

import numpy as np

from posewarper_jax import storage
from posewarper_jax.data.formats import (
    AnnotationError,
    _box_size_checked,
    _get,
    _integer,
    _number,
    _numbers,
    read_json,
)
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset

PERSON_CATEGORY_ID = 1


def load_detections(
    json_file: str,
    dataset: VideoDataset,
    score_threshold: float = 0.0,
    *,
    category_id: int = PERSON_CATEGORY_ID,
) -> VideoDataset:
    """Reads detected person boxes and returns them as a data set shaped like ``dataset``.

    Args:
      json_file: COCO results-format detections.
      dataset: the data set the detections belong to (gives frames, paths, image ids).
      score_threshold: boxes with ``score < score_threshold`` are dropped.
      category_id: records of other categories are skipped (records without one are kept).

    Returns:
      A ``VideoDataset`` with the same videos and frames as ``dataset`` (paths, indices, image
      ids, ``is_labeled``, ignore regions), whose ``people`` are the detections in file order:
      keypoints all zero ``[17, 3]``, ``bbox`` float32 [4] (x, y, w, h), ``score`` the box score,
      ``annotation_id`` the record's position in the file. Boxes with w = 0 or h = 0 are
      dropped (they cannot be cropped); a negative size, a NaN or infinite number is an
      ``AnnotationError`` naming the record. Records of images not in ``dataset`` are skipped, so
      one file for a whole split serves any subset of it; if no record matches any frame,
      ``AnnotationError`` is raised (the ids are likely from another annotation set).
    """
    records = read_json(json_file)
    if not isinstance(records, list):
        raise AnnotationError(
            f"{json_file}: expected a JSON list of detections, found a {type(records).__name__}"
        )
    videos = [
        Video(
            video.name,
            [
                Frame(f.path, f.index, f.image_id, f.is_labeled, [], f.ignore_regions)
                for f in video.frames
            ],
            video.source,
            dict(video.extra),
        )
        for video in dataset.videos
    ]
    by_id, by_name = {}, {}
    for video in videos:
        for frame in video.frames:
            by_id[frame.image_id] = frame
            by_name[os.path.normpath(os.path.relpath(frame.path, dataset.root or "/"))] = frame

    matched = 0
    for i, record in enumerate(records):
        where = f"{json_file}: record {i}"
        if not isinstance(record, dict):
            raise AnnotationError(f"{where}: expected an object, found {type(record).__name__}")
        if "category_id" in record:
            if _integer(record["category_id"], where, "category_id") != category_id:
                continue
        frame = None
        if "image_id" in record:
            frame = by_id.get(_integer(record["image_id"], where, "image_id"))
        name = record.get("image_name", record.get("file_name"))
        if frame is None and isinstance(name, str):
            frame = by_name.get(os.path.normpath(name))
        if frame is None and "image_id" not in record and not isinstance(name, str):
            _get(record, "image_id", where)  # Raises: no way to place this record.
        score = _number(_get(record, "score", where), where, "score")
        box = _numbers(_get(record, "bbox", where), where, "bbox", 4).astype(np.float32)
        box = _box_size_checked(box, where, "bbox")
        if frame is None:
            continue
        matched += 1
        if score < score_threshold or box[2] <= 0 or box[3] <= 0:
            continue
        frame.people.append(
            Person(
                keypoints=np.zeros((NUM_JOINTS, 3), np.float32),
                bbox=box,
                score=score,
                annotation_id=i,
            )
        )
    if records and matched == 0:
        first = records[0].get("image_id") if isinstance(records[0], dict) else None
        raise AnnotationError(
            f"{json_file}: none of its {len(records)} records matches an image of the data set "
            f"(first image_id: {first}); are the image ids from another annotation set?"
        )
    extra = dict(dataset.extra, detections=storage.abspath(json_file))
    return VideoDataset(videos, dataset.fmt, dataset.root, extra)


def boxes_for_pair(
    boxes: VideoDataset, video_index: int, ref_index: int, sup_index: int
) -> list[Person]:
    """The boxes to crop a (reference, supporting) frame pair with: the reference frame's.

    Both frames are cropped with the reference frame's boxes, so the network sees the same
    region at both times and must account for the motion itself.

    Args:
      boxes: a data set whose people give the boxes (ground truth or ``load_detections``).
      video_index: index into ``boxes.videos``.
      ref_index, sup_index: 0-based frame indices of the reference and supporting frames.

    Returns the reference frame's ``Person`` objects (``bbox`` float32 [4] x, y, w, h).
    """
    if not 0 <= video_index < len(boxes.videos):
        raise IndexError(f"video_index={video_index}: the data set has {len(boxes.videos)} videos")
    video = boxes.videos[video_index]
    for label, index in (("ref_index", ref_index), ("sup_index", sup_index)):
        if not 0 <= index < video.nframes:
            raise IndexError(f"{label}={index}: video '{video.name}' has {video.nframes} frames")
    return list(video.frames[ref_index].people)

"""From decoded crops to per-frame predictions, and prediction files the official evaluation
accepts.

Coordinates are image pixels, pixel centres at integers, x right, y down; keypoints use the
17-joint layout of ``posewarper_jax.data.types``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from posewarper_jax.data.posetrack17 import write_posetrack17
from posewarper_jax.data.posetrack18 import write_posetrack18
from posewarper_jax.data.types import JOINT_NAMES, NUM_JOINTS, Frame, Person, Video, VideoDataset
from posewarper_jax.eval.nms import rescore

__all__ = ["predictions_from_crops", "shoulder_midpoint_neck", "write_poseval_predictions"]

SCORING_MODES = ("official", "mmpose")
MAX_TRACK_ID = 10000  # poseval asserts track ids below this
_SHOULDERS = [JOINT_NAMES.index("left_shoulder"), JOINT_NAMES.index("right_shoulder")]
_HEAD_BOTTOM = JOINT_NAMES.index("head_bottom")


def _empty_like(dataset: VideoDataset) -> VideoDataset:
    """The data set's videos and frames (paths, ids, labels, ignore regions) without people."""
    videos = []
    for video in dataset.videos:
        frames = [
            Frame(f.path, f.index, f.image_id, f.is_labeled, [], list(f.ignore_regions))
            for f in video.frames
        ]
        videos.append(Video(video.name, frames, video.source, dict(video.extra)))
    return VideoDataset(videos, dataset.fmt, dataset.root, dict(dataset.extra))


def _column(meta: Mapping, key: str, n: int, shape=(), dtype=np.float64) -> np.ndarray | None:
    if key not in meta:
        return None
    value = np.asarray(meta[key])
    if value.shape != (n, *shape):
        raise ValueError(f"meta[{key!r}] has shape {value.shape}, expected {(n, *shape)}")
    return value.astype(dtype)


def predictions_from_crops(
    coords: np.ndarray,
    maxvals: np.ndarray,
    meta: Mapping[str, np.ndarray],
    dataset: VideoDataset,
    *,
    scoring: str = "official",
    vis_thr: float = 0.2,
) -> VideoDataset:
    """Assembles decoded crops into a prediction data set shaped like ``dataset``.

    Every joint of every crop becomes a labeled predicted joint (v = 1).

    Args:
      coords: ``[N, J, 2]`` (x, y) image pixels (``heatmap_to_image_coords``), J = 17.
      maxvals: ``[N, J]`` heatmap maxima.
      meta: per-crop arrays, as the evaluation pipeline yields them: ``video`` and ``frame``
        (int ``[N]``, indices into ``dataset.videos`` and the video's frames), ``score``
        (``[N]`` box score; 1 if absent); optional ``mask`` (bool ``[N]``, False rows are
        padding and skipped), ``track_id`` (int ``[N]``), and ``bbox`` (``[N, 4]`` x, y, w, h)
        or ``center`` and ``scale`` (``[N, 2]``; the box is then the crop's, ``center -
        scale * 100`` to ``center + scale * 100``, so its area is HRNet's OKS-NMS area).
        Without either the box is the tight box of the joints.
      dataset: the data set the crops were cut from.
      scoring: "official" (the PoseWarper release: joint score = heatmap max x box score,
        person score = box score) or "mmpose" (joint score = heatmap max, person score =
        box score x mean of the joint scores above ``vis_thr``).
      vis_thr: joint-score threshold of the "mmpose" rescoring.

    Returns:
      A ``VideoDataset`` with the videos and frames of ``dataset`` and the predicted people
      (in row order), ``keypoint_scores`` set.
    """
    if scoring not in SCORING_MODES:
        raise ValueError(f"scoring must be one of {SCORING_MODES}, got {scoring!r}")
    coords = np.asarray(coords, np.float64)
    maxvals = np.asarray(maxvals, np.float64)
    if coords.ndim != 3 or coords.shape[1:] != (NUM_JOINTS, 2):
        raise ValueError(f"coords must be [N, {NUM_JOINTS}, 2], got {coords.shape}")
    n = coords.shape[0]
    if maxvals.shape != (n, NUM_JOINTS):
        raise ValueError(f"maxvals must be [{n}, {NUM_JOINTS}], got {maxvals.shape}")
    for key in ("video", "frame"):
        if key not in meta:
            raise ValueError(f"meta has no {key!r} entry (indices of each crop's video/frame)")
    video_idx = _column(meta, "video", n, dtype=np.int64)
    frame_idx = _column(meta, "frame", n, dtype=np.int64)
    box_score = _column(meta, "score", n)
    box_score = np.ones(n) if box_score is None else box_score
    mask = _column(meta, "mask", n, dtype=bool)
    mask = np.ones(n, bool) if mask is None else mask
    track = _column(meta, "track_id", n, dtype=np.int64)
    bbox = _column(meta, "bbox", n, (4,))
    center, scale = _column(meta, "center", n, (2,)), _column(meta, "scale", n, (2,))

    if scoring == "official":
        kpt_scores = maxvals * box_score[:, None]
        person_scores = box_score
    else:
        kpt_scores = maxvals
        person_scores = rescore(maxvals, box_score, vis_thr)

    out = _empty_like(dataset)
    for r in np.flatnonzero(mask):
        v, f = int(video_idx[r]), int(frame_idx[r])
        if not 0 <= v < len(out.videos):
            raise ValueError(f"crop {r}: video index {v} outside 0..{len(out.videos) - 1}")
        video = out.videos[v]
        if not 0 <= f < video.nframes:
            raise ValueError(
                f"crop {r}: frame index {f} outside 0..{video.nframes - 1} of video {video.name!r}"
            )
        if not np.all(np.isfinite(coords[r])) or not np.all(np.isfinite(kpt_scores[r])):
            raise ValueError(f"crop {r} (video {video.name!r}, frame {f}): non-finite prediction")
        keypoints = np.concatenate([coords[r], np.ones((NUM_JOINTS, 1))], axis=1)
        if bbox is not None:
            box = bbox[r]
        elif center is not None and scale is not None:
            half = scale[r] * 100.0
            box = np.concatenate([center[r] - half, 2 * half])
        else:
            low, high = coords[r].min(axis=0), coords[r].max(axis=0)
            box = np.concatenate([low, high - low])
        video.frames[f].people.append(
            Person(
                keypoints=keypoints.astype(np.float32),
                bbox=np.asarray(box, np.float32),
                track_id=-1 if track is None else int(track[r]),
                score=float(person_scores[r]),
                keypoint_scores=kpt_scores[r].astype(np.float32),
            )
        )
    return out


def shoulder_midpoint_neck(person: Person) -> Person:
    """A copy whose head_bottom is the midpoint of the shoulders (score: their mean), as the
    original release wrote the neck; unlabeled unless both shoulders are labeled."""
    keypoints = np.array(person.keypoints, np.float32, copy=True)
    keypoints[_HEAD_BOTTOM, :2] = keypoints[_SHOULDERS, :2].mean(axis=0)
    both = bool(np.all(keypoints[_SHOULDERS, 2] > 0))
    keypoints[_HEAD_BOTTOM, 2] = 1.0 if both else 0.0
    if not both:
        keypoints[_HEAD_BOTTOM, :2] = 0.0
    scores = person.keypoint_scores
    if scores is not None:
        scores = np.array(scores, np.float32, copy=True)
        scores[_HEAD_BOTTOM] = scores[_SHOULDERS].mean()
    return dataclasses.replace(person, keypoints=keypoints, keypoint_scores=scores)


def _track_ids(people: list[Person]) -> list[Person]:
    """poseval wants distinct track ids below 10000 within a frame; otherwise number by position."""
    ids = [p.track_id for p in people]
    if all(0 <= t < MAX_TRACK_ID for t in ids) and len(set(ids)) == len(ids):
        return people
    return [dataclasses.replace(p, track_id=k) for k, p in enumerate(people)]


def write_poseval_predictions(
    pred: VideoDataset,
    gt: VideoDataset,
    out_dir: str,
    fmt: str = "auto",
    *,
    neck: str = "head_bottom",
) -> list[str]:
    """Writes predictions the way poseval needs them: one file per ground-truth video, named
    like the ground-truth file, with an entry for every ground-truth frame (empty where there
    is no prediction).

    Args:
      pred: predictions; videos are matched to ``gt`` by name and must have the same number of
        frames; a ground-truth video without predictions gets a file of empty frames.
      gt: the ground truth (its videos, frame names, image ids and ``is_labeled`` are written).
      out_dir: the directory to write into (created if needed).
      fmt: "posetrack18", "posetrack17" or "auto" (the ground truth's format).
      neck: "head_bottom" (write the predicted head_bottom) or "shoulder_midpoint" (write the
        shoulders' midpoint there, as the original release did, for parity runs).

    Track ids that are missing, repeated within a frame or >= 10000 are replaced by the
    person's position in the frame (poseval rejects them otherwise).

    Returns the paths written, in ``gt`` order.
    """
    if fmt == "auto":
        fmt = gt.fmt
    if fmt not in ("posetrack18", "posetrack17"):
        raise ValueError(f"fmt must be 'posetrack18', 'posetrack17' or 'auto', got {fmt!r}")
    if neck not in ("head_bottom", "shoulder_midpoint"):
        raise ValueError(f"neck must be 'head_bottom' or 'shoulder_midpoint', got {neck!r}")
    by_name = {v.name: v for v in pred.videos}
    unknown = sorted(set(by_name) - {v.name for v in gt.videos})
    if unknown:
        raise ValueError(f"predictions for videos that are not in the ground truth: {unknown[:10]}")
    out = _empty_like(gt)
    for video in out.videos:
        pvideo = by_name.get(video.name)
        if pvideo is None:
            continue
        if pvideo.nframes != video.nframes:
            raise ValueError(
                f"video {video.name!r}: {pvideo.nframes} predicted frames, "
                f"{video.nframes} in the ground truth"
            )
        for frame, pframe in zip(video.frames, pvideo.frames):
            people = list(pframe.people)
            if neck == "shoulder_midpoint":
                people = [shoulder_midpoint_neck(p) for p in people]
            frame.people = _track_ids(people)
    writer = write_posetrack18 if fmt == "posetrack18" else write_posetrack17
    return writer(out, out_dir)

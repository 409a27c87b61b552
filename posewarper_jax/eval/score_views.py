"""Three views of one set of pose predictions: poseval's mAP, the mAP with constant scores,
and PCKh@0.5, overall and by the distance |δ| to the nearest labeled frame.

poseval's mAP ranks every predicted joint by its score, so it measures the poses *and* how well
the scores rank them. Methods whose scores mean different things (heatmap maxima, a flow's
consistency, a constant) are then not compared on their poses alone. The two other views take
the scores out:

* ``map``: ``posetrack_map.posetrack_map`` of the predictions as they are.
* ``map_constant_scores``: the same with every predicted joint's score set to 1
  (``constant_scores``), i.e. what poseval reports on the same files with all scores equal.
  With every score tied, the ranking is the input order reversed (the last frame's joints
  first; ``posetrack_map.precision_recall`` sorts stably, the same on every machine): an
  order unrelated to correctness, so this AP is close to precision × recall of the whole
  prediction set. A
  method whose scores are already constant scores the same in both views.
* ``pckh``: PCKh@0.5, no scores at all (``pckh_metrics``). For each frame with ground-truth
  people (the frames poseval scores), ground-truth and predicted joints inside an ignore
  region are removed and the people are paired by poseval's own assignment
  (``posetrack_map.frame_assignment``: each prediction keeps its best ground truth by PCKh,
  each ground truth then takes the best of the predictions that kept it). A ground-truth
  joint (labeled, ``v > 0``) is a hit when its person is paired with a prediction that has
  that joint within 0.5 × the person's head size (poseval's head size, 0.6 × the head box's
  diagonal, and its ``<=``). Every other ground-truth joint is a miss: the person's
  prediction lacks the joint or is too far, or no prediction is paired with the person
  (someone no method predicted). Predictions paired with no ground truth, and predicted
  joints the ground truth lacks, count nowhere: PCKh is the share of ground-truth joints
  found (those are the false positives that the mAP views count). Per joint:
  hits / ground-truth joints (NaN without ground truth); the columns are poseval's
  (Head = mean of head top, neck, nose; Shoulder ... Ankle = mean of right and left; Total =
  mean of the 15 joints, NaN left out), in percent. It equals poseval's recall at the end of
  the ranking, which no score changes.

``propagation_views`` adds the split by |δ|: each held-back frame belongs to the distance of
its nearest labeled frame (the planning rule of ``apps.propagation.plan_propagation``:
labeled frames are those with ``is_labeled``; 1 <= |δ| <= reach), and each view is computed
again on the ground truth of the frames at that distance only. Frames with no labeled frame
within reach are scored in the overall views only (as misses: nothing is predicted there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from posewarper_jax.data.types import Frame, VideoDataset, map_people
from posewarper_jax.eval.posetrack_map import (
    POSEVAL_JOINT_NAMES,
    _check_modes,
    _collect,
    posetrack_map,
    summarize,
)

__all__ = [
    "VIEWS",
    "constant_scores",
    "frames_at_distance",
    "label_distances",
    "pckh",
    "pckh_metrics",
    "propagation_views",
    "score_views",
]

VIEWS: tuple[str, ...] = ("map", "map_constant_scores", "pckh")


def constant_scores(pred: VideoDataset, value: float = 1.0) -> VideoDataset:
    """``pred`` with every predicted joint's score set to ``value`` (0 where the joint is not
    predicted); keypoints, boxes, track ids and person scores unchanged. ``pred`` is not
    modified (frames and people are copied)."""

    def constant(p):
        has = np.asarray(p.keypoints)[:, 2] > 0
        scores = np.where(has, np.float32(value), np.float32(0)).astype(np.float32)
        return dataclasses.replace(p, keypoint_scores=scores)

    return map_people(pred, constant)


def pckh_metrics(
    gt: VideoDataset,
    pred: VideoDataset,
    *,
    neck: str = "head_bottom",
    dist_thresh: float = 0.5,
) -> dict[str, Any]:
    """PCKh@``dist_thresh`` per poseval joint (module docstring), no scores used.

    Args:
      gt, pred: as for ``posetrack_map.posetrack_map``; predictions need no
        ``keypoint_scores``.
      neck: as for ``posetrack_map``.
      dist_thresh: the threshold as a fraction of the head size.

    Returns:
      ``{"joints": poseval's 15 names, "pckh": 15 values in percent (NaN: no ground truth),
      "total": mean of the non-NaN joints, "hits": [15], "num_gt_joints": [15],
      "num_predicted_joints": [15], "num_frames": frames scored}``.
    """
    _check_modes(neck, "min_score")
    _, labels, n_gt, n_frames = _collect(
        gt, pred, dist_thresh=dist_thresh, neck=neck, missing_scores="min_score"
    )
    hits = np.asarray([int(np.sum(lab)) for lab in labels], np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(n_gt > 0, 100.0 * hits / np.maximum(n_gt, 1), np.nan)
    valid = value[~np.isnan(value)]
    return {
        "joints": list(POSEVAL_JOINT_NAMES),
        "pckh": value.tolist(),
        "total": float(valid.mean()) if len(valid) else float("nan"),
        "hits": hits.tolist(),
        "num_gt_joints": np.asarray(n_gt).tolist(),
        "num_predicted_joints": [len(lab) for lab in labels],
        "num_frames": int(n_frames),
    }


def pckh(gt: VideoDataset, pred: VideoDataset, **kw) -> dict[str, float]:
    """PCKh@0.5 as a table with poseval's columns (percent); ``pckh_metrics``' arguments."""
    m = pckh_metrics(gt, pred, **kw)
    return summarize(m["pckh"], m["total"])


def score_views(
    gt: VideoDataset, pred: VideoDataset, *, neck: str = "head_bottom"
) -> dict[str, dict[str, float]]:
    """``{"map": T, "map_constant_scores": T, "pckh": T}`` (module docstring), each T a table
    with ``posetrack_map.COLUMNS`` in percent."""
    return {
        "map": posetrack_map(gt, pred, neck=neck),
        "map_constant_scores": posetrack_map(gt, constant_scores(pred), neck=neck),
        "pckh": pckh(gt, pred, neck=neck),
    }


def label_distances(labeled: VideoDataset, reach: int) -> dict[tuple[str, int], int]:
    """(video name, frame) -> |δ| to the nearest labeled frame, for every unlabeled frame of
    ``labeled`` with a labeled frame (``is_labeled``) at most ``reach`` frames away."""
    if isinstance(reach, bool) or int(reach) != reach or reach < 1:
        raise ValueError(f"reach must be a positive integer, got {reach!r}")
    out: dict[tuple[str, int], int] = {}
    for video in labeled.videos:
        sources = np.asarray([f.index for f in video.frames if f.is_labeled], np.int64)
        if not len(sources):
            continue
        for f in video.frames:
            if f.is_labeled:
                continue
            d = int(np.min(np.abs(sources - f.index)))
            if d <= reach:
                out[(video.name, f.index)] = d
    return out


def frames_where(gt: VideoDataset, keep: Callable[[str, int], bool]) -> VideoDataset:
    """``gt`` with the people of every frame where ``keep(video name, frame index)`` is False
    removed (those frames are then not scored). Frames and videos are kept, so predictions
    still pair with it."""
    videos = []
    for video in gt.videos:
        frames = [
            f
            if keep(video.name, f.index)
            else Frame(
                path=f.path,
                index=f.index,
                image_id=f.image_id,
                is_labeled=False,
                ignore_regions=list(f.ignore_regions),
            )
            for f in video.frames
        ]
        videos.append(dataclasses.replace(video, frames=frames))
    return dataclasses.replace(gt, videos=videos)


def frames_at_distance(
    gt: VideoDataset, distances: Mapping[tuple[str, int], int], delta: int
) -> VideoDataset:
    """``gt`` with the people of every frame not at ``|δ| = delta`` removed (``frames_where``)."""
    return frames_where(gt, lambda name, index: distances.get((name, index)) == delta)


def _count(gt: VideoDataset) -> tuple[int, int]:
    frames = people = 0
    for video in gt.videos:
        for f in video.frames:
            if f.people:
                frames += 1
                people += len(f.people)
    return frames, people


def propagation_views(
    held_back: VideoDataset,
    pred: VideoDataset,
    labeled: VideoDataset,
    *,
    reach: int,
    neck: str = "head_bottom",
) -> dict[str, Any]:
    """The three views of propagated predictions, overall and by |δ| (module docstring).

    Args:
      held_back: the ground truth of the held-back frames (e.g. ``make_sparse_subset``'s
        second output).
      pred: predictions with a video for each of ``held_back``'s (``select_videos``).
      labeled: the sparse labels the predictions were made from (its ``is_labeled`` frames
        define |δ|).
      reach: the largest |δ| propagated.

    Returns:
      ``{"map": T, "map_constant_scores": T, "pckh": T, "frames": n, "people": n,
      "frames_beyond_reach": n, "by_delta": {"1": {"map": T, "map_constant_scores": T,
      "pckh": T, "frames": n, "people": n}, ...}}``: ``frames`` and ``people`` count the
      scored ground truth; ``by_delta`` has a key for each |δ| with ground truth.
    """
    distances = label_distances(labeled, reach)
    frames, people = _count(held_back)
    out: dict[str, Any] = dict(score_views(held_back, pred, neck=neck))
    beyond = sum(
        1
        for video in held_back.videos
        for f in video.frames
        if f.people and (video.name, f.index) not in distances
    )
    out.update(frames=frames, people=people, frames_beyond_reach=beyond, by_delta={})
    for delta in range(1, int(reach) + 1):
        gt = frames_at_distance(held_back, distances, delta)
        n_frames, n_people = _count(gt)
        if not n_frames:
            continue
        entry: dict[str, Any] = dict(score_views(gt, pred, neck=neck))
        entry.update(frames=n_frames, people=n_people)
        out["by_delta"][str(delta)] = entry
    return out

"""Track ids for per-frame poses: frame-to-frame linking, pure functions over NumPy arrays.

A video's predictions are linked frame by frame. For each frame t > 0 a similarity matrix
``S[i, j]`` between the people i of frame t − 1 and the people j of frame t is formed, the
assignment maximising the total similarity is found with the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) and pairs with ``S >= threshold`` keep the track
id of their person on t − 1; everyone else starts a new track (ids 0, 1, 2, ... in order of
appearance). Two similarities:

* ``iou_matrix``: box IoU between the boxes of t − 1 and t: the baseline, no motion model.
* ``oks_matrix``: object keypoint similarity (COCO's OKS with PoseTrack's per-joint σ) between
  each person of t − 1 *moved to frame t by a motion model* and each person of t: with
  PoseWarper as the motion model, the pose of t − 1 is rendered as heatmaps and warped onto
  frame t by the warping head (``apps.detect_track.warp_previous_poses``), so a person is
  matched where it has moved to, not where it was. ``shift_boxes`` moves the boxes of t − 1
  with the same motion (``apps.detect_track`` averages OKS and the IoU of the moved boxes).

``link_tracks(similarities, counts, threshold)`` does the linking for one video;
``track_dataset`` applies it to a prediction data set. Nothing here reads images or runs a
network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from posewarper_jax.data.types import Person, VideoDataset
from posewarper_jax.eval.nms import POSETRACK_SIGMAS

__all__ = [
    "assign",
    "iou_matrix",
    "link_tracks",
    "oks_matrix",
    "pose_arrays",
    "shift_boxes",
    "track_dataset",
]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` ``[N, 4]`` and ``b`` ``[M, 4]`` (x, y, w, h): float64 ``[N, M]``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax1, ay1 = a[:, 0:1], a[:, 1:2]
    ax2, ay2 = ax1 + a[:, 2:3], ay1 + a[:, 3:4]
    bx1, by1 = b[None, :, 0], b[None, :, 1]
    bx2, by2 = bx1 + b[None, :, 2], by1 + b[None, :, 3]
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = iw * ih
    union = (a[:, 2:3] * a[:, 3:4]) + (b[None, :, 2] * b[None, :, 3]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def oks_matrix(
    a_xy: np.ndarray,
    a_has: np.ndarray,
    b_xy: np.ndarray,
    b_has: np.ndarray,
    areas: np.ndarray,
    sigmas: np.ndarray | None = None,
) -> np.ndarray:
    """OKS between poses ``a`` (``[N, J, 2]``, present ``[N, J]``) and ``b`` (``[M, J, 2]``,
    ``[M, J]``) with the areas ``[M]`` of ``b``'s people (the scale).

    ``OKS = mean over the joints present in both of exp(−d² / (2 area (2σ)²))``, 0 where no
    joint is shared (COCO's OKS, σ: ``POSETRACK_SIGMAS``). float64 ``[N, M]``.
    """
    a_has, b_has = np.asarray(a_has, bool), np.asarray(b_has, bool)
    a_xy = np.asarray(a_xy, np.float64).reshape(*a_has.shape, 2)
    b_xy = np.asarray(b_xy, np.float64).reshape(*b_has.shape, 2)
    s = POSETRACK_SIGMAS if sigmas is None else np.asarray(sigmas, np.float64)
    if len(a_xy) == 0 or len(b_xy) == 0:
        return np.zeros((len(a_xy), len(b_xy)))
    d2 = np.sum((a_xy[:, None] - b_xy[None]) ** 2, axis=-1)  # [N, M, J]
    area = np.maximum(np.asarray(areas, np.float64).reshape(1, -1, 1), np.spacing(1))
    e = np.exp(-d2 / ((2 * s) ** 2)[None, None, :] / area / 2)
    both = a_has[:, None, :] & b_has[None, :, :]
    n = both.sum(axis=-1)
    return np.where(n > 0, (e * both).sum(axis=-1) / np.maximum(n, 1), 0.0)


def shift_boxes(
    boxes: np.ndarray,
    xy: np.ndarray,
    has: np.ndarray,
    moved_xy: np.ndarray,
    moved_has: np.ndarray,
    min_joints: int = 3,
) -> np.ndarray:
    """Boxes ``[N, 4]`` moved with their people: each by the median over the joints present
    before (``xy``, ``has`` ``[N, J]``) and after (``moved_xy``, ``moved_has``) of the joint
    motion; a box with fewer than ``min_joints`` such joints stays where it is."""
    out = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    xy, moved_xy = np.asarray(xy, np.float64), np.asarray(moved_xy, np.float64)
    both = np.asarray(has, bool) & np.asarray(moved_has, bool)
    for i in range(len(out)):
        if both[i].sum() >= min_joints:
            out[i, :2] += np.median(moved_xy[i][both[i]] - xy[i][both[i]], axis=0)
    return out


def assign(similarity: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """The pairs ``(i, j)`` of the maximum-similarity assignment with ``S[i, j] >= threshold``
    (Hungarian algorithm), sorted by ``i``."""
    s = np.asarray(similarity, np.float64)
    if s.size == 0:
        return []
    rows, cols = linear_sum_assignment(s, maximize=True)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if s[i, j] >= threshold]


def link_tracks(
    similarities: Sequence[np.ndarray | None], counts: Sequence[int], threshold: float
) -> list[np.ndarray]:
    """Track ids for one video.

    Args:
      similarities: per frame t, ``[counts[t - 1], counts[t]]`` similarities between the
        people of t − 1 and those of t (entry 0 is ignored).
      counts: people per frame.
      threshold: the least similarity of a link.

    Returns:
      Per frame, int64 ``[counts[t]]`` track ids: a linked person keeps the id of its match
      on t − 1, every other person gets the next new id (0, 1, 2, ... in order of appearance).
    """
    if len(similarities) != len(counts):
        raise ValueError(f"{len(similarities)} similarity matrices for {len(counts)} frames")
    out: list[np.ndarray] = []
    next_id = 0
    for t, n in enumerate(counts):
        ids = np.full(int(n), -1, np.int64)
        if t > 0 and n and counts[t - 1]:
            s = np.asarray(similarities[t], np.float64)
            if s.shape != (counts[t - 1], n):
                raise ValueError(
                    f"frame {t}: similarity of shape {s.shape}, expected ({counts[t - 1]}, {n})"
                )
            for i, j in assign(s, threshold):
                ids[j] = out[t - 1][i]
        for j in np.flatnonzero(ids < 0):
            ids[j] = next_id
            next_id += 1
        out.append(ids)
    return out


def pose_arrays(
    people: Sequence[Person], min_score: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xy ``[N, J, 2]``, present ``[N, J]`` (labeled and scoring at least ``min_score``),
    boxes ``[N, 4]``) of a frame's people."""
    if not people:
        return np.zeros((0, 17, 2)), np.zeros((0, 17), bool), np.zeros((0, 4))
    kp = np.stack([np.asarray(p.keypoints, np.float64) for p in people])
    scores = np.stack(
        [
            (np.asarray(p.keypoints)[:, 2] > 0).astype(np.float64)
            if p.keypoint_scores is None
            else np.asarray(p.keypoint_scores, np.float64)
            for p in people
        ]
    )
    has = (kp[:, :, 2] > 0) & (scores >= min_score)
    boxes = np.stack([np.asarray(p.bbox, np.float64) for p in people])
    return kp[:, :, :2], has, boxes


SimilarityFn = Callable[[int, int], np.ndarray]


def track_dataset(pred: VideoDataset, similarity: SimilarityFn, threshold: float) -> VideoDataset:
    """``pred`` with track ids from ``link_tracks``; ``similarity(video, t)`` gives the
    ``[people on t − 1, people on t]`` matrix of frame t of video ``video``."""
    videos = []
    for vi, video in enumerate(pred.videos):
        counts = [len(f.people) for f in video.frames]
        sims = [None] + [
            similarity(vi, t) if counts[t] and counts[t - 1] else None
            for t in range(1, video.nframes)
        ]
        ids = link_tracks(sims, counts, threshold)
        frames = [
            dataclasses.replace(
                f,
                people=[dataclasses.replace(p, track_id=int(k)) for p, k in zip(f.people, ids[t])],
            )
            for t, f in enumerate(video.frames)
        ]
        videos.append(dataclasses.replace(video, frames=frames))
    return dataclasses.replace(pred, videos=videos)

"""Scores broken down by the conditions a synthetic video was rendered under.

The synthetic generator records, per frame and joint, the hard conditions of PoseTrack's
videos (``data.synthetic.load_sidecar``'s ``cond_*`` arrays). ``condition_views`` scores one
method's predictions on each subset:

* Frame subsets (``FRAME_SUBSETS``): ``blurred`` (long-exposure frames) / ``sharp``,
  ``defocused`` / ``in_focus``. The ground truth of the other frames is removed (those frames
  are then not scored, as ``score_views.frames_at_distance`` does), and poseval's mAP
  (``posetrack_map``) and PCKh@0.5 (``score_views.pckh``) are computed on what is left.
* Joint subsets (``JOINT_SUBSETS``), PCKh@0.5 only (an mAP over part of the ground-truth
  joints would count every other predicted joint as a false positive). Every scored frame
  keeps poseval's pairing of predictions with ground-truth people, made on all their joints
  (``posetrack_map.frame_assignment``); the hits and the ground-truth joints are then counted
  over the subset only. The subsets: the joint's image speed in head sizes per frame, in the
  bins ``SPEED_BINS`` (edges fixed before any method was scored: below 0.05 a joint barely
  moves, 0.15 is about the median at 25 fps, from 0.4 on a joint leaves a PCKh@0.5 circle
  within two frames); ``visible_clear`` (a labeled joint not hidden by another person or an
  object in any frame within ``OCCLUSION_WINDOW`` frames) and ``visible_near_occlusion``
  (hidden by one in some frame within that window: it has just reappeared or is about to
  vanish).
* Hidden joints (``HIDDEN_SUBSETS``): joints of annotated people that another person
  (``hidden_by_person``) or an object (``hidden_by_object``) hides, which the ground truth
  does not label (unless the data set was generated with ``label_occluded``). Their PCKh@0.5
  against the position the renderer knows (the sidecar's ``joints_2d``), over the prediction
  paired with the person (joints a prediction lacks are misses). Without ``label_occluded``
  poseval never scores these; the figure says how well a method places a joint it cannot
  see.

Every subset records how many frames and ground-truth joints it holds, so that a figure from
a handful of joints is seen as such.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posewarper_jax.data.types import VideoDataset
from posewarper_jax.eval import score_views
from posewarper_jax.eval.posetrack_map import (
    NUM_POSEVAL_JOINTS,
    POSEVAL_SLOTS,
    _check_modes,
    _frame_arrays,
    _head_size,
    _paired_videos,
    frame_assignment,
    posetrack_map,
    summarize,
)
from posewarper_jax.eval.score_views import pckh

__all__ = [
    "FRAME_SUBSETS",
    "HIDDEN_SUBSETS",
    "JOINT_SUBSETS",
    "OCCLUSION_WINDOW",
    "SPEED_BINS",
    "SUBSETS",
    "VideoConditions",
    "condition_views",
    "joint_masks",
    "load_conditions",
    "speed_bin_names",
]

# Image speed bins, head sizes per frame: [0, 0.05), [0.05, 0.15), [0.15, 0.4), [0.4, inf).
SPEED_BINS: tuple[float, ...] = (0.05, 0.15, 0.4)
OCCLUSION_WINDOW = 3  # frames either side
# scene.OCCLUSION_CODES: what hides a joint.
_VISIBLE, _PERSON, _OBJECT = 0, 2, 3


def speed_bin_names(edges: Sequence[float] = SPEED_BINS) -> tuple[str, ...]:
    """``speed <0.05``, ``speed 0.05-0.15``, ... ``speed >=0.4`` for the bin edges."""
    e = [f"{x:g}" for x in edges]
    return (f"speed <{e[0]}", *(f"speed {a}-{b}" for a, b in zip(e, e[1:])), f"speed >={e[-1]}")


FRAME_SUBSETS: tuple[str, ...] = ("sharp", "blurred", "in_focus", "defocused")
JOINT_SUBSETS: tuple[str, ...] = (
    *speed_bin_names(),
    "visible_clear",
    "visible_near_occlusion",
)
HIDDEN_SUBSETS: tuple[str, ...] = ("hidden_by_person", "hidden_by_object")
SUBSETS: tuple[str, ...] = FRAME_SUBSETS + JOINT_SUBSETS + HIDDEN_SUBSETS


@dataclasses.dataclass(frozen=True)
class VideoConditions:
    """One video's condition records (T frames, P people by track id, 17 joints).

    speed: float [T, P, 17] head sizes per frame (NaN: unknown); occlusion: int [T, P, 17]
    (``scene.OCCLUSION_CODES``); blurred, defocused: bool [T]; joints_2d: float [T, P, 17, 2]
    every joint's true pixel position.
    """

    speed: np.ndarray
    occlusion: np.ndarray
    blurred: np.ndarray
    defocused: np.ndarray
    joints_2d: np.ndarray

    @classmethod
    def from_sidecar(cls, side: Mapping[str, np.ndarray]) -> VideoConditions:
        return cls(
            speed=np.asarray(side["cond_speed"], np.float64),
            occlusion=np.asarray(side["cond_occlusion"], np.int64),
            blurred=np.asarray(side["cond_blurred"], bool),
            defocused=np.asarray(side["cond_defocus"]) > 0,
            joints_2d=np.asarray(side["joints_2d"], np.float64),
        )


def load_conditions(root: str, split: str, videos: VideoDataset) -> dict[str, VideoConditions]:
    """The condition records of ``videos`` from the synthetic data set at ``root`` (split
    ``split``), by video name; empty when ``root`` is not such a data set or any of the
    videos has no records (other data, or an older generator)."""
    from posewarper_jax.data.synthetic.dataset import load_sidecar

    out = {}
    for video in videos.videos:
        try:
            side = load_sidecar(root, split, video.name)
        except (FileNotFoundError, OSError, ValueError):
            return {}
        if "cond_speed" not in side:
            return {}
        out[video.name] = VideoConditions.from_sidecar(side)
    return out


def _near_occlusion(occlusion: np.ndarray, window: int) -> np.ndarray:
    """bool [T, P, 17]: hidden by a person or an object in some frame within ``window``."""
    hidden = np.isin(occlusion, (_PERSON, _OBJECT))
    T = hidden.shape[0]
    out = np.zeros_like(hidden)
    for d in range(-window, window + 1):
        lo, hi = max(0, -d), min(T, T - d)
        if hi > lo:
            out[lo:hi] |= hidden[lo + d : hi + d]
    return out


def joint_masks(
    cond: VideoConditions, edges: Sequence[float] = SPEED_BINS, window: int = OCCLUSION_WINDOW
) -> dict[str, np.ndarray]:
    """Subset name -> bool [T, P, 17] for ``JOINT_SUBSETS`` and ``HIDDEN_SUBSETS`` (joint
    subsets apply to labeled ground-truth joints, hidden ones to unlabeled ones)."""
    speed = cond.speed
    known = np.isfinite(speed)
    bounds = [0.0, *edges, np.inf]
    masks = {}
    for name, lo, hi in zip(speed_bin_names(edges), bounds, bounds[1:]):
        masks[name] = known & (speed >= lo) & (speed < hi)
    near = _near_occlusion(cond.occlusion, window)
    masks["visible_clear"] = ~near
    masks["visible_near_occlusion"] = near
    masks["hidden_by_person"] = cond.occlusion == _PERSON
    masks["hidden_by_object"] = cond.occlusion == _OBJECT
    return masks


def _frames_where(gt: VideoDataset, keep: Mapping[str, np.ndarray]) -> VideoDataset:
    """``gt`` with the people of every frame where ``keep[video][index]`` is False removed."""
    return score_views.frames_where(gt, lambda name, index: bool(keep[name][index]))


def _count(gt: VideoDataset) -> tuple[int, int]:
    frames = joints = 0
    for video in gt.videos:
        for f in video.frames:
            if f.people:
                frames += 1
                joints += sum(
                    int((np.asarray(p.keypoints)[POSEVAL_SLOTS, 2] > 0).sum()) for p in f.people
                )
    return frames, joints


def _joint_counts(
    gt: VideoDataset,
    pred: VideoDataset,
    conditions: Mapping[str, VideoConditions],
    *,
    neck: str,
    dist_thresh: float = 0.5,
) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Subset -> (hits [15], ground-truth joints [15], frames) for the joint and hidden
    subsets (module docstring)."""
    names = JOINT_SUBSETS + HIDDEN_SUBSETS
    k = NUM_POSEVAL_JOINTS
    hits = {n: np.zeros(k, np.int64) for n in names}
    total = {n: np.zeros(k, np.int64) for n in names}
    frames = dict.fromkeys(names, 0)
    kw = dict(neck=neck, missing_scores="min_score")
    for video, pvideo in _paired_videos(gt, pred):
        cond = conditions[video.name]
        masks = joint_masks(cond)
        for frame, pframe in zip(video.frames, pvideo.frames):
            if not frame.people:
                continue
            where = f"video {video.name!r} frame {frame.index}"
            g_xy, g_has, _ = _frame_arrays(frame.people, frame, False, where, **kw)
            p_xy, p_has, _ = _frame_arrays(pframe.people, frame, True, where, **kw)
            heads = np.array([_head_size(p) if p.head_bbox is not None else np.nan
                              for p in frame.people])  # fmt: skip
            assigned, labels = frame_assignment(g_xy, g_has, heads, p_xy, p_has, dist_thresh)
            paired = {int(g): p for p, g in enumerate(assigned) if g >= 0}
            seen = set()
            for g, person in enumerate(frame.people):
                tid = int(person.track_id)
                if not 0 <= tid < cond.speed.shape[1]:
                    raise ValueError(f"{where}: track id {tid} has no condition record")
                p = paired.get(g)
                for name in names:
                    m = masks[name][frame.index, tid][POSEVAL_SLOTS]
                    if name in HIDDEN_SUBSETS:
                        m = m & ~g_has[g]
                        if not m.any():
                            continue
                        true_xy = cond.joints_2d[frame.index, tid][POSEVAL_SLOTS]
                        hit = np.zeros(k, bool)
                        if p is not None and heads[g] > 0:
                            d = np.linalg.norm(p_xy[p] - true_xy, axis=-1) / heads[g]
                            hit = p_has[p] & (d <= dist_thresh)
                    else:
                        m = m & g_has[g]
                        if not m.any():
                            continue
                        hit = labels[p] if p is not None else np.zeros(k, bool)
                    total[name] += m
                    hits[name] += m & hit
                    seen.add(name)
            for name in seen:
                frames[name] += 1
    return {n: (hits[n], total[n], frames[n]) for n in names}


def _pckh_table(hits: np.ndarray, total: np.ndarray) -> dict[str, float]:
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(total > 0, 100.0 * hits / np.maximum(total, 1), np.nan)
    valid = value[~np.isnan(value)]
    return summarize(value.tolist(), float(valid.mean()) if len(valid) else float("nan"))


def condition_views(
    gt: VideoDataset,
    pred: VideoDataset,
    conditions: Mapping[str, VideoConditions],
    *,
    neck: str = "head_bottom",
) -> dict[str, dict[str, Any]]:
    """Scores of ``pred`` on each condition subset (module docstring).

    Args:
      gt, pred: as for ``posetrack_map.posetrack_map`` (e.g. the held-back ground truth and a
        propagation method's predictions); ground-truth people carry the track ids of the
        condition records (the synthetic data's person index).
      conditions: video name -> ``VideoConditions`` for every video of ``gt``.

    Returns:
      ``{subset: {"map": T or None, "pckh": T, "frames": n, "gt_joints": n}}`` for each of
      ``SUBSETS`` with ground truth, T a table of ``posetrack_map.COLUMNS`` in percent;
      ``"map"`` only for the frame subsets (None for the others).
    """
    _check_modes(neck, "min_score")
    missing = [v.name for v in gt.videos if v.name not in conditions]
    if missing:
        raise ValueError(f"no condition records for video(s) {missing[:5]}")
    out: dict[str, dict[str, Any]] = {}
    frame_keep = {
        "sharp": {n: ~c.blurred for n, c in conditions.items()},
        "blurred": {n: c.blurred for n, c in conditions.items()},
        "in_focus": {n: ~c.defocused for n, c in conditions.items()},
        "defocused": {n: c.defocused for n, c in conditions.items()},
    }
    for name in FRAME_SUBSETS:
        sub = _frames_where(gt, frame_keep[name])
        n_frames, n_joints = _count(sub)
        if not n_frames:
            continue
        out[name] = {
            "map": posetrack_map(sub, pred, neck=neck),
            "pckh": pckh(sub, pred, neck=neck),
            "frames": n_frames,
            "gt_joints": n_joints,
        }
    for name, (hits, total, n_frames) in _joint_counts(gt, pred, conditions, neck=neck).items():
        if not total.sum():
            continue
        out[name] = {
            "map": None,
            "pckh": _pckh_table(hits, total),
            "frames": int(n_frames),
            "gt_joints": int(total.sum()),
        }
    return out

"""Data augmentation with PoseWarper: pseudo labels on the neighbours of labeled frames.

The sparse ground truth of each labeled frame t is propagated (``apps.propagation``, ψ = f_B −
f_A, A's Gaussian maps warped onto B) to the unlabeled frames t + δ for the offsets δ in
``deltas`` (default ±1, ±2, ±3). Joints whose warped-heatmap maximum exceeds
``min_confidence`` (0.2) become labels; the others stay unlabeled. The result is the sparse
training set itself with the pseudo-labeled frames added as labeled frames, ready for the
trainer: ``training.run_stage(stage=1, dataset=augmented, ...)`` retrains HRNet on real plus
pseudo labels (this module only builds the data set).

Rules:

* Real labels take precedence: a labeled frame is never a target, so it is never changed.
* A frame reached from several labeled frames takes the nearest one (|δ| smallest; on a tie
  the earlier frame), as in ``propagation.plan_propagation``.
* Without ``boxes`` each person of the source frame A is cropped on B with A's box (the
  crop stage 2 trained the warping head with) and keeps that box as its ``bbox``; with
  ``boxes`` (people of the target frames with track ids) B's box of the same track is used.
* A pseudo person keeps its track id, ``keypoint_scores`` holds the confidences (real
  labels have None there) and ``annotation_id`` is -1. A person with no joint above the
  threshold is dropped; a frame left without people stays unlabeled.
* ``extra["pseudo_frames"]`` maps each video name to the sorted indices of its pseudo-labeled
  frames; ``extra["pseudo_labels"]`` holds the settings and counts (frames, people, joints).

Coordinates: image pixels, pixel centres at integers, x right, y down.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jax.sharding import Mesh

from posewarper_jax.apps.propagation import (
    PropagationPlan,
    nearest_deltas,
    plan_person,
    plan_propagation,
    propagate_plan,
)
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.data.types import NUM_JOINTS, Frame, Video, VideoDataset

__all__ = ["DEFAULT_DELTAS", "MIN_CONFIDENCE", "add_pseudo_labels", "pseudo_labels"]

DEFAULT_DELTAS: tuple[int, ...] = nearest_deltas(3)  # ±1, ±2, ±3
MIN_CONFIDENCE = 0.2


def _copy_frame(frame: Frame) -> Frame:
    people = [
        dataclasses.replace(
            p,
            keypoints=None if p.keypoints is None else np.array(p.keypoints, copy=True),
            bbox=np.array(p.bbox, copy=True),
            head_bbox=None if p.head_bbox is None else np.array(p.head_bbox, copy=True),
            keypoint_scores=None
            if p.keypoint_scores is None
            else np.array(p.keypoint_scores, copy=True),
        )
        for p in frame.people
    ]
    regions = [r.copy() for r in frame.ignore_regions]
    return Frame(frame.path, frame.index, frame.image_id, frame.is_labeled, people, regions)


def add_pseudo_labels(
    sparse_train: VideoDataset,
    plan: PropagationPlan,
    xy: np.ndarray,
    scores: np.ndarray,
    *,
    min_confidence: float = MIN_CONFIDENCE,
    settings: Mapping[str, Any] | None = None,
) -> VideoDataset:
    """``sparse_train`` (copied) plus pseudo-labeled people from propagated joints.

    Args:
      sparse_train: the sparsely labeled training set the plan was made for.
      plan: the propagation plan (targets are unlabeled frames only).
      xy: ``[N, J, 2]`` propagated joints (image pixels) per plan row.
      scores: ``[N, J]`` their confidences (0 where the source lacks the joint).
      min_confidence: joints with a score strictly above it are kept.
      settings: recorded in ``extra["pseudo_labels"]`` beside the counts.

    Returns:
      The augmented ``VideoDataset`` (module docstring).
    """
    if plan.video_names != [v.name for v in sparse_train.videos]:
        raise ValueError("the plan was made for other videos than sparse_train's")
    if not np.isfinite(min_confidence):
        raise ValueError(f"min_confidence must be a finite number, got {min_confidence!r}")
    n = len(plan)
    xy = np.asarray(xy, np.float32).reshape(n, NUM_JOINTS, 2)
    scores = np.asarray(scores, np.float32).reshape(n, NUM_JOINTS)
    videos = [
        Video(v.name, [_copy_frame(f) for f in v.frames], v.source, dict(v.extra))
        for v in sparse_train.videos
    ]
    pseudo: dict[str, set[int]] = {}
    num_people = num_joints = 0
    for r in range(n):
        v, f = int(plan.video[r]), int(plan.frame[r])
        if sparse_train.videos[v].frames[f].is_labeled:
            raise ValueError(
                f"plan row {r}: frame {f} of video {videos[v].name!r} is labeled; real labels "
                "are never replaced"
            )
        frame = videos[v].frames[f]
        keep = scores[r] > min_confidence
        if not keep.any():
            continue
        # A pseudo person: the plan row with its kept joints (``annotation_id`` stays -1).
        frame.people.append(plan_person(plan, r, xy[r], keep, scores[r]))
        frame.is_labeled = True
        pseudo.setdefault(videos[v].name, set()).add(f)
        num_people += 1
        num_joints += int(keep.sum())
    extra = dict(sparse_train.extra)
    extra["pseudo_frames"] = {name: sorted(frames) for name, frames in pseudo.items()}
    extra["pseudo_labels"] = {
        **dict(settings or {}),
        "min_confidence": float(min_confidence),
        "num_frames": sum(len(f) for f in pseudo.values()),
        "num_people": num_people,
        "num_joints": num_joints,
        "num_real_frames": sum(1 for _ in sparse_train.labeled_frames()),
    }
    return VideoDataset(videos, sparse_train.fmt, sparse_train.root, extra)


def pseudo_labels(
    model,
    variables: Mapping[str, Any],
    sparse_train: VideoDataset,
    *,
    deltas: Sequence[int] = DEFAULT_DELTAS,
    min_confidence: float = MIN_CONFIDENCE,
    pipe_cfg: pipeline_lib.PipelineConfig,
    mesh: Mesh | None = None,
    boxes: VideoDataset | None = None,
    flip_test: bool = False,
    decoding: str = "quarter",
) -> VideoDataset:
    """Propagates the sparse ground truth to the frames ``t + δ`` of each labeled frame t and
    returns ``sparse_train`` augmented with the confident pseudo labels (module docstring).

    Args:
      model: a trained ``PoseWarper``; variables: its ``{"params", "batch_stats"}``.
      sparse_train: the sparsely labeled training videos.
      deltas: offsets δ = B − A of the frames to label, non-zero and distinct.
      min_confidence: keep joints whose warped-heatmap maximum is above this.
      pipe_cfg: crop size, heatmap stride, σ, box padding, batch size (a multiple of the
        mesh's ``data`` axis size).
      mesh: a mesh with a ``data`` axis (default: all devices).
      boxes: people of the target frames with track ids; None crops B with A's boxes.
      flip_test: average with the mirrored pair's result.
      decoding: the decoding of the warped maps ("quarter" or "dark", ``propagate_plan``).

    Returns:
      The augmented ``VideoDataset``; ``extra["pseudo_frames"]`` lists the pseudo frames.
    """
    deltas = tuple(int(d) for d in deltas)
    plan = plan_propagation(sparse_train, boxes=boxes, deltas=deltas)
    res = propagate_plan(
        model, variables, sparse_train, plan, pipe_cfg=pipe_cfg, mesh=mesh, flip_test=flip_test,
        decoding=decoding,
    )  # fmt: skip
    scores = np.where(res.done[:, None], res.scores, 0.0)
    settings = {"deltas": list(deltas), "boxes": "given" if boxes is not None else "source"}
    return add_pseudo_labels(
        sparse_train, plan, res.xy, scores, min_confidence=min_confidence, settings=settings
    )

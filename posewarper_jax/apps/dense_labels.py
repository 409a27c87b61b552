"""Dense labels for one's own video: sparse labels propagated to every frame within reach.

The propagation is the main job's (``apps.propagation``): the same plan rules (each unlabeled
frame B takes the labels of its nearest labeled frame A within ``reach``, ties to the earlier
frame; with ``blend`` also the nearest labeled frame on B's other side, weighted 1/|δ|), the
same pair batches and the same ``propagation.propagate_labels`` call. What this module adds
is where the crop box of each person on B comes from (``boxes``):

* ``"carry"`` (default, no detector): the box travels with the pose. On frames next to a
  labeled frame (|δ| = 1) it is the labeled person's box; on a frame B at |δ| = d > 1 it is
  A's box moved by the motion of the pose propagated to the frame before B (the neighbour of
  B towards A, at |δ| = d − 1): the median, over the joints labeled in A and propagated there
  with a score of at least ``min_box_score``, of (propagated joint − A's joint)
  (``carry_box``). With fewer than ``min_box_joints`` such joints the neighbour's own box is
  kept. Frames are therefore propagated in rounds d = 1, 2, ..., ``reach``; no box ever comes
  from a ground truth of B.
* ``"source"``: A's box on every frame (the crop the warping head was trained with: stage 2
  cuts both frames of a pair with A's box).
* a ``VideoDataset``: the people (boxes with track ids) of every target frame, e.g. the full
  ground truth: the main job's setting, where B's own box crops the pair.

Track ids are the labels' (``data.user_labels``). ``dense_dataset`` joins the labels and the
propagated poses (labeled joints score 1), ``frame_confidence`` gives a per-frame confidence
(mean joint score of the frame's people) and ``relabel_candidates`` the frames worth labeling
next: frames no label reaches, frames where a track of the nearest labeled frame is lost, and
frames whose confidence is below a threshold, lowest first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from jax.sharding import Mesh

from posewarper_jax.apps import propagation
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset

__all__ = [
    "BOX_MODES",
    "carry_box",
    "dense_dataset",
    "frame_confidence",
    "nearest_sources",
    "propagate_video",
    "relabel_candidates",
]

BOX_MODES = ("carry", "source")


def carry_box(
    source_box: np.ndarray,
    source_keypoints: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray,
    *,
    min_score: float = 0.2,
    min_joints: int = 3,
) -> np.ndarray | None:
    """A's box moved by the median motion of the pose (None: too few reliable joints).

    Args:
      source_box: float ``[4]`` (x, y, w, h) of the person on the labeled frame A.
      source_keypoints: ``[J, 3]`` A's labels (x, y, v; v > 0 labeled).
      keypoints: ``[J, 3]`` the pose propagated to a later (or earlier) frame.
      scores: ``[J]`` its joint scores.
      min_score, min_joints: joints used must score at least ``min_score`` and be labeled on
        both; fewer than ``min_joints`` of them gives None.

    Returns:
      float32 ``[4]``: ``source_box`` translated by the median over those joints of
      (propagated − labeled) position, its size unchanged.
    """
    src = np.asarray(source_keypoints, np.float64).reshape(-1, 3)
    kp = np.asarray(keypoints, np.float64).reshape(-1, 3)
    sc = np.asarray(scores, np.float64).reshape(-1)
    use = (src[:, 2] > 0) & (kp[:, 2] > 0) & (sc >= min_score)
    if int(use.sum()) < max(1, int(min_joints)):
        return None
    shift = np.median(kp[use, :2] - src[use, :2], axis=0)
    box = np.asarray(source_box, np.float64).reshape(4).copy()
    box[:2] += shift
    return box.astype(np.float32)


def nearest_sources(video: Video, reach: int) -> dict[int, int]:
    """Unlabeled frame B -> its nearest labeled frame A within ``reach`` (the plan's rule:
    the earlier frame on a tie)."""
    labeled = {f.index for f in video.frames if f.is_labeled}
    out = {}
    for frame in video.frames:
        if frame.is_labeled:
            continue
        for d in range(1, reach + 1):
            if frame.index - d in labeled:
                out[frame.index] = frame.index - d
                break
            if frame.index + d in labeled:
                out[frame.index] = frame.index + d
                break
    return out


def _empty_like(dataset: VideoDataset) -> VideoDataset:
    videos = [
        Video(
            v.name,
            [Frame(f.path, f.index, f.image_id, f.is_labeled, []) for f in v.frames],
            v.source,
            dict(v.extra),
        )
        for v in dataset.videos
    ]
    return VideoDataset(videos, dataset.fmt, dataset.root, dict(dataset.extra))


def _tracks(frame: Frame) -> dict[int, Person]:
    return {p.track_id: p for p in frame.people if p.track_id >= 0 and np.any(p.keypoints[:, 2])}


def _merge(into: VideoDataset, part: VideoDataset) -> None:
    for video, pvideo in zip(into.videos, part.videos):
        for frame, pframe in zip(video.frames, pvideo.frames):
            if pframe.people:
                frame.people.extend(pframe.people)
                frame.is_labeled = True


def propagate_video(
    model,
    variables: Mapping[str, Any],
    labeled: VideoDataset,
    *,
    pipe_cfg: pipeline_lib.PipelineConfig,
    reach: int = propagation.DEFAULT_REACH,
    blend: bool = True,
    boxes: str | VideoDataset = "carry",
    flip_test: bool = False,
    mesh: Mesh | None = None,
    min_box_score: float = 0.2,
    min_box_joints: int = 3,
    decoding: str = "quarter",
    path: str = "direct",
) -> VideoDataset:
    """The labels of ``labeled`` propagated to every unlabeled frame within ``reach``.

    Args:
      model, variables: a trained ``PoseWarper`` (stage 2).
      labeled: the videos with their labeled frames (``is_labeled``, people with track ids).
      pipe_cfg: the evaluation pipeline settings (``TrainedModel.pipeline_config()``).
      reach: largest |δ| between a frame and its labeled source.
      blend: also warp the nearest labeled frame on the other side and blend (1/|δ|).
      boxes: "carry", "source" or a ``VideoDataset`` of target boxes (module docstring).
      flip_test: average with the mirrored pair (``inference.flip_batch``).
      min_box_score, min_box_joints: ``carry_box``'s thresholds.
      decoding: "quarter" or "dark", the warped maps' decoding.
      path: "direct" or "chained" (``propagation.PATHS``; the steps of a chain are cut with
        the target frame's crop box).

    Returns:
      Predictions shaped like ``labeled`` (``propagation.predictions_from_plan``): the
      propagated people of every reached frame (keypoints in image pixels, joint score =
      warped heatmap maximum, the track id, ``bbox`` = the crop box); labeled frames have no
      people here (``dense_dataset`` adds the labels).
    """
    run = dict(pipe_cfg=pipe_cfg, mesh=mesh, flip_test=flip_test, decoding=decoding, path=path)
    if isinstance(boxes, VideoDataset) or boxes == "source":
        target = boxes if isinstance(boxes, VideoDataset) else None
        plan = propagation.plan_propagation(labeled, boxes=target, reach=reach, blend=blend)
        return propagation.propagate_labels(model, variables, labeled, plan=plan, **run)
    if boxes != "carry":
        raise ValueError(f"boxes must be one of {BOX_MODES} or a VideoDataset, got {boxes!r}")
    propagation.nearest_deltas(reach)  # validates reach
    out = _empty_like(labeled)
    sources = [nearest_sources(v, reach) for v in labeled.videos]
    for d in range(1, reach + 1):
        target = _empty_like(labeled)
        any_box = False
        for vi, video in enumerate(labeled.videos):
            for b, a in sources[vi].items():
                if abs(b - a) != d:
                    continue
                step = 1 if b > a else -1
                before = {p.track_id: p for p in out.videos[vi].frames[b - step].people}
                for track, person in _tracks(video.frames[a]).items():
                    box = person.bbox
                    if d > 1:
                        prev = before.get(track)
                        if prev is None:
                            continue  # the track was lost on the way
                        box = carry_box(
                            person.bbox,
                            person.keypoints,
                            prev.keypoints,
                            prev.keypoint_scores,
                            min_score=min_box_score,
                            min_joints=min_box_joints,
                        )
                        box = prev.bbox if box is None else box
                    target.videos[vi].frames[b].people.append(
                        Person(
                            keypoints=np.zeros((NUM_JOINTS, 3), np.float32),
                            bbox=np.asarray(box, np.float32),
                            track_id=track,
                        )
                    )
                    any_box = True
        if not any_box:
            continue
        plan = propagation.plan_propagation(labeled, boxes=target, reach=reach, blend=blend)
        _merge(out, propagation.propagate_labels(model, variables, labeled, plan=plan, **run))
    return out


def dense_dataset(labeled: VideoDataset, predicted: VideoDataset) -> VideoDataset:
    """The labels on labeled frames (joint score 1 where labeled, person score 1) and the
    predictions elsewhere; every frame with someone on it has ``is_labeled`` True."""
    out = _empty_like(labeled)
    for video, lvideo, pvideo in zip(out.videos, labeled.videos, predicted.videos):
        for frame, lframe, pframe in zip(video.frames, lvideo.frames, pvideo.frames):
            if lframe.is_labeled:
                frame.people = [
                    dataclasses.replace(
                        p,
                        keypoint_scores=(p.keypoints[:, 2] > 0).astype(np.float32),
                        score=1.0,
                    )
                    for p in lframe.people
                ]
            else:
                frame.people = list(pframe.people)
            frame.is_labeled = bool(frame.people)
    return out


def frame_confidence(video: Video) -> list[float]:
    """Per frame: the mean over its people of the mean score of their labeled joints (NaN
    for a frame without anyone)."""
    out = []
    for frame in video.frames:
        values = []
        for p in frame.people:
            has = p.keypoints[:, 2] > 0
            if has.any() and p.keypoint_scores is not None:
                values.append(float(np.mean(np.asarray(p.keypoint_scores)[has])))
        out.append(float(np.mean(values)) if values else math.nan)
    return out


def relabel_candidates(
    labeled: Video, dense: Video, reach: int, threshold: float
) -> list[dict[str, Any]]:
    """Frames worth labeling next, lowest confidence first.

    A frame is listed when no labeled frame is within ``reach`` (``"not reached"``), when a
    track of its nearest labeled frame has no pose on it (``"lost track"``), or when its
    confidence (``frame_confidence``) is below ``threshold`` (``"low confidence"``).
    Returns dicts ``{"frame", "confidence" (None: no pose), "people", "reasons"}``.
    """
    conf = frame_confidence(dense)
    near = nearest_sources(labeled, reach)
    rows = []
    for frame in labeled.frames:
        if frame.is_labeled:
            continue
        t = frame.index
        reasons = []
        present = {p.track_id for p in dense.frames[t].people}
        if t not in near:
            reasons.append("not reached")
        else:
            lost = sorted(set(_tracks(labeled.frames[near[t]])) - present)
            if lost:
                reasons.append(f"lost track {lost}")
        c = conf[t]
        if not math.isnan(c) and c < threshold:
            reasons.append("low confidence")
        if reasons:
            rows.append(
                {
                    "frame": t,
                    "confidence": None if math.isnan(c) else round(c, 4),
                    "people": len(dense.frames[t].people),
                    "reasons": reasons,
                }
            )
    rows.sort(key=lambda r: (-1.0 if r["confidence"] is None else r["confidence"], r["frame"]))
    return rows

"""Detect and track: poses on every frame from person boxes, then track ids.

No labels at test time. Given person boxes on every frame (ground truth or a detector's, as
``data.detections`` reads them), ``detect_poses`` predicts each person's pose with the
single-frame HRNet (``poses="hrnet"``) or PoseWarper's temporal aggregation
(``poses="aggregation"``), as the main job's detection does (``apps.detection``; OKS NMS for
detected boxes), and ``track`` gives the people track ids with one of two trackers
(``apps.tracker``):

* ``"posewarper"``: each person of frame t − 1 is carried to frame t by the warping head
  (``warp_previous_poses``: its predicted joints scoring at least ``min_score`` rendered as
  heatmaps in its box on t − 1, warped onto frame t with the main job's propagation,
  ``propagation.propagate_plan``), and the people of t are matched to these moved poses: the
  similarity is the mean of their OKS (the scale: the area of each box on t) and the IoU of
  the box of t − 1 moved by the same motion (the median joint motion, ``tracker.shift_boxes``)
  with each box of t; Hungarian assignment, links of similarity at least
  ``motion_threshold``. (OKS alone, measured on the validation videos, linked worse: a
  weak pose moves the OKS more than the box.)
* ``"iou"``: the people of t are matched to those of t − 1 by box IoU alone
  (``iou_threshold``): the baseline without a motion model.

Both trackers see the same poses and boxes; only the links differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from jax.sharding import Mesh

from posewarper_jax.apps import detection, propagation, tracker
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.data.types import NUM_JOINTS, VideoDataset, map_people

__all__ = [
    "JOB_TRACKERS",
    "POSE_METHODS",
    "TRACKERS",
    "clear_track_ids",
    "detect_poses",
    "job_tracking",
    "keep_confident_joints",
    "track",
    "warp_previous_poses",
]

POSE_METHODS = ("aggregation", "hrnet")
TRACKERS = ("posewarper", "iou")
MOTION_THRESHOLD = 0.3
IOU_THRESHOLD = 0.3
MIN_SCORE = 0.2  # joints the motion model carries and OKS compares
# Joints written with the tracks (poseval counts every written joint: a false positive where
# it is off). On the default run's validation videos MOTA was -3.7 keeping joints scoring
# 0.2 or more, 9.6 at 0.3, 17.6 at 0.4, 17.4 at 0.5 and 14.1 at 0.6.
KEEP_SCORE = 0.4


def detect_poses(
    model,
    variables: Mapping[str, Any],
    dataset: VideoDataset,
    pipe_cfg: pipeline_lib.PipelineConfig,
    *,
    boxes: pipeline_lib.BoxSource = "gt",
    poses: str = "aggregation",
    flip_test: bool = False,
    mesh: Mesh | None = None,
    decoding: str = "quarter",
) -> VideoDataset:
    """Poses of every box on every labeled frame of ``dataset`` (``apps.detection``), with
    their track ids cleared (-1): boxes taken from the ground truth carry its ids; the
    heatmaps decoded with ``decoding`` ("quarter" or "dark")."""
    if poses not in POSE_METHODS:
        raise ValueError(f"poses must be one of {POSE_METHODS}, got {poses!r}")
    fn = detection.detect_aggregated if poses == "aggregation" else detection.detect_single_frame
    pred = fn(
        model, variables, dataset, pipe_cfg, boxes=boxes, flip_test=flip_test, mesh=mesh,
        decoding=decoding,
    )  # fmt: skip
    return clear_track_ids(pred)


def clear_track_ids(pred: VideoDataset) -> VideoDataset:
    """A copy of ``pred`` whose people have no track id (-1)."""
    return map_people(pred, lambda p: dataclasses.replace(p, track_id=-1))


def _joint_scores(person) -> np.ndarray:
    if person.keypoint_scores is None:
        return (np.asarray(person.keypoints)[:, 2] > 0).astype(np.float32)
    return np.asarray(person.keypoint_scores, np.float32)


def warp_previous_poses(
    model,
    variables: Mapping[str, Any],
    pred: VideoDataset,
    pipe_cfg: pipeline_lib.PipelineConfig,
    *,
    min_score: float = MIN_SCORE,
    flip_test: bool = False,
    mesh: Mesh | None = None,
    decoding: str = "quarter",
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Every person of frame t − 1 carried to frame t by the warping head.

    One propagation plan holds a row per (frame t ≥ 1, person p of t − 1 with a joint scoring
    at least ``min_score``): source frame t − 1, the person's joints scoring at least
    ``min_score`` as the source labels, the person's box on t − 1 as the crop of both frames
    (as stage 2 trained). ``propagation.propagate_plan`` runs it (the warped maps decoded with
    ``decoding``).

    Returns:
      ``{(video, t): (xy [N, J, 2], present bool [N, J])}`` for the ``N`` people of frame
      ``t − 1`` in order (a person without a reliable joint: nothing present).
    """
    rows: dict[str, list] = {k: [] for k in ("video", "frame", "person", "box", "kpts")}
    for vi, video in enumerate(pred.videos):
        for t in range(1, video.nframes):
            for p, person in enumerate(video.frames[t - 1].people):
                kp = np.asarray(person.keypoints, np.float32).copy()
                keep = (kp[:, 2] > 0) & (_joint_scores(person) >= min_score)
                box = np.asarray(person.bbox, np.float32)
                if not keep.any() or not (box[2] > 0 and box[3] > 0):
                    continue
                kp[~keep] = 0.0
                kp[keep, 2] = 1.0
                rows["video"].append(vi)
                rows["frame"].append(t)
                rows["person"].append(p)
                rows["box"].append(box)
                rows["kpts"].append(kp)
    n = len(rows["video"])
    plan = propagation.PropagationPlan(
        video_names=[v.name for v in pred.videos],
        video=np.asarray(rows["video"], np.int32).reshape(n),
        frame=np.asarray(rows["frame"], np.int32).reshape(n),
        person=np.asarray(rows["person"], np.int32).reshape(n),
        track_id=np.full(n, -1, np.int32),
        box=np.asarray(rows["box"], np.float32).reshape(n, 4),
        source_frame=(np.asarray(rows["frame"], np.int32) - 1).reshape(n, 1),
        source_person=np.asarray(rows["person"], np.int32).reshape(n, 1),
        source_keypoints=np.asarray(rows["kpts"], np.float32).reshape(n, 1, NUM_JOINTS, 3),
        source_weight=np.ones((n, 1), np.float32),
    )
    res = propagation.propagate_plan(
        model, variables, pred, plan, pipe_cfg=pipe_cfg, mesh=mesh, flip_test=flip_test,
        decoding=decoding,
    )  # fmt: skip
    out: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for vi, video in enumerate(pred.videos):
        for t in range(1, video.nframes):
            k = len(video.frames[t - 1].people)
            out[(vi, t)] = (np.zeros((k, NUM_JOINTS, 2)), np.zeros((k, NUM_JOINTS), bool))
    for r in range(n):
        xy, has = out[(int(plan.video[r]), int(plan.frame[r]))]
        p = int(plan.person[r])
        xy[p] = res.xy[r]
        has[p] = res.present[r] & res.done[r]
    return out


def track(
    pred: VideoDataset,
    method: str = "posewarper",
    *,
    warped: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
    min_score: float = MIN_SCORE,
    motion_threshold: float = MOTION_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
) -> VideoDataset:
    """``pred`` with track ids from the ``"posewarper"`` (needs ``warped`` from
    ``warp_previous_poses``) or the ``"iou"`` tracker (module docstring)."""
    if method not in TRACKERS:
        raise ValueError(f"tracker must be one of {TRACKERS}, got {method!r}")
    if method == "iou":

        def iou(vi: int, t: int) -> np.ndarray:
            frames = pred.videos[vi].frames
            _, _, before = tracker.pose_arrays(frames[t - 1].people)
            _, _, now = tracker.pose_arrays(frames[t].people)
            return tracker.iou_matrix(before, now)

        return tracker.track_dataset(pred, iou, iou_threshold)
    if warped is None:
        raise ValueError("the posewarper tracker needs the warped poses (warp_previous_poses)")

    def motion(vi: int, t: int) -> np.ndarray:
        frames = pred.videos[vi].frames
        xy, has = warped[(vi, t)]
        now_xy, now_has, boxes = tracker.pose_arrays(frames[t].people, min_score)
        oks = tracker.oks_matrix(xy, has, now_xy, now_has, boxes[:, 2] * boxes[:, 3])
        before_xy, before_has, before = tracker.pose_arrays(frames[t - 1].people, min_score)
        moved = tracker.shift_boxes(before, before_xy, before_has, xy, has)
        return 0.5 * (oks + tracker.iou_matrix(moved, boxes))

    return tracker.track_dataset(pred, motion, motion_threshold)


def keep_confident_joints(pred: VideoDataset, min_score: float) -> VideoDataset:
    """A copy of ``pred`` whose joints scoring below ``min_score`` are unlabeled (how poses
    are written for tracking evaluation: poseval counts every written joint)."""

    def keep(p):
        kp = np.asarray(p.keypoints, np.float32).copy()
        kp[_joint_scores(p) < min_score] = 0.0
        return dataclasses.replace(p, keypoints=kp)

    return map_people(pred, keep)


JOB_TRACKERS = ("posewarper", "iou")


def job_tracking(
    model,
    variables: Mapping[str, Any],
    gt: VideoDataset,
    poses: VideoDataset,
    pipe_cfg: pipeline_lib.PipelineConfig,
    *,
    workdir: str,
    flip_test: bool = False,
    mesh: Mesh | None = None,
    min_score: float = MIN_SCORE,
    keep_score: float = KEEP_SCORE,
    timing: dict | None = None,
    log=print,
    decoding: str = "quarter",
) -> dict[str, dict[str, float]]:
    """The main job's tracking rows: ``poses`` (its detection predictions on the validation
    videos) tracked by each of ``JOB_TRACKERS``, joints scoring below ``keep_score`` left
    out, scored against ``gt`` with poseval's tracking metrics (``eval.tracking``).

    Each tracker's predictions go to ``WORKDIR/predictions/tracking/<tracker>/`` and its
    metrics to ``WORKDIR/eval/tracking_<tracker>.json``; a tracker whose metrics file exists
    is read back, not run again. ``decoding``: the warped maps' (``warp_previous_poses``).
    Returns ``{tracker: {"MOTA", "MOTP", "Prec", "Rec", "switches", "misses",
    "false_positives"}}`` (totals; percent, counts summed over joints).
    """
    import json
    import time

    import jax

    from posewarper_jax import fileio, storage
    from posewarper_jax.eval.predictions import write_poseval_predictions
    from posewarper_jax.eval.tracking import posetrack_tracking

    cleared = clear_track_ids(poses)
    warped = None
    out = {}
    for name in JOB_TRACKERS:
        path = storage.join(workdir, "eval", f"tracking_{name}.json")
        if storage.exists(path):
            out[name] = json.loads(storage.read_text(path))
            continue
        t = time.perf_counter()
        if name == "posewarper" and warped is None:
            warped = warp_previous_poses(
                model, variables, cleared, pipe_cfg, min_score=min_score, flip_test=flip_test,
                mesh=mesh, decoding=decoding,
            )  # fmt: skip
        tracked = track(cleared, name, warped=warped, min_score=min_score)
        tracked = keep_confident_joints(tracked, keep_score)
        mot = posetrack_tracking(gt, tracked)
        counts = mot["counts"]
        row = {
            "MOTA": mot["total"]["mota"],
            "MOTP": mot["total"]["motp"],
            "Prec": mot["total"]["precision"],
            "Rec": mot["total"]["recall"],
            "switches": int(sum(counts["num_switches"])),
            "misses": int(sum(counts["num_misses"])),
            "false_positives": int(sum(counts["num_false_positives"])),
        }
        out[name] = row
        if timing is not None:
            timing[f"tracking.{name}"] = time.perf_counter() - t
        if jax.process_index() == 0:
            write_poseval_predictions(
                tracked, gt, storage.join(workdir, "predictions", "tracking", name)
            )
            fileio.write_json(path, row)
        log(f"[tracking] {name}: MOTA {row['MOTA']:.1f} MOTP {row['MOTP']:.1f}")
    return out

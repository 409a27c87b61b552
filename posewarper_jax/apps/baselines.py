"""Baselines of the propagation experiment, on the same plan as ``propagate_labels``.

Each takes the same arguments that make the plan (``labeled``, ``boxes``, ``reach``; or a
ready ``plan``) and returns predictions for exactly the same (video, frame, track) people as
``propagation.propagate_labels(..., blend=False)`` (``propagation.plan_propagation`` explains
the nearest-frame rule, ties and track matching):

* ``copy_nearest``: B takes A's keypoints unchanged (joint score 1 where A has the joint).
* ``farneback``: A's joints are carried to B with OpenCV's Farneback optical flow on grey full
  frames, frame by frame (a chain of |δ| per-frame flows, each sampled bilinearly at the
  joint's current position). A joint that leaves the image (outside
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``) at any step is dropped. Joint score 1 where carried.
* ``hrnet_pseudo``: the stage-1 HRNet run on B alone, in the crop of B's box (single-frame
  pseudo labels, ``inference.single_frame_fn``); all joints predicted, joint score = heatmap
  maximum.

Person score 1 everywhere. Coordinates: image pixels, pixel centres at integers, x right,
y down.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from jax.sharding import Mesh

from posewarper_jax import storage
from posewarper_jax.apps.inference import predict, single_frame_fn
from posewarper_jax.apps.propagation import (
    DEFAULT_REACH,
    PropagationPlan,
    gather_rows,
    plan_propagation,
    predictions_from_plan,
)
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.data.types import NUM_JOINTS, Person, VideoDataset

__all__ = [
    "FarnebackParams",
    "carry_points",
    "copy_nearest",
    "farneback",
    "farneback_flow",
    "hrnet_pseudo",
    "sample_flow",
]


def _plan(labeled, plan, boxes, reach) -> PropagationPlan:
    if plan is None:
        return plan_propagation(labeled, boxes=boxes, reach=reach)
    return plan


# ----------------------------------------------------------------------------- copy


def copy_nearest(
    labeled: VideoDataset,
    *,
    boxes: VideoDataset | None = None,
    reach: int = DEFAULT_REACH,
    plan: PropagationPlan | None = None,
) -> VideoDataset:
    """Each planned person on B takes the keypoints of the same track in its nearest labeled
    frame A unchanged; joints unlabeled in A stay unlabeled. Joint scores 1 (labeled) / 0."""
    plan = _plan(labeled, plan, boxes, reach)
    kpts = plan.source_keypoints[:, 0]  # [N, J, 3]
    present = kpts[:, :, 2] > 0
    return predictions_from_plan(labeled, plan, kpts[:, :, :2], present, present.astype(float))


# ----------------------------------------------------------------------------- Farneback


@dataclasses.dataclass(frozen=True)
class FarnebackParams:
    """Arguments of ``cv2.calcOpticalFlowFarneback``.

    pyr_scale: each pyramid level is this much smaller (0.5: the classic image pyramid).
    levels: pyramid levels; 5 levels of 0.5 follow motions of up to a few tens of pixels,
      enough for people between consecutive frames of 720p video.
    winsize: averaging window (px); larger is more robust to noise, blurs motion boundaries.
    iterations: iterations per level.
    poly_n, poly_sigma: the pixel neighbourhood of the polynomial expansion and its Gaussian
      σ (OpenCV recommends 1.5 with poly_n = 7).
    gaussian_window: use a Gaussian instead of a box window (``OPTFLOW_FARNEBACK_GAUSSIAN``):
      slower, more accurate.
    """

    pyr_scale: float = 0.5
    levels: int = 5
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 7
    poly_sigma: float = 1.5
    gaussian_window: bool = True

    def __post_init__(self):
        if not 0.0 < self.pyr_scale < 1.0:
            raise ValueError(f"FarnebackParams.pyr_scale must be in (0, 1), got {self.pyr_scale}")
        for name in ("levels", "winsize", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"FarnebackParams.{name} must be >= 1, got {getattr(self, name)}")
        if self.poly_n not in (5, 7):
            raise ValueError(f"FarnebackParams.poly_n must be 5 or 7, got {self.poly_n}")


def farneback_flow(
    prev_grey: np.ndarray, next_grey: np.ndarray, params: FarnebackParams = FarnebackParams()
) -> np.ndarray:
    """Dense flow from ``prev_grey`` to ``next_grey`` (uint8 ``[H, W]`` each).

    Returns float32 ``[H, W, 2]`` (dx, dy): the content at pixel (x, y) of the first frame is
    at (x + dx, y + dy) in the second.
    """
    if prev_grey.shape != next_grey.shape or prev_grey.ndim != 2:
        raise ValueError(
            f"frames must be grey [H, W] of equal size, got {prev_grey.shape} and {next_grey.shape}"
        )
    flags = cv2.OPTFLOW_FARNEBACK_GAUSSIAN if params.gaussian_window else 0
    return cv2.calcOpticalFlowFarneback(
        prev_grey,
        next_grey,
        None,
        params.pyr_scale,
        params.levels,
        params.winsize,
        params.iterations,
        params.poly_n,
        params.poly_sigma,
        flags,
    )


def sample_flow(flow: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``flow`` ``[H, W, 2]`` at points ``xy`` ``[N, 2]`` (x, y).

    Pixel centres at integers; points are clamped to ``[0, W - 1] x [0, H - 1]``.
    Returns float64 ``[N, 2]``.
    """
    h, w = flow.shape[:2]
    x = np.clip(np.asarray(xy, np.float64)[:, 0], 0.0, w - 1.0)
    y = np.clip(np.asarray(xy, np.float64)[:, 1], 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), int)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    f = flow.astype(np.float64)
    top = f[y0, x0] * (1 - fx) + f[y0, x1] * fx
    bottom = f[y1, x0] * (1 - fx) + f[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def carry_points(
    flows: Sequence[np.ndarray], xy: np.ndarray, alive: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Carries points through a chain of per-frame flows.

    Args:
      flows: T flows ``[H, W, 2]`` (frame t → t + 1 of the chain, in chain order).
      xy: ``[N, 2]`` starting points (x, y) in frame 0.
      alive: bool ``[N]`` points to carry (default all).

    Returns:
      positions float64 ``[T + 1, N, 2]`` (step 0 = ``xy``) and alive bool ``[T + 1, N]``: a
      point dies when it is outside ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (the image's pixel
      area), at the start or after any step, and stays dead.
    """
    p = np.asarray(xy, np.float64).reshape(-1, 2).copy()
    ok = np.ones(len(p), bool) if alive is None else np.asarray(alive, bool).reshape(-1).copy()

    def inside(q, flow):
        h, w = flow.shape[:2]
        return (q[:, 0] >= -0.5) & (q[:, 0] <= w - 0.5) & (q[:, 1] >= -0.5) & (q[:, 1] <= h - 0.5)

    if flows:
        ok &= inside(p, flows[0])
    positions, alives = [p.copy()], [ok.copy()]
    for flow in flows:
        p = p + np.where(ok[:, None], sample_flow(flow, p), 0.0)
        ok &= inside(p, flow)
        positions.append(p.copy())
        alives.append(ok.copy())
    return np.stack(positions), np.stack(alives)


class _GreyFrames:
    """Grey frames of one video, read once each while a chain needs them."""

    def __init__(self, paths: Sequence[str], video: str):
        self.paths, self.video = paths, video
        self.cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

    def __call__(self, t: int) -> np.ndarray:
        if t not in self.cache:
            img = storage.read_image(
                self.paths[t], cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
            )
            if img is None:
                raise pipeline_lib.BadImageError(
                    f"image {self.paths[t]!r} cannot be read; needed by the Farneback flow of "
                    f"video {self.video!r} frame {t}",
                    self.paths[t],
                )
            self.cache[t] = img
            while len(self.cache) > 4:
                self.cache.popitem(last=False)
        return self.cache[t]


def farneback(
    labeled: VideoDataset,
    *,
    boxes: VideoDataset | None = None,
    reach: int = DEFAULT_REACH,
    params: FarnebackParams = FarnebackParams(),
    plan: PropagationPlan | None = None,
    skip_bad_images: bool = False,
    bad_image_log: str = "",
) -> VideoDataset:
    """Optical-flow propagation: A's joints carried to B by chained Farneback flows.

    For every labeled frame A and direction (forward to later targets, backward to earlier
    ones) one chain of flows A → A ± 1 → ... reaches the farthest target that takes its
    labels from A; every flow is computed once per chain. Joints unlabeled in A or leaving
    the image stay unlabeled (score 0); carried joints score 1. A frame that cannot be read
    raises ``BadImageError``, or with ``skip_bad_images`` ends its chain there (targets
    beyond it get no joints; the image is noted with ``pipeline.note_bad_image``).
    """
    plan = _plan(labeled, plan, boxes, reach)
    n = len(plan)
    xy = np.zeros((n, NUM_JOINTS, 2))
    present = np.zeros((n, NUM_JOINTS), bool)
    src = plan.source_frame[:, 0]
    delta = plan.delta[:, 0]
    groups: dict[tuple[int, int, int], list[int]] = collections.defaultdict(list)
    for r in range(n):
        groups[(int(plan.video[r]), int(src[r]), int(np.sign(delta[r])))].append(r)
    for (v, a, step), rows in sorted(groups.items()):
        video = labeled.videos[v]
        frames = _GreyFrames([f.path for f in video.frames], video.name)
        length = max(abs(int(delta[r])) for r in rows)
        flows = []
        try:
            for k in range(length):
                flows.append(
                    farneback_flow(frames(a + k * step), frames(a + (k + 1) * step), params)
                )
        except pipeline_lib.BadImageError as err:
            if not skip_bad_images:
                raise
            pipeline_lib.note_bad_image(err, bad_image_log)
        reached = len(flows)
        kpts = plan.source_keypoints[rows, 0]  # [R, J, 3]
        pos, alive = carry_points(
            flows, kpts[:, :, :2].reshape(-1, 2), (kpts[:, :, 2] > 0).reshape(-1)
        )
        pos = pos.reshape(reached + 1, len(rows), NUM_JOINTS, 2)
        alive = alive.reshape(reached + 1, len(rows), NUM_JOINTS)
        for i, r in enumerate(rows):
            d = abs(int(delta[r]))
            if d <= reached:
                xy[r], present[r] = pos[d, i], alive[d, i]
    return predictions_from_plan(labeled, plan, xy, present, present.astype(float))


# ----------------------------------------------------------------------------- HRNet


def hrnet_pseudo(
    model,
    variables: Mapping[str, Any],
    labeled: VideoDataset,
    *,
    pipe_cfg: pipeline_lib.PipelineConfig,
    boxes: VideoDataset | None = None,
    reach: int = DEFAULT_REACH,
    mesh: Mesh | None = None,
    flip_test: bool = False,
    plan: PropagationPlan | None = None,
) -> VideoDataset:
    """Single-frame pseudo labels: the stage-1 HRNet on B, in the crop of the planned box.

    The crops are cut by ``pipeline.eval_dataset`` (``pipe_cfg``'s size and padding, no
    augmentation) and run by ``inference.predict`` with ``single_frame_fn``. Every joint is
    predicted; joint score = heatmap maximum; person score 1.
    """
    if not isinstance(pipe_cfg, pipeline_lib.PipelineConfig):
        raise ValueError(f"pipe_cfg must be a PipelineConfig, got {type(pipe_cfg).__name__}")
    plan = _plan(labeled, plan, boxes, reach)
    people: dict[tuple[str, int], list[Person]] = collections.defaultdict(list)
    row_of: dict[tuple[int, int, int], int] = {}
    for r in range(len(plan)):
        v, f = int(plan.video[r]), int(plan.frame[r])
        key = (plan.video_names[v], f)
        # The pipeline reports each box's position in this list as ``person``.
        row_of[(v, f, len(people[key]))] = r
        people[key].append(Person(keypoints=None, bbox=plan.box[r], track_id=-1))
    cfg = dataclasses.replace(pipe_cfg, augment=False, shuffle=False, eval_offsets=(0,))
    batches = pipeline_lib.eval_dataset(labeled, cfg, boxes=dict(people), frames="all")
    rows = predict(
        model,
        variables,
        batches,
        single_frame_fn(model, 0),
        mesh=mesh,
        flip_test=flip_test,
        decoding=cfg.decoding,
        sigma=cfg.sigma,
    )
    n = len(plan)
    xy = np.zeros((n, NUM_JOINTS, 2), np.float32)
    scores = np.zeros((n, NUM_JOINTS), np.float32)
    done = np.zeros(n, bool)
    for row in rows:
        r = row_of[(int(row["video"]), int(row["frame"]), int(row["person"]))]
        xy[r], scores[r], done[r] = row["keypoints"], row["maxvals"], True
    done, xy, scores = gather_rows(done, xy, scores)
    present = np.repeat(done[:, None], NUM_JOINTS, axis=1)
    return predictions_from_plan(labeled, plan, xy, present, scores)

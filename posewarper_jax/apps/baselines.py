"""Baselines of the propagation experiment, on the same plan as ``propagate_labels``.

Each takes the same arguments that make the plan (``labeled``, ``boxes``, ``reach``; or a
ready ``plan``) and returns predictions for exactly the same (video, frame, track) people as
``propagation.propagate_labels(..., blend=False)`` (``propagation.plan_propagation`` explains
the nearest-frame rule, ties, the people and their crop boxes):

* ``copy_nearest``: B takes A's keypoints unchanged. Joint score ``1 / |δ|`` where A has the
  joint: the one thing a copy knows about its own error is how many frames the person had to
  stand still for it to be right (the weight ``propagation``'s blend gives a source, fixed
  before any result; AP uses only the order, which any decreasing function of |δ| gives).
* ``farneback``: A's joints are carried to B with OpenCV's Farneback optical flow on grey full
  frames, frame by frame (a chain of |δ| per-frame flows, each sampled bilinearly at the
  joint's current position). A joint that leaves the image (outside
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``) at any step is dropped. Joint score: the
  forward-backward consistency of the flow (``consistency_scores``): the carried joint is
  carried back from B to A through the flows of the reversed chain (B → B ∓ 1 → ... → A), and
  the round trip's error e (pixels, from A's label) becomes ``exp(-e² / (2 σ²))`` with
  σ = ``FB_SIGMA_HEADS`` × the head size of the person in A (poseval's 0.6 × head box
  diagonal; without a head box, ``HEAD_PER_BOX_HEIGHT`` × the box height). σ is half a head,
  the PCKh@0.5 tolerance itself: a round trip off by the scoring threshold scores
  exp(-1/2) ≈ 0.61, by twice of it 0.14, a consistent one 1. Fixed a priori from the metric's
  own scale, not fitted to any result. A joint that leaves the image on the way back scores 0.
* ``hrnet_pseudo``: the stage-1 HRNet run on B alone, in the crop of the planned box
  (single-frame pseudo labels, ``inference.single_frame_fn``); all joints predicted, joint
  score = heatmap maximum.

Every score is a confidence in [0, 1] that the joint is where it is predicted (higher: more
likely right), as PoseWarper's warped heatmap maxima are. Person score 1 everywhere.
Coordinates: image pixels, pixel centres at integers, x right, y down.
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
from posewarper_jax.apps.detection import crop_rows
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
    "FB_SIGMA_HEADS",
    "HEAD_SIZE_PER_BOX_HEIGHT",
    "FarnebackParams",
    "carry_points",
    "consistency_scores",
    "copy_nearest",
    "farneback",
    "farneback_flow",
    "hrnet_pseudo",
    "sample_flow",
    "source_head_sizes",
]

FB_SIGMA_HEADS = 0.5  # σ of the forward-backward score, in head sizes (the PCKh@0.5 radius)
HEAD_SIZE_PER_BOX_HEIGHT = 0.125  # without a head box: a person is about eight heads tall


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
    frame A unchanged; joints unlabeled in A stay unlabeled. Joint scores ``1 / |δ|``
    (labeled) / 0 (module docstring)."""
    plan = _plan(labeled, plan, boxes, reach)
    kpts = plan.source_keypoints[:, 0]  # [N, J, 3]
    present = kpts[:, :, 2] > 0
    near = 1.0 / np.maximum(np.abs(plan.delta[:, :1]), 1)  # [N, 1]
    scores = np.where(present, near, 0.0)
    return predictions_from_plan(labeled, plan, kpts[:, :, :2], present, scores)


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


def consistency_scores(
    back_flows: Sequence[np.ndarray],
    start: np.ndarray,
    end: np.ndarray,
    alive: np.ndarray,
    sigma: np.ndarray,
) -> np.ndarray:
    """Forward-backward consistency of carried points as scores in [0, 1].

    Args:
      back_flows: the chain's flows in the reverse direction, in the order the points travel
        back: flow (t_d → t_{d-1}) first, ..., flow (t_1 → t_0) last.
      start: ``[N, 2]`` the points in frame t_0 (where they were carried from).
      end: ``[N, 2]`` where the forward chain put them in frame t_d.
      alive: bool ``[N]`` the points the forward chain kept.
      sigma: ``[N]`` (or a scalar) σ in pixels, > 0.

    Returns:
      float64 ``[N]``: ``exp(-e² / (2 σ²))`` with e the distance between ``start`` and the
      point carried back from ``end``; 0 where not ``alive`` or where the point leaves the
      image on the way back.
    """
    start = np.asarray(start, np.float64).reshape(-1, 2)
    pos, ok = carry_points(back_flows, end, alive)
    err = np.linalg.norm(pos[-1] - start, axis=1)
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), err.shape)
    return np.where(ok[-1], np.exp(-(err**2) / (2.0 * sigma**2)), 0.0)


def source_head_sizes(labeled: VideoDataset, plan: PropagationPlan) -> np.ndarray:
    """float64 ``[N]`` the head size (px) of each row's person in its nearest labeled frame A:
    poseval's 0.6 × the head box's diagonal, or ``HEAD_SIZE_PER_BOX_HEIGHT`` × the height of
    the plan's box when A's person has no usable head box."""
    out = np.zeros(len(plan), np.float64)
    for r in range(len(plan)):
        size = 0.0
        a, pi = int(plan.source_frame[r, 0]), int(plan.source_person[r, 0])
        if a >= 0 and pi >= 0:
            person = labeled.videos[int(plan.video[r])].frames[a].people[pi]
            if person.head_bbox is not None:
                head = np.asarray(person.head_bbox, np.float64)
                size = 0.6 * float(np.hypot(head[2], head[3]))
        if not (np.isfinite(size) and size > 0):
            size = HEAD_SIZE_PER_BOX_HEIGHT * float(plan.box[r, 3])
        out[r] = size if np.isfinite(size) and size > 0 else 1.0
    return out


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
    labels from A; every flow of the chain, and of the reversed chain for the consistency
    score, is computed once. Joints unlabeled in A or leaving the image stay unlabeled
    (score 0); carried joints score their forward-backward consistency (module docstring).
    A frame that cannot be read raises ``BadImageError``, or with ``skip_bad_images`` ends
    its chain there (targets beyond it get no joints; the image is noted with
    ``pipeline.note_bad_image``).
    """
    plan = _plan(labeled, plan, boxes, reach)
    n = len(plan)
    xy = np.zeros((n, NUM_JOINTS, 2))
    present = np.zeros((n, NUM_JOINTS), bool)
    scores = np.zeros((n, NUM_JOINTS))
    sigma = FB_SIGMA_HEADS * source_head_sizes(labeled, plan)
    src = plan.source_frame[:, 0]
    delta = plan.delta[:, 0]
    groups: dict[tuple[int, int, int], list[int]] = collections.defaultdict(list)
    for r in range(n):
        groups[(int(plan.video[r]), int(src[r]), int(np.sign(delta[r])))].append(r)
    for (v, a, step), rows in sorted(groups.items()):
        video = labeled.videos[v]
        frames = _GreyFrames([f.path for f in video.frames], video.name)
        length = max(abs(int(delta[r])) for r in rows)
        flows, back = [], []
        try:
            for k in range(length):
                prev, nxt = frames(a + k * step), frames(a + (k + 1) * step)
                flows.append(farneback_flow(prev, nxt, params))
                back.append(farneback_flow(nxt, prev, params))
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
                scores[r] = consistency_scores(
                    back[:d][::-1], kpts[i, :, :2], pos[d, i], alive[d, i], sigma[r]
                )
    return predictions_from_plan(labeled, plan, xy, present, np.where(present, scores, 0.0))


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
    decoding: str = "quarter",
) -> VideoDataset:
    """Single-frame pseudo labels: the stage-1 HRNet on B, in the crop of the planned box.

    The crops are cut by ``pipeline.eval_dataset`` (``pipe_cfg``'s size and padding, no
    augmentation) and run by ``inference.predict`` with ``single_frame_fn``
    (``detection.crop_rows``); the heatmaps are decoded with ``decoding`` ("quarter" or
    "dark"). Every joint is predicted; joint score = heatmap maximum; person score 1.
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
    rows = crop_rows(
        model, variables, labeled, pipe_cfg, boxes=dict(people), frames="all", flip_test=flip_test,
        mesh=mesh, decoding=decoding,
    )  # fmt: skip
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

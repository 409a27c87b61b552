"""Test-time pose detection: single-frame HRNet, and temporal aggregation over a window.

Both run on every labeled frame (``frames="labeled"``) of a data set, one crop per person box
(ground-truth boxes or detections), and return a prediction ``VideoDataset`` with every video
and frame of the input, which ``eval.posetrack_map(gt, pred)`` scores directly.

Temporal aggregation (the paper's test-time application): for a labeled frame t and a box,
the frames t + δ of a window are all cropped with t's box, each is warped onto t by the
warping head (ψ = f_t − f_{t+δ}, δ = 0 included) and the warped maps are summed with fixed
weights. Frames beyond the video's ends are blanked and flagged by the pipeline
(``eval_edge="mask"``) and the weights are renormalised over the frames that exist.

* Symmetric window (``WINDOW``): δ = −2..2 with weights 0.1, 0.25, 0.3, 0.25, 0.1 (paper).
* Causal window (``CAUSAL_WINDOW``, for streaming use): δ = −2, −1, 0 with the paper's
  weights of those offsets, 0.1, 0.25, 0.3 (renormalised: 0.154, 0.385, 0.462). The same
  reach into the past as the symmetric window and the centre frame still weighs most. No
  frame after t is read: the pipeline reads only the window's frames.
* Both at once (``detect_aggregated_and_causal``): the causal window's frames are the
  symmetric window's first three, cropped with the same box and warped onto the same frame,
  so one pass over the symmetric windows gives both (the causal sum weighs the frames after t
  zero); the same predictions as the two calls, for about the cost of the symmetric one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from jax.sharding import Mesh

from posewarper_jax.apps.inference import (
    DEFAULT_KEYS,
    HeatmapFn,
    aggregation_fn,
    aggregations_fn,
    predict,
    select_rows,
    single_frame_fn,
    to_predictions,
)
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.data.types import VideoDataset

__all__ = [
    "CAUSAL_WEIGHTS",
    "CAUSAL_WINDOW",
    "WINDOW",
    "WINDOW_WEIGHTS",
    "crop_rows",
    "detect_aggregated",
    "detect_aggregated_and_causal",
    "detect_single_frame",
]

WINDOW = (-2, -1, 0, 1, 2)
WINDOW_WEIGHTS = (0.1, 0.25, 0.3, 0.25, 0.1)
CAUSAL_WINDOW = (-2, -1, 0)
CAUSAL_WEIGHTS = (0.1, 0.25, 0.3)

# Detected boxes overlap and repeat people: OKS NMS by default for them, never for GT boxes.
_AUTO = None


def _eval_config(pipe_cfg: pipeline_lib.PipelineConfig, window: Sequence[int]):
    if not isinstance(pipe_cfg, pipeline_lib.PipelineConfig):
        raise ValueError(f"pipe_cfg must be a PipelineConfig, got {type(pipe_cfg).__name__}")
    # Evaluation never augments; "mask" marks window frames past the video's ends.
    return dataclasses.replace(
        pipe_cfg, augment=False, shuffle=False, eval_offsets=tuple(window), eval_edge="mask"
    )


def _use_nms(nms: bool | None, boxes) -> bool:
    return (not (isinstance(boxes, str) and boxes == "gt")) if nms is _AUTO else bool(nms)


def crop_rows(
    model,
    variables,
    dataset: VideoDataset,
    pipe_cfg: pipeline_lib.PipelineConfig,
    fn: HeatmapFn | None = None,
    *,
    window: Sequence[int] = (0,),
    boxes: pipeline_lib.BoxSource = "gt",
    frames: str = "labeled",
    flip_test: bool = False,
    mesh: Mesh | None = None,
    decoding: str = "quarter",
    keys: Sequence[str] = DEFAULT_KEYS,
) -> list[dict]:
    """``inference.predict``'s rows of ``fn`` on the windows ``window`` of every box of
    ``dataset``'s ``frames`` (``pipeline.eval_dataset``: no augmentation, frames past the
    video's ends blanked); ``fn`` defaults to the single-frame HRNet on the window's frame 0;
    ``keys``: the batch fields ``fn`` reads.
    """
    cfg = _eval_config(pipe_cfg, window)
    batches = pipeline_lib.eval_dataset(dataset, cfg, boxes=boxes, frames=frames, offsets=window)
    if fn is None:
        fn = single_frame_fn(model, tuple(window).index(0))
    return predict(
        model,
        variables,
        batches,
        fn,
        mesh=mesh,
        flip_test=flip_test,
        decoding=decoding,
        sigma=cfg.sigma,
        keys=keys,
    )


def detect_single_frame(
    model,
    variables,
    dataset: VideoDataset,
    pipe_cfg: pipeline_lib.PipelineConfig,
    *,
    boxes: pipeline_lib.BoxSource = "gt",
    flip_test: bool = False,
    mesh: Mesh | None = None,
    scoring: str = "official",
    nms: bool | None = _AUTO,
    decoding: str = "quarter",
) -> VideoDataset:
    """Stage-1 HRNet on every labeled frame of ``dataset``, one crop per box.

    Args:
      model: a ``PoseWarper`` (only its backbone runs).
      variables: its ``{"params", "batch_stats"}``.
      dataset: the videos; predictions are made on frames with ``is_labeled``.
      pipe_cfg: crop size, heatmap stride and batch size (a multiple of the device count).
      boxes: "gt" or detections, as ``pipeline.eval_dataset`` takes them.
      flip_test: average with the mirrored crop's heatmaps.
      mesh: a mesh with a ``data`` axis (default: all devices).
      scoring: "official" or "mmpose" (``inference.to_predictions``).
      nms: OKS NMS per frame; default: only when ``boxes`` are not "gt".
      decoding: "quarter" (HRNet's quarter-pixel step) or "dark" (sub-pixel), the heatmap
        decoding (``inference.predict``).

    Returns:
      A prediction ``VideoDataset`` shaped like ``dataset`` (keypoints in image pixels).
    """
    rows = crop_rows(
        model, variables, dataset, pipe_cfg, boxes=boxes, flip_test=flip_test, mesh=mesh,
        decoding=decoding,
    )  # fmt: skip
    return to_predictions(rows, dataset, scoring=scoring, nms=_use_nms(nms, boxes))


def detect_aggregated(
    model,
    variables,
    dataset: VideoDataset,
    pipe_cfg: pipeline_lib.PipelineConfig,
    *,
    window: Sequence[int] | None = None,
    weights: Sequence[float] | None = None,
    causal: bool = False,
    boxes: pipeline_lib.BoxSource = "gt",
    flip_test: bool = False,
    mesh: Mesh | None = None,
    scoring: str = "official",
    nms: bool | None = _AUTO,
    decoding: str = "quarter",
) -> VideoDataset:
    """Temporal pose aggregation on every labeled frame of ``dataset`` (module docstring).

    Args:
      model, variables, dataset, pipe_cfg, boxes, flip_test, mesh, scoring, nms, decoding: as
        for ``detect_single_frame``.
      window: frame offsets δ in time order; must contain 0. Default ``WINDOW`` (−2..2), or
        ``CAUSAL_WINDOW`` (−2..0) with ``causal``.
      weights: one non-negative weight per offset (renormalised over the frames that exist).
        Default ``WINDOW_WEIGHTS``, or ``CAUSAL_WEIGHTS`` with ``causal``; for an explicit
        window −k..k with k ≤ 3 the model's defaults for that length, otherwise required.
      causal: use past frames only; an explicit ``window`` with a positive offset is an error.

    Returns:
      A prediction ``VideoDataset`` shaped like ``dataset``.

    Raises:
      ValueError: a window without 0, repeated offsets, a future offset with ``causal``,
        weights of the wrong length or negative, or all zero.
    """
    if window is None:
        window = CAUSAL_WINDOW if causal else WINDOW
        if weights is None:
            weights = CAUSAL_WEIGHTS if causal else WINDOW_WEIGHTS
    window = tuple(int(d) for d in window)
    if 0 not in window:
        raise ValueError(f"window {window} must contain the offset 0 (the frame predicted)")
    if len(set(window)) != len(window):
        raise ValueError(f"window {window} repeats an offset")
    if causal and max(window) > 0:
        raise ValueError(f"causal aggregation reads no future frame, but window is {window}")
    if weights is None:
        from posewarper_jax.models.posewarper import AGGREGATION_WEIGHTS

        k = len(window) // 2
        if window != tuple(range(-k, k + 1)) or len(window) not in AGGREGATION_WEIGHTS:
            raise ValueError(f"give weights for window {window} (no default for it)")
        weights = AGGREGATION_WEIGHTS[len(window)]
    weights = tuple(float(w) for w in weights)
    if len(weights) != len(window):
        raise ValueError(f"{len(weights)} weights for the {len(window)} offsets of {window}")
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights {weights} must be non-negative and not all zero")

    fn = aggregation_fn(model, weights, window.index(0))
    rows = crop_rows(
        model, variables, dataset, pipe_cfg, fn, window=window, boxes=boxes, flip_test=flip_test,
        mesh=mesh, decoding=decoding,
    )  # fmt: skip
    return to_predictions(rows, dataset, scoring=scoring, nms=_use_nms(nms, boxes))


def detect_aggregated_and_causal(
    model,
    variables,
    dataset: VideoDataset,
    pipe_cfg: pipeline_lib.PipelineConfig,
    *,
    boxes: pipeline_lib.BoxSource = "gt",
    flip_test: bool = False,
    mesh: Mesh | None = None,
    scoring: str = "official",
    nms: bool | None = _AUTO,
    decoding: str = "quarter",
) -> tuple[VideoDataset, VideoDataset]:
    """``detect_aggregated`` with its default window and with ``causal=True``, from one pass
    over the symmetric windows (module docstring); the arguments as for ``detect_aggregated``.

    Returns:
      ``(symmetric, causal)`` prediction ``VideoDataset``s shaped like ``dataset``.
    """
    future = len(WINDOW) - len(CAUSAL_WINDOW)
    if WINDOW[: len(CAUSAL_WINDOW)] != CAUSAL_WINDOW:
        raise ValueError(f"the causal window {CAUSAL_WINDOW} must begin the window {WINDOW}")
    sets = (("symmetric", WINDOW_WEIGHTS), ("causal", (*CAUSAL_WEIGHTS, *(0.0,) * future)))
    fn = aggregations_fn(model, sets, WINDOW.index(0))
    rows = crop_rows(
        model, variables, dataset, pipe_cfg, fn, window=WINDOW, boxes=boxes, flip_test=flip_test,
        mesh=mesh, decoding=decoding,
    )  # fmt: skip
    use_nms = _use_nms(nms, boxes)
    return tuple(
        to_predictions(select_rows(rows, name), dataset, scoring=scoring, nms=use_nms)
        for name, _ in sets
    )

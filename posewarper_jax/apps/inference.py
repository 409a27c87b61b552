"""Shared inference: heatmaps of evaluation batches → per-person keypoints in image pixels.

Every application runs the same loop (``predict``): for each batch of
``pipeline.eval_dataset``, a heatmap function ``fn(variables, batch) -> [B, h, w, J]`` runs
under one ``jax.jit`` with the batch sharded over the ``data`` mesh axis; the heatmaps are
decoded (``ops.heatmaps.decode_heatmaps``: HRNet's argmax + quarter-pixel step, or the
sub-pixel "dark" decoding) and mapped back through each row's crop (``center``, ``scale``)
to image pixels on the device, and only the decoded ``[B, J, 2]`` / ``[B, J]`` arrays come
back to the host, in one transfer per batch.
Rows whose ``mask`` is False (padding, bad centre frames) are dropped. ``to_predictions``
turns the rows into a prediction ``VideoDataset`` that ``eval.posetrack_map`` scores.

A heatmap function receives the device batch: a dict of ``jax.Array`` with at least
``image`` uint8 ``[B, T, H, W, 3]``, ``frame_valid`` bool ``[B, T]``, ``center``/``scale``
float32 ``[B, 2]``, plus the fields named in ``predict(keys=...)`` (e.g. ``target`` float32
``[B, h, w, J]`` for propagation). It returns float heatmaps ``[B, h, w, J]`` (NHWC) on the
crop's heatmap grid. Ready-made ones: ``single_frame_fn`` and ``aggregation_fn``. A function
may instead return a dict of such maps (``aggregations_fn``: several weightings of one window
from one pass); each is decoded, the rows hold dicts, and ``select_rows`` picks one.

Flip test (``flip_test=True``): ``fn`` also runs on the batch mirrored by ``flip_batch``
and the two outputs are averaged with ``ops.heatmaps.average_flip`` (HRNet's convention:
width reversed, left/right channels exchanged, one-pixel shift).

Coordinates: image pixels, pixel centres at integers, x right, y down.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from posewarper_jax.data.types import FLIP_PAIRS, NUM_JOINTS, VideoDataset
from posewarper_jax.ops.heatmaps import (
    DECODINGS,
    average_flip,
    decode_heatmaps,
    flip_back,
    heatmap_to_image_coords,
)

__all__ = [
    "DEFAULT_KEYS",
    "HeatmapFn",
    "aggregation_fn",
    "aggregations_fn",
    "flip_batch",
    "flip_shift",
    "iter_predict",
    "predict",
    "select_rows",
    "single_frame_fn",
    "to_predictions",
]

HeatmapFn = Callable[[Mapping[str, Any], Mapping[str, jax.Array]], jax.Array]

# Fields sent to the devices by default; ``center``/``scale`` are always sent (the map back
# to the image runs on the device).
DEFAULT_KEYS = ("image", "frame_valid")
_ALWAYS = ("center", "scale")
# Host-side fields copied into each output row.
_ROW_FIELDS = ("video", "frame", "person", "track_id", "image_id", "score")


# ----------------------------------------------------------------------------- heatmap fns


@functools.cache
def single_frame_fn(model, frame: int = 0) -> HeatmapFn:
    """Backbone heatmaps of one frame of the window (stage-1 HRNet, ``method="heatmaps"``).

    Args:
      model: a ``PoseWarper``.
      frame: index t of the frame in ``batch["image"]`` ``[B, T, H, W, 3]`` (0 for a
        single-frame window ``offsets=(0,)``; the centre ``T // 2`` of a symmetric one).

    Returns:
      ``fn(variables, batch) -> float32 [B, h, w, J]``. The same object for equal arguments,
      so ``predict`` compiles it once per shape.
    """

    def fn(variables, batch):
        image = batch["image"]
        if not 0 <= frame < image.shape[1]:
            raise ValueError(
                f"single_frame_fn: frame {frame} is outside the window of T={image.shape[1]}"
            )
        frames = image[:, frame : frame + 1]
        return model.apply(variables, frames, False, method="heatmaps")[:, 0].astype(jnp.float32)

    return fn


@functools.cache
def aggregation_fn(
    model, weights: tuple[float, ...] | None = None, center: int | None = None
) -> HeatmapFn:
    """Temporal aggregation (``method="aggregate"``): every frame of the window warped onto
    frame ``center`` and summed with ``weights`` renormalised over ``batch["frame_valid"]``.

    Args:
      model: a ``PoseWarper``.
      weights: ``T`` non-negative weights in window order (None: the model's defaults for T).
      center: index of the frame being predicted in the window (None: ``T // 2``).

    Returns:
      ``fn(variables, batch) -> float32 [B, h, w, J]``; the same object for equal arguments.
    """
    w = None if weights is None else tuple(float(x) for x in weights)

    def fn(variables, batch):
        return model.apply(
            variables,
            batch["image"],
            w,
            batch["frame_valid"],
            center,
            False,
            method="aggregate",
        ).astype(jnp.float32)

    return fn


@functools.cache
def aggregations_fn(
    model, weight_sets: tuple[tuple[str, tuple[float, ...]], ...], center: int | None = None
) -> HeatmapFn:
    """Several aggregations of one window from one pass (``method="warp_window"``): every
    frame is warped onto frame ``center`` once, and each named weighting sums the warped
    maps as ``aggregation_fn`` would (renormalised over ``batch["frame_valid"]``). A causal
    window is the symmetric one with zero weight on the frames after ``center``.

    Args:
      model: a ``PoseWarper``.
      weight_sets: ``((name, (w_0, ..., w_{T-1})), ...)``, each non-negative in window order.
      center: index of the frame being predicted in the window (None: ``T // 2``).

    Returns:
      ``fn(variables, batch) -> {name: float32 [B, h, w, J]}``; ``predict`` decodes each
      (``select_rows``); the same object for equal arguments.
    """
    from posewarper_jax.models.posewarper import window_weights

    sets = tuple((str(n), tuple(float(x) for x in w)) for n, w in weight_sets)
    if not sets or len({n for n, _ in sets}) != len(sets):
        raise ValueError(f"aggregations_fn: weight_sets need distinct names, got {sets}")

    def fn(variables, batch):
        image = batch["image"]
        b, t = image.shape[:2]
        warped = model.apply(variables, image, center, False, method="warp_window")
        warped = warped.astype(jnp.float32)
        out = {}
        for name, w in sets:
            w = window_weights(w, batch["frame_valid"], b, t)
            out[name] = jnp.sum(w[:, :, None, None, None] * warped, axis=1)
        return out

    return fn


# ----------------------------------------------------------------------------- flip


def flip_batch(
    batch: Mapping[str, jax.Array],
    flip_pairs: Sequence[tuple[int, int]] = FLIP_PAIRS,
    shift: bool | float = True,
) -> dict[str, jax.Array]:
    """The batch of horizontally mirrored crops, for the flip test.

    * ``image`` ``[B, T, H, W, 3]``: the width axis reversed.
    * ``target`` ``[B, h, w, J]`` (if present): ``flip_back`` (width reversed, pairs swapped,
      ``shift``). With the one-pixel shift this places each Gaussian within a quarter heatmap
      pixel of where the mirrored crop has the joint (crop x → W - 1 - x is heatmap
      u → w - 1/4 - u; the shifted reversal gives w - u), and ``flip_back`` of the output
      undoes it exactly (apart from column 0), so maps carried by ``fn`` (propagation) come
      back where they were; the fractional shift ``1 - 1/stride`` places it exactly.
    * ``target_weight`` ``[B, J]`` (if present): pairs swapped.
    * Everything else (``frame_valid``, ``center``, ``scale``, ...) unchanged: the crop box
      is the same, only its content is mirrored.
    """
    out = dict(batch)
    out["image"] = batch["image"][:, :, :, ::-1, :]
    if "target" in batch:
        out["target"] = flip_back(batch["target"], flip_pairs, shift=shift)
    if "target_weight" in batch:
        j = batch["target_weight"].shape[-1]
        perm = list(range(j))
        for a, b in flip_pairs:
            perm[a], perm[b] = b, a
        out["target_weight"] = batch["target_weight"][..., jnp.asarray(perm)]
    return out


# ----------------------------------------------------------------------------- predict


def flip_shift(decoding: str, image_width: int, heatmap_width: int) -> bool | float:
    """The flip test's realignment (``ops.heatmaps.flip_back``): HRNet's one pixel with the
    quarter-pixel decoding, the exact ``1 - 1/stride`` with the sub-pixel "dark" one."""
    if decoding == "quarter":
        return True
    return 1.0 - heatmap_width / image_width


@functools.lru_cache(maxsize=64)
def _compiled_step(
    fn: HeatmapFn,
    flip_pairs: tuple | None,
    sharding: NamedSharding,
    decoding: str = "quarter",
    sigma: float | None = None,
):
    """``jit(variables, batch) -> (xy float32 [B, J, 2] image px, maxvals float32 [B, J])``.

    Cached per (fn, flip setting, sharding, decoding) so repeated calls reuse the compiled
    program.
    """

    def decode(hm, flipped, shift, batch):
        b = batch["image"].shape[0]
        if hm.ndim != 4 or hm.shape[0] != b:
            raise ValueError(
                f"the heatmap function must return [B={b}, h, w, J], got shape {hm.shape}"
            )
        if flipped is not None:
            hm = average_flip(hm, flipped, flip_pairs, shift=shift)
        coords, maxvals = decode_heatmaps(hm.astype(jnp.float32), method=decoding, sigma=sigma)
        xy = heatmap_to_image_coords(coords, batch["center"], batch["scale"], hm.shape[1:3])
        return xy.astype(jnp.float32), maxvals.astype(jnp.float32)

    def step(variables, batch):
        hm = fn(variables, batch)
        sets = hm if isinstance(hm, Mapping) else {None: hm}
        flipped, shift = dict.fromkeys(sets), None
        if flip_pairs is not None:
            width = next(iter(sets.values())).shape[2]
            shift = flip_shift(decoding, batch["image"].shape[3], width)
            out = fn(variables, flip_batch(batch, flip_pairs, shift))
            flipped = out if isinstance(out, Mapping) else {None: out}
        decoded = {k: decode(sets[k], flipped[k], shift, batch) for k in sets}
        if not isinstance(hm, Mapping):
            return decoded[None]
        return {k: v[0] for k, v in decoded.items()}, {k: v[1] for k, v in decoded.items()}

    return jax.jit(step, out_shardings=(sharding, sharding))


def _local_rows(arrays: tuple[jax.Array, ...]) -> tuple[np.ndarray, ...]:
    """This process's rows of batch-sharded arrays, in local batch order (one transfer)."""
    if all(a.is_fully_addressable for a in arrays):
        return tuple(np.asarray(x) for x in jax.device_get(arrays))
    out = []
    for a in arrays:
        # Multi-host: this process's devices hold its own rows; dedupe replicas by offset.
        shards = {s.index[0].start or 0: s.data for s in a.addressable_shards}
        out.append(np.concatenate([np.asarray(shards[k]) for k in sorted(shards)]))
    return tuple(out)


def _local_outputs(outputs):
    """``_local_rows`` of a step's outputs ``(xy, maxvals)``, each an array or a dict."""
    leaves, tree = jax.tree_util.tree_flatten(outputs)
    return jax.tree_util.tree_unflatten(tree, _local_rows(tuple(leaves)))


def _rows(local: Mapping[str, np.ndarray], xy, maxvals) -> list[dict]:
    mask = np.asarray(local["mask"], bool)
    rows = []
    for r in np.flatnonzero(mask):
        row = {k: np.asarray(local[k][r]).item() for k in _ROW_FIELDS if k in local}
        row["center"] = np.asarray(local["center"][r], np.float32)
        row["scale"] = np.asarray(local["scale"][r], np.float32)
        if isinstance(xy, Mapping):
            row["keypoints"] = {k: v[r] for k, v in xy.items()}
            row["maxvals"] = {k: v[r] for k, v in maxvals.items()}
        else:
            row["keypoints"] = xy[r]
            row["maxvals"] = maxvals[r]
        rows.append(row)
    return rows


def select_rows(rows: Iterable[Mapping[str, Any]], name: str) -> list[dict]:
    """The rows of one named output of a heatmap function that returns several
    (``aggregations_fn``): ``keypoints`` and ``maxvals`` of ``name``, the rest as they are."""
    out = []
    for row in rows:
        if name not in row["keypoints"]:
            raise ValueError(f"no output {name!r}; the rows hold {sorted(row['keypoints'])}")
        out.append({**row, "keypoints": row["keypoints"][name], "maxvals": row["maxvals"][name]})
    return out


def iter_predict(
    model,
    variables: Mapping[str, Any],
    batches: Iterable[Mapping[str, np.ndarray]],
    fn: HeatmapFn | None = None,
    *,
    mesh: Mesh | None = None,
    flip_test: bool = False,
    flip_pairs: Sequence[tuple[int, int]] = FLIP_PAIRS,
    keys: Sequence[str] = DEFAULT_KEYS,
    decoding: str = "quarter",
    sigma: float | None = None,
) -> Iterator[dict]:
    """Runs a heatmap function over evaluation batches and decodes every real row; yields the
    rows (``predict``) batch by batch.

    Batch k + 1 is dispatched to the devices before the results of batch k are fetched, so
    reading, decoding on the host and device work overlap.

    Args:
      model: the ``PoseWarper`` (used for the default ``fn``).
      variables: ``{"params", "batch_stats"}``; replicated over the mesh.
      batches: this process's batches of ``pipeline.eval_dataset`` (numpy dicts, see the
        module docstring of ``data.pipeline``); the global batch size must be a multiple of
        the size of the mesh's ``data`` axis.
      fn: ``fn(variables, batch) -> [B, h, w, J]`` (see the module docstring); default
        ``single_frame_fn(model)``. Pass the same object on every call (the ready-made ones
        are cached) to reuse its compiled program.
      mesh: a mesh with a ``data`` axis; default all devices (``training.data_mesh()``).
      flip_test: also run ``fn`` on ``flip_batch(batch)`` and average (``average_flip``).
      flip_pairs: left/right joint pairs of the flip test.
      keys: batch fields ``fn`` reads (sent to the devices, sharded on the batch axis), e.g.
        add ``"target"`` for propagation; ``center`` and ``scale`` are always sent.
      decoding: "quarter" (HRNet) or "dark" (``ops.heatmaps.decode_heatmaps``); with "dark"
        the flip test realigns the mirrored maps exactly (``flip_shift``).
      sigma: the targets' σ in heatmap pixels (the smoothing of "dark").

    Raises:
      ValueError: a batch lacks a field, its size does not divide over the mesh, or ``fn``
        returns a wrong shape.
    """
    if fn is None:
        fn = single_frame_fn(model)
    if mesh is None:
        from posewarper_jax.training import data_mesh

        mesh = data_mesh()
    if "data" not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named 'data', got axes {mesh.axis_names}")
    from posewarper_jax.data.pipeline import make_global_batch

    sharding = NamedSharding(mesh, PartitionSpec("data"))
    pairs = tuple((int(a), int(b)) for a, b in flip_pairs) if flip_test else None
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    step = _compiled_step(fn, pairs, sharding, decoding, None if sigma is None else float(sigma))
    variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    device_keys = tuple(dict.fromkeys((*keys, *_ALWAYS)))
    num_shards = mesh.shape["data"]

    pending = None  # (local batch, device outputs) of the previous batch
    for i, local in enumerate(batches):
        missing = [k for k in (*device_keys, "mask") if k not in local]
        if missing:
            raise ValueError(f"batch {i} lacks field(s) {missing} (an eval_dataset batch?)")
        rows_global = np.asarray(local["mask"]).shape[0] * jax.process_count()
        if rows_global % num_shards:
            raise ValueError(
                f"batch {i}: global batch size {rows_global} is not a multiple of the "
                f"{num_shards} devices of the 'data' mesh axis (set PipelineConfig.batch_size "
                f"to a multiple of {num_shards})"
            )
        batch = make_global_batch(local, mesh, keys=device_keys)
        out = step(variables, batch)
        if pending is not None:
            yield from _rows(pending[0], *_local_outputs(pending[1]))
        pending = (local, out)
    if pending is not None:
        yield from _rows(pending[0], *_local_outputs(pending[1]))


def predict(
    model,
    variables: Mapping[str, Any],
    batches: Iterable[Mapping[str, np.ndarray]],
    fn: HeatmapFn | None = None,
    **options: Any,
) -> list[dict]:
    """Runs a heatmap function over evaluation batches and decodes every real row; the
    arguments (keyword ``options``: mesh, flip_test, flip_pairs, keys, decoding, sigma) as
    for ``iter_predict``.

    Returns:
      One dict per row with ``mask`` True, in batch order: ``video``, ``frame``, ``person``,
      ``track_id``, ``image_id`` (int), ``score`` (box score, float), ``center``, ``scale``
      (float32 ``[2]``), ``keypoints`` float32 ``[J, 2]`` (x, y) image pixels and
      ``maxvals`` float32 ``[J]`` (heatmap maxima).
    """
    return list(iter_predict(model, variables, batches, fn, **options))


# ----------------------------------------------------------------------------- assembly


def to_predictions(
    rows: Sequence[Mapping[str, Any]],
    dataset: VideoDataset,
    *,
    scoring: str = "official",
    nms: bool = False,
    nms_thresh: float = 0.9,
) -> VideoDataset:
    """Per-frame predictions from ``predict``'s rows, shaped like ``dataset``.

    Every video and frame of ``dataset`` is present (frames without rows have no people);
    each row becomes a ``Person`` with all 17 joints labeled, its crop box as ``bbox`` and its
    ``track_id``.

    Args:
      rows: ``predict`` output for crops of ``dataset`` (``video``/``frame`` index it).
      dataset: the data set the crops came from.
      scoring: "official" (joint score = heatmap max × box score, person score = box score)
        or "mmpose" (joint score = heatmap max, person score = box score × mean joint score
        above 0.2); see ``eval.predictions_from_crops``.
      nms: apply OKS NMS per frame (``eval.apply_oks_nms``: PoseTrack sigmas, overlapping
        poses above ``nms_thresh`` dropped), meant for detected boxes.
      nms_thresh: the OKS threshold of the NMS.

    Returns:
      A ``VideoDataset`` for ``eval.posetrack_map(gt, pred)`` / ``write_poseval_predictions``.
    """
    from posewarper_jax.eval.nms import apply_oks_nms
    from posewarper_jax.eval.predictions import predictions_from_crops

    n = len(rows)
    if n:
        coords = np.stack([np.asarray(r["keypoints"], np.float64) for r in rows])
        maxvals = np.stack([np.asarray(r["maxvals"], np.float64) for r in rows])
        meta = {
            k: np.array([r[k] for r in rows])
            for k in ("video", "frame", "score", "track_id", "center", "scale")
        }
    else:
        coords, maxvals = np.zeros((0, NUM_JOINTS, 2)), np.zeros((0, NUM_JOINTS))
        meta = {"video": np.zeros(0, np.int64), "frame": np.zeros(0, np.int64)}
    pred = predictions_from_crops(coords, maxvals, meta, dataset, scoring=scoring)
    if nms:
        pred = apply_oks_nms(pred, thresh=nms_thresh)
    return pred

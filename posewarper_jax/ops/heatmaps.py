"""Heatmap decoding, the flip test and the map from heatmap pixels back to the image (pure jnp).

Conventions: heatmaps are NHWC, ``[..., h, w, J]`` (joints last); coordinates are ``(x, y)``
with pixel centres at integers, x to the right, y down. Heatmap pixel ``(u, v)`` stands for
crop pixel ``(u * W / w, v * H / h)``, which is how the training targets place joints, and the
crop is the top-down affine crop of ``posewarper_jax.data.transforms`` (``center`` goes to the
crop point ``(W / 2, H / 2)``, ``scale * 200`` image pixels span the crop's width).

The decoding is HRNet's ``get_final_preds`` (deep-high-resolution-net.pytorch,
``lib/core/inference.py``), reproduced exactly:

* the argmax of each map (first maximum in row-major order) and its value;
* where that value is ``<= 0`` the coordinates become ``(0, 0)`` (HRNet multiplies them by the
  mask ``maxval > 0``; ``nonpositive="argmax"`` keeps the argmax instead);
* a quarter-pixel step toward the higher neighbour, ``x += 0.25 * sign(hm[y, x+1] - hm[y, x-1])``
  and likewise in y, applied to both axes only when ``1 < x < w - 1`` **and** ``1 < y < h - 1``
  (HRNet's strict bounds: column and row 1 get no step either, and a sign of 0 moves nothing).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "average_flip",
    "decode_heatmaps",
    "flip_back",
    "heatmap_to_image_coords",
]

PIXEL_STD = 200.0


@functools.partial(jax.jit, static_argnames="nonpositive")
def decode_heatmaps(
    heatmaps: jnp.ndarray, *, nonpositive: str = "zero"
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Joint locations and confidences from heatmaps (HRNet's argmax + quarter-pixel step).

    Args:
      heatmaps: float ``[..., h, w, J]`` (NHWC), h, w >= 1.
      nonpositive: where a map's maximum is ``<= 0``: "zero" puts the joint at heatmap pixel
        ``(0, 0)`` (HRNet); "argmax" keeps the argmax with its quarter-pixel step.

    Returns:
      coords: float32 ``[..., J, 2]`` (x, y) in heatmap pixels.
      maxvals: ``[..., J]`` the maximum of each map, in the heatmaps' dtype.
    """
    if nonpositive not in ("zero", "argmax"):
        raise ValueError(f'nonpositive must be "zero" or "argmax", got {nonpositive!r}')
    heatmaps = jnp.asarray(heatmaps)
    if heatmaps.ndim < 3:
        raise ValueError(f"heatmaps must be [..., h, w, J], got shape {heatmaps.shape}")
    *lead, h, w, j = heatmaps.shape
    flat = heatmaps.reshape(*lead, h * w, j)  # [..., h*w, J]
    idx = jnp.argmax(flat, axis=-2)  # [..., J] first maximum
    maxvals = jnp.max(flat, axis=-2)  # [..., J]
    x = idx % w
    y = idx // w

    def at(offset):
        k = jnp.clip(idx + offset, 0, h * w - 1)
        return jnp.take_along_axis(flat, k[..., None, :], axis=-2)[..., 0, :]  # [..., J]

    inside = (x > 1) & (x < w - 1) & (y > 1) & (y < h - 1)
    dx = jnp.sign(at(1) - at(-1))
    dy = jnp.sign(at(w) - at(-w))
    xf = x.astype(jnp.float32) + jnp.where(inside, 0.25 * dx, 0.0).astype(jnp.float32)
    yf = y.astype(jnp.float32) + jnp.where(inside, 0.25 * dy, 0.0).astype(jnp.float32)
    coords = jnp.stack([xf, yf], axis=-1)  # [..., J, 2]
    if nonpositive == "zero":
        # HRNet masks before the step: a joint at (0, 0) is outside the step's bounds.
        coords = jnp.where((maxvals > 0)[..., None], coords, 0.0)
    return coords, maxvals


def flip_back(
    heatmaps: jnp.ndarray, flip_pairs: Sequence[tuple[int, int]], *, shift: bool = True
) -> jnp.ndarray:
    """Heatmaps of a horizontally flipped crop, brought back to the unflipped crop's frame.

    The width axis is reversed, the channels of each left/right pair are exchanged and (with
    ``shift``, HRNet's ``SHIFT_HEATMAP``) the result moves one pixel right:
    ``out[..., :, u, :] = flipped[..., :, u - 1, :]`` for ``u >= 1``, column 0 keeping its own
    value. The shift compensates the half-pixel misalignment of the flipped features.

    Args:
      heatmaps: ``[..., h, w, J]`` predicted on the flipped crop.
      flip_pairs: pairs of joint indices to swap, e.g. ``types.FLIP_PAIRS``.
      shift: apply the one-pixel shift.

    Returns:
      ``[..., h, w, J]``, same dtype.
    """
    heatmaps = jnp.asarray(heatmaps)
    j = heatmaps.shape[-1]
    perm = list(range(j))
    for a, b in flip_pairs:
        if not (0 <= a < j and 0 <= b < j):
            raise ValueError(f"flip pair ({a}, {b}) is outside the {j} heatmap channels")
        perm[a], perm[b] = b, a
    out = heatmaps[..., ::-1, :][..., jnp.asarray(perm)]
    if shift and out.shape[-2] > 1:
        out = jnp.concatenate([out[..., :, :1, :], out[..., :, :-1, :]], axis=-2)
    return out


def average_flip(
    heatmaps: jnp.ndarray,
    heatmaps_flipped_crop: jnp.ndarray,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
    *,
    shift: bool = True,
) -> jnp.ndarray:
    """Flip test: ``0.5 * (heatmaps + flip_back(heatmaps_flipped_crop))``.

    Args:
      heatmaps: ``[..., h, w, J]`` of the crop.
      heatmaps_flipped_crop: ``[..., h, w, J]`` of the horizontally mirrored crop.
      flip_pairs: left/right pairs; None means the 17-joint layout's ``FLIP_PAIRS``.
      shift: HRNet's one-pixel shift (see ``flip_back``).
    """
    if flip_pairs is None:
        from posewarper_jax.data.types import FLIP_PAIRS

        flip_pairs = FLIP_PAIRS
    back = flip_back(heatmaps_flipped_crop, flip_pairs, shift=shift)
    return 0.5 * (jnp.asarray(heatmaps) + back)


def heatmap_to_image_coords(
    coords: jnp.ndarray,
    center: jnp.ndarray,
    scale: jnp.ndarray,
    heatmap_size: tuple[int, int],
    rotation: jnp.ndarray | float = 0.0,
) -> jnp.ndarray:
    """Maps heatmap-pixel coordinates back to image pixels through the inverse crop affine.

    The crop map (``transforms.get_affine_transform`` at the heatmap's size) sends image point
    ``p`` to ``k R(-rot) (p - center) + (w/2, h/2)`` with ``k = w / (scale_x * 200)``; this is
    its inverse, ``center + R(rot) (q - (w/2, h/2)) / k``. With ``rotation = 0`` it equals
    HRNet's ``transform_preds`` (which ignores the rotation); ``scale_y`` is not used (boxes are
    widened to the crop's aspect ratio beforehand, so the map is a similarity).

    Args:
      coords: ``[..., J, 2]`` (x, y) heatmap pixels.
      center: ``[..., 2]`` crop centre (x, y) in image pixels.
      scale: ``[..., 2]`` (sx, sy) in units of 200 px (or ``[...]``, sx only).
      heatmap_size: ``(h, w)`` of the heatmaps.
      rotation: crop rotation in degrees, scalar or ``[...]``.

    Returns:
      float32 ``[..., J, 2]`` (x, y) image pixels (float64 for float64 coords under x64).
    """
    if len(heatmap_size) != 2:
        raise ValueError(f"heatmap_size must be (h, w), got {heatmap_size!r}")
    size = (int(heatmap_size[0]), int(heatmap_size[1]))
    return _heatmap_to_image(coords, center, scale, rotation, size)


@functools.partial(jax.jit, static_argnums=4)
def _heatmap_to_image(coords, center, scale, rotation, heatmap_size):
    hm_h, hm_w = (float(s) for s in heatmap_size)
    coords = jnp.asarray(coords)
    dtype = jnp.promote_types(coords.dtype, jnp.float32)
    coords = coords.astype(dtype)
    center = jnp.asarray(center, dtype)
    scale = jnp.asarray(scale, dtype)
    sx = scale[..., 0] if scale.ndim == center.ndim else scale  # [...]
    per_px = sx * PIXEL_STD / hm_w  # image pixels per heatmap pixel, [...]
    t = jnp.deg2rad(jnp.asarray(rotation, dtype))
    cs, sn = jnp.cos(t)[..., None], jnp.sin(t)[..., None]  # [..., 1]
    u = coords[..., 0] - 0.5 * hm_w  # [..., J]
    v = coords[..., 1] - 0.5 * hm_h
    s = per_px[..., None]
    x = center[..., None, 0] + s * (cs * u - sn * v)
    y = center[..., None, 1] + s * (sn * u + cs * v)
    return jnp.stack([x, y], axis=-1)

"""Heatmap decoding, the flip test and the map from heatmap pixels back to the image (pure jnp).

Conventions: heatmaps are NHWC, ``[..., h, w, J]`` (joints last); coordinates are ``(x, y)``
with pixel centres at integers, x to the right, y down. Heatmap pixel ``(u, v)`` stands for
crop pixel ``(u * W / w, v * H / h)``, which is how the training targets place joints, and the
crop is the top-down affine crop of ``posewarper_jax.data.transforms`` (``center`` goes to the
crop point ``(W / 2, H / 2)``, ``scale * 200`` image pixels span the crop's width).

Two decodings (``decode_heatmaps(method=...)``). ``"quarter"`` is HRNet's ``get_final_preds``
(deep-high-resolution-net.pytorch, ``lib/core/inference.py``), reproduced exactly:

* the argmax of each map (first maximum in row-major order) and its value;
* where that value is ``<= 0`` the coordinates become ``(0, 0)`` (HRNet multiplies them by the
  mask ``maxval > 0``; ``nonpositive="argmax"`` keeps the argmax instead);
* a quarter-pixel step toward the higher neighbour, ``x += 0.25 * sign(hm[y, x+1] - hm[y, x-1])``
  and likewise in y, applied to both axes only when ``1 < x < w - 1`` **and** ``1 < y < h - 1``
  (HRNet's strict bounds: column and row 1 get no step either, and a sign of 0 moves nothing).

``"dark"`` is the distribution-aware decoding of DARK (Zhang et al., CVPR 2020): each map is
smoothed with a Gaussian of the targets' σ (zero padding, rescaled to keep its maximum), its
logarithm is expanded to second order around the argmax, and the joint moves to the maximum
of that quadratic, ``-H^-1 g`` (g, H: central differences, steps 1 for g and 2 for H). For a
Gaussian map this is its exact centre, where the quarter-pixel step is off by up to a quarter
of a heatmap pixel: a large error on small heatmaps. The step is taken only where every
difference lies on the map (``1 < x < w - 2``, ``1 < y < h - 2``) and the quadratic has a
maximum (H negative definite), and is clipped to one pixel per axis; elsewhere the argmax
stays.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = [
    "DECODINGS",
    "average_flip",
    "decode_heatmaps",
    "flip_back",
    "heatmap_to_image_coords",
]

PIXEL_STD = 200.0


DECODINGS = ("quarter", "dark")


@functools.partial(jax.jit, static_argnames=("nonpositive", "method", "sigma"))
def decode_heatmaps(
    heatmaps: jnp.ndarray,
    *,
    nonpositive: str = "zero",
    method: str = "quarter",
    sigma: float | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Joint locations and confidences from heatmaps (argmax, then a sub-pixel step).

    Args:
      heatmaps: float ``[..., h, w, J]`` (NHWC), h, w >= 1.
      nonpositive: where a map's maximum is ``<= 0``: "zero" puts the joint at heatmap pixel
        ``(0, 0)`` (HRNet); "argmax" keeps the argmax with its sub-pixel step.
      method: "quarter" (HRNet's quarter-pixel step) or "dark" (see the module docstring).
      sigma: the targets' Gaussian σ in heatmap pixels, the smoothing of "dark" (required
        there, unused by "quarter").

    Returns:
      coords: float32 ``[..., J, 2]`` (x, y) in heatmap pixels.
      maxvals: ``[..., J]`` the maximum of each map, in the heatmaps' dtype.
    """
    if nonpositive not in ("zero", "argmax"):
        raise ValueError(f'nonpositive must be "zero" or "argmax", got {nonpositive!r}')
    if method not in DECODINGS:
        raise ValueError(f"method must be one of {DECODINGS}, got {method!r}")
    if method == "dark" and not (sigma is not None and sigma > 0):
        raise ValueError(f'method="dark" needs the targets\' sigma > 0, got {sigma!r}')
    heatmaps = jnp.asarray(heatmaps)
    if heatmaps.ndim < 3:
        raise ValueError(f"heatmaps must be [..., h, w, J], got shape {heatmaps.shape}")
    *lead, h, w, j = heatmaps.shape
    flat = heatmaps.reshape(*lead, h * w, j)  # [..., h*w, J]
    idx = jnp.argmax(flat, axis=-2)  # [..., J] first maximum
    maxvals = jnp.max(flat, axis=-2)  # [..., J]
    x = idx % w
    y = idx // w

    def at(maps, dy, dx):  # maps [..., h*w, J] at (y + dy, x + dx), clipped to the map
        k = jnp.clip(y + dy, 0, h - 1) * w + jnp.clip(x + dx, 0, w - 1)
        return jnp.take_along_axis(maps, k[..., None, :], axis=-2)[..., 0, :]  # [..., J]

    if method == "quarter":
        inside = (x > 1) & (x < w - 1) & (y > 1) & (y < h - 1)
        step_x = 0.25 * jnp.sign(at(flat, 0, 1) - at(flat, 0, -1))
        step_y = 0.25 * jnp.sign(at(flat, 1, 0) - at(flat, -1, 0))
    else:
        logm = jnp.log(jnp.maximum(_gaussian_modulation(heatmaps, float(sigma)), 1e-10))
        logm = logm.reshape(flat.shape)
        c = at(logm, 0, 0)
        gx = 0.5 * (at(logm, 0, 1) - at(logm, 0, -1))
        gy = 0.5 * (at(logm, 1, 0) - at(logm, -1, 0))
        hxx = 0.25 * (at(logm, 0, 2) - 2 * c + at(logm, 0, -2))
        hyy = 0.25 * (at(logm, 2, 0) - 2 * c + at(logm, -2, 0))
        hxy = 0.25 * (at(logm, 1, 1) - at(logm, -1, 1) - at(logm, 1, -1) + at(logm, -1, -1))
        det = hxx * hyy - hxy * hxy
        inside = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2) & (hxx < 0) & (det > 0)
        safe = jnp.where(inside, det, 1.0)
        # -H^-1 g with H^-1 = [[hyy, -hxy], [-hxy, hxx]] / det
        step_x = jnp.clip(-(hyy * gx - hxy * gy) / safe, -1.0, 1.0)
        step_y = jnp.clip(-(hxx * gy - hxy * gx) / safe, -1.0, 1.0)
    xf = x.astype(jnp.float32) + jnp.where(inside, step_x, 0.0).astype(jnp.float32)
    yf = y.astype(jnp.float32) + jnp.where(inside, step_y, 0.0).astype(jnp.float32)
    coords = jnp.stack([xf, yf], axis=-1)  # [..., J, 2]
    if nonpositive == "zero":
        # HRNet masks before the step: a joint at (0, 0) is outside the step's bounds.
        coords = jnp.where((maxvals > 0)[..., None], coords, 0.0)
    return coords, maxvals


def _gaussian_modulation(heatmaps: jnp.ndarray, sigma: float) -> jnp.ndarray:
    """DARK's modulation: each ``[h, w]`` map convolved with a normalised Gaussian of std
    ``sigma`` (radius ``ceil(3 sigma)``, zero padding), then rescaled to its former maximum."""
    hm = heatmaps.astype(jnp.float32)
    r = max(1, math.ceil(3.0 * sigma))
    taps = [math.exp(-(t * t) / (2.0 * sigma * sigma)) for t in range(-r, r + 1)]
    total = sum(taps)
    taps = [t / total for t in taps]
    pad = [(0, 0)] * (hm.ndim - 3)
    h, w = hm.shape[-3], hm.shape[-2]
    p = jnp.pad(hm, [*pad, (r, r), (0, 0), (0, 0)])
    hm_y = sum(k * p[..., t : t + h, :, :] for t, k in enumerate(taps))
    p = jnp.pad(hm_y, [*pad, (0, 0), (r, r), (0, 0)])
    out = sum(k * p[..., :, t : t + w, :] for t, k in enumerate(taps))
    old_max = jnp.max(hm, axis=(-3, -2), keepdims=True)
    new_max = jnp.max(out, axis=(-3, -2), keepdims=True)
    return out * old_max / jnp.where(new_max > 0, new_max, 1.0)


def flip_back(
    heatmaps: jnp.ndarray,
    flip_pairs: Sequence[tuple[int, int]],
    *,
    shift: bool | float = True,
) -> jnp.ndarray:
    """Heatmaps of a horizontally flipped crop, brought back to the unflipped crop's frame.

    The width axis is reversed, the channels of each left/right pair are exchanged and (with
    ``shift``, HRNet's ``SHIFT_HEATMAP``) the result moves one pixel right:
    ``out[..., :, u, :] = flipped[..., :, u - 1, :]`` for ``u >= 1``, column 0 keeping its own
    value. The shift compensates the misalignment of the flipped crop: crop pixel x goes to
    W - 1 - x, which is heatmap u -> w - 1/s - u at stride s, so the reversed map is
    ``1 - 1/s`` pixels (3/4 at stride 4) left of where it belongs. A float ``shift`` in
    [0, 1] moves the map by that fraction of a pixel exactly (linear interpolation between
    columns u - 1 and u; column 0 keeps its own value): ``1 - 1/s`` aligns it exactly.

    Args:
      heatmaps: ``[..., h, w, J]`` predicted on the flipped crop.
      flip_pairs: pairs of joint indices to swap, e.g. ``types.FLIP_PAIRS``.
      shift: True (one pixel, HRNet), False (none) or a fraction of a pixel in [0, 1].

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
    frac = float(shift)
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"shift must be a bool or a fraction of a pixel in [0, 1], got {shift}")
    out = heatmaps[..., ::-1, :][..., jnp.asarray(perm)]
    if frac and out.shape[-2] > 1:
        moved = jnp.concatenate([out[..., :, :1, :], out[..., :, :-1, :]], axis=-2)
        out = moved if frac == 1.0 else ((1.0 - frac) * out + frac * moved).astype(out.dtype)
    return out


def average_flip(
    heatmaps: jnp.ndarray,
    heatmaps_flipped_crop: jnp.ndarray,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
    *,
    shift: bool | float = True,
) -> jnp.ndarray:
    """Flip test: ``0.5 * (heatmaps + flip_back(heatmaps_flipped_crop))``.

    Args:
      heatmaps: ``[..., h, w, J]`` of the crop.
      heatmaps_flipped_crop: ``[..., h, w, J]`` of the horizontally mirrored crop.
      flip_pairs: left/right pairs; None means the 17-joint layout's ``FLIP_PAIRS``.
      shift: HRNet's one-pixel shift, or an exact fraction (see ``flip_back``).
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

"""Person crops, training augmentation and Gaussian heatmap targets (NumPy/cv2, host side).

Conventions: image coordinates are pixels with pixel centres at integers, x to the right, y
down. Sizes are ``(height, width)`` unless a name says otherwise. A crop is described by a
``center`` (x, y) in image pixels and a ``scale`` (sx, sy) in units of ``PIXEL_STD`` = 200 px
(the box the crop covers is ``scale * 200`` pixels wide and high), a rotation in degrees and
a horizontal flip. These follow the top-down HRNet convention so that weights and numbers
trained with it carry over.

Everything here runs in data workers: plain NumPy and cv2, no JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

from posewarper_jax.data.types import FLIP_PAIRS, LOWER_BODY_JOINTS, UPPER_BODY_JOINTS

PIXEL_STD = 200.0
BOX_PADDING = 1.25
# Where a joint's Gaussian is centred (``gaussian_targets``): HRNet's rounded heatmap pixel,
# or the exact sub-pixel position.
TARGET_ENCODINGS = ("integer", "subpixel")


# ----------------------------------------------------------------------------- boxes


def box_to_center_scale(
    box: Sequence[float] | np.ndarray,
    aspect_ratio: float,
    *,
    padding: float = BOX_PADDING,
) -> tuple[np.ndarray, np.ndarray]:
    """Converts a box to the (center, scale) of a crop with the given aspect ratio.

    Args:
      box: ``[x, y, w, h]`` (top-left corner, width, height) in image pixels.
      aspect_ratio: crop width / crop height (e.g. 288 / 384 = 0.75).
      padding: enlargement of the widened box (1.25 as in HRNet).

    Returns:
      center: float32 ``[2]`` = (x + w/2, y + h/2).
      scale: float32 ``[2]`` = (w', h') / 200 * padding, where (w', h') is the box grown along
        one side to match ``aspect_ratio``.
    """
    x, y, w, h = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    center = np.array([x + 0.5 * w, y + 0.5 * h], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / PIXEL_STD, h / PIXEL_STD], dtype=np.float32) * np.float32(padding)
    return center, scale


# ----------------------------------------------------------------------------- affine maps


def get_affine_transform(
    center: Sequence[float] | np.ndarray,
    scale: Sequence[float] | np.ndarray | float,
    rot: float,
    output_size: tuple[int, int],
    inv: bool = False,
) -> np.ndarray:
    """The 2x3 affine matrix that maps image pixels to crop pixels (or back with ``inv``).

    The map is a similarity: ``center`` goes to the crop point (W/2, H/2); a length of
    ``scale[0] * 200`` image pixels becomes W crop pixels (the crop's height follows from its
    aspect ratio, ``scale[1]`` is not used: boxes are widened to the crop's aspect ratio
    beforehand); the content is rotated by ``rot`` degrees (positive = counter-clockwise as
    seen on screen, HRNet's convention).

    Args:
      center: (x, y) image pixels.
      scale: (sx, sy) in units of 200 px, or a scalar.
      rot: rotation in degrees.
      output_size: crop ``(height, width)``. (HRNet's own function takes (width, height).)
      inv: return the crop → image map instead.

    Returns:
      float64 ``[2, 3]`` matrix ``M`` with ``[u, v] = M @ [x, y, 1]``, usable by
      ``cv2.warpAffine`` and ``affine_points``.
    """
    out_h, out_w = output_size
    sx = float(np.asarray(scale, dtype=np.float64).reshape(-1)[0]) * PIXEL_STD
    k = out_w / sx  # crop pixels per image pixel
    t = np.deg2rad(rot)
    cs, sn = np.cos(t), np.sin(t)
    # Forward: crop = k * R(-rot) @ (image - center) + (W/2, H/2).
    lin = k * np.array([[cs, sn], [-sn, cs]])
    c = np.asarray(center, dtype=np.float64).reshape(2)
    dst_c = np.array([0.5 * out_w, 0.5 * out_h])
    if inv:
        lin_inv = np.array([[cs, -sn], [sn, cs]]) / k
        return np.concatenate([lin_inv, (c - lin_inv @ dst_c)[:, None]], axis=1)
    return np.concatenate([lin, (dst_c - lin @ c)[:, None]], axis=1)


def flip_matrix(image_width: int) -> np.ndarray:
    """float64 ``[2, 3]``: the horizontal mirror of an image ``image_width`` pixels wide,
    ``x' = image_width - 1 - x`` (pixel centres map onto pixel centres)."""
    return np.array([[-1.0, 0.0, image_width - 1.0], [0.0, 1.0, 0.0]])


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``[2, 3]`` matrix of ``outer ∘ inner`` (apply ``inner`` first)."""
    return outer[:, :2] @ inner + np.concatenate([np.zeros((2, 2)), outer[:, 2:]], axis=1)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of an invertible ``[2, 3]`` affine matrix, float64 ``[2, 3]``."""
    lin_inv = np.linalg.inv(np.asarray(m, dtype=np.float64)[:, :2])
    return np.concatenate([lin_inv, -(lin_inv @ m[:, 2])[:, None]], axis=1)


def crop_transform(
    center: np.ndarray,
    scale: np.ndarray,
    rot: float,
    output_size: tuple[int, int],
    *,
    flip: bool = False,
    image_width: int | None = None,
) -> np.ndarray:
    """Image → crop ``[2, 3]`` matrix including an optional horizontal flip.

    With ``flip`` the result equals HRNet's recipe: mirror the whole image (x' = W - 1 - x),
    mirror the center the same way, then crop with ``get_affine_transform``. The crop
    parameters (center, scale, rot) are given in the *unflipped* image.

    Args:
      center, scale, rot, output_size: as for ``get_affine_transform``.
      flip: mirror horizontally.
      image_width: width W of the source image; required when ``flip``.
    """
    if not flip:
        return get_affine_transform(center, scale, rot, output_size)
    if image_width is None:
        raise ValueError("image_width is required when flip=True")
    c = np.asarray(center, dtype=np.float64).reshape(2)
    c_flipped = np.array([image_width - 1.0 - c[0], c[1]])
    return compose_affine(
        get_affine_transform(c_flipped, scale, rot, output_size), flip_matrix(image_width)
    )


def affine_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Applies a ``[2, 3]`` affine to points ``[..., 2]`` (x, y); returns float64 ``[..., 2]``."""
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def warp_crop(image: np.ndarray, m: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Crops ``image`` ``[H0, W0, C]`` (uint8) with ``m`` into ``[H, W, C]``, bilinear,
    zeros outside the image; ``output_size`` is ``(H, W)``."""
    out_h, out_w = output_size
    return cv2.warpAffine(image, m, (int(out_w), int(out_h)), flags=cv2.INTER_LINEAR)


def swap_left_right(values: np.ndarray, flip_pairs=FLIP_PAIRS) -> np.ndarray:
    """Returns a copy of ``values`` (joints on axis 0) with left/right joints exchanged."""
    out = np.array(values, copy=True)
    for a, b in flip_pairs:
        out[[a, b]] = out[[b, a]]
    return out


# ----------------------------------------------------------------------------- augmentation


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (defaults: the HRNet / PoseWarper recipe).

    flip_prob: probability of a horizontal flip (left/right joints swapped).
    rotation_factor: rotation ~ N(0, rotation_factor) degrees clipped to ±2·rotation_factor,
      applied with probability ``rotation_prob`` (0 otherwise).
    scale_factor: scale multiplied by N(1, scale_factor) clipped to [1 − sf, 1 + sf].
    half_body_prob: probability of a half-body crop, tried only when more than
      ``half_body_min_joints`` joints are labeled.
    half_body_padding: enlargement of the half-body box (1.5 as in HRNet).
    """

    flip_prob: float = 0.5
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    scale_factor: float = 0.35
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    half_body_padding: float = 1.5

    def __post_init__(self):
        for name in ("flip_prob", "rotation_prob", "half_body_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {v}")
        if self.rotation_factor < 0:
            raise ValueError(
                f"AugmentConfig.rotation_factor must be >= 0, got {self.rotation_factor}"
            )
        if not 0.0 <= self.scale_factor < 1.0:
            raise ValueError(
                f"AugmentConfig.scale_factor must be in [0, 1), got {self.scale_factor}"
            )
        if self.half_body_min_joints < 0:
            raise ValueError(
                f"AugmentConfig.half_body_min_joints must be >= 0, got {self.half_body_min_joints}"
            )
        if self.half_body_padding <= 0:
            raise ValueError(
                f"AugmentConfig.half_body_padding must be > 0, got {self.half_body_padding}"
            )


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """One sampled crop: center (x, y) and scale (sx, sy) float32 [2] in the unflipped image,
    rotation in degrees, horizontal flip, and whether the half-body crop was used."""

    center: np.ndarray
    scale: np.ndarray
    rotation: float
    flip: bool
    half_body: bool = False


def half_body_center_scale(
    joints: np.ndarray,
    labeled: np.ndarray,
    aspect_ratio: float,
    use_upper: bool,
    *,
    padding: float = 1.5,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Center/scale of a crop around the upper or lower body's labeled joints.

    Picks the upper body when ``use_upper`` and it has more than 2 labeled joints, else the
    lower body when it has more than 2, else the upper body. Returns None when the chosen
    part has fewer than 2 labeled joints.

    Args:
      joints: ``[J, >=2]`` (x, y, ...) image pixels (17-joint layout).
      labeled: bool ``[J]``.
      aspect_ratio: crop width / height.
      use_upper: the coin flip choosing the upper body.
      padding: enlargement of the joints' bounding box.

    Returns:
      (center float32 [2] = mean of the part's joints, scale float32 [2]) or None.
    """
    upper = [j for j in UPPER_BODY_JOINTS if labeled[j]]
    lower = [j for j in LOWER_BODY_JOINTS if labeled[j]]
    if use_upper and len(upper) > 2:
        sel = upper
    else:
        sel = lower if len(lower) > 2 else upper
    if len(sel) < 2:
        return None
    pts = np.asarray(joints, dtype=np.float32)[sel, :2]
    center = pts.mean(axis=0)
    w, h = (pts.max(axis=0) - pts.min(axis=0)).astype(np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / PIXEL_STD, h / PIXEL_STD], dtype=np.float32) * np.float32(padding)
    return center.astype(np.float32), scale


def sample_augmentation(
    rng: np.random.Generator,
    center: np.ndarray,
    scale: np.ndarray,
    joints: np.ndarray,
    labeled: np.ndarray,
    aspect_ratio: float,
    cfg: AugmentConfig,
) -> Augmentation:
    """Samples a training crop (HRNet's order: half body, scale, rotation, flip).

    The same six random numbers are drawn whatever the outcome, so one setting never shifts
    the others' draws. The half-body crop takes the upper or the lower body with equal odds
    (HRNet's code compares a normal variate with 0.5 there, favouring the upper body ~69%).

    Args:
      rng: the record's generator.
      center, scale: the box's crop, float32 [2] each.
      joints: ``[J, >=2]`` image pixels; ``labeled``: bool ``[J]``.
      aspect_ratio: crop width / height.
      cfg: probabilities and factors.
    """
    u_half, u_upper, n_scale, u_rot, n_rot, u_flip = (
        rng.random(),
        rng.random(),
        rng.standard_normal(),
        rng.random(),
        rng.standard_normal(),
        rng.random(),
    )
    c = np.asarray(center, dtype=np.float32).copy()
    s = np.asarray(scale, dtype=np.float32).copy()
    half = False
    if int(np.sum(labeled)) > cfg.half_body_min_joints and u_half < cfg.half_body_prob:
        hb = half_body_center_scale(
            joints, labeled, aspect_ratio, u_upper < 0.5, padding=cfg.half_body_padding
        )
        if hb is not None:
            c, s = hb
            half = True
    sf, rf = cfg.scale_factor, cfg.rotation_factor
    s = s * np.float32(np.clip(n_scale * sf + 1.0, 1.0 - sf, 1.0 + sf))
    rot = float(np.clip(n_rot * rf, -2.0 * rf, 2.0 * rf)) if u_rot < cfg.rotation_prob else 0.0
    flip = bool(u_flip < cfg.flip_prob)
    return Augmentation(center=c, scale=s, rotation=rot, flip=flip, half_body=half)


# ----------------------------------------------------------------------------- targets


def gaussian_targets(
    joints_xy: np.ndarray,
    joints_vis: np.ndarray,
    heatmap_size: tuple[int, int],
    image_size: tuple[int, int],
    sigma: float,
    encoding: str = "integer",
) -> tuple[np.ndarray, np.ndarray]:
    """HRNet's 'gaussian' training targets, or their sub-pixel form.

    With ``encoding="integer"`` (HRNet) joint j at crop pixel (x, y) is moved to heatmap pixel
    ``mu = floor(x / stride_x + 0.5)`` (likewise y; stride = image size / heatmap size per
    axis); with ``encoding="subpixel"`` (the unbiased encoding of DARK, Zhang et al., CVPR
    2020) ``mu = x / stride_x`` exactly, so the map keeps the joint's sub-pixel position
    (rounding moves a joint by up to half a heatmap pixel, a large error on small heatmaps:
    at 32x24 a heatmap pixel is about 0.4 head sizes). Its map is the unnormalised
    Gaussian ``exp(-((u - mu_x)^2 + (v - mu_y)^2) / (2 sigma^2))`` (peak 1 at mu, so exactly
    1 on the pixel grid only for "integer") on the square window ``|u - mu_x| <= 3 sigma,
    |v - mu_y| <= 3 sigma`` and 0 elsewhere. For integer 3·sigma and "integer" this is
    exactly HRNet's ``generate_target``.

    The weight is 0 for an unlabeled joint (``joints_vis <= 0``) and for a joint whose window
    holds no heatmap pixel (its map is then all zeros); 1 otherwise. (HRNet keeps weight 1
    when the window ends just one pixel before the border; here every weight-1 joint has a
    non-empty window. Rounding uses floor where HRNet's int() truncates toward zero; the two
    agree for every joint within half a pixel of the heatmap or inside it.)

    Args:
      joints_xy: ``[J, 2]`` crop-pixel (x, y).
      joints_vis: ``[J]``; > 0 means labeled.
      heatmap_size: ``(h, w)``.
      image_size: crop ``(H, W)``.
      sigma: Gaussian standard deviation in heatmap pixels, > 0.
      encoding: "integer" or "subpixel" (see above).

    Returns:
      target: float32 ``[h, w, J]`` (NHWC, joints last).
      target_weight: float32 ``[J]``.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if encoding not in TARGET_ENCODINGS:
        raise ValueError(f"encoding must be one of {TARGET_ENCODINGS}, got {encoding!r}")
    xy = np.asarray(joints_xy, dtype=np.float64).reshape(-1, 2)
    vis = np.asarray(joints_vis).reshape(-1)
    if vis.shape[0] != xy.shape[0]:
        raise ValueError(f"joints_vis has {vis.shape[0]} joints, joints_xy has {xy.shape[0]}")
    h, w = heatmap_size
    stride = np.array([image_size[1] / w, image_size[0] / h])  # (x, y)
    finite = np.all(np.isfinite(xy), axis=1)
    mu = np.where(finite[:, None], xy, -1e9) / stride  # [J, 2] (x, y)
    radius = 3.0 * sigma
    if encoding == "integer":
        mu = np.floor(mu + 0.5)
    # The window [mu - radius, mu + radius] holds a heatmap pixel on both axes.
    lo, hi = np.ceil(mu - radius), np.floor(mu + radius)
    inside = (hi[:, 0] >= np.maximum(lo[:, 0], 0)) & (lo[:, 0] <= w - 1)
    inside &= (hi[:, 1] >= np.maximum(lo[:, 1], 0)) & (lo[:, 1] <= h - 1)
    weight = ((vis > 0) & finite & inside).astype(np.float32)
    dx = np.arange(w)[:, None] - mu[None, :, 0]  # [w, J]
    dy = np.arange(h)[:, None] - mu[None, :, 1]  # [h, J]
    gx = np.where(np.abs(dx) <= radius, np.exp(-(dx**2) / (2 * sigma**2)), 0.0)
    gy = np.where(np.abs(dy) <= radius, np.exp(-(dy**2) / (2 * sigma**2)), 0.0)
    target = gy[:, None, :] * gx[None, :, :] * weight  # [h, w, J]
    return target.astype(np.float32), weight

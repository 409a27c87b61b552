"""Heatmap decoding, flip test and the back-map, against NumPy/cv2 references written from HRNet's
definitions (``get_max_preds`` + post-processing, ``flip_back`` + ``SHIFT_HEATMAP``,
``transform_preds``), loop by loop, in HRNet's NCHW layout.

Tolerances: decoded heatmap coordinates are multiples of 0.25 and compared exactly; image
coordinates against the float32 cv2 construction with atol 2e-3 px; flips exactly.
"""

from __future__ import annotations

import math

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posewarper_jax.data import transforms as T
from posewarper_jax.data.types import FLIP_PAIRS
from posewarper_jax.ops.heatmaps import (
    average_flip,
    decode_heatmaps,
    flip_back,
    heatmap_to_image_coords,
)

# ----------------------------------------------------------------------------- references


def ref_decode(hm_nchw: np.ndarray, zero_nonpositive: bool = True):
    """HRNet get_max_preds + the quarter-pixel post-processing, one joint at a time."""
    n, j, h, w = hm_nchw.shape
    coords = np.zeros((n, j, 2), np.float32)
    maxvals = np.zeros((n, j), np.float32)
    for a in range(n):
        for p in range(j):
            hm = hm_nchw[a, p]
            flat = hm.reshape(-1)
            k = int(np.argmax(flat))
            maxvals[a, p] = flat[k]
            x, y = float(k % w), float(math.floor(k / w))
            if zero_nonpositive and not flat[k] > 0:
                x, y = 0.0, 0.0
            px, py = int(math.floor(x + 0.5)), int(math.floor(y + 0.5))
            if 1 < px < w - 1 and 1 < py < h - 1:
                x += 0.25 * np.sign(hm[py][px + 1] - hm[py][px - 1])
                y += 0.25 * np.sign(hm[py + 1][px] - hm[py - 1][px])
            coords[a, p] = (x, y)
    return coords, maxvals


def ref_flip_back(hm_nchw: np.ndarray, pairs, shift: bool):
    out = hm_nchw[:, :, :, ::-1].copy()
    for a, b in pairs:
        out[:, [a, b]] = out[:, [b, a]]
    if shift:
        out[:, :, :, 1:] = out.copy()[:, :, :, 0:-1]
    return out


def ref_transform_preds(coords, center, scale, out_wh):
    """HRNet transform_preds: inverse of the three-point cv2 affine at the heatmap size."""
    src_w = scale[0] * 200.0
    dst_w, dst_h = out_wh
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = np.asarray(center) + np.array([0.0, -0.5 * src_w])
    dst[0] = [0.5 * dst_w, 0.5 * dst_h]
    dst[1] = [0.5 * dst_w, 0.5 * dst_h - 0.5 * dst_w]
    for m in (src, dst):
        d = m[0] - m[1]
        m[2] = m[1] + np.array([-d[1], d[0]], np.float32)
    trans = cv2.getAffineTransform(np.float32(dst), np.float32(src))
    return np.array([trans @ np.array([x, y, 1.0]) for x, y in coords])


def nhwc(hm_nchw):
    return np.ascontiguousarray(np.transpose(hm_nchw, (0, 2, 3, 1)))


def planted_heatmaps(rng, n=3, j=9, h=8, w=10):
    """Random maps plus hand-placed peaks that hit every branch of the step's conditions."""
    hm = rng.normal(size=(n, j, h, w)).astype(np.float32)
    cases = [
        (1, 4, 0.0),  # x == 1: no step
        (w - 2, 4, 0.0),  # x == w - 2: step
        (w - 1, 4, 0.0),  # x == w - 1: no step
        (5, 1, 0.0),  # y == 1: no step in x either
        (5, h - 2, 0.0),  # y == h - 2: step
        (0, 0, 0.0),  # corner
        (4, 3, 1.0),  # equal neighbours in x: sign 0
    ]
    for p, (x, y, tie) in enumerate(cases):
        hm[0, p] *= 0.1
        hm[0, p, y, x] = 5.0
        if tie:
            hm[0, p, y, x - 1] = hm[0, p, y, x + 1] = 2.0
    hm[1, 0] = -np.abs(hm[1, 0]) - 0.1  # negative maximum
    hm[1, 1] = 0.0  # all zero: maximum 0, argmax 0
    hm[1, 2] = 0.0
    hm[1, 2, 3, 6] = hm[1, 2, 5, 2] = 1.0  # two equal maxima: the first in row-major order wins
    hm[1, 3] = -1.0
    hm[1, 3, 4, 5] = -0.5  # negative, but the argmax is interior
    return hm


# ----------------------------------------------------------------------------- decoding


def test_decode_matches_hrnet_reference():
    hm = planted_heatmaps(np.random.default_rng(0))
    coords, maxvals = decode_heatmaps(jnp.asarray(nhwc(hm)))
    rc, rm = ref_decode(hm)
    np.testing.assert_array_equal(np.asarray(coords), rc)
    np.testing.assert_array_equal(np.asarray(maxvals), rm)
    assert coords.dtype == jnp.float32 and coords.shape == (3, 9, 2)
    # Spot checks written by hand.
    assert tuple(np.asarray(coords[0, 0])) == (1.0, 4.0)  # x == 1: no step
    assert tuple(np.asarray(coords[0, 3])) == (5.0, 1.0)  # y == 1: no step at all
    assert float(coords[0, 6, 0]) == 4.0  # sign(0): no move in x
    assert tuple(np.asarray(coords[1, 0])) == (0.0, 0.0)  # non-positive max -> (0, 0)
    assert tuple(np.asarray(coords[1, 2])) == (6.0, 3.0)  # first maximum


def test_decode_keep_argmax_for_nonpositive():
    hm = planted_heatmaps(np.random.default_rng(1))
    coords, _ = decode_heatmaps(jnp.asarray(nhwc(hm)), nonpositive="argmax")
    rc, _ = ref_decode(hm, zero_nonpositive=False)
    np.testing.assert_array_equal(np.asarray(coords), rc)
    # The interior negative peak keeps its argmax and gets its step (neighbours equal: none).
    assert tuple(np.asarray(coords[1, 3])) == (5.0, 4.0)
    with pytest.raises(ValueError, match="nonpositive"):
        decode_heatmaps(jnp.zeros((4, 4, 1)), nonpositive="clip")


def test_decode_jit_vmap_and_leading_dims():
    hm = planted_heatmaps(np.random.default_rng(2), n=4)
    x = jnp.asarray(nhwc(hm)).reshape(2, 2, 8, 10, 9)  # two leading dims
    c1, m1 = jax.jit(decode_heatmaps)(x)
    c2, m2 = jax.vmap(decode_heatmaps)(x)
    c3, m3 = decode_heatmaps(x)
    for c, m in ((c1, m1), (c2, m2)):
        np.testing.assert_array_equal(np.asarray(c), np.asarray(c3))
        np.testing.assert_array_equal(np.asarray(m), np.asarray(m3))
    rc, _ = ref_decode(hm)
    np.testing.assert_array_equal(np.asarray(c3).reshape(4, 9, 2), rc)


def test_decode_gaussian_target_round_trip():
    """A joint rendered as a training target decodes and maps back to where it was."""
    center, scale = T.box_to_center_scale([100.0, 50.0, 60.0, 120.0], 0.75)
    image_size, heatmap_size = (64, 48), (16, 12)
    joints = np.array([[130.0, 110.0], [112.0, 70.0], [150.0, 160.0]])
    m = T.get_affine_transform(center, scale, 0.0, image_size)
    crop = T.affine_points(joints, m)
    target, weight = T.gaussian_targets(crop, np.ones(3), heatmap_size, image_size, 2.0)
    assert weight.all()
    coords, maxvals = decode_heatmaps(jnp.asarray(target))
    np.testing.assert_allclose(np.asarray(maxvals), 1.0)
    back = np.asarray(heatmap_to_image_coords(coords, center, scale, heatmap_size))
    # The target sits on the nearest heatmap pixel: error <= half a stride per axis.
    stride_img = scale[0] * 200.0 / heatmap_size[1]
    assert np.all(np.abs(back - joints) <= 0.5 * stride_img + 1e-4)


# ----------------------------------------------------------------------------- flip test


@pytest.mark.parametrize("shift", [True, False])
def test_flip_back_matches_reference(shift):
    hm = np.random.default_rng(3).normal(size=(2, 17, 6, 5)).astype(np.float32)
    out = flip_back(jnp.asarray(nhwc(hm)), FLIP_PAIRS, shift=shift)
    np.testing.assert_array_equal(np.asarray(out), nhwc(ref_flip_back(hm, FLIP_PAIRS, shift)))


def test_flip_back_is_an_involution_without_shift_and_average():
    rng = np.random.default_rng(4)
    hm = jnp.asarray(rng.normal(size=(2, 6, 5, 17)).astype(np.float32))
    twice = flip_back(flip_back(hm, FLIP_PAIRS, shift=False), FLIP_PAIRS, shift=False)
    np.testing.assert_array_equal(np.asarray(twice), np.asarray(hm))
    hf = jnp.asarray(rng.normal(size=(2, 6, 5, 17)).astype(np.float32))
    avg = average_flip(hm, hf)
    ref = 0.5 * (
        np.asarray(hm)
        + nhwc(ref_flip_back(np.transpose(np.asarray(hf), (0, 3, 1, 2)), FLIP_PAIRS, True))
    )
    np.testing.assert_allclose(np.asarray(avg), ref, rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(jax.jit(average_flip)(hm, hf)), ref, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="flip pair"):
        flip_back(hm[..., :4], FLIP_PAIRS)


def test_flip_of_a_mirrored_map_recovers_the_peak():
    """A peak at heatmap x in the mirrored crop comes back at (w - 1 - x) + 1 with the shift."""
    h, w = 8, 10
    hm = np.zeros((1, h, w, 17), np.float32)
    hm[0, 3, 2, 5] = 1.0  # left shoulder, mirrored crop, x = 2
    out = np.asarray(flip_back(jnp.asarray(hm), FLIP_PAIRS))
    ys, xs = np.nonzero(out[0, :, :, 6])  # comes back as the right shoulder
    assert (ys.tolist(), xs.tolist()) == ([3], [w - 1 - 2 + 1])
    assert not out[0, :, :, 5].any()


# ----------------------------------------------------------------------------- back-map


def test_heatmap_to_image_matches_transform_preds():
    rng = np.random.default_rng(5)
    heatmap_size = (96, 72)
    for _ in range(3):
        center = rng.uniform(50, 400, size=2).astype(np.float32)
        scale = rng.uniform(0.5, 3.0, size=2).astype(np.float32)
        coords = rng.uniform(-2, 100, size=(17, 2)).astype(np.float32)
        got = np.asarray(heatmap_to_image_coords(coords, center, scale, heatmap_size))
        ref = ref_transform_preds(coords, center, scale, (heatmap_size[1], heatmap_size[0]))
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3)


def test_heatmap_to_image_inverts_rotated_crop_and_batches():
    rng = np.random.default_rng(6)
    heatmap_size = (16, 12)
    centers = rng.uniform(50, 300, size=(4, 2))
    scales = rng.uniform(0.5, 2.0, size=(4, 2))
    rots = np.array([0.0, 30.0, -75.0, 180.0])
    points = rng.uniform(0, 400, size=(4, 5, 2))
    hm_coords, refs = [], []
    for c, s, r, p in zip(centers, scales, rots, points):
        m = T.get_affine_transform(c, s, r, heatmap_size)
        hm_coords.append(T.affine_points(p, m))
        refs.append(
            T.affine_points(hm_coords[-1], T.get_affine_transform(c, s, r, heatmap_size, inv=True))
        )
    hm_coords = np.stack(hm_coords).astype(np.float32)
    fn = jax.jit(heatmap_to_image_coords, static_argnums=3)
    got = np.asarray(fn(hm_coords, centers, scales, heatmap_size, rots))
    np.testing.assert_allclose(got, points, rtol=0, atol=2e-3)  # inverse of the forward crop
    np.testing.assert_allclose(got, np.stack(refs), rtol=0, atol=2e-3)


# ----------------------------------------------------------------------------- DARK decoding


def ref_dark(hm_nchw: np.ndarray, sigma: float):
    """DARK's decoding written from its definition with cv2: zero-padded Gaussian blur
    (cv2.GaussianBlur, kernel 2 ceil(3 sigma) + 1), rescaled to the map's maximum, log, then
    the Newton step -H^-1 g at the argmax with central differences (g: step 1, H: step 2),
    one joint at a time; no step at the borders or where H is not negative definite."""
    n, j, h, w = hm_nchw.shape
    r = max(1, math.ceil(3 * sigma))
    coords = np.zeros((n, j, 2))
    for a in range(n):
        for p in range(j):
            m = hm_nchw[a, p].astype(np.float64)
            k = int(np.argmax(m))
            x, y = k % w, k // w
            padded = np.zeros((h + 2 * r, w + 2 * r))
            padded[r:-r, r:-r] = m
            blur = cv2.GaussianBlur(
                padded, (2 * r + 1, 2 * r + 1), sigma, borderType=cv2.BORDER_CONSTANT
            )
            blur = blur[r:-r, r:-r]
            blur *= m.max() / blur.max()
            lg = np.log(np.maximum(blur, 1e-10))
            cx, cy = float(x), float(y)
            if 1 < x < w - 2 and 1 < y < h - 2:
                g = np.array(
                    [0.5 * (lg[y, x + 1] - lg[y, x - 1]), 0.5 * (lg[y + 1, x] - lg[y - 1, x])]
                )
                dxx = 0.25 * (lg[y, x + 2] - 2 * lg[y, x] + lg[y, x - 2])
                dyy = 0.25 * (lg[y + 2, x] - 2 * lg[y, x] + lg[y - 2, x])
                dxy = 0.25 * (
                    lg[y + 1, x + 1] - lg[y - 1, x + 1] - lg[y + 1, x - 1] + lg[y - 1, x - 1]
                )
                hess = np.array([[dxx, dxy], [dxy, dyy]])
                if dxx < 0 and np.linalg.det(hess) > 0:
                    step = np.clip(-np.linalg.solve(hess, g), -1, 1)
                    cx, cy = cx + step[0], cy + step[1]
            coords[a, p] = (cx, cy)
    return coords


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_dark_decode_matches_reference_on_noisy_maps(sigma):
    """Blurred random blobs plus noise (network-like maps): the jnp decoding equals the cv2 /
    NumPy reference (atol 1e-4 heatmap px)."""
    rng = np.random.default_rng(11)
    n, j, h, w = 3, 17, 16, 12
    hm = np.zeros((n, j, h, w), np.float32)
    for a in range(n):
        for p in range(j):
            cx, cy = rng.uniform(-1, w), rng.uniform(-1, h)
            yy, xx = np.mgrid[0:h, 0:w]
            s = rng.uniform(0.8, 2.5)
            hm[a, p] = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
            hm[a, p] += 0.05 * rng.normal(size=(h, w))
    coords, maxvals = decode_heatmaps(jnp.asarray(nhwc(hm)), method="dark", sigma=sigma)
    np.testing.assert_allclose(np.asarray(coords), ref_dark(hm, sigma), rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(maxvals), hm.reshape(n, j, -1).max(-1), rtol=1e-6)


def test_dark_decode_recovers_subpixel_gaussians_where_quarter_cannot():
    """Sub-pixel targets decode to their exact centre with "dark" (within 0.01 px); the
    quarter-pixel step is off by up to 0.25 px per axis on the same maps."""
    rng = np.random.default_rng(12)
    hm_size, img = (32, 24), (128, 96)
    joints = np.stack([rng.uniform(12, 84, 17), rng.uniform(12, 116, 17)], axis=1)
    target, weight = T.gaussian_targets(joints, np.ones(17), hm_size, img, 1.0, "subpixel")
    assert weight.all()
    dark, _ = decode_heatmaps(jnp.asarray(target), method="dark", sigma=1.0)
    quarter, _ = decode_heatmaps(jnp.asarray(target))
    err_dark = np.abs(np.asarray(dark) - joints / 4)
    err_quarter = np.abs(np.asarray(quarter) - joints / 4)
    assert err_dark.max() < 0.01
    assert 0.1 < err_quarter.max() <= 0.25 + 1e-6


def test_dark_decode_border_flat_maps_and_errors():
    h, w = 8, 10
    hm = np.zeros((1, h, w, 4), np.float32)
    hm[0, 4, 1, 0] = 1.0  # x == 1: no step (its x - 2 neighbour is off the map)
    hm[0, 4, w - 2, 1] = 1.0  # x == w - 2: no step either
    hm[0, 3, 5, 2] = 1.0  # interior single spike: blurred into a symmetric peak, no step
    hm[0, ..., 3] = -1.0  # all negative: (0, 0) as HRNet's "zero" rule
    coords, _ = decode_heatmaps(jnp.asarray(hm), method="dark", sigma=1.0)
    np.testing.assert_allclose(
        np.asarray(coords)[0], [[1, 4], [w - 2, 4], [5, 3], [0, 0]], rtol=0, atol=1e-5
    )
    with pytest.raises(ValueError, match="sigma"):
        decode_heatmaps(jnp.asarray(hm), method="dark")
    with pytest.raises(ValueError, match="method"):
        decode_heatmaps(jnp.asarray(hm), method="soft")


@pytest.mark.parametrize("shift", [0.75, 0.3])
def test_flip_back_fractional_shift_matches_loop(shift):
    hm = np.random.default_rng(13).normal(size=(2, 17, 6, 5)).astype(np.float32)
    flipped = ref_flip_back(hm, FLIP_PAIRS, False)
    ref = flipped.copy()
    for u in range(1, hm.shape[3]):
        ref[..., u] = (1 - shift) * flipped[..., u] + shift * flipped[..., u - 1]
    out = flip_back(jnp.asarray(nhwc(hm)), FLIP_PAIRS, shift=shift)
    np.testing.assert_allclose(np.asarray(out), nhwc(ref), rtol=0, atol=1e-6)
    whole = flip_back(jnp.asarray(nhwc(hm)), FLIP_PAIRS, shift=1.0)
    np.testing.assert_array_equal(np.asarray(whole), nhwc(ref_flip_back(hm, FLIP_PAIRS, True)))
    with pytest.raises(ValueError, match="shift"):
        flip_back(jnp.asarray(nhwc(hm)), FLIP_PAIRS, shift=1.5)


def test_exact_flip_shift_aligns_subpixel_targets():
    """A joint's sub-pixel target in the mirrored crop, brought back with the shift 1 - 1/s,
    decodes (dark) where the joint is in the unmirrored crop; HRNet's one-pixel shift leaves
    it a quarter pixel off. Tolerance 0.03 px: linear interpolation is not an exact shift of a
    sigma = 1 Gaussian (it biases the centre by about 0.02 px)."""
    hm_size, img = (32, 24), (128, 96)
    joints = np.array([[37.3, 50.6], [60.1, 81.2]])
    mirrored = np.stack([img[1] - 1 - joints[:, 0], joints[:, 1]], axis=1)
    t, _ = T.gaussian_targets(mirrored, np.ones(2), hm_size, img, 1.0, "subpixel")
    pairs = [(0, 1)]
    for shift, off in ((0.75, 0.0), (True, 0.25)):
        back = flip_back(jnp.asarray(t), pairs, shift=shift)[..., ::-1]  # undo the swap
        coords, _ = decode_heatmaps(back, method="dark", sigma=1.0)
        np.testing.assert_allclose(np.asarray(coords)[:, 0], joints[:, 0] / 4 + off, atol=0.03)
        np.testing.assert_allclose(np.asarray(coords)[:, 1], joints[:, 1] / 4, atol=0.03)

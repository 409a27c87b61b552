"""Crops, augmentation sampling and Gaussian targets against independent references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from posewarper_jax.data import transforms as T
from posewarper_jax.data.types import FLIP_PAIRS, LOWER_BODY_JOINTS, NUM_JOINTS

# ----------------------------------------------------------------------------- references


def _hrnet_affine(center, scale, rot, out_wh, inv=False):
    """HRNet's three-point construction through cv2.getAffineTransform (float32 points)."""
    src_w = scale[0] * 200.0
    dst_w, dst_h = out_wh
    r = np.pi * rot / 180
    sn, cs = np.sin(r), np.cos(r)
    src_dir = np.array([0 * cs - (-0.5 * src_w) * sn, 0 * sn + (-0.5 * src_w) * cs])
    dst_dir = np.array([0, -0.5 * dst_w])
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + src_dir
    dst[0], dst[1] = [0.5 * dst_w, 0.5 * dst_h], np.array([0.5 * dst_w, 0.5 * dst_h]) + dst_dir

    def third(a, b):
        d = a - b
        return b + np.array([-d[1], d[0]], np.float32)

    src[2], dst[2] = third(src[0], src[1]), third(dst[0], dst[1])
    if inv:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def _hrnet_target(joints, vis, hm_wh, img_wh, sigma):
    """HRNet's generate_target loop (for joints at non-negative coordinates)."""
    hm_w, hm_h = hm_wh
    target = np.zeros((len(joints), hm_h, hm_w), np.float32)
    weight = np.array(vis, np.float32)
    tmp = sigma * 3
    stride = np.array(img_wh) / np.array(hm_wh)
    for j in range(len(joints)):
        mu_x = int(joints[j][0] / stride[0] + 0.5)
        mu_y = int(joints[j][1] / stride[1] + 0.5)
        ul = [int(mu_x - tmp), int(mu_y - tmp)]
        br = [int(mu_x + tmp + 1), int(mu_y + tmp + 1)]
        if ul[0] >= hm_w or ul[1] >= hm_h or br[0] < 0 or br[1] < 0:
            weight[j] = 0
            continue
        size = 2 * tmp + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, None]
        x0 = y0 = size // 2
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
        gx = max(0, -ul[0]), min(br[0], hm_w) - ul[0]
        gy = max(0, -ul[1]), min(br[1], hm_h) - ul[1]
        ix = max(0, ul[0]), min(br[0], hm_w)
        iy = max(0, ul[1]), min(br[1], hm_h)
        if weight[j] > 0.5:
            target[j][iy[0] : iy[1], ix[0] : ix[1]] = g[gy[0] : gy[1], gx[0] : gx[1]]
    return target.transpose(1, 2, 0), weight


def _blob_image(h, w, x, y, sigma=2.5):
    yy, xx = np.mgrid[0:h, 0:w]
    g = 255.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(g).astype(np.uint8)[:, :, None], 3, axis=2)


def _centroid(img):
    g = img[..., 0].astype(np.float64)
    g = np.where(g > 8, g, 0.0)
    yy, xx = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    return np.array([(g * xx).sum() / g.sum(), (g * yy).sum() / g.sum()])


# ----------------------------------------------------------------------------- boxes, affine


def test_box_to_center_scale_known_answers():
    c, s = T.box_to_center_scale([10, 20, 30, 40], 0.75)  # already 3:4
    np.testing.assert_allclose(c, [25, 40])
    np.testing.assert_allclose(s, [30 / 200 * 1.25, 40 / 200 * 1.25], rtol=1e-6)
    c, s = T.box_to_center_scale([0, 0, 100, 50], 0.75)  # wide: height grows
    np.testing.assert_allclose(c, [50, 25])
    np.testing.assert_allclose(s, [0.5 * 1.25, 100 / 0.75 / 200 * 1.25], rtol=1e-6)
    _, s = T.box_to_center_scale([0, 0, 10, 100], 0.75, padding=1.0)  # tall: width grows
    np.testing.assert_allclose(s, [75 / 200, 0.5], rtol=1e-6)


@pytest.mark.parametrize("rot", [0.0, 30.0, -75.0, 90.0])
def test_affine_matches_hrnet_three_point_construction(rot):
    rng = np.random.default_rng(0)
    center = np.array([123.4, 87.6])
    scale = np.array([0.9, 1.2])
    m = T.get_affine_transform(center, scale, rot, (64, 48))
    m_ref = _hrnet_affine(center, scale, rot, (48, 64))
    pts = rng.uniform(0, 300, size=(20, 2))
    # cv2 solves from float32 points: agree to 1e-3 px over a 300 px image.
    np.testing.assert_allclose(T.affine_points(pts, m), T.affine_points(pts, m_ref), atol=1e-3)
    mi = T.get_affine_transform(center, scale, rot, (64, 48), inv=True)
    mi_ref = _hrnet_affine(center, scale, rot, (48, 64), inv=True)
    q = rng.uniform(0, 64, size=(20, 2))
    np.testing.assert_allclose(T.affine_points(q, mi), T.affine_points(q, mi_ref), atol=1e-3)


def test_inverse_maps_back():
    rng = np.random.default_rng(1)
    for _ in range(10):
        c = rng.uniform(0, 500, 2)
        s = rng.uniform(0.2, 3.0, 2)
        rot = rng.uniform(-90, 90)
        m = T.get_affine_transform(c, s, rot, (96, 72))
        mi = T.get_affine_transform(c, s, rot, (96, 72), inv=True)
        p = rng.uniform(-50, 550, (30, 2))
        np.testing.assert_allclose(T.affine_points(T.affine_points(p, m), mi), p, atol=1e-4)
        mf = T.crop_transform(c, s, rot, (96, 72), flip=True, image_width=640)
        back = T.affine_points(T.affine_points(p, mf), T.invert_affine(mf))
        np.testing.assert_allclose(back, p, atol=1e-4)


@pytest.mark.parametrize(
    "center,scale,rot,flip",
    [
        ((80.0, 60.0), 0.4, 0.0, False),
        ((90.0, 55.0), 0.3, 37.0, False),
        ((75.0, 70.0), 0.5, -80.0, True),
        ((85.0, 65.0), 0.25, 15.0, True),
    ],
)
def test_keypoint_lands_where_the_content_lands(center, scale, rot, flip):
    h, w = 120, 160
    dot = np.array([83.3, 61.7])
    img = _blob_image(h, w, *dot)
    m = T.crop_transform(
        np.array(center), np.array([scale, scale]), rot, (64, 48), flip=flip, image_width=w
    )
    crop = T.warp_crop(img, m, (64, 48))
    assert crop.shape == (64, 48, 3) and crop.dtype == np.uint8
    # Bilinear resampling keeps a symmetric blob's centroid (measured error ~0.02 px).
    np.testing.assert_allclose(_centroid(crop), T.affine_points(dot, m), atol=0.1)


def test_rotation_is_counter_clockwise_on_screen():
    m = T.get_affine_transform([100.0, 100.0], [0.5, 0.5], 90.0, (64, 48))
    # A point right of the center ends up above the crop center (y down).
    u, v = T.affine_points(np.array([110.0, 100.0]), m)
    k = 48 / 100.0
    np.testing.assert_allclose([u, v], [24.0, 32.0 - 10 * k], atol=1e-9)


def test_flip_matches_mirroring_the_image_then_cropping():
    h, w = 90, 130
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    c, s, rot = np.array([70.0, 40.0]), np.array([0.35, 0.35]), 20.0
    mirrored = np.ascontiguousarray(img[:, ::-1])
    # HRNet convention: x' = W - 1 - x for the image, the center and the joints.
    assert np.array_equal(mirrored[:, w - 1 - 17], img[:, 17])
    m_ref = T.get_affine_transform(np.array([w - 1 - c[0], c[1]]), s, rot, (64, 48))
    m = T.crop_transform(c, s, rot, (64, 48), flip=True, image_width=w)
    a = T.warp_crop(img, m, (64, 48)).astype(int)
    b = T.warp_crop(mirrored, m_ref, (64, 48)).astype(int)
    assert np.abs(a - b).max() <= 1  # cv2's fixed-point bilinear weights

    joints = rng.uniform(0, 100, (NUM_JOINTS, 2))
    got = T.swap_left_right(T.affine_points(joints, m))
    flipped = joints.copy()
    flipped[:, 0] = w - 1 - flipped[:, 0]
    for a_, b_ in FLIP_PAIRS:
        flipped[[a_, b_]] = flipped[[b_, a_]]
    np.testing.assert_allclose(got, T.affine_points(flipped, m_ref), atol=1e-9)
    # left_shoulder (5) and right_shoulder (6) swapped, nose (0) kept.
    sw = T.swap_left_right(np.arange(NUM_JOINTS))
    assert sw[5] == 6 and sw[6] == 5 and sw[0] == 0 and sw[15] == 16


# ----------------------------------------------------------------------------- augmentation


def test_half_body_center_scale():
    joints = np.zeros((NUM_JOINTS, 3), np.float32)
    joints[:, 0] = np.arange(NUM_JOINTS) * 10.0
    joints[:, 1] = np.arange(NUM_JOINTS) * 5.0
    labeled = np.ones(NUM_JOINTS, bool)
    c, s = T.half_body_center_scale(joints, labeled, 0.75, use_upper=True, padding=1.5)
    up = joints[:11, :2]
    np.testing.assert_allclose(c, up.mean(0), rtol=1e-6)
    w, h = up.max(0) - up.min(0)  # 100, 50 -> wide: h = w / 0.75
    np.testing.assert_allclose(s, [w / 200 * 1.5, w / 0.75 / 200 * 1.5], rtol=1e-6)
    c, _ = T.half_body_center_scale(joints, labeled, 0.75, use_upper=False)
    np.testing.assert_allclose(c, joints[list(LOWER_BODY_JOINTS), :2].mean(0), rtol=1e-6)
    only_two_upper = np.zeros(NUM_JOINTS, bool)
    only_two_upper[[0, 1]] = True  # the lower body is empty: falls back to 2 upper joints
    assert T.half_body_center_scale(joints, only_two_upper, 0.75, use_upper=False) is not None
    only_one = np.zeros(NUM_JOINTS, bool)
    only_one[3] = True
    assert T.half_body_center_scale(joints, only_one, 0.75, use_upper=True) is None


def _replay(seed, center, scale, n_labeled, cfg):
    """The documented rule, restated from the same six draws."""
    rng = np.random.default_rng(seed)
    u_half, _, n_s, u_rot, n_rot, u_flip = (
        rng.random(),
        rng.random(),
        rng.standard_normal(),
        rng.random(),
        rng.standard_normal(),
        rng.random(),
    )
    half = n_labeled > cfg.half_body_min_joints and u_half < cfg.half_body_prob
    mult = min(max(n_s * cfg.scale_factor + 1, 1 - cfg.scale_factor), 1 + cfg.scale_factor)
    rot = min(max(n_rot * cfg.rotation_factor, -2 * cfg.rotation_factor), 2 * cfg.rotation_factor)
    rot = rot if u_rot < cfg.rotation_prob else 0.0
    return half, mult, rot, u_flip < cfg.flip_prob


@pytest.mark.parametrize("n_labeled", [17, 8])
def test_sample_augmentation_rule_and_frequencies(n_labeled):
    cfg = T.AugmentConfig()
    joints = np.stack(
        [np.linspace(10, 90, NUM_JOINTS), np.linspace(5, 150, NUM_JOINTS), np.ones(NUM_JOINTS)], 1
    )
    labeled = np.arange(NUM_JOINTS) < n_labeled
    center, scale = np.array([50.0, 80.0], np.float32), np.array([0.6, 0.8], np.float32)
    halves, rots, flips, mults = [], [], [], []
    for seed in range(2000):
        a = T.sample_augmentation(
            np.random.default_rng(seed), center, scale, joints, labeled, 0.75, cfg
        )
        half, mult, rot, flip = _replay(seed, center, scale, n_labeled, cfg)
        assert a.half_body == half and a.flip == flip
        assert a.rotation == pytest.approx(rot, abs=1e-9)
        if not half:
            np.testing.assert_allclose(a.scale, scale * mult, rtol=1e-6)
            np.testing.assert_array_equal(a.center, center)
        halves.append(half)
        rots.append(a.rotation)
        flips.append(a.flip)
        mults.append(mult)
    rots, mults = np.array(rots), np.array(mults)
    assert np.all(np.abs(rots) <= 90) and np.all((mults >= 0.65) & (mults <= 1.35))
    # Frequencies over 2000 draws: tolerance 0.05 (> 4 standard deviations).
    assert abs(np.mean(rots != 0) - 0.6) < 0.05
    assert abs(np.mean(flips) - 0.5) < 0.05
    assert abs(np.mean(halves) - (0.3 if n_labeled > 8 else 0.0)) < 0.05


def test_augment_config_validation():
    with pytest.raises(ValueError, match="flip_prob"):
        T.AugmentConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match="scale_factor"):
        T.AugmentConfig(scale_factor=1.0)
    with pytest.raises(ValueError, match="rotation_factor"):
        T.AugmentConfig(rotation_factor=-1)


# ----------------------------------------------------------------------------- targets


@pytest.mark.parametrize("encoding", ["integer", "subpixel"])
def test_gaussian_targets_direct_formula(encoding):
    """Pixel loop: the Gaussian on the rounded ("integer") or exact ("subpixel") x / stride,
    window |d| <= 3 sigma, weight 1 where the window holds a heatmap pixel (atol 1e-6)."""
    rng = np.random.default_rng(3)
    hm, img = (24, 18), (96, 72)
    for sigma in (1.0, 1.5, 2.0, 3.0):
        joints = rng.uniform(-30, 120, (NUM_JOINTS, 2))
        vis = rng.random(NUM_JOINTS) < 0.8
        target, weight = T.gaussian_targets(joints, vis, hm, img, sigma, encoding)
        assert target.shape == (24, 18, NUM_JOINTS) and target.dtype == np.float32
        assert weight.shape == (NUM_JOINTS,) and weight.dtype == np.float32
        for j in range(NUM_JOINTS):
            mx, my = joints[j] / 4
            if encoding == "integer":
                mx, my = np.floor(mx + 0.5), np.floor(my + 0.5)
            ref = np.zeros(hm)
            for v in range(hm[0]):
                for u in range(hm[1]):
                    if abs(u - mx) <= 3 * sigma and abs(v - my) <= 3 * sigma:
                        ref[v, u] = np.exp(-((u - mx) ** 2 + (v - my) ** 2) / (2 * sigma**2))
            expect_w = float(vis[j] and ref.any())
            assert weight[j] == expect_w, (sigma, j)
            np.testing.assert_allclose(target[..., j], ref * expect_w, atol=1e-6)
            if encoding == "integer" and expect_w and 0 <= mx < hm[1] and 0 <= my < hm[0]:
                assert target[int(my), int(mx), j] == pytest.approx(1.0)


@pytest.mark.parametrize("sigma", [1, 2, 3])
def test_gaussian_targets_equal_hrnet_loop(sigma):
    rng = np.random.default_rng(sigma)
    joints = rng.uniform(0, 100, (NUM_JOINTS, 2))  # HRNet's int() is floor here
    vis = (rng.random(NUM_JOINTS) < 0.8).astype(np.float32)
    target, weight = T.gaussian_targets(joints, vis, (24, 18), (96, 72), sigma)
    ref_t, ref_w = _hrnet_target(joints, vis, (18, 24), (72, 96), sigma)
    np.testing.assert_allclose(target, ref_t, atol=1e-6)
    np.testing.assert_array_equal(weight, ref_w)


def test_gaussian_targets_weight_zero_cases():
    hm, img, sigma = (16, 12), (64, 48), 1.0
    joints = np.array(
        [
            [20.0, 30.0],  # inside, labeled
            [20.0, 30.0],  # inside, unlabeled
            [-14.0, 30.0],  # x/4 + 0.5 = -3: window [-6, 0] touches column 0
            [-18.0, 30.0],  # window [-7, -1]: fully left
            [54.0, 30.0],  # mu_x = 14, window [11, 17]: touches column 11
            [20.0, 64 + 18.0],  # fully below
            [np.nan, 3.0],  # not finite
        ]
    )
    vis = np.array([1, 0, 1, 1, 1, 1, 1])
    target, weight = T.gaussian_targets(joints, vis, hm, img, sigma)
    np.testing.assert_array_equal(weight, [1, 0, 1, 0, 1, 0, 0])
    assert target[..., 1].max() == 0 and target[..., 3].max() == 0 and target[..., 6].max() == 0
    # The partly visible window: column 0 holds the Gaussian's tail at distance 3.
    np.testing.assert_allclose(target[8, 0, 2], np.exp(-9 / 2), rtol=1e-6)
    assert target[..., 2].max() == pytest.approx(np.exp(-9 / 2))
    np.testing.assert_allclose(target[8, 11, 4], np.exp(-9 / 2), rtol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        T.gaussian_targets(joints, vis, hm, img, -1.0)


def test_subpixel_targets_border_and_bad_encoding():
    hm, img, sigma = (16, 12), (64, 48), 1.0
    joints = np.array(
        [
            [-11.9, 30.0],  # x/4 = -2.975: window reaches u = 0.025 -> column 0 holds a value
            [-12.1, 30.0],  # x/4 = -3.025: window ends at u = -0.025 -> no pixel
            [4 * 11 + 11.9, 30.0],  # 2.975 px right of the last column: still one column
            [20.0, 4 * 15 + 12.5],  # 3.125 px below the last row: nothing
        ]
    )
    target, weight = T.gaussian_targets(joints, np.ones(4), hm, img, sigma, "subpixel")
    np.testing.assert_array_equal(weight, [1, 0, 1, 0])
    # row 7 is 0.5 px from y / 4 = 7.5
    np.testing.assert_allclose(target[7, 0, 0], np.exp(-(2.975**2 + 0.5**2) / 2), rtol=1e-5)
    with pytest.raises(ValueError, match="encoding"):
        T.gaussian_targets(joints, np.ones(4), hm, img, sigma, "rounded")

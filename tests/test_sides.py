"""Left/right confusion (``apps.sides``) on hand-built people: facing from the ground-truth
shoulders, correct / swapped / collapsed pairs counted exactly, close pairs left out, people
matched whatever their order."""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest

from posewarper_jax.apps import sides
from posewarper_jax.data.types import FLIP_PAIRS, Frame, Person, Video, VideoDataset

HEAD = np.array([0.0, 0.0, 30.0, 40.0], np.float32)  # head size 0.6 * 50 = 30 px


def _person(x0: float, shoulder_dx: float, labeled=None) -> Person:
    """A person at x0: joint k at (x0 + 10 k, 5 k) except the left/right pairs, put at
    x0 + 300 +- (pair index + 1) * 20 (left at +: image right), and the shoulders at
    x0 + 300 +- shoulder_dx / 2 (left at +)."""
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = x0 + 10 * np.arange(17)
    kp[:, 1] = 5 * np.arange(17)
    kp[:, 2] = 1
    for i, (left, right) in enumerate(FLIP_PAIRS):
        kp[left, 0], kp[right, 0] = x0 + 300 + (i + 1) * 20, x0 + 300 - (i + 1) * 20
        kp[left, 1] = kp[right, 1] = 100 + 10 * i
    kp[5, 0], kp[6, 0] = x0 + 300 + shoulder_dx / 2, x0 + 300 - shoulder_dx / 2
    if labeled is not None:
        kp[:, 2] = 0
        kp[list(labeled), 2] = 1
    return Person(keypoints=kp, bbox=np.array([x0, 0, 600, 300], np.float32), head_bbox=HEAD)


def _exchange(p: Person, pairs=FLIP_PAIRS) -> Person:
    q = copy.deepcopy(p)
    for a, b in pairs:
        q.keypoints[[a, b]] = q.keypoints[[b, a]]
    return q


def _data(people_per_frame, name="v") -> VideoDataset:
    frames = [
        Frame(path=f"{t}.jpg", index=t, image_id=t, is_labeled=True, people=list(people))
        for t, people in enumerate(people_per_frame)
    ]
    return VideoDataset(videos=[Video(name=name, frames=frames, source="")], fmt="posetrack18")


def test_facing_reads_the_shoulders_in_head_sizes():
    assert sides.facing(_person(0, 60)) == "front"  # left shoulder 2 head sizes to the right
    assert sides.facing(_person(0, -60)) == "back"
    assert sides.facing(_person(0, 14)) == "side"  # 0.47 head sizes: within +-0.5
    assert sides.facing(_person(0, -16)) == "back"  # 0.53
    assert sides.facing(_person(0, 60, labeled=[5])) == "unknown"
    no_head = _person(0, 60)
    no_head.head_bbox = None
    assert sides.facing(no_head) == "unknown"


def test_counts_swaps_by_pair_and_facing():
    front, back = _person(0, 60), _person(2000, -60)
    gt = _data([[front, back], [front]])
    # Frame 0: the front person with elbows and knees exchanged, the back person with every
    # pair exchanged, listed in the other order; frame 1: both wrists on the left one.
    collapsed = copy.deepcopy(front)
    collapsed.keypoints[10] = collapsed.keypoints[9]
    pred = _data([[_exchange(back), _exchange(front, [(7, 8), (13, 14)])], [collapsed]])
    out = sides.side_swaps(gt, pred)
    assert out["people"] == {"front": 2, "side": 0, "back": 1, "unknown": 0}

    def cell(counted, correct, swapped, collapsed):
        return {
            "counted": counted, "correct": correct, "swapped": swapped, "collapsed": collapsed,
            "correct_rate": correct / counted, "swapped_rate": swapped / counted,
            "collapsed_rate": collapsed / counted,
        }  # fmt: skip

    assert out["pairs"]["elbow"]["front"] == cell(2, 1, 1, 0)
    assert out["pairs"]["knee"]["front"] == cell(2, 1, 1, 0)
    assert out["pairs"]["wrist"]["front"] == cell(2, 1, 0, 1)
    assert out["pairs"]["shoulder"]["back"] == cell(1, 0, 1, 0)
    assert out["all"]["back"] == cell(7, 0, 7, 0)
    assert out["all"]["front"] == cell(14, 11, 2, 1)
    assert out["all"]["side"]["counted"] == 0 and out["all"]["side"]["swapped_rate"] is None
    table = sides.render_sides("t", out)
    assert "| elbow | 50 / 0 (2) | – | 100 / 0 (1) | – |" in table
    assert "| wrist | 0 / 50 (2) | – | 100 / 0 (1) | – |" in table
    assert "| all | 14 / 7 (14) | – | 100 / 0 (7) | – |" in table


def test_close_and_unlabeled_pairs_are_not_counted():
    p = _person(0, 60, labeled=[3, 4, 5, 6, 7])  # ears and shoulders labeled, one elbow
    p.keypoints[6, :2] = p.keypoints[5, :2] + [5.0, 0.0]  # shoulders 5 px apart < 6 px
    out = sides.side_swaps(_data([[p]]), _data([[_exchange(p)]]))
    # Facing "side" (shoulders 0.17 head sizes apart); the ears only (the elbow pair has one
    # label, the shoulders are 5 px < 0.2 head sizes apart).
    assert out["people"]["side"] == 1
    assert out["all"]["side"]["counted"] == 1 and out["all"]["side"]["swapped"] == 1
    assert out["pairs"]["ear"]["side"]["swapped"] == 1
    out = sides.side_swaps(_data([[p]]), _data([[_exchange(p)]]), min_separation=0.1)
    assert out["pairs"]["shoulder"]["side"]["counted"] == 1
    assert out["pairs"]["shoulder"]["side"]["swapped"] == 1


def test_a_frame_without_labels_or_predictions_and_bad_inputs():
    gt = _data([[_person(0, 60)], [_person(0, 60)]])
    gt.videos[0].frames[1].is_labeled = False
    pred = _data([[], [_person(0, 60)]])  # nothing predicted on frame 0
    out = sides.side_swaps(gt, pred)
    assert out["people"]["front"] == 0 and out["all"]["front"]["counted"] == 0
    with pytest.raises(ValueError, match="'v' has no predictions"):
        sides.side_swaps(gt, _data([[], []], name="w"))
    with pytest.raises(ValueError, match="2 frames, its predictions 1"):
        sides.side_swaps(gt, _data([[]]))


# ----------------------------------------------------------------------------- sides by truth


def _blob(h, w, x, y, sigma=1.0):
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def _expected_assignment(hm, joints, pairs, radius):
    """NumPy loops: the two peaks of each labeled pair's mean map, windows, sides by truth."""
    b, h, w, _ = hm.shape
    out = hm.copy()
    for n in range(b):
        for left, right in pairs:
            if joints[n, left, 2] <= 0 or joints[n, right, 2] <= 0:
                continue
            s = 0.5 * (hm[n, :, :, left] + hm[n, :, :, right])
            y1, x1 = np.unravel_index(np.argmax(s), s.shape)
            in1 = np.zeros((h, w), bool)
            in1[max(y1 - radius, 0) : y1 + radius + 1, max(x1 - radius, 0) : x1 + radius + 1] = 1
            y2, x2 = np.unravel_index(np.argmax(np.where(in1, -np.inf, s)), s.shape)
            in2 = np.zeros((h, w), bool)
            in2[max(y2 - radius, 0) : y2 + radius + 1, max(x2 - radius, 0) : x2 + radius + 1] = 1
            in2 &= ~in1
            p1, p2 = np.array([x1, y1], float), np.array([x2, y2], float)
            gl, gr = joints[n, left, :2], joints[n, right, :2]
            d = np.linalg.norm
            if d(p1 - gl) + d(p2 - gr) <= d(p1 - gr) + d(p2 - gl):
                wl, wr = in1, in2
            else:
                wl, wr = in2, in1
            out[n, :, :, left] = np.where(wl, s, 0.0)
            out[n, :, :, right] = np.where(wr, s, 0.0)
    return out


def test_sides_by_truth_put_each_joint_of_a_collapsed_pair_on_its_own_peak():
    h, w, pairs = 16, 12, ((1, 2), (3, 4))
    collapsed = _blob(h, w, 3, 8) + 0.8 * _blob(h, w, 9, 8)  # both channels alike
    hm = np.zeros((3, h, w, 5), np.float32)
    hm[..., 0] = _blob(h, w, 6, 2)  # an unpaired joint
    hm[..., 1] = hm[..., 2] = collapsed
    hm[..., 3] = _blob(h, w, 2, 13)
    hm[..., 4] = 0.9 * _blob(h, w, 2, 13) + 0.1 * _blob(h, w, 10, 13)
    joints = np.zeros((3, 5, 3), np.float32)
    joints[:, :, 2] = 1
    joints[0, 1], joints[0, 2] = (9.2, 8.1, 1), (2.9, 7.8, 1)  # left on the weaker peak
    joints[1, 1], joints[1, 2] = (3.1, 8.0, 1), (8.8, 8.0, 1)  # left on the stronger one
    joints[2, 1], joints[2, 2] = (9.0, 8.0, 1), (3.0, 8.0, 0)  # right unlabeled: unchanged
    joints[:, 3], joints[:, 4] = (10.0, 13.0, 1), (2.0, 13.0, 1)
    got = np.asarray(sides.assign_pairs_by_truth(hm, joints, pairs, radius=2))
    want = _expected_assignment(hm.astype(np.float64), joints, pairs, 2)
    np.testing.assert_allclose(got, want, atol=1e-6)  # float32 against float64 loops

    def argmax(m):
        y, x = np.unravel_index(np.argmax(m), m.shape)
        return int(x), int(y)

    assert argmax(got[0, :, :, 1]) == (9, 8) and argmax(got[0, :, :, 2]) == (3, 8)
    assert argmax(got[1, :, :, 1]) == (3, 8) and argmax(got[1, :, :, 2]) == (9, 8)
    np.testing.assert_array_equal(got[2, :, :, 1:3], hm[2, :, :, 1:3])
    np.testing.assert_array_equal(got[..., 0], hm[..., 0])
    # The second pair: the left joint takes the faint peak at x = 10, where it belongs.
    assert argmax(got[0, :, :, 3]) == (10, 13) and argmax(got[0, :, :, 4]) == (2, 13)
    # One joint per window: the two channels of an assigned pair never share a pixel.
    assert not np.any((got[:2, ..., 1] != 0) & (got[:2, ..., 2] != 0))


def test_sides_by_truth_windows_that_overlap_go_to_the_first_peak():
    h, w = 12, 12
    hm = np.zeros((1, h, w, 3), np.float32)
    hm[0, :, :, 1] = hm[0, :, :, 2] = _blob(h, w, 4, 5) + 0.7 * _blob(h, w, 7, 5)
    joints = np.array([[[0, 0, 0], [7, 5, 1], [4, 5, 1]]], np.float32)
    got = np.asarray(sides.assign_pairs_by_truth(hm, joints, ((1, 2),), radius=2))
    np.testing.assert_allclose(got, _expected_assignment(hm, joints, ((1, 2),), 2), atol=1e-6)
    assert got[0, 5, 4, 2] > 0 and got[0, 5, 4, 1] == 0  # the shared column x = 5, 6: right's
    assert not np.any((got[..., 1] != 0) & (got[..., 2] != 0))


class _PoolModel:
    """A stand-in for PoseWarper's ``heatmaps`` method: 4x4 mean pools of the red channel,
    one map per joint, shifted by the joint's index (so that the channels differ)."""

    def apply(self, variables, frames, train, method):
        assert method == "heatmaps" and not train
        x = jnp.asarray(frames, jnp.float32)[..., 0] / 255.0  # [B, T, H, W]
        b, t, hh, ww = x.shape
        pooled = x.reshape(b, t, hh // 4, 4, ww // 4, 4).mean(axis=(3, 5))
        return pooled[..., None] + 0.01 * jnp.arange(17.0) + variables["bias"]


def test_truth_assigned_fn_scales_crop_joints_to_the_heatmap_and_flips_first():
    from posewarper_jax.apps import inference
    from posewarper_jax.ops.heatmaps import average_flip

    model, variables = _PoolModel(), {"bias": jnp.float32(0.0)}
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(2, 1, 64, 32, 3), dtype=np.uint8)
    joints = rng.uniform(4, 30, size=(2, 17, 3)).astype(np.float32)
    joints[..., 2] = 1
    batch = {"image": jnp.asarray(image), "joints": joints}
    to_maps = np.array([8 / 32, 16 / 64, 1], np.float32)  # crop pixels -> 16x8 heatmap pixels
    plain = inference.single_frame_fn(model)(variables, batch)
    got = sides.truth_assigned_fn(model, False, "dark")(variables, batch)
    assert sorted(got) == ["decoded", "sides_by_truth"]
    np.testing.assert_array_equal(np.asarray(got["decoded"]), np.asarray(plain))
    want = sides.assign_pairs_by_truth(plain, joints * to_maps)
    np.testing.assert_allclose(np.asarray(got["sides_by_truth"]), np.asarray(want), rtol=1e-6)
    # With the flip test the mirrored crop's maps are averaged in before the assignment.
    shift = inference.flip_shift("dark", 32, 8)
    mirrored = inference.single_frame_fn(model)(
        variables, inference.flip_batch(batch, FLIP_PAIRS, shift)
    )
    averaged = average_flip(plain, mirrored, FLIP_PAIRS, shift=shift)
    got = sides.truth_assigned_fn(model, True, "dark")(variables, batch)
    np.testing.assert_allclose(np.asarray(got["decoded"]), np.asarray(averaged), rtol=1e-6)
    want = sides.assign_pairs_by_truth(averaged, joints * to_maps)
    np.testing.assert_allclose(np.asarray(got["sides_by_truth"]), np.asarray(want), rtol=1e-6)
    assert sides.truth_assigned_fn(model, True, "dark") is sides.truth_assigned_fn(
        model, True, "dark"
    )


def test_render_side_cost_gives_both_rows():
    cost = {
        "decoded": {"Head": 78.0, "Shoulder": 26.0, "Total": 41.3},
        "sides_by_truth": {"Head": 79.5, "Shoulder": 48.0, "Total": 54.9},
    }
    text = sides.render_side_cost("stage1", cost)
    assert "| as the report decodes | 78.0 | 26.0 | 41.3 |" in text
    assert "| each pair's two peaks, sides from the ground truth | 79.5 | 48.0 | 54.9 |" in text

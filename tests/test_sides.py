"""Left/right confusion (``apps.sides``) on hand-built people: facing from the ground-truth
shoulders, correct / swapped / collapsed pairs counted exactly, close pairs left out, people
matched whatever their order."""

from __future__ import annotations

import copy

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

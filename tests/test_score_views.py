"""The score views of propagation (PCKh@0.5, mAP with constant scores, the split by |δ|), the
baselines' joint scores (copy: 1/|δ|; Farneback: forward-backward consistency) and the
report's section, on hand-built cases with hand-computed answers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from posewarper_jax.apps import baselines, propagation, report, report_scoring
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset
from posewarper_jax.eval import score_views
from posewarper_jax.eval.posetrack_map import (
    COLUMNS,
    POSEVAL_JOINT_NAMES,
    posetrack_joint_metrics,
    posetrack_map,
)

HEAD = np.array([0.0, 0.0, 30.0, 40.0], np.float32)  # diagonal 50: head size 30, PCKh radius 15
NOSE, L_SHO, R_SHO, L_ELB = 0, 5, 6, 7  # 17-joint slots


def _pose(x0: float, y0: float) -> np.ndarray:
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    kp[:, 0] = x0 + 10.0 * np.arange(NUM_JOINTS)
    kp[:, 1] = y0
    kp[:, 2] = 1
    kp[[3, 4]] = 0  # ears: never scored
    return kp


def _gt(kp: np.ndarray, track: int = 1) -> Person:
    return Person(keypoints=kp, bbox=np.array([0, 0, 10, 10], np.float32), head_bbox=HEAD,
                  track_id=track)  # fmt: skip


def _pred(kp: np.ndarray, score: float = 0.5) -> Person:
    scores = np.where(kp[:, 2] > 0, score, 0.0).astype(np.float32)
    return Person(keypoints=kp, bbox=np.array([0, 0, 10, 10], np.float32), keypoint_scores=scores)


def _data(frames_people, ignore=None) -> VideoDataset:
    frames = []
    for i, people in enumerate(frames_people):
        regions = [] if ignore is None or i not in ignore else [ignore[i]]
        frames.append(Frame(f"/x/{i:06d}.jpg", i, i, bool(people), people, regions))
    return VideoDataset([Video("v", frames, "v.json")], "posetrack18")


# ----------------------------------------------------------------------------- PCKh


def test_pckh_hand_computed():
    """Frame 0: person g0 predicted with the nose 14 px off (hit), the left shoulder 15 px off
    (hit: <=), the right shoulder 16 px off (miss), the left elbow missing (miss); person g1
    not predicted (15 misses) but its nose inside an ignore region (not counted); a stray
    prediction far from everyone counts nowhere. Frame 1 has predictions and no ground truth
    (not scored)."""
    g0, g1 = _pose(100, 100), _pose(400, 300)
    p0 = g0.copy()
    p0[NOSE, 0] += 14
    p0[L_SHO, 1] += 15
    p0[R_SHO, 0] += 16
    p0[L_ELB] = 0
    stray = _pose(1000, 1000)
    square = np.array([[395, 295], [405, 295], [405, 305], [395, 305]], np.float64)
    gt = _data([[_gt(g0, 1), _gt(g1, 2)], []], ignore={0: square})
    pred = _data([[_pred(p0), _pred(stray)], [_pred(g0)]])
    m = score_views.pckh_metrics(gt, pred)
    names = POSEVAL_JOINT_NAMES
    want = {n: 50.0 for n in names}
    want.update(nose=100.0, right_shoulder=0.0, left_elbow=0.0)
    assert dict(zip(names, m["pckh"])) == pytest.approx(want)
    assert m["hits"][names.index("nose")] == 1 and m["num_gt_joints"][names.index("nose")] == 1
    assert m["num_gt_joints"][names.index("neck")] == 2
    assert m["num_frames"] == 1
    table = score_views.pckh(gt, pred)
    assert table == pytest.approx(
        {"Head": 200 / 3, "Shoulder": 25.0, "Elbow": 25.0, "Wrist": 50.0, "Hip": 50.0,
         "Knee": 50.0, "Ankle": 50.0, "Total": 700 / 15}
    )  # fmt: skip
    # It is poseval's recall at the end of the ranking, whatever the scores.
    metrics = posetrack_joint_metrics(gt, pred)
    assert m["pckh"] == pytest.approx(metrics["recall"])
    # No scores needed; a joint without ground truth is NaN and left out of Total.
    bare = _data([[Person(keypoints=p0, bbox=np.zeros(4, np.float32))], []])
    assert score_views.pckh(gt, bare)["Total"] == pytest.approx(700 / 15)
    g_no_nose = g0.copy()
    g_no_nose[NOSE] = 0
    only = score_views.pckh_metrics(_data([[_gt(g_no_nose)]]), _data([[_pred(g0)]]))
    assert math.isnan(only["pckh"][names.index("nose")])
    assert only["total"] == 100.0


# ----------------------------------------------------------------------------- constant scores


def test_map_with_constant_scores_hand_computed():
    """Two frames, one person each: frame 0's prediction is far off (a false positive on every
    joint), frame 1's exact. Ranked by their own scores (wrong one 0.9, right one 0.1):
    precision 0 then 1/2 at recall 1/2: AP 25 %. With every score 1, poseval's order is the
    reversed input order (frame 1 first): precision 1 at recall 1/2: AP 50 %. PCKh: 50 %."""
    g = _pose(100, 100)
    gt = _data([[_gt(g)], [_gt(g)]])
    pred = _data([[_pred(_pose(600, 600), 0.9)], [_pred(g, 0.1)]])
    views = score_views.score_views(gt, pred)
    assert views["map"] == pytest.approx({c: 25.0 for c in COLUMNS})
    assert views["map_constant_scores"] == pytest.approx({c: 50.0 for c in COLUMNS})
    assert views["pckh"] == pytest.approx({c: 50.0 for c in COLUMNS})
    # Scores that rank the right prediction first give 50 % as well.
    good = _data([[_pred(_pose(600, 600), 0.1)], [_pred(g, 0.9)]])
    assert posetrack_map(gt, good)["Total"] == pytest.approx(50.0)
    # The input is not changed; absent joints keep score 0.
    const = score_views.constant_scores(pred)
    assert pred.videos[0].frames[0].people[0].keypoint_scores[0] == pytest.approx(0.9)
    person = const.videos[0].frames[0].people[0]
    assert person.keypoint_scores.tolist() == [1, 1, 1, 0, 0] + [1] * 12
    assert person.keypoints is pred.videos[0].frames[0].people[0].keypoints


# ----------------------------------------------------------------------------- by |δ|


def test_label_distances_and_views_by_delta():
    """14 frames labeled at 0 and 7, reach 3: frames 11..13 are beyond reach. Predictions are
    exact on the frames one step from a label and far off elsewhere."""
    g = _pose(100, 100)
    labeled_frames = (0, 7)
    labeled = _data([[_gt(g)] if i in labeled_frames else [] for i in range(14)])
    for f in labeled.videos[0].frames:
        f.is_labeled = f.index in labeled_frames
    dist = score_views.label_distances(labeled, 3)
    want = ((1, 1), (2, 2), (3, 3), (4, 3), (5, 2), (6, 1), (8, 1), (9, 2), (10, 3))
    assert dist == {("v", i): d for i, d in want}
    with pytest.raises(ValueError, match="reach"):
        score_views.label_distances(labeled, 0)
    held = _data([[] if i in labeled_frames else [_gt(g)] for i in range(14)])
    pred = _data(
        [[_pred(g if dist.get(("v", i)) == 1 else _pose(900, 900))] if ("v", i) in dist else []
         for i in range(14)]
    )  # fmt: skip
    out = score_views.propagation_views(held, pred, labeled, reach=3)
    assert (out["frames"], out["people"], out["frames_beyond_reach"]) == (12, 12, 3)
    assert sorted(out["by_delta"]) == ["1", "2", "3"]
    by = out["by_delta"]
    assert [(by[d]["frames"], by[d]["people"]) for d in "123"] == [(3, 3), (3, 3), (3, 3)]
    assert by["1"]["pckh"]["Total"] == pytest.approx(100.0)
    assert by["1"]["map"]["Total"] == pytest.approx(100.0)
    assert by["2"]["pckh"]["Total"] == by["3"]["pckh"]["Total"] == 0.0
    assert out["pckh"]["Total"] == pytest.approx(100 * 3 / 12)
    # The split keeps every frame (so predictions still pair) and the people of |δ| = 2 only.
    two = score_views.frames_at_distance(held, dist, 2)
    assert len(two.videos[0].frames) == 14
    assert [f.index for f in two.videos[0].frames if f.people] == [2, 5, 9]


# ----------------------------------------------------------------------------- baseline scores


def test_copy_scores_one_over_delta():
    g = _pose(100, 100)
    labeled = _data([[_gt(g)] if i == 0 else [] for i in range(5)])
    pred = baselines.copy_nearest(labeled, reach=3)
    for f in pred.videos[0].frames[1:4]:
        (p,) = f.people
        np.testing.assert_allclose(p.keypoint_scores, np.where(g[:, 2] > 0, 1 / f.index, 0))


def test_consistency_scores_hand_computed():
    """Forward 2 px/frame in x for two steps; the backward flows say -2 (consistent: score 1)
    or -1 (the round trip ends 2 px short: exp(-4 / (2 σ²)) with σ = 2)."""
    shape = (20, 40, 2)
    fwd = np.broadcast_to(np.array([2.0, 0.0], np.float32), shape)
    back_ok = np.broadcast_to(np.array([-2.0, 0.0], np.float32), shape)
    back_short = np.broadcast_to(np.array([-1.0, 0.0], np.float32), shape)
    start = np.array([[10.0, 10.0], [1.0, 5.0], [12.0, 3.0]])
    pos, alive = baselines.carry_points([fwd, fwd], start)
    end = pos[-1]
    alive = alive[-1] & np.array([True, True, False])
    s_ok = baselines.consistency_scores([back_ok, back_ok], start, end, alive, 2.0)
    np.testing.assert_allclose(s_ok, [1.0, 1.0, 0.0])
    s_short = baselines.consistency_scores([back_short, back_short], start, end, alive, 2.0)
    np.testing.assert_allclose(s_short, [math.exp(-0.5), math.exp(-0.5), 0.0])
    # A point the backward chain pushes out of the image scores 0.
    out = np.broadcast_to(np.array([-5.0, 0.0], np.float32), shape)
    np.testing.assert_allclose(
        baselines.consistency_scores([out, out], start[:2], end[:2], alive[:2], 2.0)[1], 0.0
    )


def test_farneback_sigma_is_half_the_labeled_persons_head_size():
    g = _pose(100, 100)
    no_head = Person(keypoints=g, bbox=np.array([0, 0, 20, 80], np.float32), track_id=2)
    labeled = _data([[_gt(g, 1), no_head]] + [[] for _ in range(3)])
    plan = propagation.plan_propagation(labeled, reach=2)
    sizes = baselines.source_head_sizes(labeled, plan)
    assert sorted(set(np.round(sizes, 6))) == [10.0, 30.0]  # 80 / 8 without a head box
    assert baselines.FB_SIGMA_HEADS == 0.5


# ----------------------------------------------------------------------------- the report


def _entry(total: float) -> dict:
    table = {c: total for c in COLUMNS}
    views = {v: dict(table) for v in score_views.VIEWS}
    return {**views, "frames": 4, "people": 6, "frames_beyond_reach": 1,
            "by_delta": {"1": {**views, "frames": 2, "people": 3}}}  # fmt: skip


def _results(scoring) -> dict:
    row = {c: 50.0 for c in COLUMNS}
    return {
        "propagation": {m: dict(row) for m in report.PROPAGATION_METHODS},
        "detection": {m: dict(row) for m in report.DETECTION_METHODS},
        "propagation_scoring": scoring,
    }


def test_report_holds_the_three_views(tmp_path):
    scoring = {"split": "val", "methods": {"posewarper": _entry(80.0), "farneback": _entry(81.0)}}
    scoring["methods"]["farneback"]["pckh"]["Knee"] = float("nan")
    out = report.write_report(str(tmp_path), _results(scoring), {}, {"all": 1.0}, device="cpu")
    data = json.load(open(tmp_path / "report.json"))
    assert data["propagation"] == out["propagation"]  # the existing keys stay
    sc = data["propagation_scoring"]
    assert sc["split"] == "val" and list(sc["methods"]) == ["posewarper", "farneback"]
    for entry in sc["methods"].values():
        assert set(entry) == {*score_views.VIEWS, "frames", "people", "frames_beyond_reach",
                              "by_delta"}  # fmt: skip
        assert set(entry["by_delta"]["1"]) == {*score_views.VIEWS, "frames", "people"}
    assert sc["methods"]["farneback"]["pckh"]["Knee"] is None
    back = report.load_report(str(tmp_path / "report.json"))
    assert math.isnan(back["propagation_scoring"]["methods"]["farneback"]["pckh"]["Knee"])
    md = (tmp_path / "report.md").read_text()
    assert "## Propagation scored three ways (val)" in md
    assert "| Method | mAP | mAP, constant scores | PCKh@0.5 |" in md
    assert "| Farneback optical flow | **81.0** | **81.0** | **81.0** |" in md
    assert "| 1 | 2 | 3 | PoseWarper (propagated labels) | 80.0 | 80.0 | 80.0 |" in md
    assert "4 held-back frames, 6 ground-truth people; 1 frames beyond reach" in md


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda s: s["methods"].update(other=_entry(1.0)), "unexpected method"),
        (lambda s: s["methods"]["posewarper"].pop("pckh"), "missing view"),
        (lambda s: s["methods"]["posewarper"]["map"].pop("Total"), "expected exactly"),
        (lambda s: s["methods"]["posewarper"]["by_delta"].update({"0": {}}), "not a"),
        (lambda s: s["methods"]["posewarper"]["pckh"].update(Total=101.0), "outside"),
        (lambda s: s["methods"]["posewarper"].update(frames=-1), "must be a count"),
        (lambda s: s.update(bogus=1), "unknown key"),
    ],
)
def test_report_rejects_bad_views(tmp_path, mutate, match):
    scoring = {"split": "val", "methods": {"posewarper": _entry(80.0)}}
    mutate(scoring)
    with pytest.raises(ValueError, match=match):
        report.build_report(_results(scoring), {}, {})
    assert report_scoring.KEY == "propagation_scoring"

"""poseval's PoseTrack mAP: hand-computed cases for every branch of the matching, the VOC AP
arithmetic worked by hand, and random scenes checked against a loop-by-loop reference that
reads the prediction files our writers produce (the same path the official tool takes).

All expected APs are exact fractions; comparisons use abs 1e-9 (percent).
"""

from __future__ import annotations

import json
import math
import os

import cv2
import numpy as np
import pytest

from posewarper_jax.data.posetrack17 import load_posetrack17, write_posetrack17
from posewarper_jax.data.posetrack18 import load_posetrack18, write_posetrack18
from posewarper_jax.data.types import JOINT_NAMES, PT17_TO_PT18, Frame, Person, Video, VideoDataset
from posewarper_jax.eval.posetrack_map import (
    COLUMNS,
    format_table,
    frame_assignment,
    points_in_polygons,
    posetrack_joint_metrics,
    posetrack_map,
    precision_recall,
    summarize,
    voc_ap,
)
from posewarper_jax.eval.predictions import write_poseval_predictions

TOL = 1e-9
HEAD = (0.0, 0.0, 30.0, 40.0)  # head size 0.6 * 50 = 30 px: PCKh@0.5 radius 15 px


# ----------------------------------------------------------------------------- builders


def person(joints: dict, *, head=HEAD, scores=None, track=-1, box_score=1.0) -> Person:
    """joints: {poseval joint id: (x, y)}; scores: {id: s} or a number for all (None: GT)."""
    kp = np.zeros((17, 3), np.float32)
    ks = None if scores is None else np.zeros(17, np.float32)
    for j, (x, y) in joints.items():
        kp[PT17_TO_PT18[j]] = (x, y, 1)
        if ks is not None:
            ks[PT17_TO_PT18[j]] = scores[j] if isinstance(scores, dict) else scores
    return Person(
        keypoints=kp,
        bbox=np.array([0, 0, 10, 10], np.float32),
        head_bbox=None if head is None else np.array(head, np.float32),
        track_id=track,
        score=box_score,
        keypoint_scores=ks,
    )


def dataset(frames: list[list[Person]], ignore=None, name="v", labeled=None) -> VideoDataset:
    ignore = ignore or {}
    fr = [
        Frame(
            f"/data/{name}/{i:06d}.jpg",
            i,
            1000 + i,
            bool(people) if labeled is None else labeled[i],
            people,
            [np.asarray(p, np.float32) for p in ignore.get(i, [])],
        )
        for i, people in enumerate(frames)
    ]
    return VideoDataset([Video(name, fr, f"/ann/{name}.json")], "posetrack18", "/data")


FULL = {j: (100.0 + 10 * j, 50.0 + 7 * j) for j in range(15)}


def shifted(joints, dx, dy=0.0):
    return {j: (x + dx, y + dy) for j, (x, y) in joints.items()}


def ap_of(gt, pred, **kw):
    return np.array(posetrack_joint_metrics(gt, pred, **kw)["ap"])


# ----------------------------------------------------------------------------- VOC AP by hand


def test_voc_ap_known_answers():
    # TP, FP, TP, FP with 3 ground-truth joints: precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3,
    # 2/3, 2/3. Monotone precision at the recall steps: 1 and 2/3 -> AP = 1/3 + 2/9 = 5/9.
    p, r, order = precision_recall([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], 3)
    np.testing.assert_allclose(p, [1, 1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(r, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert order.tolist() == [0, 1, 2, 3]
    assert abs(voc_ap(r, p) - 5 / 9) < 1e-12
    # FP, TP, TP with 2: precision 0, 1/2, 2/3 is made monotone to 2/3 everywhere -> AP 2/3.
    p, r, _ = precision_recall([0.9, 0.8, 0.7], [0, 1, 1], 2)
    assert abs(voc_ap(r, p) - 2 / 3) < 1e-12
    # Unsorted input is ranked by score: the same as above.
    p, r, order = precision_recall([0.7, 0.9, 0.8], [1, 0, 1], 2)
    assert order.tolist() == [1, 2, 0] and abs(voc_ap(r, p) - 2 / 3) < 1e-12
    # Equal scores: the later entry first (here the FP), as poseval's argsort()[::-1] on a
    # short array.
    p, r, order = precision_recall([0.5, 0.5], [1, 0], 2)
    assert order.tolist() == [1, 0] and abs(voc_ap(r, p) - 0.25) < 1e-12
    # ... and on long ones, where NumPy's default sort orders ties by the CPU's SIMD sort:
    # 600 tied scores rank in reverse input order on every machine.
    tied = np.repeat([1.0, 0.5, 1 / 3], 200)[np.random.default_rng(0).permutation(600)]
    _, _, order = precision_recall(tied, np.zeros(600), 10)
    ranks = {s: [k for k in order if tied[k] == s] for s in (1.0, 0.5, 1 / 3)}
    assert all(r == sorted(r, reverse=True) for r in ranks.values())
    assert order[:200].tolist() == ranks[1.0]
    # No ground truth: recall is 0/0 -> NaN AP (poseval); nothing ranked -> 0.
    p, r, _ = precision_recall([0.5], [0], 0)
    assert math.isnan(voc_ap(r, p))
    assert voc_ap([], []) == 0.0


def test_summarize_and_table_layout():
    ap = np.arange(15, dtype=float)
    cols = summarize(ap)
    assert cols["Head"] == (14 + 12 + 13) / 3 and cols["Shoulder"] == (8 + 9) / 2
    assert cols["Elbow"] == (7 + 10) / 2 and cols["Wrist"] == (6 + 11) / 2
    assert cols["Hip"] == (2 + 3) / 2 and cols["Knee"] == (1 + 4) / 2
    assert cols["Ankle"] == (0 + 5) / 2 and cols["Total"] == 7.0
    text = format_table(cols, title="")
    assert text.splitlines() == [
        "& Head & Shou & Elb  & Wri  & Hip  & Knee & Ankl & Total\\\\",
        "& 13.0 &  8.5 &  8.5 &  8.5 &  2.5 &  2.5 &  2.5 &  7.0 \\\\",
    ]


# ----------------------------------------------------------------------------- matching branches


def test_perfect_predictions_score_100():
    gt = dataset([[person(FULL), person(shifted(FULL, 300))], [person(shifted(FULL, 5, 5))]])
    pred = dataset(
        [
            [person(shifted(FULL, 300), scores=0.7), person(FULL, scores=0.9)],
            [person(shifted(FULL, 5, 5), scores=0.8)],
        ]
    )
    result = posetrack_map(gt, pred)
    assert list(result) == list(COLUMNS)
    for name in COLUMNS:
        assert abs(result[name] - 100.0) < TOL, name
    m = posetrack_joint_metrics(gt, pred)
    assert m["num_gt_joints"] == [3] * 15 and m["num_frames"] == 2
    assert np.allclose(m["recall"], 100.0) and np.allclose(m["precision"], 100.0)


def test_head_size_threshold_boundary():
    gt_xy = np.array([[[100.0, 100.0]]])
    has = np.array([[True]])
    head = np.array([30.0])
    on = frame_assignment(gt_xy, has, head, np.array([[[109.0, 112.0]]]), has)  # 15 px
    off = frame_assignment(gt_xy, has, head, np.array([[[109.0, 112.01]]]), has)
    assert on[1].tolist() == [[True]] and on[0].tolist() == [0]
    assert off[1].tolist() == [[False]] and off[0].tolist() == [-1]
    # The same through the data-set path, the head size coming from the 30 x 40 head box.
    gt = dataset([[person({0: (100.0, 100.0)})]])
    assert ap_of(gt, dataset([[person({0: (109.0, 112.0)}, scores=1.0)]]))[0] == 100.0
    assert ap_of(gt, dataset([[person({0: (109.0, 112.01)}, scores=1.0)]]))[0] == 0.0
    # A zero head size matches nothing, not even an exact hit.
    gt0 = dataset([[person({0: (100.0, 100.0)}, head=(5, 5, 0, 0))]])
    assert ap_of(gt0, dataset([[person({0: (100.0, 100.0)}, scores=1.0)]]))[0] == 0.0


def test_two_predictions_compete_for_one_ground_truth():
    """Assignment goes by PCKh, not score; the loser is a false positive even where it would
    match another ground truth."""
    a = {0: (100.0, 100.0), 1: (100.0, 200.0)}
    b = {0: (300.0, 100.0), 1: (300.0, 200.0)}
    p1 = dict(a)  # PCKh 1 on A
    p2 = {0: (100.0, 100.0), 1: (300.0, 200.0)}  # PCKh 1/2 on A and on B: keeps A (first)
    g_xy = np.array([[a[0], a[1]], [b[0], b[1]]])
    p_xy = np.array([[p1[0], p1[1]], [p2[0], p2[1]]])
    has = np.ones((2, 2), bool)
    assigned, labels = frame_assignment(g_xy, has, np.array([30.0, 30.0]), p_xy, has)
    assert assigned.tolist() == [0, -1] and labels.tolist() == [[True, True], [False, False]]
    gt = dataset([[person(a), person(b)]])
    pred = dataset([[person(p1, scores=0.9), person(p2, scores=0.95)]])
    # Per joint: FP (0.95) then TP (0.9) of 2 ground truths -> precision 0, 1/2; recall 0, 1/2
    # -> AP = 1/2 * 1/2 = 25. The other 13 joints have no predictions: AP 0.
    ap = ap_of(gt, pred)
    assert abs(ap[0] - 25.0) < TOL and abs(ap[1] - 25.0) < TOL and not ap[2:].any()
    assert abs(posetrack_map(gt, pred)["Total"] - 50.0 / 15) < TOL
    # Equal PCKh: the first prediction in the frame wins, whatever the scores.
    assigned, _ = frame_assignment(g_xy[:1], has[:1], np.array([30.0]), p_xy[[0, 0]], has)
    assert assigned.tolist() == [0, -1]


def test_unmatched_predictions_and_missed_ground_truth():
    a, b = {0: (100.0, 100.0)}, {0: (300.0, 100.0)}
    gt = dataset([[person(a), person(b)]])
    # Only A is predicted: recall 1/2 at precision 1 -> 50.
    assert abs(ap_of(gt, dataset([[person(a, scores=0.5)]]))[0] - 50.0) < TOL
    # A far-away prediction ranked below the TP changes nothing ...
    far = {0: (900.0, 900.0)}
    low = dataset([[person(a, scores=0.5), person(far, scores=0.1)]])
    assert abs(ap_of(gt, low)[0] - 50.0) < TOL
    # ... ranked above it: precision 0, 1/2 at recall 0, 1/2 -> 25.
    high = dataset([[person(a, scores=0.5), person(far, scores=0.9)]])
    assert abs(ap_of(gt, high)[0] - 25.0) < TOL
    # A ground-truth frame without predictions only adds misses: recall 1/3 -> 33.3.
    gt2 = dataset([[person(a), person(b)], [person(a)]])
    pred2 = dataset([[person(a, scores=0.5)], []])
    assert abs(ap_of(gt2, pred2)[0] - 100.0 / 3) < TOL


def test_frames_without_ground_truth_are_not_scored():
    """poseval drops frames without ground-truth people (and the predictions on them), even
    when they are marked labeled."""
    a = {0: (100.0, 100.0)}
    gt = dataset([[person(a)], [], []], labeled=[True, True, False])
    pred = dataset([[person(a, scores=0.5)], [person(a, scores=0.9)], [person(a, scores=0.9)]])
    m = posetrack_joint_metrics(gt, pred)
    assert m["ap"][0] == 100.0 and m["num_frames"] == 1 and m["num_predicted_joints"][0] == 1


def test_ignore_regions():
    square = [[(200, 0), (400, 0), (400, 200), (200, 200)]]
    a = {0: (100.0, 100.0)}
    inside = {0: (300.0, 100.0)}
    outside = {0: (500.0, 100.0)}
    # Frame 1's only ground-truth joint lies in the region: it is dropped; the frame still
    # counts (it has a ground-truth person), so a prediction outside the region there is a
    # false positive: FP (0.9), TP (0.5) of 1 -> AP 50.
    gt = dataset([[person(a)], [person(inside)]], ignore={1: square})
    pred_out = dataset([[person(a, scores=0.5)], [person(outside, scores=0.9)]])
    m = posetrack_joint_metrics(gt, pred_out)
    assert m["num_gt_joints"][0] == 1 and abs(m["ap"][0] - 50.0) < TOL
    # A prediction inside the region is dropped too -> AP 100.
    pred_in = dataset([[person(a, scores=0.5)], [person(inside, scores=0.9)]])
    assert ap_of(gt, pred_in)[0] == 100.0
    # A point on the outline is not inside (shapely's contains): that prediction counts.
    pred_edge = dataset([[person(a, scores=0.5)], [person({0: (200.0, 100.0)}, scores=0.9)]])
    assert abs(ap_of(gt, pred_edge)[0] - 50.0) < TOL


def test_points_in_polygons_against_cv2():
    rng = np.random.default_rng(0)
    poly = np.array([[10.3, 5.1], [60.7, 12.9], [45.2, 70.4], [20.9, 40.6], [5.5, 55.3]])
    pts = rng.uniform(0, 80, size=(300, 2))
    ours = points_in_polygons(pts, [poly])
    contour = poly.astype(np.float32).reshape(-1, 1, 2)
    ref = np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), False) > 0 for x, y in pts])
    assert ours.tolist() == ref.tolist() and 0 < ours.sum() < len(pts)
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    edge = np.array([[0, 5], [10, 10], [5, 5], [5, 10.0], [11, 5]])
    assert points_in_polygons(edge, [square]).tolist() == [False, False, True, False, False]
    assert not points_in_polygons(edge, [square[:2]]).any()  # < 3 vertices: nothing


def test_missing_scores():
    a, b = {0: (100.0, 100.0)}, {0: (300.0, 100.0)}
    gt = dataset([[person(a), person(b)]])
    pred = dataset([[person(a), person({0: (900.0, 0.0)}, scores=0.1)]])  # first: no scores
    with pytest.raises(ValueError, match="video 'v' frame 0 person 0.*missing_scores"):
        posetrack_map(gt, pred)
    # poseval's fallback -9999 ranks the TP after the FP: precision 0, 1/2; recall 0, 1/2.
    assert abs(ap_of(gt, pred, missing_scores="min_score")[0] - 25.0) < TOL
    bad = dataset([[person(a, scores=float("nan"))]])
    with pytest.raises(ValueError, match="non-finite"):
        posetrack_map(gt, bad)


def test_degenerate_joints_follow_poseval():
    """Predictions for a joint no ground truth has: NaN AP, left out of Total; a joint with no
    predictions at all: AP 0, kept in Total."""
    gt = dataset([[person({0: (100.0, 100.0)})]])
    pred = dataset([[person({0: (100.0, 100.0), 1: (100.0, 150.0)}, scores=0.5)]])
    m = posetrack_joint_metrics(gt, pred)
    assert m["ap"][0] == 100.0 and math.isnan(m["ap"][1]) and m["ap"][2:] == [0.0] * 13
    assert abs(m["total_ap"] - 100.0 / 14) < TOL
    cols = posetrack_map(gt, pred)
    assert math.isnan(cols["Knee"]) and cols["Ankle"] == 50.0


def test_neck_switch_changes_only_head_and_total():
    sho_mid = ((FULL[8][0] + FULL[9][0]) / 2, (FULL[8][1] + FULL[9][1]) / 2)
    gt_joints = dict(FULL)
    gt_joints[12] = sho_mid  # the true neck sits between the shoulders
    gt = dataset([[person(gt_joints)]])
    pj = dict(gt_joints)
    pj[12] = (sho_mid[0] + 100, sho_mid[1])  # predicted head_bottom far off
    pred = dataset([[person(pj, scores=0.8)]])
    a = posetrack_map(gt, pred)
    b = posetrack_map(gt, pred, neck="shoulder_midpoint")
    assert abs(a["Head"] - 200.0 / 3) < TOL and abs(b["Head"] - 100.0) < TOL
    assert abs(a["Total"] - 1400.0 / 15) < TOL and abs(b["Total"] - 100.0) < TOL
    for name in ("Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle"):
        assert a[name] == b[name] == 100.0
    with pytest.raises(ValueError, match="neck"):
        posetrack_map(gt, pred, neck="chin")


def test_pairing_errors_name_the_video():
    gt = dataset([[person(FULL)]])
    other = dataset([[person(FULL, scores=1.0)]], name="w")
    with pytest.raises(ValueError, match="not in the ground truth.*'w'"):
        posetrack_map(gt, VideoDataset(gt.videos[:0] + other.videos, "posetrack18"))
    both = VideoDataset(dataset([[person(FULL, scores=1.0)]]).videos + other.videos, "x")
    gt2 = VideoDataset(gt.videos + dataset([[person(FULL)]], name="u").videos, "x")
    with pytest.raises(ValueError, match="no predictions for ground-truth video 'u'"):
        posetrack_map(gt2, VideoDataset(both.videos[:1], "x"))
    short = dataset([[person(FULL, scores=1.0)], []])
    with pytest.raises(ValueError, match="2 frames, the ground truth .* 1"):
        posetrack_map(gt, short)
    twice = VideoDataset(gt.videos * 2, "x")
    with pytest.raises(ValueError, match="more than once"):
        posetrack_map(twice, dataset([[person(FULL, scores=1.0)]]))
    no_head = dataset([[person(FULL, head=None)]])
    with pytest.raises(ValueError, match="no head box"):
        posetrack_map(no_head, dataset([[person(FULL, scores=1.0)]]))


# ----------------------------------------------------------------------------- loop reference


def reference_ap(gt_dir: str, pred_dir: str) -> np.ndarray:
    """poseval's AP from PoseTrack17 files, one loop at a time (written from the definition)."""
    scores = {j: [] for j in range(15)}
    labels = {j: [] for j in range(15)}
    n_gt = np.zeros(15)
    for name in sorted(os.listdir(gt_dir)):
        with open(os.path.join(gt_dir, name)) as f:
            gt_frames = json.load(f)["annolist"]
        with open(os.path.join(pred_dir, name)) as f:
            pr_frames = json.load(f)["annolist"]
        assert len(gt_frames) == len(pr_frames)
        for gf, pf in zip(gt_frames, pr_frames):
            if not gf["annorect"]:
                continue
            polys = [
                np.array([[p["x"][0], p["y"][0]] for p in r["point"]], np.float32).reshape(-1, 1, 2)
                for r in gf.get("ignore_regions", [])
            ]

            def kept(x, y, polys=polys):
                return not any(cv2.pointPolygonTest(c, (x, y), False) > 0 for c in polys)

            def points(rect, with_score):
                out = {}
                for pt in rect["annopoints"][0]["point"] if rect["annopoints"] else []:
                    j, x, y = pt["id"][0], pt["x"][0], pt["y"][0]
                    if j not in out and kept(x, y):
                        out[j] = (x, y, pt["score"][0]) if with_score else (x, y)
                return out

            gts = [points(r, False) for r in gf["annorect"]]
            heads = [
                0.6 * math.hypot(r["x2"][0] - r["x1"][0], r["y2"][0] - r["y1"][0])
                for r in gf["annorect"]
            ]
            prs = [points(r, True) for r in pf["annorect"]]
            for g in gts:
                for j in g:
                    n_gt[j] += 1
            match = [[{} for _ in gts] for _ in prs]
            pck = np.zeros((len(prs), len(gts)))
            for p, pr in enumerate(prs):
                for g, gp in enumerate(gts):
                    for j in pr:
                        if j in gp:
                            d = math.hypot(pr[j][0] - gp[j][0], pr[j][1] - gp[j][1])
                            match[p][g][j] = d / heads[g] <= 0.5
                    if gp:
                        pck[p, g] = sum(match[p][g].values()) / len(gp)
            owner = {}  # prediction -> ground truth
            for g in range(len(gts)):
                best_p, best_v = -1, 0.0
                for p in range(len(prs)):
                    first_best = max(range(len(gts)), key=lambda k: (pck[p, k], -k))
                    if first_best == g and pck[p, g] > best_v:
                        best_p, best_v = p, pck[p, g]
                if best_p >= 0:
                    owner[best_p] = g
            for p, pr in enumerate(prs):
                for j, (_, _, s) in pr.items():
                    scores[j].append(s)
                    labels[j].append(p in owner and match[p][owner[p]].get(j, False))
    ap = np.zeros(15)
    for j in range(15):
        if not scores[j]:
            continue
        order = np.array(scores[j], np.float64).argsort(kind="stable")[::-1]
        tp, prec, rec = 0, [], []
        for rank, k in enumerate(order):
            tp += labels[j][k]
            prec.append(tp / (rank + 1))
            rec.append(tp / n_gt[j] if n_gt[j] else float("nan"))
        mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        ap[j] = 100 * sum(
            (mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1]
        )
    return ap


def random_scene(rng, name, nframes=6):
    """Ground truth and predictions on a 1/8-pixel grid (exact in float32 and in JSON)."""
    grid = lambda a: np.round(np.asarray(a) * 8) / 8  # noqa: E731
    gt_frames, pr_frames, ignore = [], [], {}
    for i in range(nframes):
        gt_people, pr_people = [], []
        for _ in range(rng.integers(0, 4)):
            base = grid(rng.uniform(0, 400, size=2))
            joints = {
                j: tuple(grid(base + rng.uniform(-60, 60, size=2)))
                for j in range(15)
                if rng.random() < 0.8
            }
            if not joints:
                continue
            head = (*grid(base - 10), *grid(rng.uniform(8, 30, size=2)))
            gt_people.append(person(joints, head=head))
            for _ in range(rng.integers(0, 3)):  # 0-2 noisy copies
                noisy = {
                    j: tuple(grid(np.array(xy) + rng.normal(0, 10, size=2)))
                    for j, xy in joints.items()
                    if rng.random() < 0.9
                }
                if noisy:
                    pr_people.append(person(noisy, scores={j: rng.random() for j in noisy}))
        for _ in range(rng.integers(0, 2)):  # spurious predictions
            spur = {j: tuple(grid(rng.uniform(0, 400, size=2))) for j in range(15)}
            pr_people.append(person(spur, scores={j: rng.random() for j in spur}))
        if rng.random() < 0.4:
            c = rng.uniform(100, 300, size=2)
            ignore[i] = [
                [c + (-81.3, -67.1), c + (77.7, -59.9), c + (69.1, 83.3), c + (-71.9, 64.7)]
            ]
        pr_people = [pr_people[k] for k in rng.permutation(len(pr_people))]
        gt_frames.append(gt_people)
        pr_frames.append(pr_people)
    return dataset(gt_frames, ignore, name=name), dataset(pr_frames, name=name)


def test_random_scenes_match_the_loop_reference(tmp_path):
    rng = np.random.default_rng(7)
    scenes = [random_scene(rng, f"{k:06d}_mpii_test") for k in range(3)]
    gt = VideoDataset([g.videos[0] for g, _ in scenes], "posetrack17", "/data")
    pred = VideoDataset([p.videos[0] for _, p in scenes], "posetrack17", "/data")
    write_posetrack17(gt, str(tmp_path / "gt17"))
    write_poseval_predictions(pred, gt, str(tmp_path / "pr17"), "posetrack17")
    ref = reference_ap(str(tmp_path / "gt17"), str(tmp_path / "pr17"))
    assert np.count_nonzero((ref > 0) & (ref < 100)) >= 10  # the scenes are not trivial
    ours = ap_of(gt, pred)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)
    # The same numbers after a round trip through both file formats.
    got17 = ap_of(
        load_posetrack17(str(tmp_path / "gt17"), "/data"),
        load_posetrack17(str(tmp_path / "pr17"), "/data"),
    )
    np.testing.assert_allclose(got17, ref, rtol=0, atol=TOL)
    write_posetrack18(gt, str(tmp_path / "gt18"))
    write_poseval_predictions(pred, gt, str(tmp_path / "pr18"), "posetrack18")
    got18 = ap_of(
        load_posetrack18(str(tmp_path / "gt18"), "/data"),
        load_posetrack18(str(tmp_path / "pr18"), "/data"),
    )
    np.testing.assert_allclose(got18, ref, rtol=0, atol=TOL)


def test_joint_names_are_poseval_order():
    m = posetrack_joint_metrics(dataset([[person(FULL)]]), dataset([[person(FULL, scores=1.0)]]))
    names = [JOINT_NAMES[s] for s in PT17_TO_PT18]
    names[12] = "neck"
    assert m["joints"] == names

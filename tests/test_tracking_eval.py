"""poseval's tracking metrics (``eval.tracking``) on hand-built videos whose MOTA, MOTP,
precision and recall are counted by hand, and ``evaluate --track`` on files."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from posewarper_jax.data import posetrack18
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset
from posewarper_jax.eval import tracking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAD = 10.0  # head box side: head size 0.6 * 10 * sqrt(2) = 8.485 px
HEAD_SIZE = 0.6 * HEAD * np.sqrt(2)
OFFSET = 0.2  # every predicted joint lies 0.2 head sizes from its ground truth


def _pose(cx: float, cy: float) -> np.ndarray:
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    kp[:, 0] = cx + np.arange(NUM_JOINTS) * 3.0
    kp[:, 1] = cy + np.arange(NUM_JOINTS) * 2.0
    kp[:, 2] = 1
    kp[[3, 4]] = 0  # ears: not scored anyway
    return kp


CENTRES = {1: (20.0, 20.0), 2: (200.0, 20.0), 9: (400.0, 300.0)}  # 9: nobody there


def _gt(track: int) -> Person:
    cx, cy = CENTRES[track]
    return Person(
        keypoints=_pose(cx, cy),
        bbox=np.array([cx - 10, cy - 10, 80, 60], np.float32),
        head_bbox=np.array([cx - 5, cy - 5, HEAD, HEAD], np.float32),
        track_id=track,
    )


def _pred(on: int, track_id: int) -> Person:
    kp = _gt(on).keypoints.copy()
    kp[:, 0] += OFFSET * HEAD_SIZE  # 0.2 head sizes to the right
    scores = np.where(kp[:, 2] > 0, 0.9, 0.0).astype(np.float32)
    return Person(kp, _gt(on).bbox, track_id=track_id, keypoint_scores=scores)


def _video(name: str, gt_frames, pred_frames):
    gts, preds = [], []
    for t, (g, p) in enumerate(zip(gt_frames, pred_frames)):
        path = f"/x/{name}/{t:06d}.jpg"
        gts.append(Frame(path, t, 100 * t + 1, bool(g), [_gt(k) for k in g]))
        preds.append(Frame(path, t, 100 * t + 1, True, [_pred(on, tid) for on, tid in p]))
    return Video(name, gts, f"{name}.json"), Video(name, preds, f"{name}.json")


def hand_built():
    """Video v: tracks 1 and 2 on frames 0..3 (+ an unlabeled frame 4 and a last frame 5);
    video w: track 1 on frames 0..2.

    v: frames 0, 1 predictions 10 on track 1, 11 on track 2; frame 2 the ids are exchanged
    (2 identity switches); frame 3 11 stays on track 1, track 2 is missed (1 miss) and a
    prediction 12 lies where nobody is (1 false positive); frame 4 has no ground truth (not
    scored, its false positive neither); frame 5 is the last scored frame (left out, as
    poseval does, with its false positive).
    w: frame 0 matched; frame 1 has no prediction: poseval's fake object and hypothesis (1
    object, 1 miss, 1 false positive); frame 2 last (left out).

    Per joint: objects 8 + 2 = 10; misses 1 + 1; switches 2; false positives 1 + 1; matches
    7 + 1 = 8. MOTA = 100 (1 - 6 / 10) = 40; precision = 100 * 8 / 10 = 80; recall = 80;
    every match is 0.2 head sizes off: MOTP = 100 (1 - 0.2) = 80.
    """
    v_gt = [[1, 2], [1, 2], [1, 2], [1, 2], [], [1, 2]]
    v_pr = [
        [(1, 10), (2, 11)],
        [(1, 10), (2, 11)],
        [(1, 11), (2, 10)],
        [(1, 11), (9, 12)],
        [(9, 13)],
        [(1, 11), (2, 10), (9, 14)],
    ]
    w_gt = [[1], [1], [1]]
    w_pr = [[(1, 5)], [], [(9, 6)]]
    (vg, vp), (wg, wp) = _video("v", v_gt, v_pr), _video("w", w_gt, w_pr)
    return VideoDataset([vg, wg], "posetrack18", "/x"), VideoDataset([vp, wp], "posetrack18", "/x")


def _assert_counts(out, **expected):
    """Each of ``out["counts"]``'s named counts (every joint column) equals its value."""
    for name, value in expected.items():
        np.testing.assert_array_equal(out["counts"][name], value, err_msg=name)


def test_hand_counted_mota_motp_precision_recall():
    gt, pred = hand_built()
    out = tracking.posetrack_tracking(gt, pred)
    _assert_counts(
        out, num_objects=10, num_misses=2, num_switches=2, num_false_positives=2, num_detections=8
    )
    np.testing.assert_allclose(out["mota"], 40.0)
    np.testing.assert_allclose(out["motp"], 80.0, atol=1e-4)
    np.testing.assert_allclose(out["precision"], 80.0)
    np.testing.assert_allclose(out["recall"], 80.0)
    assert out["total"]["mota"] == pytest.approx(40.0)
    assert out["num_frames"] == 4 + 2
    cols = tracking.mot_columns(out)
    assert cols["MOTA Head"] == pytest.approx(40.0) and cols["MOTP Total"] == pytest.approx(80.0)
    table = tracking.format_mot_table(out)
    assert "& 40.0 & 40.0" in table and table.rstrip().endswith("80.0 \\\\")


def test_last_frame_rule_and_distance_threshold():
    gt, pred = hand_built()
    # Scoring the last frames too: v's frame 5 adds 2 objects, 2 matches (10 on 2, 11 on 1:
    # no switch, as on frame 3 11 was on 1 and 10 was last on 2), 1 false positive; w's frame
    # 2 adds 1 object, 1 miss (6 is nowhere near), 1 false positive.
    out = tracking.posetrack_tracking(gt, pred, drop_last_frame=False)
    _assert_counts(
        out, num_objects=13, num_detections=10, num_switches=2, num_misses=3, num_false_positives=4
    )
    np.testing.assert_allclose(out["mota"], 100 * (1 - 9 / 13))
    # A threshold below the 0.2 head sizes of every prediction: nothing matches.
    far = tracking.posetrack_tracking(gt, pred, dist_thresh=0.1)
    np.testing.assert_array_equal(far["counts"]["num_detections"], 0)
    np.testing.assert_allclose(far["motp"], 0.0)
    np.testing.assert_allclose(far["recall"], 0.0)


def test_ignore_regions_remove_joints_and_empty_people():
    gt, pred = hand_built()
    # An ignore region over track 2 on v's frame 0: its joints go from both sides, and the
    # people left without joints with them: one object and one match fewer per joint.
    g = gt.videos[0].frames[0]
    cx, cy = CENTRES[2]
    g.ignore_regions = [np.array([[cx - 20, cy - 20], [cx + 80, cy - 20], [cx + 80, cy + 60],
                                  [cx - 20, cy + 60]], np.float32)]  # fmt: skip
    out = tracking.posetrack_tracking(gt, pred)
    _assert_counts(out, num_objects=9, num_detections=7)
    np.testing.assert_allclose(out["mota"], 100 * (1 - 6 / 9))


def test_bad_input_named():
    gt, pred = hand_built()
    twice = dataclasses.replace(pred.videos[0].frames[0].people[0], track_id=11)
    pred.videos[0].frames[0].people[0] = twice
    with pytest.raises(
        ValueError, match=r"predictions \(v.json\), video 'v' frame 0: track id\(s\) \[11\]"
    ):
        tracking.posetrack_tracking(gt, pred)
    gt, pred = hand_built()
    gt.videos[1].frames[0].people[0].head_bbox = None
    with pytest.raises(ValueError, match="no head box"):
        tracking.posetrack_tracking(gt, pred)
    gt, pred = hand_built()
    pred.videos = pred.videos[:1]
    with pytest.raises(ValueError, match="no predictions for ground-truth video 'w'"):
        tracking.posetrack_tracking(gt, pred)


def _write(ds: VideoDataset, folder: str) -> None:
    for video in ds.videos:
        for frame in video.frames:
            frame.path = os.path.join(folder, "images", video.name, os.path.basename(frame.path))
    posetrack18.write_posetrack18(VideoDataset(ds.videos, ds.fmt, folder), folder)


def test_evaluate_cli_track(tmp_path):
    gt, pred = hand_built()
    _write(gt, str(tmp_path / "gt"))
    _write(pred, str(tmp_path / "pred"))
    out = tmp_path / "res.json"
    cmd = [sys.executable, "-m", "posewarper_jax.evaluate", "--gt", str(tmp_path / "gt"),
           "--pred", str(tmp_path / "pred"), "--track", "--out", str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "Multiple Object Tracking (MOT) metrics:" in run.stdout
    assert "& 40.0 & 40.0 & 40.0" in run.stdout
    res = json.load(open(out))
    assert res["tracking"]["total"]["mota"] == pytest.approx(40.0)
    assert res["tracking"]["total"]["motp"] == pytest.approx(80.0, abs=1e-3)
    # Repeated track ids in a prediction file: one line naming the problem, exit 2.
    path = tmp_path / "pred" / "v.json"
    data = json.load(open(path))
    data["annotations"][1]["track_id"] = data["annotations"][0]["track_id"]
    json.dump(data, open(path, "w"))
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "appear twice" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_people_without_joints_follow_the_file_format():
    """A prediction without joints: poseval keeps it from a PoseTrack18 file (an empty point
    list) and drops it from a PoseTrack17 file (empty ``annopoints``). Alone on a frame, it
    makes that frame one without predictions in the second case: poseval's fake object and
    hypothesis instead of the frame's real ground truth."""
    gt, pred = hand_built()
    # v's frame 3: the two predictions lose their joints.
    for p in pred.videos[0].frames[3].people:
        p.keypoints[:] = 0
    kept = tracking.posetrack_tracking(gt, pred)["counts"]
    # Frame 3 now: 2 objects, 2 misses, no false positive (was 1 match, 1 miss, 1 FP).
    np.testing.assert_array_equal(kept["num_objects"], 10)
    np.testing.assert_array_equal(kept["num_misses"], 3)
    np.testing.assert_array_equal(kept["num_false_positives"], 1)
    pred.fmt = "posetrack17"
    dropped = tracking.posetrack_tracking(gt, pred)["counts"]
    # The fake pair: 1 object, 1 miss, 1 false positive per joint.
    np.testing.assert_array_equal(dropped["num_objects"], 9)
    np.testing.assert_array_equal(dropped["num_misses"], 2)
    np.testing.assert_array_equal(dropped["num_false_positives"], 2)


def test_motp_as_poseval_sums_it():
    """poseval's MOTP sums the ``D`` column of motmetrics' event table; with motmetrics >= 1.2
    that table repeats each match in a ``RAW`` row and each switch in a ``TRANSFER`` row."""
    gt, pred = hand_built()
    out = tracking.posetrack_tracking(gt, pred)
    # 8 matches at 0.2 (v: 7, w: 1), each also a RAW row; v's frame 2: 2 switches, each with
    # a TRANSFER row at 0.2: (8 * 0.2 * 2 + 2 * 0.2) / 8 = 0.45.
    np.testing.assert_allclose(out["motp_poseval"], 55.0, atol=1e-4)

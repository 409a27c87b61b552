"""The trackers (``apps.tracker``: pure linking; ``apps.detect_track``: the PoseWarper motion
model) and ``python -m posewarper_jax.track`` on a video written by OpenCV."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from user_video import ROOT, ground_truth, shared_workdir, tiny_config, write_test_video

from posewarper_jax import track as track_cli
from posewarper_jax.apps import detect_track, tracker
from posewarper_jax.data import posetrack18
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset
from posewarper_jax.eval import tracking


def test_iou_and_oks_matrices():
    a = np.array([[0, 0, 10, 10], [20, 0, 10, 10]], float)
    b = np.array([[5, 0, 10, 10], [100, 100, 1, 1]], float)
    np.testing.assert_allclose(tracker.iou_matrix(a, b), [[50 / 150, 0], [0, 0]])
    xy = np.random.default_rng(0).uniform(0, 50, (2, NUM_JOINTS, 2))
    has = np.ones((2, NUM_JOINTS), bool)
    oks = tracker.oks_matrix(xy, has, xy, has, np.array([100.0, 100.0]))
    assert oks[0, 0] == pytest.approx(1.0) and oks[1, 1] == pytest.approx(1.0)
    assert oks[0, 1] < 0.5
    # One joint off by d: exp(-d^2 / (2 area (2 sigma)^2)) for it, 1 for the other.
    one = has.copy()
    one[:, 2:] = False
    moved = xy.copy()
    moved[0, 0] += [3.0, 4.0]
    s = tracker.POSETRACK_SIGMAS[0]
    got = tracker.oks_matrix(xy[:1], one[:1], moved[:1], one[:1], np.array([64.0]))
    assert got[0, 0] == pytest.approx((np.exp(-25 / (2 * 64 * (2 * s) ** 2)) + 1) / 2)
    none = np.zeros_like(has)
    assert tracker.oks_matrix(xy, none, xy, has, np.ones(2)).max() == 0


def test_link_tracks_keeps_ids_and_numbers_new_people():
    s1 = np.array([[0.1, 0.9], [0.8, 0.2]])  # frame 1 lists the two people swapped
    s2 = np.array([[0.9, 0.0, 0.0], [0.0, 0.05, 0.0]])  # person 1 of frame 1: nobody close
    ids = tracker.link_tracks([None, s1, s2], [2, 2, 3], threshold=0.3)
    assert [i.tolist() for i in ids] == [[0, 1], [1, 0], [1, 2, 3]]
    assert tracker.assign(np.zeros((0, 3)), 0.5) == []
    with pytest.raises(ValueError, match="frame 1: similarity of shape"):
        tracker.link_tracks([None, np.zeros((3, 2))], [2, 2], 0.3)


def _pose_person(cx: float, cy: float = 50.0) -> Person:
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    kp[:, 0] = cx + np.linspace(-10, 10, NUM_JOINTS)
    kp[:, 1] = cy + np.linspace(-25, 25, NUM_JOINTS)
    kp[:, 2] = 1
    return Person(kp, np.array([cx - 30, cy - 30, 60, 60], np.float32),
                  head_bbox=np.array([cx - 5, cy - 30, 10, 10], np.float32),
                  keypoint_scores=np.full(NUM_JOINTS, 0.9, np.float32))  # fmt: skip


def _moving_pair(n=5):
    """Track 0 walks 50 px a frame into the box track 1 had the frame before; track 1 walks
    50 px a frame too, 50 px ahead. Box IoU links each person to the one who stood there."""
    frames, truth = [], []
    for t in range(n):
        people = [_pose_person(50.0 * t), _pose_person(50.0 * t + 50)]
        truth.append(Frame(f"/x/{t:06d}.jpg", t, t + 1, True,
                           [copy.deepcopy(p) for p in people]))  # fmt: skip
        for k, p in enumerate(truth[-1].people):
            p.track_id = k
        frames.append(Frame(f"/x/{t:06d}.jpg", t, t + 1, True, people))
    pred = VideoDataset([Video("v", frames, "v.json")], "posetrack18", "/x")
    gt = VideoDataset([Video("v", truth, "v.json")], "posetrack18", "/x")
    return gt, pred


def test_motion_model_links_what_box_iou_confuses():
    gt, pred = _moving_pair()
    iou = detect_track.track(pred, "iou")
    # The true motion, as a perfect warping head would give it.
    warped = {}
    for t in range(1, 5):
        xy, has, _ = tracker.pose_arrays(pred.videos[0].frames[t - 1].people)
        warped[(0, t)] = (xy + [50.0, 0.0], has)
    motion = detect_track.track(pred, "posewarper", warped=warped)
    ids = [[p.track_id for p in f.people] for f in motion.videos[0].frames]
    assert ids == [[0, 1]] * 5
    iou_ids = [[p.track_id for p in f.people] for f in iou.videos[0].frames]
    assert iou_ids[1] == [1, 2]  # track 0 took track 1's id; track 1 started a new one
    good = tracking.posetrack_tracking(gt, motion)["total"]["mota"]
    bad = tracking.posetrack_tracking(gt, iou)["total"]["mota"]
    assert good == pytest.approx(100.0) and bad < good
    with pytest.raises(ValueError, match="needs the warped poses"):
        detect_track.track(pred, "posewarper")


def test_warping_head_carries_the_previous_poses(tmp_path):
    """At initialisation the warping head is the identity: each person of t − 1 arrives on
    t where it was on t − 1 (up to the heatmap grid); with people moving 2 px a frame the
    PoseWarper tracker then links every person to itself."""
    workdir, config, model, variables = shared_workdir()
    frames_dir, _ = write_test_video(str(tmp_path))
    gt = ground_truth(frames_dir)
    pred = copy.deepcopy(gt)
    for frame in pred.videos[0].frames:
        for p in frame.people:
            p.keypoint_scores = np.where(p.keypoints[:, 2] > 0, 0.9, 0.0).astype(np.float32)
            p.track_id = -1
    from posewarper_jax.apps import trained

    loaded = trained.load_trained(workdir)
    warped = detect_track.warp_previous_poses(
        loaded.model, loaded.variables, pred, loaded.pipeline_config()
    )
    assert sorted(warped) == [(0, t) for t in range(1, 14)]
    for (_, t), (xy, has) in warped.items():
        before = pred.videos[0].frames[t - 1].people
        for p, q in enumerate(before):
            lab = q.keypoints[:, 2] > 0
            np.testing.assert_array_equal(has[p], lab)
            assert np.max(np.abs(xy[p][lab] - q.keypoints[lab, :2])) < 4.0
    tracked = detect_track.track(pred, "posewarper", warped=warped)
    out = tracking.posetrack_tracking(gt, tracked)
    np.testing.assert_array_equal(out["counts"]["num_switches"], 0)
    assert out["total"]["mota"] == pytest.approx(100.0)


def _boxes_file(gt, path, image_name=False):
    records = []
    for frame in gt.videos[0].frames:
        for p in frame.people:
            r = {"category_id": 1, "bbox": [float(v) for v in p.bbox], "score": 0.95}
            if image_name:
                r["image_name"] = f"clip/{frame.index:06d}.png"
            else:
                r["image_id"] = frame.index + 1
            records.append(r)
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def test_track_command_on_a_video_and_evaluate_track(tmp_path, capsys):
    workdir = shared_workdir()[0]
    frames_dir, clip = write_test_video(str(tmp_path))
    gt = ground_truth(frames_dir)
    boxes = _boxes_file(gt, str(tmp_path / "boxes.json"))
    out = tmp_path / "track"
    code = track_cli.main(["--video", clip, "--boxes", boxes, "--checkpoint", workdir,
                           "--out", str(out), "--poses", "hrnet", "--overlay",
                           str(tmp_path / "t.mp4")])  # fmt: skip
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "14 frames, 28 people" in stdout
    data = json.load(open(out / "posetrack18" / "clip.json"))
    assert len(data["images"]) == 14 and len(data["annotations"]) == 28
    ids = [a["track_id"] for a in data["annotations"]]
    assert min(ids) >= 0
    for image in data["images"]:
        frame_ids = [a["track_id"] for a in data["annotations"] if a["image_id"] == image["id"]]
        assert len(set(frame_ids)) == len(frame_ids) == 2
    assert os.path.getsize(tmp_path / "t.mp4") > 0
    # Scored with poseval's tracking metrics against the ground truth, by file.
    gt_dir = tmp_path / "gt"
    posetrack18.write_posetrack18(gt, str(gt_dir))
    run = subprocess.run(
        [sys.executable, "-m", "posewarper_jax.evaluate", "--gt", str(gt_dir), "--pred",
         str(out / "posetrack18"), "--track"], capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "MOTA" in run.stdout and "& Head & Shou" in run.stdout

    # The IoU tracker on the frame directory, boxes matched by image name.
    named = _boxes_file(gt, str(tmp_path / "named.json"), image_name=True)
    out2 = tmp_path / "track_iou"
    assert track_cli.main(["--video", frames_dir, "--boxes", named, "--checkpoint", workdir,
                           "--out", str(out2), "--tracker", "iou", "--poses",
                           "hrnet"]) == 0  # fmt: skip
    iou = json.load(open(out2 / "posetrack18" / "clip.json"))
    # People 50 px apart moving 2 px a frame: box IoU links everyone to themselves.
    assert len({a["track_id"] for a in iou["annotations"]}) == 2


def test_track_command_bad_boxes(tmp_path, capsys):
    workdir = shared_workdir()[0]
    frames_dir, clip = write_test_video(str(tmp_path), n=3)
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps([{"image_id": 999, "bbox": [0, 0, 5, 5], "score": 1}]))
    out = tmp_path / "out"
    code = track_cli.main(["--video", clip, "--boxes", str(path), "--checkpoint", workdir,
                           "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(path) in err
    assert "none of its 1 records matches" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_job_tracking_rows_files_and_report_table(tmp_path):
    """The main job's tracking rows on the tiny synthetic validation video: ground-truth
    poses as the detections, both trackers, files written and read back, and the report's
    table."""
    from posewarper_jax import experiment
    from posewarper_jax.apps import report, trained

    root = str(tmp_path / "data")
    config = tiny_config(**{"data.root": root})
    experiment.ensure_data(config, progress=False)
    val = experiment.load_split(config, "val")
    poses = copy.deepcopy(val)
    for frame in (f for v in poses.videos for f in v.frames):
        for p in frame.people:
            p.keypoint_scores = np.where(p.keypoints[:, 2] > 0, 0.9, 0.0).astype(np.float32)
    loaded = trained.load_trained(shared_workdir()[0])
    workdir = str(tmp_path / "run")
    timing = {}
    rows = detect_track.job_tracking(
        loaded.model, loaded.variables, val, poses, loaded.pipeline_config(), workdir=workdir,
        timing=timing, log=lambda m: None,
    )  # fmt: skip
    assert list(rows) == ["posewarper", "iou"] and set(timing) == {
        "tracking.posewarper", "tracking.iou"}  # fmt: skip
    # Ground-truth poses on ground-truth boxes, 25 frames a second: both trackers link
    # everyone, so every predicted joint is a match (poseval counts per joint).
    for row in rows.values():
        assert row["MOTA"] == pytest.approx(100.0) and row["switches"] == 0
        assert row["Prec"] == pytest.approx(100.0) and row["Rec"] == pytest.approx(100.0)
    for name in rows:
        assert os.path.exists(os.path.join(workdir, "eval", f"tracking_{name}.json"))
        files = os.listdir(os.path.join(workdir, "predictions", "tracking", name))
        assert len(files) == len(val.videos)
    # Finished rows are read back, not recomputed.
    again = detect_track.job_tracking(None, None, val, poses, None, workdir=workdir)
    assert again == rows
    rows["iou"]["MOTA"] = 50.0
    md = report.render_markdown(
        {"config": {}, "propagation": {}, "detection": {}, "extra": {"tracking": rows}}
    )
    assert "## Detect and track" in md
    assert "| PoseWarper motion model (previous poses warped to the frame) | **100.0** |" in md
    assert "| Box IoU with the previous frame (no motion model) | 50.0 |" in md

"""From crops to prediction files to ``python -m posewarper_jax.evaluate``.

Fixtures are written into tmp_path with the project's writers. The CLI's numbers are checked
against ``posetrack_map`` on the in-memory data sets (abs 1e-9); the end-to-end run renders
ground-truth heatmaps, decodes them and must score 100 (every joint lands within half a heatmap
stride, far inside the PCKh radius).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from posewarper_jax import evaluate
from posewarper_jax.data import transforms as T
from posewarper_jax.data.posetrack17 import write_posetrack17
from posewarper_jax.data.posetrack18 import load_posetrack18, write_posetrack18
from posewarper_jax.data.types import JOINT_NAMES, Frame, Person, Video, VideoDataset
from posewarper_jax.eval.nms import rescore
from posewarper_jax.eval.posetrack_map import posetrack_map
from posewarper_jax.eval.predictions import predictions_from_crops, write_poseval_predictions
from posewarper_jax.ops.heatmaps import decode_heatmaps, heatmap_to_image_coords

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EARS = [JOINT_NAMES.index("left_ear"), JOINT_NAMES.index("right_ear")]


def gt_dataset(seed=0, root="/data") -> VideoDataset:
    """Two PoseTrack-named videos, labeled frames with 1-2 people and some unlabeled frames."""
    rng = np.random.default_rng(seed)
    videos = []
    for v, name in enumerate(("000001_bonn_test", "000002_mpii_test")):
        frames = []
        for i in range(4 + v):
            people = []
            if i % 2 == 0:
                for _ in range(1 + (i % 4 == 0)):
                    corner = rng.uniform(50, 300, size=2)
                    kp = np.zeros((17, 3), np.float32)
                    kp[:, :2] = np.round(corner + rng.uniform(0, 100, size=(17, 2)))
                    kp[:, 2] = 1
                    kp[EARS] = 0
                    lo, hi = kp[kp[:, 2] > 0, :2].min(0), kp[kp[:, 2] > 0, :2].max(0)
                    people.append(
                        Person(
                            kp,
                            np.array([*lo, *(hi - lo)], np.float32),
                            np.array([*(corner - 20), 40, 40], np.float32),
                            track_id=len(people),
                        )
                    )
            path = os.path.join(root, "images", "val", name, f"{i:06d}.jpg")
            frames.append(Frame(path, i, (v + 1) * 10000 + i, bool(people), people, []))
        videos.append(Video(name, frames, f"/ann/{name}.json", {"vid_id": f"{v + 1:06d}"}))
    return VideoDataset(videos, "posetrack18", root)


def noisy_predictions(gt: VideoDataset, seed=1, sd=8.0) -> VideoDataset:
    """Crops at the ground-truth people, decoded coordinates replaced by noisy joints."""
    rng = np.random.default_rng(seed)
    coords, maxvals, meta = [], [], {"video": [], "frame": [], "score": []}
    for v, video in enumerate(gt.videos):
        for frame in video.frames:
            for p in frame.people:
                coords.append(p.keypoints[:, :2] + rng.normal(0, sd, size=(17, 2)))
                maxvals.append(rng.uniform(0.1, 1.0, size=17))
                meta["video"].append(v)
                meta["frame"].append(frame.index)
                meta["score"].append(1.0)
    meta = {k: np.array(x) for k, x in meta.items()}
    return predictions_from_crops(np.array(coords), np.array(maxvals), meta, gt)


def cli(*args) -> int:
    return evaluate.main([str(a) for a in args])


# ----------------------------------------------------------------------------- predictions


def test_predictions_from_crops_scoring_and_boxes():
    gt = gt_dataset()
    coords = np.arange(3 * 17 * 2, dtype=np.float64).reshape(3, 17, 2)
    maxvals = np.linspace(0.05, 0.95, 51).reshape(3, 17)
    meta = {
        "video": np.array([0, 1, 0]),
        "frame": np.array([2, 0, 2]),
        "score": np.array([0.5, 1.0, 0.8]),
        "mask": np.array([True, True, False]),  # the last row is padding
        "center": np.array([[100.0, 200.0], [50.0, 60.0], [0.0, 0.0]]),
        "scale": np.array([[1.0, 2.0], [0.5, 0.5], [1.0, 1.0]]),
        "track_id": np.array([7, 3, 0]),
    }
    pred = predictions_from_crops(coords, maxvals, meta, gt)
    assert [len(f.people) for f in pred.videos[0].frames] == [0, 0, 1, 0]
    p = pred.videos[0].frames[2].people[0]
    np.testing.assert_allclose(p.keypoints[:, :2], coords[0])
    assert p.keypoints[:, 2].all() and p.track_id == 7 and p.score == 0.5
    np.testing.assert_allclose(p.keypoint_scores, maxvals[0] * 0.5, rtol=1e-6)
    np.testing.assert_allclose(p.bbox, [0, 0, 200, 400])  # center -/+ scale * 100
    assert gt.videos[0].frames[2].people[0] is not p  # the input is left alone
    pm = predictions_from_crops(coords, maxvals, meta, gt, scoring="mmpose", vis_thr=0.5)
    q = pm.videos[0].frames[2].people[0]
    np.testing.assert_allclose(q.keypoint_scores, maxvals[0], rtol=1e-6)
    assert q.score == pytest.approx(float(rescore(maxvals[:1], [0.5], 0.5)[0]))
    with pytest.raises(ValueError, match="frame index 9"):
        predictions_from_crops(coords, maxvals, dict(meta, frame=np.array([9, 0, 0])), gt)
    with pytest.raises(ValueError, match="'video'"):
        predictions_from_crops(coords, maxvals, {"frame": meta["frame"]}, gt)
    with pytest.raises(ValueError, match="maxvals"):
        predictions_from_crops(coords, maxvals[:2], meta, gt)
    with pytest.raises(ValueError, match="scoring"):
        predictions_from_crops(coords, maxvals, meta, gt, scoring="max")


def test_write_poseval_predictions_covers_every_frame(tmp_path):
    gt = gt_dataset()
    pred = noisy_predictions(gt)
    for video in pred.videos:  # drop the predictions of one labeled frame
        video.frames[2].people = []
    for f in pred.videos[1].frames:  # the same track id twice: renumbered
        for p in f.people:
            p.track_id = 5
    paths = write_poseval_predictions(pred, gt, str(tmp_path), neck="shoulder_midpoint")
    assert [os.path.basename(p) for p in paths] == [
        "000001_bonn_test.json",
        "000002_mpii_test.json",
    ]
    for path, video, pvideo in zip(paths, gt.videos, pred.videos):
        data = json.load(open(path))
        assert [im["id"] for im in data["images"]] == [f.image_id for f in video.frames]
        by_image = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        for frame, pframe in zip(video.frames, pvideo.frames):
            anns = by_image.get(frame.image_id, [])
            assert len(anns) == len(pframe.people)
            assert sorted(a["track_id"] for a in anns) == list(range(len(anns)))
            for a, p in zip(anns, pframe.people):
                kp = np.array(a["keypoints"]).reshape(17, 3)
                mid = p.keypoints[[5, 6], :2].mean(0)
                np.testing.assert_allclose(kp[1, :2], mid, rtol=1e-6)  # neck := shoulder midpoint
                assert a["scores"][1] == pytest.approx(float(p.keypoint_scores[[5, 6]].mean()))
    other = VideoDataset([Video("zzz", [], "s")], "posetrack18")
    with pytest.raises(ValueError, match="zzz"):
        write_poseval_predictions(other, gt, str(tmp_path / "x"))
    short = noisy_predictions(gt)
    short.videos[0].frames.pop()
    with pytest.raises(ValueError, match="3 predicted frames, 4"):
        write_poseval_predictions(short, gt, str(tmp_path / "y"))


def test_decoded_ground_truth_heatmaps_score_100(tmp_path):
    """Render every ground-truth person as targets, decode, map back, write, evaluate."""
    gt = gt_dataset(3)
    image_size, heatmap_size = (64, 48), (16, 12)
    targets, centers, scales, vids, fids, scores = [], [], [], [], [], []
    for v, video in enumerate(gt.videos):
        for frame in video.frames:
            for p in frame.people:
                c, s = T.box_to_center_scale(p.bbox, 48 / 64)
                m = T.get_affine_transform(c, s, 0.0, image_size)
                crop = T.affine_points(p.keypoints[:, :2], m)
                hm, _ = T.gaussian_targets(crop, p.keypoints[:, 2], heatmap_size, image_size, 2.0)
                targets.append(hm)
                centers.append(c)
                scales.append(s)
                vids.append(v)
                fids.append(frame.index)
                scores.append(0.9)
    coords, maxvals = decode_heatmaps(jnp.asarray(np.stack(targets)))
    img = heatmap_to_image_coords(coords, np.stack(centers), np.stack(scales), heatmap_size)
    meta = {"video": vids, "frame": fids, "score": scores, "center": centers, "scale": scales}
    pred = predictions_from_crops(np.asarray(img), np.asarray(maxvals), meta, gt)
    write_posetrack18(gt, str(tmp_path / "gt"))
    write_poseval_predictions(pred, gt, str(tmp_path / "pred"))
    out = tmp_path / "r.json"
    assert cli("--gt", tmp_path / "gt", "--pred", tmp_path / "pred", "--out", out) == 0
    table = json.loads(out.read_text())["posetrack_map"]
    assert all(v == pytest.approx(100.0) for v in table.values()), table


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture()
def dirs(tmp_path):
    gt = gt_dataset()
    pred = noisy_predictions(gt)
    write_posetrack18(gt, str(tmp_path / "gt"))
    write_poseval_predictions(pred, gt, str(tmp_path / "pred"))
    return gt, pred, tmp_path


def test_cli_matches_library_and_formats(dirs, capsys):
    gt, pred, tmp = dirs
    expected = posetrack_map(gt, pred)
    assert 20 < expected["Total"] < 95  # noisy enough to be a real test
    out = tmp / "res" / "r.json"
    assert cli("--gt", tmp / "gt", "--pred", tmp / "pred", "--coco", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "& Head & Shou & Elb  & Wri  & Hip  & Knee & Ankl & Total\\\\" in printed
    assert f"{expected['Total']:5.1f} \\\\" in printed and "COCO keypoint OKS" in printed
    res = json.loads(out.read_text())
    for k, v in expected.items():
        assert res["posetrack_map"][k] == pytest.approx(v, abs=1e-9)
    assert 0 < res["coco"]["AP"] < 1 and len(res["per_joint"]["ap"]) == 15
    # PoseTrack17 files, and predictions in the other format than the ground truth.
    write_posetrack17(gt, str(tmp / "gt17"))
    write_poseval_predictions(pred, gt, str(tmp / "pred17"), "posetrack17")
    for g, p in (("gt17", "pred17"), ("gt17", "pred"), ("gt", "pred17")):
        out2 = tmp / f"{g}_{p}.json"
        assert cli("--gt", tmp / g, "--pred", tmp / p, "--out", out2) == 0
        got = json.loads(out2.read_text())["posetrack_map"]
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, abs=1e-9), (g, p, k)
    assert cli("--gt", tmp / "gt17", "--pred", tmp / "pred17", "--format", "posetrack18") == 2
    # The neck switch moves Head (and Total) only.
    out3 = tmp / "neck.json"
    assert (
        cli(
            "--gt", tmp / "gt", "--pred", tmp / "pred", "--neck", "shoulder_midpoint", "--out", out3
        )
        == 0
    )
    neck = json.loads(out3.read_text())["posetrack_map"]
    assert neck["Head"] != expected["Head"] and neck["Knee"] == pytest.approx(expected["Knee"])


def test_cli_errors_name_the_file(dirs, capsys):
    _, _, tmp = dirs
    gt_dir, pred_dir = tmp / "gt", tmp / "pred"
    a, b = "000001_bonn_test.json", "000002_mpii_test.json"

    def error(*args):
        assert cli("--gt", gt_dir, "--pred", pred_dir, *args) == 2
        return capsys.readouterr().err

    os.rename(pred_dir / b, tmp / b)
    assert f"no prediction file for ground-truth sequence(s) {gt_dir / b}" in error()
    os.rename(tmp / b, pred_dir / b)
    (pred_dir / "000009_mpii_test.json").write_text("{}")
    assert "unknown sequence(s)" in (e := error()) and "000009_mpii_test.json" in e
    os.remove(pred_dir / "000009_mpii_test.json")
    text = (pred_dir / a).read_text()
    (pred_dir / a).write_text(text[:-10])
    assert f"{pred_dir / a}: malformed JSON" in error()
    data = json.loads(text)
    last = data["images"][-1]["id"]
    data["images"] = data["images"][:-1]
    data["annotations"] = [x for x in data["annotations"] if x["image_id"] != last]
    (pred_dir / a).write_text(json.dumps(data))
    assert f"{pred_dir / a}: images[0]: video '000001_bonn_test' has nframes=4" in error()
    for im in data["images"]:
        im["nframes"] = 3
    (pred_dir / a).write_text(json.dumps(data))
    e = error()
    assert f"{pred_dir / a}: video '000001_bonn_test' has 3 frames" in e and "000003.jpg" in e
    data = json.loads(text)
    data["images"] = data["images"][:1] + data["images"][2:]
    data["annotations"] = [x for x in data["annotations"] if x["image_id"] != 10001]
    (pred_dir / a).write_text(json.dumps(data))
    assert f"{pred_dir / a}: video '000001_bonn_test': frames are not contiguous" in error()
    (pred_dir / a).write_text(text)
    data = json.loads(text)
    for x in data["annotations"]:
        del x["scores"]
    (pred_dir / a).write_text(json.dumps(data))
    assert "missing_scores" in error()
    assert cli("--gt", gt_dir, "--pred", pred_dir, "--missing-scores", "min_score") == 0
    assert cli("--gt", tmp / "nope", "--pred", pred_dir) == 2
    assert "ground-truth directory not found" in capsys.readouterr().err


def test_cli_subprocess(dirs):
    gt, pred, tmp = dirs
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "posewarper_jax.evaluate",
            "--gt",
            str(tmp / "gt"),
            "--pred",
            str(tmp / "pred"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    total = posetrack_map(gt, pred)["Total"]
    assert proc.stdout.splitlines()[-1].endswith(f"{total:5.1f} \\\\")
    # Reading back what the CLI read: the written ground truth equals the data set.
    back = load_posetrack18(str(tmp / "gt"), gt.root)
    assert [v.nframes for v in back.videos] == [v.nframes for v in gt.videos]

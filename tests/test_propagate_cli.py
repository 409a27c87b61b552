"""``python -m posewarper_jax.propagate``: dense labels for a video written by OpenCV and for
the embedded synthetic frames; the same figures as the main job's propagation; carried
boxes; overlay and viewer; one-line errors that leave nothing behind."""

from __future__ import annotations

import copy
import json
import os
import re

import cv2
import jax
import numpy as np
import pytest
from user_video import (
    N_FRAMES,
    coco_labels,
    ground_truth,
    make_workdir,
    shared_workdir,
    tiny_config,
    write_test_video,
)

from posewarper_jax import evaluate, experiment, label, propagate
from posewarper_jax.apps import dense_labels, propagation, propagation_eval, trained
from posewarper_jax.data import posetrack18
from posewarper_jax.eval import posetrack_map

LABELED = (0, 7)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("video"))
    frames_dir, path = write_test_video(folder)
    gt = ground_truth(frames_dir)
    labels = coco_labels(gt, LABELED, os.path.join(folder, "labels.json"))
    return {"frames": frames_dir, "mp4": path, "gt": gt, "labels": labels, "folder": folder}


def _run(capsys, *args):
    code = propagate.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _people(path):
    data = json.load(open(path))
    frame_of = {im["id"]: i for i, im in enumerate(data["images"])}
    people = {}
    for a in data["annotations"]:
        people.setdefault(frame_of[a["image_id"]], []).append(a)
    return data, people


def test_propagate_video_file_dense_labels_overlay_and_viewer(clip, tmp_path, capsys):
    workdir = shared_workdir()[0]
    out = tmp_path / "dense"
    overlay, page = tmp_path / "overlay.mp4", tmp_path / "view.html"
    code, stdout, stderr = _run(
        capsys, "--video", clip["mp4"], "--labels", clip["labels"], "--checkpoint", workdir,
        "--out", out, "--overlay", overlay, "--html", page,
    )  # fmt: skip
    assert code == 0, stderr
    assert "14 frames, 2 labeled, 9 propagated" in stdout
    data, people = _people(out / "posetrack18" / "clip.json")
    assert len(data["images"]) == N_FRAMES
    # Reach 3 both sides of frames 0 and 7: frames 1..10 propagated, 11..13 not reached.
    assert sorted(people) == list(range(11))
    gt = clip["gt"].videos[0]
    for t, anns in people.items():
        assert sorted(a["track_id"] for a in anns) == [1, 2]
        for a in anns:
            kp = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
            scores = np.asarray(a["scores"])
            if t in LABELED:  # the labels themselves, confidence 1
                truth = next(p for p in gt.frames[t].people if p.track_id == a["track_id"])
                np.testing.assert_allclose(kp[:, :2], truth.keypoints[:, :2], atol=1e-3)
                assert set(scores[kp[:, 2] > 0]) == {1.0}
                continue
            # The identity head carries the nearest labeled frame's pose (up to the heatmap
            # grid: one heatmap pixel is about 3.8 image pixels here).
            a_frame = 0 if t <= 3 else 7
            src = next(p for p in gt.frames[a_frame].people if p.track_id == a["track_id"])
            has = src.keypoints[:, 2] > 0
            np.testing.assert_array_equal(kp[:, 2] > 0, has)
            assert np.max(np.abs(kp[has, :2] - src.keypoints[has, :2])) < 4.0
            assert np.all((scores[has] > 0) & (scores[has] <= 1.0))
    relabel = json.load(open(out / "relabel.json"))
    assert relabel["labeled_frames"] == list(LABELED)
    assert [r["frame"] for r in relabel["relabel"]] == [11, 12, 13]
    assert all(r["reasons"] == ["not reached"] for r in relabel["relabel"])
    assert relabel["confidence"][0] == 1.0 and relabel["confidence"][12] is None
    assert relabel["settings"]["boxes"] == "carry" and relabel["settings"]["blend"] is True
    coco = json.load(open(out / "coco.json"))
    assert len(coco["images"]) == N_FRAMES and len(coco["annotations"]) == 2 * 11
    assert sum(a["labeled"] for a in coco["annotations"]) == 4
    # The overlay: every frame, same size; skeletons drawn where people are.
    cap = cv2.VideoCapture(str(overlay))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == N_FRAMES and frames[0].shape == (96, 128, 3)
    source = cv2.VideoCapture(clip["mp4"])
    _, first = source.read()
    assert np.abs(frames[5].astype(int) - first.astype(int)).mean() > 0
    # The viewer: one self-contained page, one embedded frame per video frame, no URL.
    html = page.read_text()
    assert html.count("data:image/jpeg;base64,") == N_FRAMES
    assert "http" not in html and "<svg" in html and 'type="range"' in html
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_frame_directory_gives_the_same_labels_and_carried_boxes(clip, tmp_path, capsys):
    workdir = shared_workdir()[0]
    out = tmp_path / "dense"
    code, _, stderr = _run(
        capsys, "--video", clip["frames"], "--labels", clip["labels"], "--checkpoint", workdir,
        "--out", out, "--no-blend", "--html", tmp_path / "v.html", "--html-refer",
    )  # fmt: skip
    assert code == 0, stderr
    _, people = _people(out / "posetrack18" / "clip.json")
    gt = clip["gt"].videos[0]
    # The box of a frame two away from its label is the label's box moved by the motion of
    # the pose propagated to the frame in between (carry_box), not the ground truth's.
    for t, prev, a_frame in ((2, 1, 0), (3, 2, 0), (5, 6, 7)):
        for a in people[t]:
            src = next(p for p in gt.frames[a_frame].people if p.track_id == a["track_id"])
            before = next(b for b in people[prev] if b["track_id"] == a["track_id"])
            want = dense_labels.carry_box(
                src.bbox,
                src.keypoints,
                np.asarray(before["keypoints"]).reshape(17, 3),
                np.asarray(before["scores"]),
            )
            np.testing.assert_allclose(a["bbox"], want, atol=1e-3)
    html = (tmp_path / "v.html").read_text()
    assert len(os.listdir(tmp_path / "v_frames")) == N_FRAMES
    assert re.search(r'"v_frames/000013\.jpg"', html)


def test_path_choices_are_the_librarys():
    """``--path`` lists its choices without importing JAX (a fast ``--help``): the same as
    ``propagation.PATHS``; the default is the run's."""
    base = ["--video", "v", "--labels", "l", "--checkpoint", "c", "--out", "o"]
    assert propagate.parse_args(base).path is None
    for path in propagation.PATHS:
        assert propagate.parse_args([*base, "--path", path]).path == path
    with pytest.raises(SystemExit):
        propagate.parse_args([*base, "--path", "hops"])


def test_carry_box_follows_the_pose():
    src = np.zeros((17, 3), np.float32)
    src[:5] = [[10, 10, 1], [20, 10, 1], [30, 12, 1], [12, 40, 1], [0, 0, 0]]
    moved = src.copy()
    moved[:4, 0] += [5, 6, 7, 100]  # median of the x motions: 6.5
    moved[:4, 1] += 2
    scores = np.array([0.9, 0.9, 0.9, 0.9, 0.9] + [0] * 12)
    box = dense_labels.carry_box([5, 5, 30, 40], src, moved, scores)
    np.testing.assert_allclose(box, [11.5, 7, 30, 40])
    # Joints below the score threshold do not count; too few left: no box.
    low = scores.copy()
    low[1:4] = 0.1
    assert dense_labels.carry_box([5, 5, 30, 40], src, moved, low) is None
    assert dense_labels.carry_box([5, 5, 30, 40], src, moved, low, min_joints=1) is not None


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The tiny synthetic data set, and a workdir whose warping head is no longer the
    identity (noise added to its weights), so that the propagated poses depend on the
    frames."""
    root = str(tmp_path_factory.mktemp("synthetic") / "data")
    config = tiny_config(**{"data.root": root, "eval.flip_test": True})
    experiment.ensure_data(config, progress=False)
    model = experiment.make_model(config)
    from posewarper_jax import training

    variables = jax.device_get(training.init_variables(model, config.input.image_size, 0))
    rng = np.random.default_rng(0)
    variables["params"]["head"] = jax.tree.map(
        lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype),
        variables["params"]["head"],
    )
    workdir = str(tmp_path_factory.mktemp("run") / "run")
    make_workdir(workdir, config, variables)
    return root, config, workdir


def test_cli_scores_equal_the_main_jobs_propagation(synthetic, tmp_path, capsys):
    """The main job's propagation of the validation video (its setting,
    ``propagation_eval.held_out``: every 3rd frame kept, reach 3, each frame cut with its
    nearest label's box, flip test, the run's path) scored with poseval's mAP equals the
    command's output for the same settings (``--boxes source``), read from its files and
    scored by ``evaluate``."""
    root, config, workdir = synthetic
    val = experiment.load_split(config, "val")
    setting = propagation_eval.held_out(val, every_k=3, seed=int(config.sparse.seed), reach=3)
    val_sparse, val_held = setting.labeled, setting.held_back
    model = trained.load_trained(workdir)
    job_pred = propagation.propagate_labels(
        model.model, model.variables, val_sparse, pipe_cfg=experiment.pipeline_config(config,
        "eval"), plan=setting.plan, flip_test=True,
        decoding=experiment.heatmap_coding(config)[1], path=config.eval.propagation_path,
    )  # fmt: skip
    assert config.eval.propagation_path == "chained"
    job_table = posetrack_map(val_held, propagation.select_videos(job_pred, val_held))

    (video,) = val.videos
    labels_dir, held_dir = tmp_path / "labels", tmp_path / "held"
    (labels_file,) = posetrack18.write_posetrack18(val_sparse, str(labels_dir))
    posetrack18.write_posetrack18(val_held, str(held_dir))
    frames_dir = os.path.dirname(video.frames[0].path)
    # label reads the embedded frames too.
    assert label.main(["--video", frames_dir, "--every", "3", "--out", str(tmp_path / "job")]) == 0
    assert len(os.listdir(tmp_path / "job" / "frames")) == len(range(0, video.nframes, 3))
    out = tmp_path / "dense"
    code, _, stderr = _run(
        capsys, "--video", frames_dir, "--labels", labels_file, "--checkpoint", workdir,
        "--out", out, "--boxes", "source", "--no-blend", "--reach", 3,
    )  # fmt: skip
    assert code == 0, stderr
    res = tmp_path / "res.json"
    assert evaluate.main(["--gt", str(held_dir), "--pred", str(out / "posetrack18"),
                          "--out", str(res)]) == 0  # fmt: skip
    cli_table = json.load(open(res))["posetrack_map"]
    assert cli_table == pytest.approx(job_table, abs=1e-9, nan_ok=True)
    assert 0 < job_table["Total"] < 100
    # Frame by frame, the same poses.
    cli = posetrack18.load_posetrack18(str(out / "posetrack18"), root)
    for frame, jframe in zip(cli.videos[0].frames, job_pred.videos[0].frames):
        if not jframe.people:
            continue
        got = {p.track_id: p for p in frame.people}
        for p in jframe.people:
            np.testing.assert_allclose(got[p.track_id].keypoints, p.keypoints, atol=1e-4)


def _bad(tmp_path, clip, mutate):
    data = json.load(open(clip["labels"]))
    mutate(data)
    path = tmp_path / "bad_labels.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    "case, message",
    [
        ("video_missing", r"error: .*nope\.mp4: no such video"),
        ("video_broken", r"error: .*broken\.mp4: cannot be read as a video"),
        ("frame_outside", r"error: .*bad_labels\.json: images\[1\]: '000099\.jpg' is frame 99"),
        ("joints_16", r"error: .*bad_labels\.json: categories\[0\]: 16 joints"),
        ("no_names", r"error: .*bad_labels\.json: no category gives joint names"),
        ("no_people", r"error: .*bad_labels\.json: no labeled person"),
        ("checkpoint_mismatch", r"error: .*stage2/checkpoints: does not match the model of "),
        ("not_a_workdir", r"error: .*: not a workdir of the main job \(no config\.json\)"),
    ],
)
def test_bad_input_one_line_error_and_nothing_written(clip, tmp_path, capsys, case, message):
    workdir = shared_workdir()[0]
    video, labels = clip["mp4"], clip["labels"]
    if case == "video_missing":
        video = str(tmp_path / "nope.mp4")
    elif case == "video_broken":
        video = str(tmp_path / "broken.mp4")
        open(video, "w").write("not a video")
    elif case == "frame_outside":
        labels = _bad(tmp_path, clip, lambda d: d["images"][1].update(file_name="000099.jpg"))
    elif case == "joints_16":
        labels = _bad(tmp_path, clip, lambda d: d["categories"][0]["keypoints"].pop())
    elif case == "no_names":
        labels = _bad(tmp_path, clip, lambda d: d["categories"][0].pop("keypoints"))
    elif case == "no_people":
        labels = _bad(tmp_path, clip, lambda d: d.update(annotations=[]))
    elif case == "checkpoint_mismatch":
        bad = tmp_path / "run"
        bad.mkdir()
        os.symlink(os.path.join(workdir, "stage2"), bad / "stage2")
        config = json.load(open(os.path.join(workdir, "config.json")))
        config["model"]["head_channels"] = 8
        (bad / "config.json").write_text(json.dumps(config))
        workdir = str(bad)
    elif case == "not_a_workdir":
        workdir = str(tmp_path)
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        capsys, "--video", video, "--labels", labels, "--checkpoint", workdir, "--out", out,
        "--overlay", tmp_path / "o.mp4",
    )  # fmt: skip
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert re.match(message, stderr), stderr
    assert not out.exists() and not (tmp_path / "o.mp4").exists()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_dense_dataset_and_relabel_candidates(clip):
    gt = clip["gt"]
    labeled = copy.deepcopy(gt)
    for frame in labeled.videos[0].frames:
        if frame.index not in LABELED:
            frame.is_labeled, frame.people = False, []
    predicted = copy.deepcopy(gt)
    for frame in predicted.videos[0].frames:
        if frame.index in LABELED or frame.index > 10:
            frame.people = []
        for p in frame.people:
            p.keypoint_scores = np.full(17, 0.3 if frame.index == 4 else 0.9, np.float32)
    predicted.videos[0].frames[9].people = predicted.videos[0].frames[9].people[:1]
    dense = dense_labels.dense_dataset(labeled, predicted)
    conf = dense_labels.frame_confidence(dense.videos[0])
    assert conf[0] == 1.0 and conf[4] == pytest.approx(0.3) and np.isnan(conf[12])
    rows = dense_labels.relabel_candidates(labeled.videos[0], dense.videos[0], 3, 0.5)
    assert [(r["frame"], r["reasons"]) for r in rows] == [
        (11, ["not reached"]), (12, ["not reached"]), (13, ["not reached"]),
        (4, ["low confidence"]), (9, ["lost track [2]"]),
    ]  # fmt: skip

"""The experiment report (report.json / report.md / pictures) and the drawing functions."""

from __future__ import annotations

import json
import math
import os
import re

import cv2
import numpy as np
import pytest

from posewarper_jax.apps import draw, report
from posewarper_jax.data.types import JOINT_NAMES, SKELETON, Frame, Person, Video, VideoDataset
from posewarper_jax.eval.posetrack_map import COLUMNS

CONFIG = {
    "data": {"kind": "synthetic", "root": "data/synthetic", "synthetic_preset": "tiny"},
    "sparse": {"every_k": 7},
    "model": {"backbone": "tiny", "head_channels": 16, "head_blocks": 2, "dilations": (3, 6)},
    "input": {"image_size": (128, 96)},
    "stage1": {"epochs": 1, "max_steps": 4, "batch_size": 8, "lr": 1e-3},
}
TIMING = {"data": 1.5, "stage1": 10.25, "total": 20.0}


def make_results(seed: int = 0) -> dict:
    """Distinct random tables (two decimals, so the one-decimal rounding is not tied)."""
    rng = np.random.default_rng(seed)
    out = {}
    for section, methods in report.SECTIONS.items():
        out[section] = {
            m: {c: float(np.round(rng.uniform(20, 95), 2)) for c in COLUMNS} for m in methods
        }
    return out


def table_rows(md: str, section: str) -> dict[str, list[str]]:
    """The cells of one Markdown table (method label -> 8 cell strings)."""
    part = md.split(f"## {report.SECTION_TITLES[section]}")[1].split("\n## ")[0]
    rows = {}
    for line in part.splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


# ----------------------------------------------------------------------------- report.json


def test_report_json_shape_and_round_trip(tmp_path):
    results = make_results()
    results["predictions"] = {"posewarper": str(tmp_path / "pred" / "posewarper")}
    results["extra"] = {"num_labeled": 12, "coco_ap": {"AP": 0.5}}
    out = report.write_report(str(tmp_path), results, CONFIG, TIMING, device="cpu x1")
    with open(tmp_path / "report.json") as f:
        data = json.load(f)
    assert data == out
    assert set(data) == {"propagation", "detection", "config", "timing_s", "extra"}
    for section, methods in report.SECTIONS.items():
        assert list(data[section]) == list(methods)
        for m in methods:
            assert list(data[section][m]) == list(COLUMNS)
            for c in COLUMNS:
                assert data[section][m][c] == results[section][m][c]  # exact round trip
    assert data["timing_s"] == TIMING
    assert data["config"]["model"]["dilations"] == [3, 6]
    assert data["extra"]["num_labeled"] == 12
    assert data["extra"]["predictions"] == results["predictions"]
    assert data["extra"]["device"] == "cpu x1"


def test_report_json_without_extra_has_exactly_the_required_keys(tmp_path):
    report.write_report(str(tmp_path), make_results(), CONFIG, TIMING, device="")
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data) == {"propagation", "detection", "config", "timing_s"}


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: r["propagation"].pop("farneback"), r"missing method.*farneback"),
        (lambda r: r["detection"]["hrnet"].pop("Ankle"), r"\['hrnet'\] is missing column.*Ankle"),
        (lambda r: r.pop("detection"), r"no 'detection' table"),
        (lambda r: r["propagation"].update(flownet={}), r"unexpected method.*flownet"),
        (lambda r: r["detection"]["hrnet"].update(Neck=1.0), r"unexpected column.*Neck"),
        (lambda r: r["detection"]["hrnet"].update(Hip="12"), r"\['Hip'\] must be a number"),
        (lambda r: r["detection"]["hrnet"].update(Hip=math.inf), r"\['Hip'\] must be finite"),
        (lambda r: r["detection"]["hrnet"].update(Knee=0.9e3), r"\['Knee'\].*outside \[0, 100\]"),
        (lambda r: r.update(extras={}), r"unknown results key.*extras"),
    ],
)
def test_bad_results_raise_naming_the_fault(tmp_path, mutate, match):
    results = make_results()
    mutate(results)
    with pytest.raises(ValueError, match=match):
        report.write_report(str(tmp_path), results, CONFIG, TIMING, device="cpu")
    assert not (tmp_path / "report.json").exists()  # nothing written on bad input


def test_bad_timing_and_extra_raise(tmp_path):
    with pytest.raises(ValueError, match=r"timing\['stage1'\]"):
        report.write_report(str(tmp_path), make_results(), CONFIG, {"stage1": -1.0}, device="")
    results = make_results()
    results["extra"] = {"figures": 1}
    with pytest.raises(ValueError, match="reserved"):
        report.write_report(str(tmp_path), results, CONFIG, TIMING, device="")


def test_nan_is_written_as_null_and_read_back(tmp_path):
    results = make_results()
    results["propagation"]["farneback"]["Elbow"] = float("nan")
    results["detection"]["hrnet"]["Head"] = np.float32("nan")
    report.write_report(str(tmp_path), results, CONFIG, TIMING, device="")
    text = (tmp_path / "report.json").read_text()

    def refuse(name):
        raise AssertionError(f"invalid JSON constant {name}")

    data = json.loads(text, parse_constant=refuse)  # strict JSON: no NaN literal
    assert data["propagation"]["farneback"]["Elbow"] is None
    assert data["detection"]["hrnet"]["Head"] is None
    loaded = report.load_report(str(tmp_path / "report.json"))
    assert math.isnan(loaded["propagation"]["farneback"]["Elbow"])
    assert (
        loaded["propagation"]["farneback"]["Total"] == results["propagation"]["farneback"]["Total"]
    )
    # A NaN shows as n/a and never counts as the best.
    md = (tmp_path / "report.md").read_text()
    rows = table_rows(md, "propagation")
    elbow = COLUMNS.index("Elbow")
    assert rows[report.METHOD_LABELS["farneback"]][elbow] == "n/a"


# ----------------------------------------------------------------------------- report.md


def test_markdown_tables_hold_the_numbers_with_the_best_in_bold(tmp_path):
    results = make_results(seed=3)
    # A tie at one decimal: both bold.
    results["detection"]["hrnet"]["Wrist"] = 99.01
    results["detection"]["posewarper_aggregation"]["Wrist"] = 98.96
    figures = {"bars": str(tmp_path / "report" / "map_bars.png")}
    results["predictions"] = {"detection": {"hrnet": str(tmp_path / "pred" / "hrnet")}}
    report.write_report(str(tmp_path), results, CONFIG, TIMING, figures=figures, device="cpu")
    md = (tmp_path / "report.md").read_text()
    for section, methods in report.SECTIONS.items():
        rows = table_rows(md, section)
        assert list(rows) == [report.METHOD_LABELS[m] for m in methods]
        for j, c in enumerate(COLUMNS):
            best = max(round(results[section][m][c], 1) for m in methods)
            for m in methods:
                v = results[section][m][c]
                cell = rows[report.METHOD_LABELS[m]][j]
                expected = f"{v:.1f}"
                if round(v, 1) == best:
                    expected = f"**{expected}**"
                assert cell == expected, (section, m, c)
    wrist = COLUMNS.index("Wrist")
    rows = table_rows(md, "detection")
    assert rows[report.METHOD_LABELS["hrnet"]][wrist] == "**99.0**"
    assert rows[report.METHOD_LABELS["posewarper_aggregation"]][wrist] == "**99.0**"
    assert "| Method | Head | Shoulder | Elbow | Wrist | Hip | Knee | Ankle | Total |" in md
    assert "](report/map_bars.png)" in md  # relative link
    assert "`pred/hrnet`" in md
    assert "every 7th labeled frame" in md and "Device: cpu" in md
    assert "| stage1 | 10.2 |" in md or "| stage1 | 10.3 |" in md
    one_row = report.markdown_table({"causal": results["detection"]["hrnet"]})
    assert "**" not in one_row and f"{results['detection']['hrnet']['Total']:.1f} |" in one_row


def test_other_measurements_are_tables(tmp_path):
    results = make_results(seed=4)
    causal = {c: 50.0 for c in COLUMNS} | {"Ankle": math.nan}
    results["extra"] = {
        "num_labeled": 12,
        "note": "a|b",
        "detection": {"posewarper_aggregation_causal": causal},
        "counts": {"train_labeled_frames": 109, "val_videos": 4},
        "coco": {"AP": {"all": 0.5, "medium": 0.25}, "runs": [1, 2]},
        "trackers": {"iou": {"MOTA": 40.0, "Prec": 80.0}, "posewarper": {"MOTA": 45.5}},
    }
    report.write_report(str(tmp_path), results, CONFIG, TIMING, device="cpu")
    md = (tmp_path / "report.md").read_text()
    part = md.split("## Other measurements\n\n")[1].split("\n## ")[0]
    expected = [
        "| Measurement | Value |",
        "|---|---:|",
        "| num_labeled | 12 |",
        "| note | a\\|b |",
        "",
        "### detection",
        "",
        "| Method | Head | Shoulder | Elbow | Wrist | Hip | Knee | Ankle | Total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| PoseWarper temporal aggregation, causal (t−2..t) | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 "
        "| 50.0 | n/a | 50.0 |",
        "",
        "### counts",
        "",
        "| Measurement | Value |",
        "|---|---:|",
        "| train_labeled_frames | 109 |",
        "| val_videos | 4 |",
        "",
        "### coco",
        "",
        "| Measurement | Value |",
        "|---|---:|",
        "| AP.all | 0.5 |",
        "| AP.medium | 0.25 |",
        "| runs | `[1, 2]` |",
        "",
        "### trackers",
        "",
        "| Name | MOTA | Prec |",
        "|---|---:|---:|",
        "| iou | 40.0 | 80.0 |",
        "| posewarper | 45.5 |  |",
    ]
    assert part.rstrip("\n").split("\n") == expected
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["extra"]["counts"] == results["extra"]["counts"]  # report.json unchanged


def test_the_method_registry_names_the_jobs_methods_in_order():
    from posewarper_jax import job, methods

    assert methods.PROPAGATION == job.PROPAGATION == report.PROPAGATION_METHODS
    assert methods.DETECTION == job.DETECTION == report.DETECTION_METHODS
    assert report.SECTIONS == {"propagation": methods.PROPAGATION, "detection": methods.DETECTION}
    assert list(report.METHOD_LABELS) == [*methods.PROPAGATION, *methods.DETECTION]
    assert methods.by_name("farneback").title == report.METHOD_LABELS["farneback"]
    for m in methods.METHODS:
        assert m.section in report.SECTIONS and m.title and m.label and m.predicts and m.scores


def test_report_from_the_run_config(tmp_path):
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("sparse_config", f"{root}/configs/sparse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal")
    data = report.write_report(str(tmp_path), make_results(), config, TIMING, device="cpu")
    assert data["config"]["model"]["backbone"] == config.model.backbone
    assert data["config"]["input"]["image_size"] == list(config.input.image_size)
    md = (tmp_path / "report.md").read_text()
    assert f"HRNet backbone `{config.model.backbone}`" in md
    assert f"capped at {config.stage2.max_steps} steps" in md
    assert "- Heatmaps: σ = 1.0, `subpixel` targets, `dark` decoding" in md
    # runlocal pre-trains HRNet (a step count, no epochs); converted weights replace that.
    assert "HRNet pre-trained on `synthetic` data before stage 1" in md
    assert f"- pretrain: {config.pretrain.max_steps} steps, batch" in md
    config.model.pretrained = "weights/coco_w32"
    report.write_report(str(tmp_path), make_results(), config, TIMING, device="cpu")
    md = (tmp_path / "report.md").read_text()
    assert "HRNet initialised from `weights/coco_w32`" in md and "- pretrain:" not in md


# ----------------------------------------------------------------------------- skeletons


def _distance_to_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0, 1)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


@pytest.mark.parametrize(
    "a, b, color",
    [(5, 7, draw.LEFT_COLOR), (6, 8, draw.RIGHT_COLOR), (11, 12, draw.CENTER_COLOR)],
)
def test_draw_skeleton_changes_pixels_only_along_the_limb(a, b, color):
    assert (a, b) in SKELETON
    image = np.full((64, 80, 3), 30, np.uint8)
    before = image.copy()
    kpts = np.zeros((17, 2))
    kpts[a], kpts[b] = (10.0, 12.0), (60.0, 48.0)
    scores = np.zeros(17)
    scores[[a, b]] = 0.9
    out = draw.draw_skeleton(image, kpts, scores, thickness=3, radius=0)
    assert np.array_equal(image, before)  # pure: the input is left alone
    mid = ((kpts[a] + kpts[b]) / 2).round().astype(int)
    assert tuple(out[mid[1], mid[0]]) == tuple(color)
    assert tuple(out[60, 5]) == (30, 30, 30)  # far from the limb
    ys, xs = np.nonzero(np.any(out != image, axis=-1))
    d = _distance_to_segment(np.stack([xs, ys], 1).astype(float), kpts[a], kpts[b])
    # Within (thickness + 1) / 2 of the segment (cv2's round caps) plus a 1.5 px AA fringe.
    assert len(d) > 50 and d.max() <= 3.5


def test_draw_skeleton_leaves_out_low_scores():
    image = np.zeros((64, 64, 3), np.uint8)
    kpts = np.zeros((17, 3))
    kpts[5] = (10, 10, 1)
    kpts[7] = (50, 50, 1)
    # Below threshold: the limb 5-7 and joint 7 are not drawn, joint 5 (a disc) is.
    out = draw.draw_skeleton(image, kpts[:, :2], np.where(np.arange(17) == 5, 0.9, 0.1), radius=3)
    assert tuple(out[30, 30]) == (0, 0, 0)
    ys, xs = np.nonzero(out.any(axis=-1))
    assert len(xs) > 0 and np.hypot(xs - 10, ys - 10).max() <= 4.5
    assert tuple(out[10, 10]) == draw.LEFT_COLOR
    # Ground truth: visibility in the third column; v = 0 joints are not drawn.
    kpts[7, 2] = 0
    gt = draw.draw_skeleton(image, kpts, radius=3)
    assert np.array_equal(gt, out)
    with pytest.raises(ValueError, match="scores must have 17"):
        draw.draw_skeleton(image, kpts, np.ones(3))


def test_joint_sides():
    sides = draw.joint_sides()
    assert [JOINT_NAMES[i] for i in np.flatnonzero(sides < 0)][0] == "left_ear"
    assert sides[JOINT_NAMES.index("nose")] == 0 and sides[JOINT_NAMES.index("right_knee")] == 1


# ----------------------------------------------------------------------------- pose grids


def _person(rng, shift=0.0, scores=None):
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = rng.uniform(25, 55, 17) + shift
    kp[:, 1] = rng.uniform(10, 50, 17)
    kp[:, 2] = 1
    kp[3:5, 2] = 0  # ears never labeled
    return Person(
        keypoints=kp,
        bbox=np.asarray([20, 5, 40, 50], np.float32),
        head_bbox=np.asarray([30, 5, 10, 10], np.float32),
        keypoint_scores=scores,
    )


def make_datasets(tmp_path):
    """GT (one video, 3 frames with one person each) and two methods' predictions."""
    rng = np.random.default_rng(0)
    frames, preds_a, preds_b = [], [], []
    for i in range(3):
        path = str(tmp_path / "images" / f"{i:06d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img = np.zeros((60, 80, 3), np.uint8)
        img[..., 0] = np.linspace(0, 120, 80, dtype=np.uint8)[None]
        img[..., 2] = np.linspace(0, 90, 60, dtype=np.uint8)[:, None]
        assert cv2.imwrite(path, img)
        gt_p = _person(rng)
        frames.append(Frame(path, i, 100 + i, True, [gt_p]))
        pa = _person(rng, shift=2.0, scores=np.full(17, 0.8, np.float32))
        pb = _person(rng, shift=-3.0, scores=np.full(17, 0.1, np.float32))  # all below threshold
        preds_a.append(Frame(path, i, 100 + i, True, [pa]))
        preds_b.append(Frame(path, i, 100 + i, True, [pb]))
    gt = VideoDataset([Video("vid", frames, "a.json")], "posetrack18")
    pa = VideoDataset([Video("vid", preds_a, "a.json")], "posetrack18")
    pb = VideoDataset([Video("vid", preds_b, "a.json")], "posetrack18")
    return gt, {"posewarper": pa, "copy_nearest": pb}


def test_pose_comparison_grid(tmp_path):
    gt, preds = make_datasets(tmp_path)
    samples = draw.pick_samples(gt, 2, preds)
    assert samples == [(0, 0), (0, 2)]
    grid = draw.pose_comparison(gt, preds, samples, cell_height=100, gap=4)
    # Two rows of (caption 20 + cell 100), one gap.
    assert grid.dtype == np.uint8 and grid.shape[0] == 2 * 120 + 4
    cell_w = (grid.shape[1] - 2 * 4) // 3
    top = grid[20:120]
    colors = {tuple(c) for c in top.reshape(-1, 3)}
    assert draw.LEFT_COLOR in colors and draw.RIGHT_COLOR in colors
    # Third column: the scores are all below threshold, so no skeleton colour at all.
    third = top[:, 2 * (cell_w + 4) :].reshape(-1, 3)
    assert not np.any(np.all(third == np.asarray(draw.LEFT_COLOR), axis=1))
    missing = {"posewarper": VideoDataset([Video("other", [], "b")], "posetrack18")}
    with pytest.raises(ValueError, match="no video 'vid'"):
        draw.pose_comparison(gt, missing, samples)


# ----------------------------------------------------------------------------- motion fields


def test_offset_vectors_layout():
    rng = np.random.default_rng(1)
    off = rng.normal(size=(4, 5, 3 * 18)).astype(np.float32)
    g = 2
    mean = np.zeros((4, 5, 2))
    for k in range(9):  # channel 18 g + 2 k: dy; 18 g + 2 k + 1: dx
        mean[..., 0] += off[..., 18 * g + 2 * k] / 9
        mean[..., 1] += off[..., 18 * g + 2 * k + 1] / 9
    np.testing.assert_allclose(draw.offset_vectors(off, g, "mean"), mean, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        draw.offset_vectors(off, g, "center"), off[..., [18 * g + 8, 18 * g + 9]]
    )
    np.testing.assert_array_equal(draw.offset_vectors(off, 1, 7), off[..., [32, 33]])
    with pytest.raises(ValueError, match="joint 3 is out of range"):
        draw.offset_vectors(off, 3)
    with pytest.raises(ValueError, match=r"\[h, w, J \* 18\]"):
        draw.offset_vectors(off[..., :20], 0)


def test_motion_field_constant_offsets_point_right(tmp_path):
    image = np.full((32, 24, 3), 90, np.uint8)
    h, w, j = 8, 6, 17
    right = np.zeros((h, w, j * 18), np.float32)
    right[..., 1::2] = 2.0  # every tap: dx = +2, dy = 0 heatmap pixels
    down = np.zeros_like(right)
    down[..., 18 * 9 : 18 * 10 : 2] = 1.0  # joint 9 only: dy = +1
    path = str(tmp_path / "motion.png")
    rendered, arrows = draw.draw_motion_fields(
        image, [right, down], dilations=(3, 6), joints=(0, 9), step=2, path=path
    )
    assert [(a.dilation, a.joint) for a in arrows] == [(3, 0), (3, 9), (6, 0), (6, 9)]
    stride = 32 / 8
    for a in arrows[:2]:  # dilation 3: all arrows point right, 2 heatmap px = 8 crop px long
        assert len(a.u) == (h // 2) * (w // 2)
        np.testing.assert_allclose(a.u, 2 * stride, rtol=0, atol=1e-9)
        np.testing.assert_allclose(a.v, 0, atol=1e-9)
    np.testing.assert_allclose(arrows[3].v, 1 * stride, atol=1e-9)  # +dy: down (y down)
    np.testing.assert_allclose(arrows[2].v, 0, atol=1e-9)
    np.testing.assert_allclose(np.unique(arrows[0].x), [0, 8, 16])  # tails at q * stride
    saved = cv2.imread(path)
    assert saved is not None and saved.shape == rendered.shape
    assert len(np.unique(saved.reshape(-1, 3), axis=0)) > 10
    yellow = np.all(rendered == (255, 255, 0), axis=-1).sum()
    assert yellow > 50  # the arrows were drawn


# ----------------------------------------------------------------------------- end to end


def test_write_figures_and_report(tmp_path):
    gt, preds = make_datasets(tmp_path)
    results = make_results()
    results["propagation"]["hrnet_pseudo"]["Elbow"] = math.nan  # bar left out, still plots
    workdir = tmp_path / "run"
    offsets = [np.random.default_rng(0).normal(0, 0.5, (8, 6, 17 * 18)).astype(np.float32)]
    motion = report.MotionSample(np.full((32, 24, 3), 60, np.uint8), offsets, (3,), joints=(0,))
    figures = report.write_figures(
        str(workdir), results, gt=gt, predictions={"propagation": preds}, motion=motion
    )
    names = sorted(os.path.basename(p) for p in figures.values())
    assert names == ["map_bars.png", "motion_fields.png", "samples_propagation.png"]
    for path in figures.values():
        assert os.path.dirname(path) == str(workdir / "report")
        img = cv2.imread(path)
        assert img is not None and min(img.shape[:2]) > 50
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # not one flat colour
    report.write_report(str(workdir), results, CONFIG, TIMING, figures=figures, device="cpu")
    md = (workdir / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(f"report/{n}" for n in names)
    assert all((workdir / link).is_file() for link in links)

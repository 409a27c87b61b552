"""The seeds sweep: the summary's arithmetic on hand-built reports, the draws' configs, the
sweep's bookkeeping with a stand-in job (the whole sweep on the runlocal variant takes minutes
per draw on a 2-core machine: run it by hand, ``python -m posewarper_jax.seeds --config
configs/sparse.py:runlocal --seeds 0,1 --workdir runs/seeds_smoke``)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os

import pytest
from test_report import CONFIG, TIMING

from posewarper_jax import seeds
from posewarper_jax.apps import report, seeds_summary
from posewarper_jax.eval.posetrack_map import COLUMNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg: str = ""):
    spec = importlib.util.spec_from_file_location(
        "sparse", os.path.join(ROOT, "configs", "sparse.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _table(total: float, head: float | None = 50.0) -> dict:
    return {c: (total if c == "Total" else head) for c in COLUMNS}


def _views(total: float) -> dict:
    return {
        "map": _table(total),
        "map_constant_scores": _table(total - 1),
        "pckh": _table(total + 1),
    }


def _results(pw: float, fb: float, agg: float, seed: int) -> dict:
    """A report's results: PoseWarper ``pw``, Farneback ``fb``, aggregation ``agg``; the other
    rows fixed, one joint group without ground truth (NaN) in seed 1's HRNet row."""
    prop = {"posewarper": pw, "copy_nearest": 60.0, "farneback": fb, "hrnet_pseudo": 40.0}
    det = {"hrnet": 44.0, "posewarper_aggregation": agg, "hrnet_pseudo_augmented": 45.0}
    out = {
        "propagation": {m: _table(v) for m, v in prop.items()},
        "detection": {
            m: _table(v, math.nan if seed == 1 and m == "hrnet" else 50.0) for m, v in det.items()
        },  # fmt: skip
        "evaluation": {"split": "test", "videos": [f"v{seed}a", f"v{seed}b"], "of_videos": 4},
        "propagation_scoring": {
            "split": "test",
            "methods": {
                m: {**_views(v), "by_delta": {"1": _views(v + 5), "2": _views(v - 5)}}
                for m, v in prop.items()
            },
        },
        "extra": {
            "detection": {"posewarper_aggregation_causal": _table(agg - 0.5)},
            "tracking": {
                "posewarper": {
                    "MOTA": 17.0 + seed,
                    "MOTP": 78.0,
                    "Prec": 62.0,
                    "Rec": 46.0,
                    "switches": 6,
                }
            },  # fmt: skip
        },
    }
    return out


def _reports(tmp_path, values, configs=None) -> dict[int, dict]:
    """Writes each report with ``apps.report`` and reads it back as the sweep does."""
    out = {}
    for seed, (pw, fb, agg) in values.items():
        config = copy.deepcopy(CONFIG)
        config["data"] = {**config["data"], "synthetic_seed": seed, "root": f"d{seed}"}
        if configs:
            configs(seed, config)
        folder = tmp_path / f"seed_{seed}"
        report.write_report(str(folder), _results(pw, fb, agg, seed), config, TIMING, device="cpu")
        out[seed] = report.load_report(str(folder / "report.json"))
    return out


def test_summary_arithmetic_on_hand_built_reports(tmp_path):
    reports = _reports(
        tmp_path, {0: (82.0, 81.0, 47.0), 2: (75.0, 76.0, 44.0), 1: (80.0, 78.0, 45.5)}
    )
    s = seeds_summary.summarize(reports)
    assert s["seeds"] == [0, 1, 2] and s["split"] == "test"
    assert s["draws"]["1"]["videos"] == ["v1a", "v1b"] and s["draws"]["2"]["data_root"] == "d2"
    pw = s["rows"]["propagation/posewarper/map"]["columns"]["Total"]
    assert pw["values"] == [82.0, 80.0, 75.0]  # in seed order
    assert pw["mean"] == pytest.approx(79.0)
    assert pw["std"] == pytest.approx(math.sqrt((9 + 1 + 16) / 2))  # n - 1
    assert pw["n"] == 3 and s["rows"]["propagation/posewarper/map"]["headline"]
    views = s["rows"]["propagation/farneback/pckh"]["columns"]["Total"]
    assert views["values"] == [82.0, 79.0, 77.0]
    delta = s["rows"]["propagation/posewarper/map_constant_scores/delta=2"]["columns"]["Total"]
    assert delta["values"] == [76.0, 74.0, 69.0]
    # A joint group without ground truth (NaN, null in the file) is left out of its column.
    head = s["rows"]["detection/hrnet"]["columns"]["Head"]
    assert head["values"] == [50.0, None, 50.0] and head["n"] == 2 and head["std"] == 0.0
    assert s["rows"]["detection/hrnet"]["columns"]["Total"]["std"] == 0.0
    causal = s["rows"]["detection/posewarper_aggregation_causal"]["columns"]["Total"]
    assert causal["mean"] == pytest.approx((46.5 + 45.0 + 43.5) / 3)
    mota = s["rows"]["tracking/posewarper"]["columns"]["MOTA"]
    assert mota["values"] == [17.0, 18.0, 19.0] and mota["std"] == pytest.approx(1.0)
    # Paired differences: per draw, then mean ± std.
    d = s["differences"]["propagation/posewarper/map - propagation/farneback/map"]
    assert d["values"] == [1.0, 2.0, -1.0] and d["a_better"] == 2
    assert d["mean"] == pytest.approx(2 / 3)
    assert d["std"] == pytest.approx(math.sqrt(((1 / 3) ** 2 + (4 / 3) ** 2 + (5 / 3) ** 2) / 2))
    agg = s["differences"]["detection/posewarper_aggregation - detection/hrnet"]
    assert agg["values"] == [3.0, 1.5, 0.0] and agg["a_better"] == 2

    md = seeds_summary.render_summary(s)
    headline = md.split("## Headline (Total)")[1].split("\n## ")[0]
    assert "| PoseWarper, mAP | 79.0 ± 3.6 | 82.0 | 80.0 | 75.0 |" in headline
    assert "| HRNet (sparse + pseudo labels) | 45.0 ± 0.0 | 45.0 | 45.0 | 45.0 |" in headline
    assert "| PoseWarper, mAP − Farneback flow, mAP | 0.7 ± 1.5 | 2 of 3 |" in md
    assert "- seed 2: 2 of 4 videos: `v2a`, `v2b`" in md


def test_summary_refuses_mixed_splits_and_configs(tmp_path):
    values = {0: (82.0, 81.0, 47.0), 1: (80.0, 78.0, 45.5)}
    one = seeds_summary.summarize(_reports(tmp_path / "a", {0: values[0]}))
    assert one["rows"]["propagation/posewarper/map"]["columns"]["Total"]["std"] is None

    def other_lr(seed, config):
        config["stage1"] = {**config["stage1"], "lr": 1e-3 * (seed + 1)}

    with pytest.raises(ValueError, match=r"config.stage1.lr differs between seed 0"):
        seeds_summary.summarize(_reports(tmp_path / "b", values, other_lr))
    reports = _reports(tmp_path / "c", values)
    reports[1]["evaluation"]["split"] = "dev"
    with pytest.raises(ValueError, match="different splits"):
        seeds_summary.summarize(reports)
    del reports[1]["evaluation"]
    with pytest.raises(ValueError, match="names no evaluation split"):
        seeds_summary.summarize(reports)
    with pytest.raises(ValueError, match="no finished draw"):
        seeds_summary.summarize({})


def test_parse_seeds_and_draw_configs():
    assert seeds.parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("", "0,0", "a", "-1"):
        with pytest.raises(seeds.SeedsError, match="--seeds"):
            seeds.parse_seeds(bad)
    c = _config()
    base = seeds.draw_config(c, 0)
    assert base.data.root == "data/synthetic" and base.data.synthetic_seed == 0
    assert base.pretrain.root == "data/synthetic_stills"
    other = seeds.draw_config(c, 2)
    assert other.data.root == "data/synthetic_seed2" and other.data.synthetic_seed == 2
    assert other.pretrain.root == "data/synthetic_stills"  # one pre-training set for all
    assert c.data.root == "data/synthetic" and c.pretrain.root == ""  # the config is kept
    # Everything else is the config's own.
    flat = seeds_summary._flat(json.loads(other.to_json_best_effort()))
    want = seeds_summary._flat(json.loads(c.to_json_best_effort()))
    assert {k for k in flat if flat[k] != want.get(k)} == set(seeds_summary.SEED_FIELDS)
    real = _config(f"data=posetrack18,root={ROOT}")
    with pytest.raises(seeds.SeedsError, match="data.kind='posetrack18'"):
        seeds.draw_config(real, 1)


def test_run_seeds_runs_each_draw_and_summarizes_after_each(tmp_path, monkeypatch):
    """The sweep's bookkeeping with the job replaced by one writing a hand-built report:
    one workdir and data root per draw, the summary rewritten after each draw (the missing
    ones named), a failing draw stops the sweep with the earlier draws summarized."""
    from posewarper_jax import job

    calls = []
    figures = {0: (82.0, 81.0, 47.0), 1: (80.0, 78.0, 45.5), 2: (75.0, 76.0, 44.0)}

    def fake_job(config, workdir):
        seed = int(config.data.synthetic_seed)
        calls.append((seed, config.data.root, config.pretrain.root, workdir))
        if seed == 2:
            raise RuntimeError("draw 2 stopped")
        summary = (
            json.loads((tmp_path / "runs" / "summary.json").read_text()) if calls[1:] else None
        )
        assert summary is None or summary["seeds"] == [0] and summary["missing"] == [1, 2]
        report.write_report(workdir, _results(*figures[seed], seed), config, TIMING, device="cpu")

    monkeypatch.setattr(job, "train_and_evaluate", fake_job)
    c = _config("runlocal")
    c.data.root = str(tmp_path / "data" / "tiny")
    with pytest.raises(RuntimeError, match="draw 2"):
        seeds.run_seeds(c, str(tmp_path / "runs"), [0, 1, 2], log=lambda *_: None)
    assert [(s, os.path.basename(r), os.path.basename(p)) for s, r, p, _ in calls] == [
        (0, "tiny", "tiny_stills"),
        (1, "tiny_seed1", "tiny_stills"),
        (2, "tiny_seed2", "tiny_stills"),
    ]
    assert [w for *_, w in calls] == [str(tmp_path / "runs" / f"seed_{s}") for s in (0, 1, 2)]
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["missing"] == [2]
    pw = summary["rows"]["propagation/posewarper/map"]["columns"]["Total"]
    assert pw["values"] == [82.0, 80.0] and pw["std"] == pytest.approx(math.sqrt(2))
    assert summary["draws"]["1"]["workdir"].endswith("seed_1")
    md = (tmp_path / "runs" / "summary.md").read_text()
    assert "| PoseWarper, mAP | 81.0 ± 1.4 | 82.0 | 80.0 |" in md
    # --summarize_only's path: the finished draws only, nothing run.
    calls.clear()
    again = seeds.write_summary(str(tmp_path / "runs"), [0, 1, 2])
    assert again["rows"] == summary["rows"] and not calls
    assert seeds.write_summary(str(tmp_path / "none"), [0]) is None


def test_pretraining_runs_once_and_later_draws_take_a_copy(tmp_path, monkeypatch):
    """The first draw pre-trains; every later draw starts with a copy of its ``pretrain/``
    (read back as finished by the job), and a draw with its own ``pretrain/`` (finished or
    interrupted) keeps it. Without pre-training (``pretrain.data=none``) nothing is copied."""
    from posewarper_jax import job

    seen = {}

    def fake_job(config, workdir):
        seed = int(config.data.synthetic_seed)
        done = os.path.join(workdir, "pretrain", "done.json")
        seen[seed] = json.loads(open(done).read()) if os.path.exists(done) else None
        if seen[seed] is None and config.pretrain.data != "none":  # "pre-trains"
            os.makedirs(os.path.join(workdir, "pretrain", "checkpoints", "7"))
            with open(done, "w") as f:
                json.dump({"seconds": 11.0, "by": seed}, f)
        report.write_report(workdir, _results(80.0, 79.0, 45.0, seed), config, TIMING)

    monkeypatch.setattr(job, "train_and_evaluate", fake_job)
    c = _config("runlocal")
    c.data.root = str(tmp_path / "data" / "tiny")
    runs = tmp_path / "runs"
    # Draw 2 was interrupted while pre-training: its own half-written folder stays.
    os.makedirs(runs / "seed_2" / "pretrain" / "checkpoints" / "3")
    messages = []
    seeds.run_seeds(c, str(runs), [0, 1, 2], log=messages.append)
    assert seen == {0: None, 1: {"seconds": 11.0, "by": 0}, 2: None}
    assert (runs / "seed_1" / "pretrain" / "checkpoints" / "7").is_dir()
    assert not (runs / "seed_1" / "pretrain.copying").exists()
    assert (runs / "seed_2" / "pretrain" / "checkpoints" / "3").is_dir()
    assert any("draw 1 takes the finished pre-training of draw 0" in m for m in messages)
    assert not any("draw 2 takes" in m for m in messages)
    # Without pre-training nothing is shared.
    c.pretrain.data = "none"
    seen.clear()
    seeds.run_seeds(c, str(tmp_path / "runs_pretrained"), [0, 1], log=lambda *_: None)
    assert seen == {0: None, 1: None}
    assert not (tmp_path / "runs_pretrained" / "seed_1" / "pretrain").exists()

"""The fixed dev/test split of the validation videos, and where the job and report use it."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from test_report import CONFIG, TIMING, make_results
from test_seeds import _config

from posewarper_jax import cli, experiment, job
from posewarper_jax.apps import report
from posewarper_jax.data import splits
from posewarper_jax.data.synthetic.dataset import video_name
from posewarper_jax.data.types import Video, VideoDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PT18 = os.path.join(ROOT, "tests", "fixtures", "posetrack18")
PT17 = os.path.join(ROOT, "tests", "fixtures", "posetrack17")


def test_rule_by_hand_and_balance():
    names = [f"video_{i:03d}" for i in range(9)]
    ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    of = splits.assign(names)
    assert {n for n in names if of[n] == "dev"} == set(ranked[:4])
    assert {n for n in names if of[n] == "test"} == set(ranked[4:])
    # The order the names come in does not matter.
    assert splits.assign(reversed(names)) == of
    for n in range(1, 60):
        counts = list(splits.assign(f"v{i}" for i in range(n)).values())
        assert counts.count("dev") == n // 2 and counts.count("test") == n - n // 2
    assert splits.assign(["only"]) == {"only": "test"}
    with pytest.raises(ValueError, match="twice"):
        splits.assign(["a", "b", "a"])
    with pytest.raises(ValueError, match="unknown split"):
        splits.videos_of(names, "val")


def test_synthetic_names_split_the_same_positions_in_every_draw():
    """Synthetic video names do not depend on the seed: every draw splits the same positions,
    the default's 12 videos six and six, the tiny preset's single video is test."""
    from posewarper_jax.data.synthetic import get_config

    n = get_config("default").num_val_videos
    of = splits.assign(video_name("val", i) for i in range(n))
    assert list(of.values()).count("test") == list(of.values()).count("dev") == n // 2
    assert get_config("tiny").num_val_videos == 1


def test_eval_videos_on_posetrack18_and_17_fixtures():
    c = _config(f"data=posetrack18,root={PT18}")
    assert experiment.eval_split(c) == "test"
    full = [v.name for v in experiment.load_split(c, "val").videos]
    test = experiment.eval_videos(c)
    dev = experiment.eval_videos(c, "dev")
    assert sorted([v.name for v in test.videos] + [v.name for v in dev.videos]) == sorted(full)
    assert len(test.videos) == len(dev.videos) == 1
    assert test.extra["split"] == {"split": "test", "rule": splits.RULE, "of_videos": 2}
    assert [v.name for v in experiment.eval_videos(c, "all").videos] == full
    # PoseTrack17: one validation video, which is test; dev holds none.
    c17 = _config(f"data=posetrack17,root={PT17}")
    assert len(experiment.eval_videos(c17).videos) == 1
    with pytest.raises(experiment.ConfigError, match=r"config.eval.split='dev': no validation"):
        experiment.eval_videos(c17, "dev")
    c = _config("runlocal")
    c.eval.split = "val"
    with pytest.raises(experiment.ConfigError, match=r"config.eval.split='val': must be one of"):
        experiment.validate(c)


def test_select_keeps_order_and_records_the_split():
    names = [f"v{i}" for i in range(6)]
    ds = VideoDataset(videos=[Video(n, [], "") for n in names], fmt="posetrack18", root="")
    dev = splits.select(ds, "dev")
    assert [v.name for v in dev.videos] == [n for n in names if splits.assign(names)[n] == "dev"]
    assert dev.extra["split"]["of_videos"] == 6 and "split" not in ds.extra


def test_report_states_the_split_and_its_videos(tmp_path):
    results = make_results()
    results["evaluation"] = {
        "split": "test",
        "rule": splits.RULE,
        "videos": ["000001_synth_val", "000002_synth_val"],
        "of_videos": 4,
    }
    out = report.write_report(str(tmp_path), results, CONFIG, TIMING, device="cpu")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["evaluation"] == out["evaluation"] == results["evaluation"]
    md = (tmp_path / "report.md").read_text()
    assert "`test` split of the validation videos" in md and "2 of 4 videos" in md
    assert "`000002_synth_val`" in md
    results["evaluation"] = {"split": "test", "videos": "abc"}
    with pytest.raises(ValueError, match="videos"):
        report.build_report(results, CONFIG, TIMING)


def test_a_workdir_scores_one_split(tmp_path):
    workdir = str(tmp_path)
    test = {"split": "test", "videos": ["a"]}
    job._claim_eval_split(workdir, test)
    assert json.loads((tmp_path / "eval" / "split.json").read_text()) == test
    job._claim_eval_split(workdir, dict(test, rule="r", of_videos=2))  # same split: resumes
    with pytest.raises(cli.ExpectedError, match=r"scored the 'test' split.*'dev'"):
        job._claim_eval_split(workdir, {"split": "dev", "videos": ["b"]})
    with pytest.raises(cli.ExpectedError, match="other videos"):
        job._claim_eval_split(workdir, {"split": "test", "videos": ["a", "c"]})
    # Scores written before the split existed scored every video.
    old = tmp_path / "old"
    (old / "eval").mkdir(parents=True)
    (old / "eval" / "propagation_posewarper.json").write_text("{}")
    with pytest.raises(cli.ExpectedError, match="before eval.split existed"):
        job._claim_eval_split(str(old), test)

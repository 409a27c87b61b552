"""Reading a finished workdir's config from another directory (``apps.trained.read_config``)."""

from __future__ import annotations

import json
import os

from posewarper_jax import workdir as workdir_lib
from posewarper_jax.apps import trained


def _workdir(tmp_path, root="data/synthetic"):
    wd = tmp_path / "run"
    wd.mkdir()
    config = {
        "data": {"root": root, "val_detections": ""},
        "pretrain": {"root": "", "ann": ""},
        "model": {"pretrained": "weights/coco"},
    }
    (wd / "config.json").write_text(json.dumps(config))
    return wd


def test_relative_paths_resolve_against_the_jobs_directory(tmp_path, monkeypatch):
    launch = tmp_path / "launch"
    (launch / "data" / "synthetic").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    wd = _workdir(tmp_path)
    monkeypatch.chdir(launch)
    workdir_lib.write_launch(str(wd))
    assert json.loads((wd / "launch.json").read_text()) == {"cwd": str(launch)}

    # From the job's own directory nothing changes.
    assert trained.read_config(str(wd)).data.root == "data/synthetic"
    # From elsewhere the data set is found where the job ran; a path that exists nowhere
    # (model.pretrained) and an empty one stay as they were.
    monkeypatch.chdir(elsewhere)
    c = trained.read_config(str(wd))
    assert c.data.root == os.path.join(str(launch), "data/synthetic")
    assert c.model.pretrained == "weights/coco"
    assert c.pretrain.root == "" and c.data.val_detections == ""
    # A relative path that exists here wins over the job's.
    (elsewhere / "data" / "synthetic").mkdir(parents=True)
    assert trained.read_config(str(wd)).data.root == "data/synthetic"


def test_without_launch_record_or_with_absolute_paths_nothing_changes(tmp_path, monkeypatch):
    wd = _workdir(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert trained.read_config(str(wd)).data.root == "data/synthetic"
    (wd / "launch.json").write_text("not json")
    assert trained.read_config(str(wd)).data.root == "data/synthetic"
    absolute = str(tmp_path / "abs")
    (tmp_path / "x").mkdir()
    wd2 = _workdir(tmp_path / "x", absolute)
    (wd2 / "launch.json").write_text(json.dumps({"cwd": str(tmp_path)}))
    assert trained.read_config(str(wd2)).data.root == absolute

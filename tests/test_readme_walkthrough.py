"""The README's walk-through with one's own video, command by command, as written.

The block after the ``walkthrough`` marker in README.md is run line by line in a temporary
directory: each ``python -m MODULE ARGS`` line calls ``MODULE.main(ARGS)`` (the code path of
``python -m``, without starting a process per command). Two substitutions only: the main
job's line is not run (it trains for minutes), and ``runs/sparse`` is a workdir holding the
tiny model at initialisation (``user_video.shared_workdir``).
"""

from __future__ import annotations

import importlib
import json
import os
import shlex

import cv2
import pytest
from user_video import ROOT, shared_workdir

MARKER = "<!-- walkthrough:"


def walkthrough_commands() -> list[list[str]]:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index(MARKER)
    block = text[text.index("```bash", start) + len("```bash") : text.index("```\n", start + 10)]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("python -m ")]


def test_readme_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    commands = walkthrough_commands()
    modules = [c[2] for c in commands]
    assert modules[0] == "posewarper_jax.main"
    for needed in ("label", "propagate", "evaluate", "track", "data.synthetic.clip"):
        assert f"posewarper_jax.{needed}" in modules
    workdir = shared_workdir()[0]
    monkeypatch.chdir(tmp_path)
    for argv in commands[1:]:
        args = [workdir if a == "runs/sparse" else a for a in argv[3:]]
        module = importlib.import_module(argv[2])
        code = module.main(args)
        out = capsys.readouterr()
        assert code == 0, f"{' '.join(argv)}\n{out.err}"
    demo = tmp_path / "demo"
    assert sorted(os.listdir(demo / "job" / "frames")) == [
        f"{i:06d}.jpg" for i in (0, 7, 14, 21, 28, 35)
    ]
    dense = json.load(open(demo / "dense" / "posetrack18" / "clip.json"))
    assert len(dense["images"]) == 40 and dense["annotations"]
    cap = cv2.VideoCapture(str(demo / "overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    assert (demo / "view.html").read_text().count("data:image/jpeg") == 40
    tracked = json.load(open(demo / "track" / "posetrack18" / "clip.json"))
    assert all(a["track_id"] >= 0 for a in tracked["annotations"])


@pytest.mark.parametrize("module", ["label", "propagate", "track", "data.synthetic.clip"])
def test_commands_have_help(module, capsys):
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"posewarper_jax.{module}").main(["--help"])
    assert e.value.code == 0
    assert "usage: python -m posewarper_jax." in capsys.readouterr().out

"""The kill campaign of ``benchmarks/chaos.py``, short: the ``runlocal`` job killed with
SIGKILL during data generation, a checkpoint write and the evaluation, resumed each time, ends
bit for bit where an uninterrupted run ends (checkpoints, predictions, report.json; timings
aside, and every phase keeps its time in timing.json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_three_kills_end_where_an_uninterrupted_run_ends(tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the job as users run it: one CPU device
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "chaos.py"), "--kills", "3"]
        + ["--dir", str(tmp_path), "--seed", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert out.stdout.strip(), out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["differences"] == [] and result["ok"], result["differences"]
    assert out.returncode == 0
    records = json.load(open(tmp_path / "chaos.json"))["records"]
    assert [r["target"] for r in records] == ["data", "checkpoint", "evaluation"]
    assert result["kills"] == 3, records  # every kill landed before the job could finish
    assert "data" in result["killed_in"] and len(result["killed_in"]) >= 2, records

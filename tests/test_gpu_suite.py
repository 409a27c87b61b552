"""``benchmarks/gpu_suite.sh`` on a CPU: small shapes, only JSON lines on stdout.

The GPU figures need a GPU; these tests check that the script works so it is ready to run
where one is lent. ``p1`` and ``p4`` run here for real. ``p2`` and ``gpu`` are checked as the
commands they run (``SUITE_DRY_RUN``): on a CPU those are ``benchmarks/model.py --quick``,
``benchmarks/torch_reference.py --quick`` (run by ``tests/test_benchmarks_torch.py``) and the
``runlocal`` main job (run end to end by ``tests/test_training.py``), each minutes of compiling
that CI already spends once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _suite(tmp_path, *parts, dry_run=False):
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path), JAX_PLATFORMS="cpu")
    env["SUITE_TIMEOUT"] = "900"  # per command; a loaded CI machine compiles slowly
    if dry_run:
        env["SUITE_DRY_RUN"] = "1"
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), *parts],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr  # all JSON


@pytest.mark.slow
@pytest.mark.parametrize(
    "part, cases",
    [
        ("p1", {"lax_conv", "deform_multi"}),
        ("p4", {"jpeg_decode_floor", "pipeline", "workers_needed"}),
    ],
)
def test_suite_part_runs_on_cpu(tmp_path, part, cases):
    lines, stderr = _suite(tmp_path, part)
    suites = [r for r in lines if "suite" in r]
    assert suites and all(r["suite"] == part and r["rc"] == 0 for r in suites), (suites, stderr)
    assert cases <= {r.get("case") for r in lines}, stderr[-2000:]
    timed = [r for r in lines if "median_ms" in r or "pairs_per_s" in r]
    assert timed and all(r.get("median_ms", 1) > 0 and r.get("pairs_per_s", 1) > 0 for r in timed)


def test_training_and_variant_parts_run_the_tested_commands(tmp_path):
    lines, _ = _suite(tmp_path, "p2", "gpu", dry_run=True)
    cmds = {r["suite"]: [] for r in lines}
    for r in lines:
        assert r["dry_run"] and r["rc"] == 0
        cmds[r["suite"]].append(r["cmd"].split(" ", 1)[1])  # without the interpreter
    assert cmds["p2"][0] == "benchmarks/model.py --quick --dtype float32"
    if any("torch_reference" in c for c in cmds["p2"]):  # where torch is installed
        assert cmds["p2"][1:] == ["benchmarks/torch_reference.py --quick"]
    (job,) = cmds["gpu"]
    assert job.startswith("-m posewarper_jax.main --config configs/sparse.py:runlocal --workdir ")


def test_unknown_part_is_an_error_line(tmp_path):
    (line,), _ = _suite(tmp_path, "p9")
    assert line["suite"] == "p9" and line["rc"] == 2 and "unknown part" in line["error"]

"""``benchmarks/conv_backward.py`` on tiny shapes (the 3 most shared conv shapes of each train
step): one line per shape with both times, the faster backward and the rule's pick
(``ops.conv.gemm_backward_pays``), and per case the sums, which must agree with those lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from posewarper_jax.ops.conv import gemm_backward_pays

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "conv_backward.py")


def test_tiny_steps_layer_by_layer():
    cmd = [sys.executable, SCRIPT, "--backbone", "tiny", "--head", "tiny", "--batch", "2"]
    cmd += ["--size", "32", "32", "--iters", "1", "--top", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    totals = {r["case"]: r for r in rows if r.get("scope") == "total"}
    assert set(totals) == {"stage1_train_step", "stage2_train_step"}
    for case, total in totals.items():
        layers = [r for r in rows if r["case"] == case and "scope" not in r]
        assert len(layers) == total["shapes"] == 3 < total["all_shapes"]
        assert sum(r["layers"] for r in layers) == total["layers"] < total["all_layers"]
        counts = [r["layers"] for r in layers]
        assert counts == sorted(counts, reverse=True)  # the most shared shapes first
        for r in layers:
            assert r["lax_ms"] > 0 and r["gemm_ms"] > 0
            assert r["faster"] == ("gemm" if r["gemm_ms"] < r["lax_ms"] else "lax")
            assert r["rule"] == ("gemm" if gemm_backward_pays(r["kernel"]) else "lax")
        for policy in ("lax", "gemm", "rule", "best"):
            pick = (lambda r: "lax") if policy == "lax" else (lambda r: "gemm")
            pick = {"rule": lambda r: r["rule"], "best": lambda r: r["faster"]}.get(policy, pick)
            want = sum(r["layers"] * r[pick(r) + "_ms"] for r in layers)
            assert total[f"{policy}_ms"] == pytest.approx(want, rel=1e-3, abs=0.01)
        assert total["best_ms"] <= min(total["lax_ms"], total["gemm_ms"], total["rule_ms"]) + 0.01


@pytest.mark.parametrize(
    "flags, message",
    [(["--conv", "lax"], "drop --conv"), (["--top", "0"], "--top"), (["--top", "x"], "--top")],
)
def test_refuses_bad_flags(flags, message):
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--quick", *flags],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]

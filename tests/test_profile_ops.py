"""``benchmarks/profile_ops.py``: the scope rule, and a run on tiny shapes whose lines account
for the traced operations (shares summing to at most 1, the head's and the backbone's scopes
present, the gradient's operations marked ``bwd``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "profile_ops.py")


def _module():
    spec = importlib.util.spec_from_file_location("_profile_ops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scope_of_op_names():
    scope = _module().scope
    name = "jit(step)/transpose(jvp(PoseWarper.pair))/head/offsets3/dot_general"
    assert scope(name, 2) == ("bwd", "PoseWarper.pair/head/offsets3")
    assert scope(name, 1) == ("bwd", "PoseWarper.pair/head")
    name = "jit(step)/jvp(PoseWarper.pair)/PoseWarper._warp_inputs/HRNet/stem/conv1/conv"
    assert scope(name, 2) == ("fwd", "PoseWarper.pair/PoseWarper._warp_inputs/HRNet")
    assert scope("jit(f)/add", 2) == ("fwd", "add")


def test_tiny_stage2_step_profile():
    cmd = [sys.executable, SCRIPT, "--backbone", "tiny", "--head", "tiny", "--batch", "2"]
    cmd += ["--size", "64", "64", "--calls", "2", "--depth", "1", "--top", "50"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    total = [r for r in rows if r["scope"] == "total"]
    scopes = [r for r in rows if r["scope"] != "total"]
    assert len(total) == 1 and total[0]["case"] == "stage2_train_step"
    assert total[0]["ms"] > 0 and total[0]["wall_ms"] > 0 and total[0]["items"] == 2
    assert scopes and all(r["ms"] >= 0 and 0 <= r["share"] <= 1 for r in scopes)
    # Shares are printed to 4 decimals: each may round up by 5e-5.
    assert sum(r["share"] for r in scopes) <= 1 + 5e-5 * len(scopes)
    assert abs(sum(r["ms"] for r in scopes) - total[0]["ms"]) <= 0.01 * total[0]["ms"] + 0.01
    names = {(r["pass"], r["scope"]) for r in scopes}
    assert ("bwd", "PoseWarper.pair/head") in names, names  # the head is trained
    # The frozen backbone runs forward only.
    assert any(p == "fwd" and "_warp_inputs" in s for p, s in names), names
    assert not any(p == "bwd" and "_warp_inputs" in s for p, s in names), names

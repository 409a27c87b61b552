"""The main job's ``report.json`` against a recorded one: the check that a change of the code's
structure left the job's behaviour alone.

``tests/fixtures/report_runlocal.json`` holds the report of ``test_training``'s main-job test
(the tiny data set, 2 steps per stage, flip test, pseudo labels), recorded by one code version
on one or more machines, each recording with the machine it ran on (``recordings``).
``check_report`` compares a new report with them:

- every key, string and boolean, and which values are null: always equal;
- numbers: equal (counts exactly, others to 1e-9) to the recording of this machine (CPU model,
  JAX version) where there is one;
  on a machine without one, XLA may compile other instructions and a score can move where a
  joint sits on a PCKh or OKS threshold, or where the 2-step model's nearly flat heatmaps
  have their maximum (the aggregation's Head AP moved by 4.8 and 15.9 points between an AMD
  EPYC and an Intel Xeon), so there the numbers must agree to 2.0 (percentage points;
  relative 2% for other magnitudes) with at least one recording;
- left out: ``timing_s`` (seconds) and the config's data roots; the workdir in file paths
  reads ``<workdir>``.

``POSEWARPER_RECORD_REPORT=1`` writes this machine's recording from the report of this run
instead (replacing its earlier one, keeping the other machines'): do that only with a code
version whose behaviour is the reference, and where the behaviour changed on purpose, delete
the file first, so that no other machine keeps a recording of the old behaviour. (Values that
a change moved, and that every recording held equal before it, may be carried over to the
other recordings instead; the change of the propagation path did that.) The change of the
deformable sampling (its order of summation) moved the aggregation's Head AP of the 2-step
model on the Intel Xeon from 4.8 and 15.9 to 0.0 (the AMD EPYC's recorded values); the
AMD EPYC's recording could not be made again on that machine, so it was dropped, and there
the numbers are compared with the Intel Xeon's within the tolerance above (before the
change, the new recording was within it of the old AMD one).
"""

from __future__ import annotations

import json
import math
import os
import platform

import jax

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "report_runlocal.json")
IGNORED = ("timing_s",)
IGNORED_CONFIG = (("data", "root"), ("pretrain", "root"))


def machine() -> dict:
    """What decides the floating-point results: the CPU model and the JAX version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__}


def _comparable(report: dict, workdir: str) -> dict:
    text = json.dumps({k: v for k, v in report.items() if k not in IGNORED})
    prefix = json.dumps(os.path.abspath(workdir))[1:-1]
    out = json.loads(text.replace(prefix, "<workdir>"))
    config = out.get("config", {})
    for section, field in IGNORED_CONFIG:
        config.get(section, {}).pop(field, None)
    out["config"] = config
    return out


def _diffs(a, b, path: str, tol) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        if sorted(a) != sorted(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))} differ"]
        for k in a:
            out += _diffs(a[k], b[k], f"{path}.{k}", tol)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diffs(x, y, f"{path}[{i}]", tol)]
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        if isinstance(a, int) and isinstance(b, int) and tol[0] < 1:
            return [] if a == b else [f"{path}: {a} against {b}"]
        if math.isclose(a, b, rel_tol=tol[1], abs_tol=tol[0]):
            return []
        return [f"{path}: {a!r} against {b!r}"]
    return [] if a == b else [f"{path}: {a!r} against {b!r}"]


def recordings() -> list[dict]:
    """The fixture's recordings, ``[{"machine": ..., "report": ...}, ...]`` (a file of one
    recording without the list reads as that one)."""
    if not os.path.exists(FIXTURE):
        return []
    with open(FIXTURE) as f:
        data = json.load(f)
    return data["recordings"] if "recordings" in data else [data]


def check_report(report: dict, workdir: str) -> None:
    """Asserts that ``report`` is the recorded one (module docstring)."""
    here, new = machine(), _comparable(report, workdir)
    if os.environ.get("POSEWARPER_RECORD_REPORT") == "1":
        kept = [r for r in recordings() if r["machine"] != here]
        os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
        with open(FIXTURE, "w") as f:
            json.dump({"recordings": [*kept, {"machine": here, "report": new}]}, f, indent=1)
            f.write("\n")
        return
    recorded = recordings()
    assert recorded, f"no recording in {FIXTURE}: run once with POSEWARPER_RECORD_REPORT=1"
    same = [r for r in recorded if r["machine"] == here]
    if same:
        diffs = _diffs(same[0]["report"], new, "report", (1e-9, 1e-9))
        where = "this machine"
    else:
        found = [(_diffs(r["report"], new, "report", (2.0, 0.02)), r) for r in recorded]
        diffs, nearest = min(found, key=lambda x: len(x[0]))
        where = f"another machine ({nearest['machine']}; none of {len(recorded)} is this one)"
    assert not diffs, f"report.json differs from {FIXTURE} (recorded on {where}):\n" + "\n".join(
        diffs[:30]
    )

"""``benchmarks/pipeline.py --quick``: the JSON lines a suite script collects.

The script runs in a subprocess (it starts Grain worker processes); the test checks the cases,
that every rate is positive, and the arithmetic that links the lines: per-worker rates, the
ratio to the decode floor, and the worker count for a target rate.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 100.0


def test_quick_run_json_lines():
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "benchmarks", "pipeline.py"),
            "--quick",
            "--target-pairs-per-s",
            str(TARGET),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout
    by_case: dict[str, list[dict]] = {}
    for line in lines:
        for key in ("case", "crop", "workers", "pairs_per_s", "cpu_count", "loadavg_1m"):
            assert key in line, (key, line)
        assert line["cpu_count"] == os.cpu_count()
        assert line["loadavg_1m"] >= 0
        by_case.setdefault(line["case"], []).append(line)
    assert set(by_case) == {"jpeg_decode_floor", "pipeline", "workers_needed"}

    (floor,) = by_case["jpeg_decode_floor"]
    assert floor["pairs_per_s"] > 0
    assert math.isclose(floor["frames_per_s"], 2 * floor["pairs_per_s"], abs_tol=0.02)

    pipe = by_case["pipeline"]
    assert {(tuple(r["crop"]), r["workers"]) for r in pipe} == {
        (crop, workers) for crop in ((384, 288), (128, 96)) for workers in (0, 1)
    }
    for r in pipe:
        assert r["pairs_per_s"] > 0 and r["pairs_per_s_per_worker"] > 0
        assert r["pairs_per_cpu_s"] is None or r["pairs_per_cpu_s"] > 0
        per_worker = r["pairs_per_s"] / max(r["workers"], 1)
        assert math.isclose(r["pairs_per_s_per_worker"], per_worker, abs_tol=0.01)
        ratio = r["pairs_per_s_per_worker"] / floor["pairs_per_s"]
        assert math.isclose(r["vs_decode_floor"], ratio, abs_tol=1e-3)
        assert 1.0 <= r["frames_decoded_per_pair"] <= 2.0

    (need,) = by_case["workers_needed"]
    assert need["crop"] == [384, 288]
    assert need["target_pairs_per_s"] == TARGET
    # The per-worker rate it used is the one printed for that crop and worker count (1 worker:
    # the most timed that leaves a core to the main process, with 2+ usable CPUs).
    (src,) = [
        r
        for r in pipe
        if r["crop"] == [384, 288] and r["workers"] == need["per_worker_from_workers"]
    ]
    if need["cpus_usable"] >= 2:
        assert src["workers"] == 1
    assert need["pairs_per_s_per_worker"] == src["pairs_per_s_per_worker"]
    rate = src["pairs_per_s_per_worker"]
    assert need["workers_needed"] == math.ceil(TARGET / rate) >= 1
    # The smallest count that reaches the target.
    assert need["workers_needed"] * rate >= TARGET > (need["workers_needed"] - 1) * rate
    assert need["workers_needed_at_decode_floor"] == math.ceil(TARGET / floor["pairs_per_s"])

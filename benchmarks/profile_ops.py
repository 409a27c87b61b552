"""Where a compiled step spends its time: a ``jax.profiler`` trace of a few calls of one of
``benchmarks/model.py``'s cases, each XLA operation charged to the JAX scope that made it.

  python benchmarks/profile_ops.py                      # the CPU default's stage-2 step
  python benchmarks/profile_ops.py --case head_forward_backward --depth 3
  python benchmarks/profile_ops.py --case stage1_train_step --top 10

The model flags are ``benchmarks/model.py``'s (``--backbone``, ``--head``, ``--batch``,
``--size``, ``--deform-impl``, ``--conv``, ...); the defaults are the CPU default's stage-2
step (HRNet ``small``, the ``cpu_default`` head, 16 pairs of 128x96 crops). After compiling
and two warm-up calls, ``--calls`` calls are timed (``wall_ms``) and then traced.

Each operation of the compiled program is charged to its ``op_name`` (the JAX scope of the
operation it came from), cut to ``--depth`` components after the function's name, with the
pass it belongs to: ``fwd``, or ``bwd`` for operations of the gradient (``transpose(...)``).
Prints one JSON line per scope, largest first (``ms``: summed operation time per call,
``share``: of all operations' time), and a ``total`` line. Operations that run at the same
time on different threads (XLA's CPU runtime runs independent operations concurrently) are
all counted, so the summed time can exceed the wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import importlib.util
import json
import os
import re
import sys
import tempfile
import time

import jax

_HERE = os.path.dirname(os.path.abspath(__file__))
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = .*?op_name=\"([^\"]*)\"")


def _model_module():
    spec = importlib.util.spec_from_file_location("_bench_model", os.path.join(_HERE, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scope(op_name: str, depth: int) -> tuple[str, str]:
    """``(pass, scope)`` of an HLO ``op_name``: ``"bwd"`` for the gradient's operations;
    the scope without ``jit(...)``, ``jvp(...)`` and ``transpose(...)`` wrappers and without
    its last component (the primitive), cut to ``depth`` components."""
    parts = [p for p in op_name.split("/") if p and not p.startswith("jit(")]
    kind = "bwd" if any(p.startswith("transpose(") for p in parts) else "fwd"
    names = []
    for p in parts:
        while True:
            m = re.fullmatch(r"(?:jvp|transpose|vmap|remat|checkpoint)\((.*)\)", p)
            if not m:
                break
            p = m.group(1)
        names.append(p)
    names = names[:-1] if len(names) > 1 else names
    return kind, "/".join(names[: depth + 1])


def _trace_events(trace_dir: str) -> list[dict]:
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    with gzip.open(max(files, key=os.path.getmtime)) as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile(
    model, name, fn, args, *, items, iters, warmup=2, carry=False, calls, depth, top, **info
):
    compiled, call, _ = model.compiled_call(fn, args, carry)
    for _ in range(max(warmup, 1)):
        jax.block_until_ready(call())
    t = time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(call())
    wall_ms = (time.perf_counter() - t) / calls * 1e3

    ops = {}
    for line in compiled.as_text().splitlines():
        m = _INSTR.match(line)
        if m:
            ops[m.group(1)] = m.group(2)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(calls):
            jax.block_until_ready(call())
        jax.profiler.stop_trace()
        events = _trace_events(trace_dir)
    totals = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in ops:
            totals[scope(ops[e["name"]], depth)] += e.get("dur", 0) / 1e3 / calls
    summed = sum(totals.values())
    if not summed:
        raise RuntimeError(f"{name}: the trace holds no operation of the compiled program")
    for (kind, where), ms in totals.most_common(top):
        row = {"case": name, "pass": kind, "scope": where, "ms": round(ms, 3)}
        print(json.dumps({**row, "share": round(ms / summed, 4)}), flush=True)
    row = {"case": name, "scope": "total", "ms": round(summed, 3), "wall_ms": round(wall_ms, 3)}
    print(json.dumps({**row, "items": items, "calls": calls, **info}), flush=True)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    p.add_argument("--case", default="stage2_train_step")
    p.add_argument("--calls", type=int, default=3, help="calls timed, then traced")
    p.add_argument("--depth", type=int, default=2, help="scope components kept")
    p.add_argument("--top", type=int, default=20, help="scopes printed")
    own, rest = p.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        p.print_help()
        print("\nModel flags: those of benchmarks/model.py.")
        return
    model = _model_module()
    if own.case not in model.CASES:
        p.error(f"--case must be one of {model.CASES}, got {own.case!r}")
    if not any(a == "--head" or a.startswith("--head=") for a in rest):
        rest += ["--head", "cpu_default"]
    model.main(
        [*rest, "--cases", own.case],
        run=lambda *a, **kw: profile(
            model, *a, calls=own.calls, depth=own.depth, top=own.top, **kw
        ),
    )


if __name__ == "__main__":
    main()

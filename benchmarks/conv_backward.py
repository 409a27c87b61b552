"""Which backward pass each conv layer of a train step should take on this CPU: ``lax``'s or
``ops.conv``'s matrix-product (GEMM) backward, layer shape by layer shape.

  python benchmarks/conv_backward.py                       # the CPU default's two train steps
  python benchmarks/conv_backward.py --cases stage1_train_step --backbone w32 --size 256 192

The model flags are ``benchmarks/model.py``'s (``--backbone``, ``--head``, ``--batch``,
``--size``, ``--cases``; ``stage1_train_step`` and ``stage2_train_step`` are the cases with
a backward pass), and ``--top N`` times only the N shapes the most layers share. Each case's
step is traced once to list its convolutions (input and kernel shape, stride, padding,
dilation, and how many layers share them); each distinct shape is then timed alone,
forward + both gradients, jitted, median of ``--iters`` calls after a warm-up, with
``lax``'s backward and with the GEMM backward. One JSON line per shape:

* ``lax_ms``, ``gemm_ms``: the two times; ``faster``: the faster backward;
* ``rule``: the one ``ops.conv.gemm_backward_pays`` (what the conv layers take) picks;

and one line per case with the times summed over its layers (each shape times its count)
for every layer on ``lax``, every layer on GEMM, the rule, and the faster of the two per
layer (the best any shape rule could do on this machine). In a train step XLA runs
independent operations side by side, so these sums do not add up to a step's time; the
step itself is ``benchmarks/model.py --conv project|lax|gemm``.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

_HERE = os.path.dirname(os.path.abspath(__file__))
_TRAINED = ("stage1_train_step", "stage2_train_step")


def _model_module():
    spec = importlib.util.spec_from_file_location("_bench_model", os.path.join(_HERE, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _time(fn, args, iters: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_shape(x_shape, k_shape, strides, padding, dilation, iters: int) -> dict[str, float]:
    """Forward + input and kernel gradients of one convolution, ``lax``'s backward against
    the GEMM backward (milliseconds)."""
    from posewarper_jax.ops.conv import conv2d

    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, x_shape, jnp.float32)
    k = jax.random.normal(kk, k_shape, jnp.float32) * 0.05

    def plain(x, k):
        return lax.conv_general_dilated(
            x, k, strides, padding, rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip

    def gemm(x, k):
        return conv2d(x, k, strides, padding, dilation)

    out = {}
    for name, f in (("lax", plain), ("gemm", gemm)):
        grad = jax.jit(jax.grad(lambda x, k, f=f: jnp.vdot(f(x, k), f(x, k)), argnums=(0, 1)))
        out[name] = 1e3 * _time(grad, (x, k), iters)
    return out


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> None:
    from posewarper_jax.models import layers
    from posewarper_jax.ops.conv import gemm_backward_pays

    # This script's own flag; the others are benchmarks/model.py's.
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--top", type=_positive_int, default=None)
    known, argv = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    top = known.top
    if not any(a == "--cases" or a.startswith("--cases=") for a in argv):
        argv += ["--cases", ",".join(_TRAINED)]
    model = _model_module()
    args = model._parse(argv)
    if args.conv != "project":
        raise SystemExit("conv_backward.py times both backward passes itself: drop --conv")
    shapes: collections.Counter = collections.Counter()
    conv = layers.conv_general_dilated

    def record(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, **kw):  # fmt: skip
        if not isinstance(padding, str) and lhs.ndim == 4:
            key = (
                tuple(lhs.shape), tuple(rhs.shape), tuple(int(s) for s in window_strides),
                tuple(tuple(int(v) for v in p) for p in padding),
                tuple(int(d) for d in (rhs_dilation or (1, 1))),
            )  # fmt: skip
            shapes[key] += 1
        return conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, **kw)  # fmt: skip

    layers.conv_general_dilated = record

    def run(name, fn, fn_args, **info):
        if name not in _TRAINED:
            return
        shapes.clear()
        jax.jit(fn).lower(*fn_args)  # traces every conv layer of the step
        totals = collections.Counter()
        timed = sorted(shapes.items(), key=lambda kv: -kv[1])[:top]
        for (x_shape, k_shape, strides, padding, dilation), count in timed:
            ms = time_shape(x_shape, k_shape, strides, padding, dilation, args.iters)
            faster = "gemm" if ms["gemm"] < ms["lax"] else "lax"
            rule = "gemm" if gemm_backward_pays(k_shape) else "lax"
            totals["lax"] += count * ms["lax"]
            totals["gemm"] += count * ms["gemm"]
            totals["rule"] += count * ms[rule]
            totals["best"] += count * ms[faster]
            row = dict(
                case=name, x=list(x_shape), kernel=list(k_shape), strides=list(strides),
                dilation=list(dilation), layers=count, lax_ms=round(ms["lax"], 3),
                gemm_ms=round(ms["gemm"], 3), faster=faster, rule=rule,
            )  # fmt: skip
            print(json.dumps(row), flush=True)
        summary = {f"{k}_ms": round(totals[k], 3) for k in ("lax", "gemm", "rule", "best")}
        line = dict(case=name, scope="total", shapes=len(timed), layers=sum(c for _, c in timed))
        line.update(all_shapes=len(shapes), all_layers=sum(shapes.values()))
        line.update(summary, device=info.get("device"), backbone=info.get("backbone"))
        line.update(head=info.get("head"), batch=info.get("batch"), size=info.get("size"))
        print(json.dumps(line), flush=True)

    model.main(argv, run=run)


if __name__ == "__main__":
    main()

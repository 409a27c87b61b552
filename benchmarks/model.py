"""Model throughput: HRNet forward, warping-head forward+backward, the train steps of both
stages and the flip-test inference.

  python benchmarks/model.py --backbone small --head small --batch 16 --size 128 96
  python benchmarks/model.py --quick                                   # seconds, any CPU
  python benchmarks/model.py --backbone w48 --head default --batch 32 --size 384 288 \\
      --isolate  # GPU, the paper's setting; one process per case for per-case peak memory

Cases:

  hrnet_forward          HRNet in eval mode on a batch. Items: frames.
  head_forward_backward  gradient of the warping head (train mode) w.r.t. its parameters.
                         Items: pairs.
  stage2_train_step      ``training.make_train_step(model, tx, 2)``: frozen backbone on frames
                         A and B, head trained with Adam lr 1e-4. Items: pairs.
  stage1_train_step      ``training.make_train_step(model, tx, 1)``: HRNet trained on frame A
                         with Adam lr 1e-4 (the head frozen). Items: frames.
  inference_flip         HRNet in eval mode on a batch and its horizontally mirrored copy,
                         averaged with ``ops.heatmaps.average_flip`` (HRNet's flip back and
                         one-pixel shift). Items: frames.

``benchmarks/torch_reference.py`` times the last three in PyTorch with the same keys.

Prints one JSON line per case: ``case``, ``framework`` ("jax"), ``device``, ``batch``,
``size`` [H, W], ``dtype``, ``amp`` (bfloat16 compute with float32 parameters),
``compile`` (always true: XLA), ``compile_s``, ``median_s`` (median over ``--iters`` timed
calls after warm-up), ``items_per_s``, the FLOPs of one call from XLA's cost analysis and
the achieved FLOP/s, ``peak_mem_bytes`` (``peak_bytes_in_use`` of the device's
``memory_stats()``; null where the backend has none, e.g. CPU) and ``mem_per_item_bytes``,
and ``xla_mem_bytes`` (arguments + outputs + temporaries - aliased, from the executable's
memory analysis: a per-case figure independent of what ran before).

Peak memory: the GPU runtime preallocates most of the memory, but ``peak_bytes_in_use``
counts what the allocator actually handed out. It is a peak over the whole process and
cannot be reset, so with several cases in one process each row's figure is the peak so far;
``--isolate`` runs every case in its own process (``peak_scope`` says which). Train steps
donate their state, as ``training.run_stage`` does, and each call takes the state the
previous one returned. Inputs are random: uint8 frames, targets ``U(0, 1)``, joint
weights 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from jax import lax

from posewarper_jax import training
from posewarper_jax.models import layers
from posewarper_jax.models.hrnet import HRNET_VARIANTS, HRNet, get_hrnet_config
from posewarper_jax.models.posewarper import PoseWarper
from posewarper_jax.models.warping import WarpingHead, get_head_config
from posewarper_jax.ops.conv import conv_general_dilated
from posewarper_jax.ops.heatmaps import average_flip

HEADS = {
    "default": {},  # the method's head: 20 blocks x 128 channels, dilations 3..24
    "small": {"num_blocks": 4, "channels": 32},  # CPU default width and depth, 5 dilations
    # The CPU default's head as configs/sparse.py sets it (3 dilations at 32x24 heatmaps).
    "cpu_default": {"num_blocks": 4, "channels": 32, "dilations": (3, 6, 12)},
    "tiny": {"num_blocks": 2, "channels": 16, "dilations": (3, 6)},  # --quick
}
CASES = (
    "hrnet_forward",
    "head_forward_backward",
    "stage2_train_step",
    "stage1_train_step",
    "inference_flip",
)
QUICK = {"backbone": "tiny", "head": "tiny", "batch": 2, "size": (64, 64), "iters": 2, "warmup": 1}


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _xla_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            + m.temp_size_in_bytes
            - m.alias_size_in_bytes
        )
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def compiled_call(fn, args, carry=False):
    """``fn`` compiled for ``args``: ``(compiled, call, compile_s)``, ``call()`` running it
    once on ``args``.

    ``carry``: ``fn(state, *rest) -> (state, metrics)`` (a train step); the state is donated
    and each call takes the state the previous one returned.
    """
    t = time.perf_counter()
    jitted = jax.jit(fn, donate_argnums=(0,) if carry else ())
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t
    args = list(args)
    if carry:  # a private copy (one jitted call): the caller's state is not donated away
        args[0] = jax.jit(lambda t: jax.tree.map(jnp.copy, t))(args[0])

    def call():
        out = compiled(*args)
        if carry:
            args[0] = out[0]
        return out

    return compiled, call, compile_s


def bench(name, fn, args, *, items, iters, warmup=2, carry=False, **info):
    """Compile ``fn``, warm up, time ``iters`` calls, print one JSON line (``carry``: as
    ``compiled_call``)."""
    compiled, call, compile_s = compiled_call(fn, args, carry)

    for _ in range(warmup):
        jax.block_until_ready(call())
    times, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    sec = statistics.median(times)
    flops = _flops(compiled)
    peak = _peak_bytes()
    row = {
        "case": name,
        "framework": "jax",
        **info,
        "iters": iters,
        "compile": True,
        "compile_s": round(compile_s, 2),
        "median_s": sec,
        # Process CPU time (all threads): steadier than wall time on a shared CPU machine.
        "median_cpu_s": statistics.median(cpu),
        "items_per_s": items / sec,
        "gflops_per_call": flops / 1e9,
        "achieved_tflops_per_s": flops / sec / 1e12,
        "peak_mem_bytes": peak,
        "mem_per_item_bytes": None if peak is None else peak / items,
        "xla_mem_bytes": _xla_bytes(compiled),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(row), flush=True)
    return row


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="small", choices=sorted(HRNET_VARIANTS))
    p.add_argument("--head", default="small", choices=sorted(HEADS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(128, 96), metavar=("H", "W"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {CASES}")
    p.add_argument("--quick", action="store_true", help=f"tiny sizes: {QUICK}")
    p.add_argument(
        "--isolate", action="store_true", help="one process per case (per-case peak memory)"
    )
    p.add_argument(
        "--conv",
        default="project",
        choices=("project", "lax", "gemm"),
        help="conv layers: the project's (lax forward; on CPUs a GEMM backward where"
        " ops.conv.gemm_backward_pays), plain lax, or the GEMM backward wherever it applies",
    )
    p.add_argument(
        "--deform-impl", default="auto", choices=("auto", "xla", "pallas"), help="model.deform_impl"
    )
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {CASES}")
    return args


def _run_isolated(argv, cases) -> None:
    """Re-runs this script once per case; their JSON lines go to stdout as they come."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for case in cases:
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--cases", case]
        cmd = [a for a in cmd if a != "--isolate"]
        subprocess.run(cmd, check=True)


def main(argv=None, run=None):
    """Times the cases; ``run`` (default ``bench``, same arguments) replaces the timing, e.g.
    ``benchmarks/profile_ops.py``'s trace."""
    run = bench if run is None else run
    args = _parse(argv)
    if args.isolate and len(args.cases) > 1:
        _run_isolated(argv, args.cases)
        return
    cases = args.cases
    if args.conv == "lax":  # the comparison: every conv layer on lax's own autodiff
        layers.conv_general_dilated = lax.conv_general_dilated
    elif args.conv == "gemm":  # every conv layer it applies to on the GEMM backward
        layers.conv_general_dilated = functools.partial(conv_general_dilated, backward="gemm")

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    b, (h, w) = args.batch, args.size
    hcfg = get_hrnet_config(args.backbone, dtype=dtype)
    head_cfg = get_head_config(
        "default", dtype=dtype, deform_impl=args.deform_impl, **HEADS[args.head]
    )
    model = PoseWarper(hrnet_config=hcfg, head_config=head_cfg)
    variables = training.init_variables(model, (h, w), 0)
    dev = jax.devices()[0]
    info = dict(
        device=dev.device_kind,
        platform=dev.platform,
        backbone=args.backbone,
        head=args.head,
        batch=b,
        size=[h, w],
        dtype=args.dtype,
        amp=args.dtype == "bfloat16",
        jax=jax.__version__,
        conv=args.conv,
        deform_impl=args.deform_impl,
        peak_scope="case" if len(cases) == 1 else "process",
    )
    kw = dict(iters=args.iters, warmup=args.warmup, **info)
    j = hcfg.num_joints
    keys = iter(jax.random.split(jax.random.key(1), 8))

    def frames(*lead):
        return jax.random.randint(next(keys), (*lead, h, w, 3), 0, 256, jnp.int32).astype(jnp.uint8)

    target = jax.random.uniform(next(keys), (b, h // 4, w // 4, j))
    weight = jnp.ones((b, j))
    hrnet_vars = {
        "params": variables["params"]["backbone"],
        "batch_stats": variables["batch_stats"]["backbone"],
    }
    net = HRNet(hcfg)

    if "hrnet_forward" in cases:
        run(
            "hrnet_forward",
            lambda v, x: net.apply(v, x, False),
            (hrnet_vars, frames(b)),
            items=b,
            **kw,
        )

    if "head_forward_backward" in cases:
        hm = jax.random.uniform(next(keys), (2, b, h // 4, w // 4, j))
        head = WarpingHead(head_cfg)
        head_vars = {
            "params": variables["params"]["head"],
            "batch_stats": variables["batch_stats"]["head"],
        }

        def head_loss(params, psi, maps):
            out, _ = head.apply(
                {"params": params, "batch_stats": head_vars["batch_stats"]},
                psi,
                maps,
                True,
                mutable=["batch_stats"],
            )
            return jnp.mean(jnp.square(out))

        run(
            "head_forward_backward",
            jax.grad(head_loss),
            (head_vars["params"], hm[0] - hm[1], hm[1]),
            items=b,
            **kw,
        )

    for stage in (2, 1):
        case = f"stage{stage}_train_step"
        if case not in cases:
            continue
        tx = training.make_optimizer(
            mlc.ConfigDict({"weight_decay": 0.0}), stage, optax.constant_schedule(1e-4)
        )

        @jax.jit  # one compile, not one per leaf shape
        def init_state(params, batch_stats, tx=tx):
            return {
                "step": jnp.zeros((), jnp.int32),
                "params": params,
                "batch_stats": batch_stats,
                "opt_state": tx.init(params),
            }

        state = init_state(variables["params"], variables["batch_stats"])
        batch = {
            # Stage 1 reads frame A only (``image[:, :1]``).
            "image": frames(b, 2 if stage == 2 else 1),
            "target": target,
            "target_weight": weight,
        }
        run(
            case,
            training.make_train_step(model, tx, stage),
            (state, batch),
            items=b,
            carry=True,
            **kw,
        )
        del state, batch

    if "inference_flip" in cases:

        def flip_test(v, x):
            hm = net.apply(v, x, False).astype(jnp.float32)
            hm_flipped = net.apply(v, x[:, :, ::-1], False).astype(jnp.float32)
            return average_flip(hm, hm_flipped)

        run("inference_flip", flip_test, (hrnet_vars, frames(b)), items=b, **kw)


if __name__ == "__main__":
    main()

"""Model throughput: HRNet forward, warping-head forward+backward, a full stage-2 train step.

  python benchmarks/model.py --backbone small --head small --batch 16 --size 128 96
  python benchmarks/model.py --backbone w48 --head default --batch 32 --size 384 288  # GPU

Prints one JSON line per case: median seconds per call, pairs (or frames) per second, the
FLOPs of one call from XLA's cost analysis and the achieved FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax

from posewarper_jax import training
from posewarper_jax.models.hrnet import HRNet, get_hrnet_config
from posewarper_jax.models.posewarper import PoseWarper
from posewarper_jax.models.warping import WarpingHead, get_head_config

HEADS = {
    "default": {},  # the method's head: 20 blocks x 128 channels, dilations 3..24
    "small": {"num_blocks": 4, "channels": 32},  # CPU default width and depth, 5 dilations
}


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def bench(name, fn, args, *, items, iters, warmup=2, **info):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    flops = _flops(compiled)
    print(
        json.dumps(
            {
                "case": name,
                **info,
                "device": jax.devices()[0].device_kind,
                "compile_s": round(compile_s, 2),
                "median_s": sec,
                "items_per_s": items / sec,
                "gflops_per_call": flops / 1e9,
                "achieved_tflops_per_s": flops / sec / 1e12,
            }
        ),
        flush=True,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="small")
    p.add_argument("--head", default="small", choices=sorted(HEADS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(128, 96), metavar=("H", "W"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args(argv)

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    b, (h, w) = args.batch, args.size
    hcfg = get_hrnet_config(args.backbone, dtype=dtype)
    head_cfg = get_head_config("default", dtype=dtype, **HEADS[args.head])
    model = PoseWarper(hrnet_config=hcfg, head_config=head_cfg)
    variables = training.init_variables(model, (h, w), 0)
    info = dict(backbone=args.backbone, head=args.head, batch=b, size=[h, w], dtype=args.dtype)

    frames = jnp.zeros((b, h, w, 3), jnp.uint8)
    hrnet_vars = {
        "params": variables["params"]["backbone"],
        "batch_stats": variables["batch_stats"]["backbone"],
    }
    bench(
        "hrnet_forward",
        lambda v, x: HRNet(hcfg).apply(v, x, False),
        (hrnet_vars, frames),
        items=b,
        iters=args.iters,
        **info,
    )

    hm = jax.random.uniform(jax.random.key(1), (b, h // 4, w // 4, hcfg.num_joints))
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

    bench(
        "head_forward_backward",
        jax.grad(head_loss),
        (head_vars["params"], hm - hm[::-1], hm),
        items=b,
        iters=args.iters,
        **info,
    )

    tx = training.make_optimizer(
        mlc.ConfigDict({"weight_decay": 0.0}), 2, optax.constant_schedule(1e-4)
    )
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "opt_state": tx.init(variables["params"]),
    }
    batch = {
        "image": jnp.zeros((b, 2, h, w, 3), jnp.uint8),
        "target": jnp.zeros((b, h // 4, w // 4, hcfg.num_joints)),
        "target_weight": jnp.ones((b, hcfg.num_joints)),
    }
    bench(
        "stage2_train_step",
        training.make_train_step(model, tx, 2),
        (state, batch),
        items=b,
        iters=args.iters,
        **info,
    )


if __name__ == "__main__":
    main()

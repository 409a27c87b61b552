"""Speed of the deformable convolution of the PoseWarper warping head.

Shape of the paper: batch 32, 96x72 heatmaps, 17 channels, G = 17 deformable groups, 3x3
kernels at dilations (3, 6, 12, 18, 24), mean over the branches. Cases, each forward ("fwd")
and forward + backward w.r.t. offsets and kernels ("fwd_bwd", x frozen as in stage 2):

  lax_conv            the same dilated convolutions with lax.conv_general_dilated (zero offsets)
  deform_separate     one deform_conv2d call per dilation, then the mean
  deform_multi        deform_conv2d_multi (default: shared corner table, a gather per branch)
  deform_multi_fused  deform_conv2d_multi(fused=True): one gather over all (branch, tap)
                      points and one contraction over (branch, tap, channel)
  torch_grid_sample   PyTorch, F.grid_sample (bilinear, zeros padding, align_corners=True)
                      per branch over all (group, tap) grids; skipped without torch
  torchvision_deform_conv2d  torchvision.ops.deform_conv2d; skipped without torchvision

Prints one JSON line per case: median wall time (ms) over --iters timed calls after warm-up,
median process CPU time (ms, all threads; steadier on a shared machine), compile time (s)
separately, shape, dtype, device, the 1-minute load average and the wall-time ratio to
lax_conv of the same mode. lax_conv's fwd_bwd differentiates the kernels only (no offsets).

  python benchmarks/deform_conv.py --batch 4          # CPU-sized
  python benchmarks/deform_conv.py --quick            # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from posewarper_jax.ops import deform_conv2d, deform_conv2d_multi

DILATIONS = (3, 6, 12, 18, 24)


def _time(fn, args, iters: int, sync=jax.block_until_ready) -> tuple[float, float]:
    """Median wall and process-CPU time (ms) of fn(*args) over iters calls, after a warm-up.

    CPU time sums all threads of this process; it is less sensitive than wall time to other
    work on a shared machine.
    """
    sync(fn(*args))
    wall, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        sync(fn(*args))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def _lax_conv_mean(x, kernels):
    outs = [
        lax.conv_general_dilated(
            x,
            k,
            (1, 1),
            [(d, d), (d, d)],
            rhs_dilation=(d, d),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.float32,
        )
        for k, d in zip(kernels, DILATIONS)
    ]
    return (sum(outs) / len(outs)).astype(x.dtype)


def _jax_cases(groups):
    def separate(x, offsets, kernels):
        outs = [
            deform_conv2d(x, o, k, dilation=d, deformable_groups=groups).astype(jnp.float32)
            for o, k, d in zip(offsets, kernels, DILATIONS)
        ]
        return (sum(outs) / len(outs)).astype(x.dtype)

    def multi(x, offsets, kernels, fused=False):
        return deform_conv2d_multi(
            x, offsets, kernels, dilations=DILATIONS, deformable_groups=groups, fused=fused
        )

    def conv(x, offsets, kernels):
        del offsets
        return _lax_conv_mean(x, kernels)

    return {
        "lax_conv": conv,
        "deform_separate": separate,
        "deform_multi": multi,
        "deform_multi_fused": lambda *a: multi(*a, fused=True),
    }


def _bench_jax(name, fn, x, offsets, kernels, cot, iters, info):
    rows = []
    fwd = jax.jit(fn)

    def loss(offsets, kernels, x):
        return jnp.sum(fn(x, offsets, kernels).astype(jnp.float32) * cot)

    argnums = (1,) if name == "lax_conv" else (0, 1)  # the conv has no offsets
    bwd = jax.jit(jax.grad(loss, argnums=argnums))
    for mode, f, args in (
        ("fwd", fwd, (x, offsets, kernels)),
        ("fwd_bwd", bwd, (offsets, kernels, x)),
    ):
        t0 = time.perf_counter()
        compiled = f.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        ms, cpu_ms = _time(compiled, args, iters)
        rows.append(
            dict(
                info,
                case=name,
                mode=mode,
                median_ms=round(ms, 2),
                median_cpu_ms=round(cpu_ms, 2),
                compile_s=round(compile_s, 2),
            )
        )
    return rows


def _torch_rows(x, offsets, kernels, cot, iters, info, jax_out):
    """PyTorch reference formulation with grid_sample; the output equals deform_conv2d_multi."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return [dict(info, case="torch_grid_sample", skipped="torch is not importable")]
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[info["dtype"]]
    b, h, w, c = x.shape
    g = c  # one channel per group, as in the warping head
    xt = torch.from_numpy(np.asarray(x, np.float32)).to(tdtype).permute(0, 3, 1, 2).contiguous()
    offs_t = [torch.from_numpy(np.asarray(o, np.float32)).to(tdtype) for o in offsets]
    ks_t = [torch.from_numpy(np.asarray(k, np.float32)).to(tdtype) for k in kernels]
    cot_t = torch.from_numpy(np.array(cot, np.float32))
    ii, jj = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")

    def forward(offs, ks):
        total = 0
        inp = xt.reshape(b * g, 1, h, w)
        for off, k, d in zip(offs, ks, DILATIONS):
            off = off.reshape(b, h, w, g, 9, 2).permute(0, 3, 4, 1, 2, 5)  # [B, G, 9, H, W, 2]
            base_y = (
                torch.arange(h).view(1, 1, 1, h, 1)
                - d
                + torch.from_numpy(ii.reshape(1, 1, 9, 1, 1) * d)
            )
            base_x = (
                torch.arange(w).view(1, 1, 1, 1, w)
                - d
                + torch.from_numpy(jj.reshape(1, 1, 9, 1, 1) * d)
            )
            y = base_y + off[..., 0].float()
            xx = base_x + off[..., 1].float()
            # align_corners=True: -1 and +1 are the centres of the first and last pixels.
            grid = torch.stack([2 * xx / (w - 1) - 1, 2 * y / (h - 1) - 1], -1).to(tdtype)
            grid = grid.reshape(b * g, 9 * h, w, 2)
            cols = F.grid_sample(
                inp, grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )
            cols = cols.reshape(b, g, 9, h, w)  # [B, Cin, K, H, W]
            total = total + torch.einsum("bckhw,kco->bhwo", cols, k.reshape(9, c, -1))
        return total / len(DILATIONS)

    with torch.no_grad():
        t0 = time.perf_counter()
        out = forward(offs_t, ks_t)
        first = time.perf_counter() - t0
    diff = float(np.abs(out.float().numpy() - np.asarray(jax_out, np.float32)).max())

    def fwd():
        with torch.no_grad():
            forward(offs_t, ks_t)

    def fwd_bwd():
        offs = [o.clone().requires_grad_(True) for o in offs_t]
        ks = [k.clone().requires_grad_(True) for k in ks_t]
        (forward(offs, ks).float() * cot_t).sum().backward()

    rows = []
    for mode, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        ms, cpu_ms = _time(fn, (), iters, sync=lambda _: None)
        row = dict(info, case="torch_grid_sample", mode=mode, median_ms=round(ms, 2))
        row.update(median_cpu_ms=round(cpu_ms, 2), torch_threads=torch.get_num_threads())
        if mode == "fwd":
            # bf16: grid_sample takes the grid in the input dtype, so sample points are rounded.
            row.update(first_call_s=round(first, 2), max_abs_diff_vs_deform_multi=diff)
        rows.append(row)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        rows.append(
            dict(info, case="torchvision_deform_conv2d", skipped="torchvision is not importable")
        )
    else:
        rows.extend(_torchvision_rows(xt, offs_t, ks_t, cot_t, iters, info))
    return rows


def _torchvision_rows(xt, offs_t, ks_t, cot_t, iters, info):
    import torch
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    def forward(offs, ks):
        total = 0
        for off, k, d in zip(offs, ks, DILATIONS):
            off = off.permute(0, 3, 1, 2)  # same (group, tap, (dy, dx)) channel layout
            weight = k.permute(3, 2, 0, 1)  # OIHW
            total = total + tv_deform_conv2d(xt, off, weight, padding=d, dilation=d)
        return (total / len(DILATIONS)).permute(0, 2, 3, 1)

    def fwd():
        with torch.no_grad():
            forward(offs_t, ks_t)

    def fwd_bwd():
        offs = [o.clone().requires_grad_(True) for o in offs_t]
        ks = [k.clone().requires_grad_(True) for k in ks_t]
        (forward(offs, ks).float() * cot_t).sum().backward()

    rows = []
    for mode, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        ms, cpu_ms = _time(fn, (), iters, sync=lambda _: None)
        rows.append(
            dict(
                info,
                case="torchvision_deform_conv2d",
                mode=mode,
                median_ms=round(ms, 2),
                median_cpu_ms=round(cpu_ms, 2),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=72)
    parser.add_argument("--channels", type=int, default=17)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="small shape, finishes in seconds")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch cases")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.height, args.width, args.iters = 2, 24, 18, 3

    b, h, w, c = args.batch, args.height, args.width, args.channels
    rng = np.random.default_rng(0)
    x32 = rng.normal(size=(b, h, w, c)).astype(np.float32)
    offs32 = [(3 * rng.normal(size=(b, h, w, c * 18))).astype(np.float32) for _ in DILATIONS]
    ks32 = [(0.1 * rng.normal(size=(3, 3, c, c))).astype(np.float32) for _ in DILATIONS]
    cot = jnp.asarray(rng.normal(size=(b, h, w, c)).astype(np.float32))
    dev = jax.devices()[0]
    device = f"{dev.platform}:{dev.device_kind}"
    dtypes = ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)
    for dtype_name in dtypes:
        dtype = jnp.dtype(dtype_name)
        x = jnp.asarray(x32, dtype)
        offsets = [jnp.asarray(o, dtype) for o in offs32]
        kernels = [jnp.asarray(k, dtype) for k in ks32]
        info = dict(
            shape=dict(batch=b, height=h, width=w, channels=c, groups=c, dilations=DILATIONS),
            dtype=dtype_name,
            device=device,
        )
        rows = []
        for name, fn in _jax_cases(c).items():
            rows += _bench_jax(name, fn, x, offsets, kernels, cot, args.iters, info)
        if not args.no_torch:
            jax_out = _jax_cases(c)["deform_multi"](x, offsets, kernels)
            rows += _torch_rows(
                x32, offs32, ks32, cot, args.iters, dict(info, device="cpu (torch)"), jax_out
            )
        base = {r["mode"]: r["median_ms"] for r in rows if r["case"] == "lax_conv"}
        load = round(os.getloadavg()[0], 2)  # other work on a shared machine skews timings
        for r in rows:
            r["loadavg_1m"] = load
            if "median_ms" in r:
                r["vs_lax_conv"] = round(r["median_ms"] / base[r["mode"]], 2)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()

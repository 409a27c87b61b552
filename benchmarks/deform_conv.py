"""Speed of the deformable convolution of the PoseWarper warping head.

Shape of the paper: batch 32, 96x72 heatmaps, 17 channels, G = 17 deformable groups, 3x3
kernels at dilations (3, 6, 12, 18, 24), mean over the branches. Cases, each forward ("fwd")
and forward + backward w.r.t. offsets and kernels ("fwd_bwd", x frozen as in stage 2):

  lax_conv            the same dilated convolutions with lax.conv_general_dilated (zero offsets)
  deform_separate     one deform_conv2d call per dilation, then the mean
  deform_multi        deform_conv2d_multi (default: the padded input shared, each branch
                      sampled and contracted on its own)
  deform_multi_fused  deform_conv2d_multi(fused=True): the branches' samples concatenated and
                      one contraction over (branch, group, tap, channel)
  deform_multi_pallas deform_conv2d_multi(impl="pallas"): the fused Pallas (Triton) kernel and
                      its backward; GPU only. ``--pallas-tiles`` times other tilings
                      (block pixels x warps) as ``deform_multi_pallas_<P>x<W>``
  torch_grid_sample   PyTorch, F.grid_sample (bilinear, zeros padding, align_corners=True)
                      per branch over all (group, tap) grids; skipped without torch
  torchvision_deform_conv2d  torchvision.ops.deform_conv2d; skipped without torchvision

PyTorch runs on the GPU when JAX does (and torch sees CUDA), else on the CPU.

Prints one JSON line per case: median wall time (ms) over --iters timed calls after warm-up,
median process CPU time (ms, all threads; steadier on a shared machine), compile time (s)
separately, shape, dtype, device, the 1-minute load average, the wall-time ratio to lax_conv of
the same mode (lax_conv's fwd_bwd differentiates the kernels only: no offsets) and, where
torchvision ran, to torchvision's time (``speedup_vs_torchvision`` > 1: faster).

On a GPU it also prints the memory-traffic floor: a ``bandwidth`` line (a large on-device
copy, bytes read + written per second), and per case ``floor_ms``, the least bytes the
computation must move over that bandwidth (forward: read x, offsets and kernels, write the
output; fwd_bwd: read x, offsets, kernels and the output cotangent, write the offset and kernel
gradients), and ``vs_floor`` (time / floor). A ``check`` line gives the largest difference of
the Pallas kernel from the jnp operator on the device (forward and gradients, relative to the
largest value).

  python benchmarks/deform_conv.py --batch 4          # CPU-sized
  python benchmarks/deform_conv.py --quick            # seconds
  python benchmarks/deform_conv.py --iters 50 --pallas-tiles 32x4,64x4,128x8   # GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from posewarper_jax.ops import deform_conv2d, deform_conv2d_multi
from posewarper_jax.ops.deform_conv_pallas import deform_conv2d_multi_pallas

DILATIONS = (3, 6, 12, 18, 24)


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


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


def _jax_cases(groups, tiles=()):
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

    cases = {
        "lax_conv": conv,
        "deform_separate": separate,
        "deform_multi": multi,
        "deform_multi_fused": lambda *a: multi(*a, fused=True),
    }
    if _on_gpu():
        cases["deform_multi_pallas"] = lambda x, o, k: deform_conv2d_multi(
            x, o, k, dilations=DILATIONS, deformable_groups=groups, impl="pallas"
        )
        for bp, nw in tiles:
            cases[f"deform_multi_pallas_{bp}x{nw}"] = functools.partial(
                _pallas_tiled, block_pixels=bp, num_warps=nw
            )
    return cases


def _pallas_tiled(x, offsets, kernels, block_pixels, num_warps):
    return deform_conv2d_multi_pallas(
        x,
        offsets,
        kernels,
        dilations=[(d, d) for d in DILATIONS],
        block_pixels=block_pixels,
        num_warps=num_warps,
    )


def _bandwidth() -> dict:
    """Device-memory bandwidth: a 2 GiB float32 array read and written (x + 1), median of 20."""
    x = jnp.zeros((2**29,), jnp.float32) + 1.0
    f = jax.jit(lambda a: a + 1.0)
    ms, _ = _time(f, (x,), 20)
    nbytes = 2 * x.size * 4
    return dict(case="bandwidth", bytes=nbytes, median_ms=round(ms, 3), gb_per_s=nbytes / ms / 1e6)


def _floor_bytes(x, offsets, kernels, mode) -> int:
    """Least bytes a computation must move (see the module docstring)."""
    item = jnp.dtype(x.dtype).itemsize
    xb = x.size * item  # x, and the output / its cotangent have x's size (Cout = Cin)
    ob = sum(o.size for o in offsets) * item
    kb = sum(k.size for k in kernels) * item
    if mode == "fwd":
        return xb + ob + kb + xb
    return xb + ob + kb + x.size * 4 + ob + kb  # cotangent is float32


def _check_pallas(x, offsets, kernels, cot, groups) -> dict:
    """Largest |pallas - jnp| on the device, relative to the largest |jnp|, fwd and grads."""

    def run(impl):
        def fn(o, k):
            return deform_conv2d_multi(
                x, o, k, dilations=DILATIONS, deformable_groups=groups, impl=impl,
                precision=lax.Precision.HIGHEST,
            ).astype(jnp.float32)  # fmt: skip

        out, vjp = jax.vjp(fn, offsets, kernels)
        grads = jax.tree.map(lambda a: a.astype(jnp.float32), vjp(cot))
        return out, grads

    got, want = jax.jit(lambda: run("pallas"))(), jax.jit(lambda: run("xla"))()
    rel = {}
    names = ["output", "offsets_grad", "kernels_grad"]
    for name, g, w in zip(names, (got[0], *got[1]), (want[0], *want[1])):
        gl, wl = jax.tree.leaves(g), jax.tree.leaves(w)
        err = max(
            float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
            for a, b in zip(gl, wl)
        )
        scale = max(float(jnp.max(jnp.abs(b.astype(jnp.float32)))) for b in wl)
        rel[name] = err / max(scale, 1e-30)
    return dict(case="check", compared="deform_multi_pallas vs deform_multi", max_rel_diff=rel)


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
                median_ms=round(ms, 3),
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
    dev = "cuda" if _on_gpu() and torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        info = dict(info, device=f"cuda:{torch.cuda.get_device_name()} (torch)")
        sync = lambda _: torch.cuda.synchronize()  # noqa: E731
    else:
        sync = lambda _: None  # noqa: E731
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[info["dtype"]]
    b, h, w, c = x.shape
    g = c  # one channel per group, as in the warping head

    def tensor(a):
        return torch.from_numpy(np.asarray(a, np.float32)).to(device=dev, dtype=tdtype)

    xt = tensor(x).permute(0, 3, 1, 2).contiguous()
    offs_t = [tensor(o) for o in offsets]
    ks_t = [tensor(k) for k in kernels]
    cot_t = torch.from_numpy(np.array(cot, np.float32)).to(dev)
    ii, jj = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    ii_t = torch.from_numpy(ii.reshape(1, 1, 9, 1, 1)).to(dev)
    jj_t = torch.from_numpy(jj.reshape(1, 1, 9, 1, 1)).to(dev)

    def forward(offs, ks):
        total = 0
        inp = xt.reshape(b * g, 1, h, w)
        for off, k, d in zip(offs, ks, DILATIONS):
            off = off.reshape(b, h, w, g, 9, 2).permute(0, 3, 4, 1, 2, 5)  # [B, G, 9, H, W, 2]
            base_y = torch.arange(h, device=dev).view(1, 1, 1, h, 1) - d + ii_t * d
            base_x = torch.arange(w, device=dev).view(1, 1, 1, 1, w) - d + jj_t * d
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
    diff = float(np.abs(out.float().cpu().numpy() - np.asarray(jax_out, np.float32)).max())

    def fwd():
        with torch.no_grad():
            forward(offs_t, ks_t)

    def fwd_bwd():
        offs = [o.clone().requires_grad_(True) for o in offs_t]
        ks = [k.clone().requires_grad_(True) for k in ks_t]
        (forward(offs, ks).float() * cot_t).sum().backward()

    rows = []
    for mode, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        ms, cpu_ms = _time(fn, (), iters, sync=sync)
        row = dict(info, case="torch_grid_sample", mode=mode, median_ms=round(ms, 3))
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
        rows.extend(_torchvision_rows(xt, offs_t, ks_t, cot_t, iters, info, sync))
    return rows


def _torchvision_rows(xt, offs_t, ks_t, cot_t, iters, info, sync):
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
        row = dict(info, case="torchvision_deform_conv2d", mode=mode)
        try:
            ms, cpu_ms = _time(fn, (), iters, sync=sync)
        except RuntimeError as e:  # e.g. a dtype its kernels are not built for
            rows.append(dict(row, skipped=str(e).splitlines()[0][:200]))
            continue
        rows.append(dict(row, median_ms=round(ms, 3), median_cpu_ms=round(cpu_ms, 2)))
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
    parser.add_argument(
        "--pallas-tiles",
        default="",
        help="extra tilings of the Pallas kernel (GPU), e.g. 32x4,128x8 (block pixels x warps)",
    )
    parser.add_argument(
        "--cases", default="", help="comma-separated JAX cases to run (default: all)"
    )
    args = parser.parse_args()
    if args.quick:
        args.batch, args.height, args.width, args.iters = 2, 24, 18, 3
    tiles = [tuple(int(v) for v in t.split("x")) for t in args.pallas_tiles.split(",") if t]

    b, h, w, c = args.batch, args.height, args.width, args.channels
    rng = np.random.default_rng(0)
    x32 = rng.normal(size=(b, h, w, c)).astype(np.float32)
    offs32 = [(3 * rng.normal(size=(b, h, w, c * 18))).astype(np.float32) for _ in DILATIONS]
    ks32 = [(0.1 * rng.normal(size=(3, 3, c, c))).astype(np.float32) for _ in DILATIONS]
    cot = jnp.asarray(rng.normal(size=(b, h, w, c)).astype(np.float32))
    dev = jax.devices()[0]
    device = f"{dev.platform}:{dev.device_kind}"
    dtypes = ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)
    bandwidth = None
    if _on_gpu():
        bandwidth = _bandwidth()
        print(json.dumps(dict(bandwidth, device=device)), flush=True)
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
        cases = _jax_cases(c, tiles)
        wanted = [n for n in args.cases.split(",") if n] or list(cases)
        if "lax_conv" not in wanted:
            wanted.insert(0, "lax_conv")  # the ratios' reference
        for name in wanted:
            if name not in cases:
                raise SystemExit(f"error: --cases: unknown case {name!r}; known: {list(cases)}")
            rows += _bench_jax(name, cases[name], x, offsets, kernels, cot, args.iters, info)
        if _on_gpu():
            check = _check_pallas(x, offsets, kernels, cot, c)
            print(json.dumps(dict(check, **info)), flush=True)
        if not args.no_torch:
            jax_out = _jax_cases(c)["deform_multi"](x, offsets, kernels)
            rows += _torch_rows(
                x32, offs32, ks32, cot, args.iters, dict(info, device="cpu (torch)"), jax_out
            )
        base = {r["mode"]: r["median_ms"] for r in rows if r["case"] == "lax_conv"}
        tv = {
            r["mode"]: r["median_ms"]
            for r in rows
            if r["case"] == "torchvision_deform_conv2d" and "median_ms" in r
        }
        load = round(os.getloadavg()[0], 2)  # other work on a shared machine skews timings
        for r in rows:
            r["loadavg_1m"] = load
            if "median_ms" in r:
                r["vs_lax_conv"] = round(r["median_ms"] / base[r["mode"]], 2)
                if r["mode"] in tv:
                    r["speedup_vs_torchvision"] = round(tv[r["mode"]] / r["median_ms"], 2)
                if bandwidth is not None:
                    nbytes = _floor_bytes(x, offsets, kernels, r["mode"])
                    floor_ms = nbytes / bandwidth["gb_per_s"] / 1e6
                    r.update(floor_bytes=nbytes, floor_ms=round(floor_ms, 4))
                    r["vs_floor"] = round(r["median_ms"] / floor_ms, 2)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()

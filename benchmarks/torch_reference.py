"""Throughput of the official recipe in PyTorch, side by side with ``benchmarks/model.py``.

  python benchmarks/torch_reference.py --quick                        # seconds, any CPU
  python benchmarks/torch_reference.py --backbone small --head small --batch 8 --size 128 96
  python benchmarks/torch_reference.py --backbone w48 --head default --batch 32 \\
      --size 384 288 --amp --compile                                  # GPU, the paper's setting

Cases (the modules are ``benchmarks/torch_posewarper.py``'s):

  stage2_train_step  HRNet frozen (eval mode, no_grad) on frames A and B of each pair, the
                     warping head trained: Adam lr 1e-4 on the head, loss
                     0.5 * mean((w * (pred - target))^2). Items: pairs.
  stage1_train_step  HRNet trained (train mode, Adam lr 1e-4 on every parameter, same loss).
                     Items: frames.
  inference_flip     HRNet in eval mode on a batch and on its horizontally mirrored copy
                     (two forward passes, as HRNet's flip test), the mirrored maps flipped
                     back (pairs swapped, shifted one pixel) and averaged. Items: frames.

Prints one JSON line per case with the keys of ``benchmarks/model.py``: ``case``,
``framework`` ("torch"), ``device``, ``batch``, ``size`` [H, W], ``dtype``, ``amp``,
``compile``, ``median_s`` (median over ``--iters`` timed calls after warm-up),
``items_per_s``, ``peak_mem_bytes`` and ``mem_per_item_bytes`` (CUDA:
``torch.cuda.max_memory_allocated`` over the timed calls after
``reset_peak_memory_stats``, so parameters, optimizer state, gradients and activations;
null on CPU), plus the settings used (``deform_impl``, ``channels_last``, ...).

Timing: on CUDA each call is bracketed by CUDA events and synchronised; on CPU by
``time.perf_counter`` (torch CPU ops are synchronous). Inputs are random: frames
``N(0, 1)`` (already normalised, as the official data loader hands them to the network),
targets ``U(0, 1)``, joint weights 1.

Choices:

* ``--amp``: ``torch.autocast`` to bfloat16 (CUDA; also accepted on CPU); the warping head's
  deformable convolutions run in float32 as in the official op, the loss in float32.
* ``--compile``: ``torch.compile`` of the whole step (forward, loss, backward, optimizer);
  if compiling fails, a JSON line with ``compile_error`` is printed and the case runs eager.
* channels_last (``--channels-last on``, the default) for the networks and their inputs:
  on the development CPU (oneDNN) it was faster in every case (HRNet ``small``, batch 8,
  128x96, one thread: stage-1 step 0.47-0.51 s against 0.59 s, flip-test inference
  0.28 s against 0.37 s, stage-2 step 1.5 s against 1.8 s), and cuDNN's tensor-core
  convolutions (TF32/bf16) are NHWC-native. ``--channels-last off`` keeps NCHW.
* ``torch.backends.cudnn.benchmark = True`` as in HRNet's and PoseWarper's configs
  (``CUDNN.BENCHMARK: true``); the warm-up calls absorb its algorithm search.
  ``--no-cudnn-benchmark`` turns it off.
* TF32 is left at torch's defaults (convolutions may use TF32, matmuls not), as JAX's default
  precision does for float32 convolutions on GPU.
* CPU threads: torch's default (``--threads N`` sets it). On a CPU shared with other work,
  OpenMP threads that wait at barriers for a descheduled sibling make runs many times
  slower (on the loaded 2-core development machine two threads took 3-11 s per call where
  one took 0.3-1.4 s); ``--threads 1`` is the steadier figure there.
* The deformable convolution is ``torchvision.ops.deform_conv2d`` when torchvision imports,
  else the ``grid_sample`` formulation; ``deform_impl`` in the output says which ran.
"""

from __future__ import annotations

import os

# The configs come from the JAX package; this script never computes with JAX, and keeping it
# off the GPU leaves the whole device to torch.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.torch_posewarper import (  # noqa: E402
    DEFORM_IMPLS,
    TorchHRNet,
    TorchPoseWarper,
    TorchWarpingHead,
    flip_back,
    official_init_,
)
from posewarper_jax.models.hrnet import HRNET_VARIANTS, get_hrnet_config  # noqa: E402
from posewarper_jax.models.warping import get_head_config  # noqa: E402

# As benchmarks/model.py's HEADS.
HEADS = {
    "default": {},  # the method's head: 20 blocks x 128 channels, dilations 3..24
    "small": {"num_blocks": 4, "channels": 32},  # CPU default width and depth, 5 dilations
    # The CPU default's head as configs/sparse.py sets it (3 dilations at 32x24 heatmaps).
    "cpu_default": {"num_blocks": 4, "channels": 32, "dilations": (3, 6, 12)},
    "tiny": {"num_blocks": 2, "channels": 16, "dilations": (3, 6)},  # --quick
}
CASES = ("stage2_train_step", "stage1_train_step", "inference_flip")
QUICK = {"backbone": "tiny", "head": "tiny", "batch": 2, "size": (64, 64), "iters": 2, "warmup": 1}


def joints_mse(pred, target, weight):
    """HRNet's JointsMSELoss: 0.5 * mean over (batch, joints, pixels) of (w (pred - t))^2."""
    diff = weight[:, :, None, None] * (pred.float() - target)
    return 0.5 * diff.square().mean()


class _Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def _print(row: dict) -> None:
    print(json.dumps(row), flush=True)


def run_case(name, fn, *, items, args, device, info, reset=None) -> dict:
    """Warm up (compiling if asked), time ``args.iters`` calls, print and return a row.

    ``reset`` (optional) rebuilds the step's state before an eager fallback of a failed
    compile.
    """
    timer = _Timer(device)
    compiled = False
    t0 = time.perf_counter()
    step = fn
    if args.compile:
        try:
            step = torch.compile(fn, mode=args.compile_mode)
            for _ in range(max(args.warmup, 2)):
                step()
            timer.sync()
            compiled = True
        except Exception as e:  # noqa: BLE001 - any compile failure falls back to eager
            _print(
                dict(
                    case=name,
                    framework="torch",
                    **info,
                    compile_error=f"{type(e).__name__}: {e}"[:2000],
                    note="running eager instead",
                )
            )
            if reset is not None:
                reset()
            step = fn
    if not compiled:
        for _ in range(args.warmup):
            step()
        timer.sync()
    warmup_s = time.perf_counter() - t0
    if timer.cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = [timer(step) for _ in range(args.iters)]
    sec = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) if timer.cuda else None
    row = dict(
        case=name,
        framework="torch",
        **info,
        compile=compiled,
        warmup_s=round(warmup_s, 3),
        median_s=sec,
        items_per_s=items / sec,
        peak_mem_bytes=peak,
        mem_per_item_bytes=None if peak is None else peak / items,
        loadavg_1m=round(os.getloadavg()[0], 2),
    )
    _print(row)
    return row


def _release(device: torch.device) -> None:
    """Frees what the last case left (compiled graphs hold its tensors), so the next case's
    peak memory counts only its own."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return torch.device(name)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="small", choices=sorted(HRNET_VARIANTS))
    p.add_argument("--head", default="small", choices=sorted(HEADS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(128, 96), metavar=("H", "W"))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--amp", action="store_true", help="torch.autocast to bfloat16")
    p.add_argument("--compile", action="store_true", help="torch.compile the step")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: default)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--channels-last", default="on", choices=("on", "off"))
    p.add_argument(
        "--no-cudnn-benchmark", action="store_true", help="cudnn.benchmark off (default: on)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    p.add_argument("--deform-impl", default="auto", choices=DEFORM_IMPLS)
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {CASES}")
    p.add_argument("--quick", action="store_true", help=f"tiny sizes: {QUICK}")
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {CASES}")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    torch.manual_seed(0)
    device = _device(args.device)
    channels_last = args.channels_last == "on"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    b, (h, w) = args.batch, args.size
    hcfg = get_hrnet_config(args.backbone)
    head_cfg = get_head_config("default", **HEADS[args.head])
    j = hcfg.num_joints
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    )
    info = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        platform=device.type,
        backbone=args.backbone,
        head=args.head,
        batch=b,
        size=[h, w],
        dtype="bfloat16" if args.amp else "float32",
        amp=bool(args.amp),
        channels_last=channels_last,
        cudnn_benchmark=torch.backends.cudnn.benchmark,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        iters=args.iters,
    )

    def rand(*shape):
        return torch.randn(*shape, device=device)

    target = torch.rand(b, j, h // 4, w // 4, device=device)
    weight = torch.ones(b, j, device=device)
    rows = []

    if "stage2_train_step" in cases:
        frames = rand(b, 2, 3, h, w)

        def build2():
            head = TorchWarpingHead.from_config(head_cfg, args.deform_impl)
            model = TorchPoseWarper(hcfg, head).to(device, memory_format=fmt)
            opt = torch.optim.Adam(model.head.parameters(), lr=1e-4)
            return model, opt

        model, opt = build2()

        def stage2():
            opt.zero_grad(set_to_none=True)
            with amp:
                pred = model(frames)
            loss = joints_mse(pred, target, weight)
            loss.backward()
            opt.step()
            return loss.detach()

        def reset2():
            nonlocal model, opt
            model, opt = build2()

        rows.append(
            run_case(
                "stage2_train_step",
                stage2,
                items=b,
                args=args,
                device=device,
                info=dict(info, deform_impl=model.head.deform_impl),
                reset=reset2,
            )
        )
        del model, opt, frames
        _release(device)

    if "stage1_train_step" in cases:
        x = rand(b, 3, h, w).contiguous(memory_format=fmt)

        def build1():
            net = official_init_(TorchHRNet(hcfg)).to(device, memory_format=fmt).train()
            return net, torch.optim.Adam(net.parameters(), lr=1e-4)

        net, opt = build1()

        def stage1():
            opt.zero_grad(set_to_none=True)
            with amp:
                pred = net(x)
            loss = joints_mse(pred, target, weight)
            loss.backward()
            opt.step()
            return loss.detach()

        def reset1():
            nonlocal net, opt
            net, opt = build1()

        rows.append(
            run_case(
                "stage1_train_step",
                stage1,
                items=b,
                args=args,
                device=device,
                info=info,
                reset=reset1,
            )
        )
        del net, opt, x
        _release(device)

    if "inference_flip" in cases:
        x = rand(b, 3, h, w).contiguous(memory_format=fmt)
        net = official_init_(TorchHRNet(hcfg)).to(device, memory_format=fmt).eval()
        net.requires_grad_(False)

        def infer():
            with torch.no_grad(), amp:
                hm = net(x).float()
                hm_flipped = net(x.flip(3)).float()
            return 0.5 * (hm + flip_back(hm_flipped))

        rows.append(run_case("inference_flip", infer, items=b, args=args, device=device, info=info))
    return rows


if __name__ == "__main__":
    main()

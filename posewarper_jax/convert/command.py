"""The ``python -m posewarper_jax.convert`` command line (see the package docstring)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from posewarper_jax import cli
from posewarper_jax.convert.apply import convert_file
from posewarper_jax.convert.layouts import LAYOUTS
from posewarper_jax.convert.plan import TARGETS
from posewarper_jax.models.hrnet import HRNET_VARIANTS
from posewarper_jax.models.warping import HEAD_VARIANTS


def _parse_dilations(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"dilations must be ints like 3,6,12, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"dilations must be positive ints, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m posewarper_jax.convert",
        description="Convert a PyTorch HRNet/PoseWarper checkpoint (.pth or .npz state_dict) "
        "into an Orbax checkpoint of posewarper_jax variables.",
    )
    p.add_argument("--src", required=True, help="source .pth/.pt (torch) or .npz file")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    p.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS))
    p.add_argument("--target", default="auto", choices=("auto", *TARGETS))
    p.add_argument("--variant", default="auto", choices=("auto", *sorted(HRNET_VARIANTS)))
    p.add_argument("--num-joints", "--num_joints", dest="num_joints", type=int, default=None)
    p.add_argument(
        "--dilations",
        type=_parse_dilations,
        default=None,
        help="comma-separated dilation rates of the head (default 3,6,12,18,24 for 5 branches)",
    )
    p.add_argument(
        "--head-variant",
        "--head_variant",
        dest="head_variant",
        default=None,
        choices=sorted(HEAD_VARIANTS),
        help="head to initialise when the source has none (default: 'default')",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of a freshly initialised head")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--unsafe-pickle",
        "--unsafe_pickle",
        dest="unsafe_pickle",
        action="store_true",
        help="load .pth files with full unpickling (runs code from the file: trusted files only)",
    )
    cli.add_debug_flag(p)
    return p


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 2 on bad input: one
    line ``error: ...`` naming the file and the reason; ``--debug`` shows the traceback)."""
    args = _parser().parse_args(argv)
    # The module reports bad input as ValueError throughout (option values too).
    return cli.guarded(lambda: _run(args), debug=args.debug, expected=(ValueError,))


def _run(args: argparse.Namespace) -> int:
    _, meta = convert_file(
        args.src,
        args.out,
        layout=args.layout,
        target=args.target,
        variant=args.variant,
        num_joints=args.num_joints,
        dilations=args.dilations,
        head_variant=args.head_variant,
        seed=args.seed,
        overwrite=args.overwrite,
        unsafe_pickle=args.unsafe_pickle,
    )
    h = meta["hrnet"]
    lines = [
        f"converted {args.src} -> {os.path.abspath(args.out)}",
        f"  layout {meta['layout']}, target {meta['target']}",
        f"  HRNet variant {meta['variant']}: width {h['width']}, {h['num_joints']} joints, "
        f"final kernel {h['final_conv_kernel']}x{h['final_conv_kernel']}",
    ]
    if meta["head"] is not None:
        hd = meta["head"]
        lines.append(
            f"  warping head ({meta['head_source']}): {hd['channels']} channels, "
            f"{hd['num_blocks']} blocks, dilations {tuple(hd['dilations'])}"
        )
    lines.append(
        f"  source tensors: {meta['num_source_tensors']} converted, {meta['num_ignored']} "
        f"ignored (num_batches_tracked), {meta['num_dropped']} head tensors left out"
    )
    lines.append(
        f"  written: {meta['num_param_arrays']} param arrays ({_millions(meta['num_params'])} "
        f"values), {meta['num_batch_stats_arrays']} batch_stats arrays "
        f"({_millions(meta['num_batch_stats'])} values)"
    )
    print("\n".join(lines))
    return 0

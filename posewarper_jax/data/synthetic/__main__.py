"""Command line: ``python -m posewarper_jax.data.synthetic --root DIR [--preset P] [--seed N]``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import cv2

from posewarper_jax import cli
from posewarper_jax.data.synthetic.config import PRESETS, get_config
from posewarper_jax.data.synthetic.dataset import contact_sheet, generate, matches


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 after one line ``error: ...`` (a bad --root, a config value, a full
    disk); ``--debug`` shows the traceback."""
    parser = argparse.ArgumentParser(
        prog="python -m posewarper_jax.data.synthetic",
        description="Generate the synthetic PoseTrack18-format video pose data set.",
    )
    parser.add_argument("--root", required=True, help="output directory")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=None, help="master seed (preset's if unset)")
    parser.add_argument(
        "--workers", type=int, default=None, help="rendering processes (default 2; 1 if tiny)"
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if it matches")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--preview", default=None, help="also write a contact sheet PNG here")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    # The generator reports a bad root or config value as ValueError naming it.
    return cli.guarded(lambda: _run(args), debug=args.debug, expected=(ValueError,))


def _run(args: argparse.Namespace) -> int:
    from posewarper_jax import storage

    if storage.is_remote(args.root):  # a bucket: objects need no folder above them
        cli.check_writable_dir(args.root, "--root")
    else:
        cli.check_writable_dir(os.path.dirname(os.path.abspath(args.root)), "the folder of --root")
    overrides = {} if args.seed is None else {"seed": args.seed}
    cfg = get_config(args.preset, **overrides)
    reuse = not args.force and matches(args.root, cfg)
    start = time.perf_counter()
    root = generate(
        args.root, cfg, workers=args.workers, progress=not args.no_progress, force=args.force
    )
    took = time.perf_counter() - start
    if reuse:
        print(f"{root}: already holds this data set (preset {args.preset}, seed {cfg.seed})")
    else:
        print(f"{root}: generated preset {args.preset} in {took:.1f} s")
        print("config: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()))
    if args.preview:
        if not cv2.imwrite(args.preview, contact_sheet(root)):
            raise cli.ExpectedError(f"--preview {args.preview}: could not write the picture")
        print(f"contact sheet: {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

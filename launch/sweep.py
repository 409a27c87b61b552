"""Expands a config file's sweep into one command and one workdir per run.

  python launch/sweep.py --config configs/sparse.py --sweep dilations --root runs/dilations
  python launch/sweep.py --config configs/sparse.py:paper --sweep vn --root runs/vn \
      --slurm runs/vn.sbatch --gpus 8
  python launch/sweep.py --config configs/sparse.py --sweep dilations --root runs/dilations \
      --set model.pretrained=runs/sparse/pretrain/backbone   # every run reuses one pre-training

A config file declares its sweeps with ``get_sweep(arg) -> {name: [overrides, ...]}``, each
override a ``{"a.b": value}`` dict applied as ``--config.a.b=value``. Without ``--slurm`` the
commands are printed, one per line (pipe them to a shell, GNU parallel or a scheduler); with
it, a SLURM array script runs run i as array task i.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys


def load_sweeps(config_arg: str) -> dict[str, list[dict]]:
    path, _, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise SystemExit(f"--config: no such file {path!r}")
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SystemExit(f"{path} declares no sweep (it has no get_sweep function)")
    module.get_config(arg or None)  # the base config must build
    return module.get_sweep(arg or None)


def _value(v) -> str:
    if isinstance(v, tuple | list):
        return "(" + ", ".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def run_name(overrides: dict) -> str:
    parts = []
    for k, v in overrides.items():
        key = k.split(".")[-1]
        val = _value(v).strip("()").replace(", ", "-").replace(",", "")
        parts.append(f"{key}={val}")
    return "_".join(parts)


def commands(
    config_arg: str,
    runs: list[dict],
    root: str,
    python: str = "python",
    common: tuple[str, ...] = (),
) -> list[str]:
    """One command per run; ``common`` ("a.b=value") is added to every run's overrides."""
    out = []
    for overrides in runs:
        workdir = os.path.join(root, run_name(overrides))
        argv = [python, "-m", "posewarper_jax.main", "--config", config_arg]
        argv += ["--workdir", workdir]
        argv += [f"--config.{item}" for item in common]
        argv += [f"--config.{k}={_value(v)}" for k, v in overrides.items()]
        out.append(shlex.join(argv))
    return out


SBATCH = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --array=0-{last}
#SBATCH --nodes=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --output={root}/slurm-%A_%a.out
# Re-submitting this script resumes every unfinished run from its workdir.
set -euo pipefail
COMMANDS=(
{commands}
)
eval "${{COMMANDS[$SLURM_ARRAY_TASK_ID]}}"
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="config file[:arg], as for main")
    p.add_argument("--sweep", required=True, help="sweep name declared by the config file")
    p.add_argument("--root", default="runs/sweep", help="parent of the runs' workdirs")
    p.add_argument("--python", default="python")
    p.add_argument("--slurm", default="", help="write a SLURM array script here")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--cpus", type=int, default=32)
    p.add_argument("--time", default="24:00:00")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a config override for every run, e.g. model.pretrained=runs/sparse/pretrain/backbone",
    )
    args = p.parse_args(argv)
    for item in args.set:
        if "=" not in item or not item.partition("=")[0].strip():
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE")

    sweeps = load_sweeps(args.config)
    if args.sweep not in sweeps:
        raise SystemExit(f"--sweep {args.sweep!r}: the config declares {sorted(sweeps)}")
    cmds = commands(args.config, sweeps[args.sweep], args.root, args.python, tuple(args.set))
    if not args.slurm:
        print("\n".join(cmds))
        return 0
    script = SBATCH.format(
        name=args.sweep,
        last=len(cmds) - 1,
        gpus=args.gpus,
        cpus=args.cpus,
        time=args.time,
        root=args.root,
        commands="\n".join(f"  {shlex.quote(c)}" for c in cmds),
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.slurm)), exist_ok=True)
    with open(args.slurm, "w") as f:
        f.write(script)
    print(f"wrote {args.slurm}: {len(cmds)} runs; submit with: sbatch {args.slurm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

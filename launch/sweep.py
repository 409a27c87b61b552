"""Expands a config file's sweep into one command and one workdir per run.

  python launch/sweep.py --config configs/sparse.py --sweep dilations --root runs/dilations
  python launch/sweep.py --config configs/sparse.py:paper --sweep vn --root runs/vn \
      --slurm runs/vn.sbatch --gpus 8
  python launch/sweep.py --config configs/sparse.py --sweep dilations --root runs/dilations \
      --set model.pretrained=runs/pt/pretrain/backbone   # every run reuses one pre-training

A config file declares its sweeps with ``get_sweep(arg) -> {name: [overrides, ...]}``, each
override a ``{"a.b": value}`` dict applied as ``--config.a.b=value``. Without ``--slurm`` the
commands are printed, one per line (pipe them to a shell, GNU parallel or a scheduler); with
it, a SLURM array script runs run i as array task i.

Before anything is printed, every override (the sweep's and ``--set``'s) is checked against
the config: a misspelt field or a value of the wrong type is one line ``error: ...`` (exit
status 2; ``--debug`` shows the traceback). Every run gets its own workdir (two runs that
would share one are an error), since a workdir serves one job at a time.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import os
import shlex
import sys

from posewarper_jax import cli


class SweepError(cli.ExpectedError):
    """A sweep that cannot run; the message names the file, override or value."""


def _load_module(config_arg: str):
    path, _, arg = config_arg.partition(":")
    if not os.path.isfile(path):
        raise SweepError(f"--config: no such file {path!r}")
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path, arg or None


def _base_config(module, path: str, arg):
    try:
        return module.get_config(arg)  # the base config must build
    except ValueError as e:  # a variant argument the config file refuses, named by it
        raise SweepError(str(e)) from e


def load_sweeps(config_arg: str) -> dict[str, list[dict]]:
    module, path, arg = _load_module(config_arg)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"{path} declares no sweep (it has no get_sweep function)")
    _base_config(module, path, arg)
    return module.get_sweep(arg)


def _field(config, dotted: str, where: str):
    """The current value of ``config``'s field ``dotted``; SweepError if there is none."""
    node = config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            known = ".".join(parts[:i])
            near = difflib.get_close_matches(part, keys, n=1)
            hint = f" (did you mean {'.'.join([*parts[:i], near[0]])}?)" if near else ""
            at = f" under {known}" if known else ""
            raise SweepError(f"{where}: the config has no field {dotted!r}{at}{hint}")
        node = node[part]
    return node


def _parse(text: str, current, where: str):
    """``text`` as the config's command line reads it for a field holding ``current``."""
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise SweepError(f"{where}: {text!r} is not a boolean (true or false)")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text  # a field without a value yet: any text
        raise SweepError(f"{where}: {text!r} is not a {type(current).__name__}") from None
    _check_type(value, current, where)
    return value


def _check_type(value, current, where: str) -> None:
    if current is None or isinstance(value, type(current)):
        return
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return
    if isinstance(current, tuple | list) and isinstance(value, tuple | list):
        return
    raise SweepError(
        f"{where}: {value!r} is a {type(value).__name__}, the field holds a "
        f"{type(current).__name__} ({current!r})"
    )


def check_overrides(config_arg: str, runs: list[dict], common: tuple[str, ...] = ()) -> None:
    """Raises ``SweepError`` for an override naming no field of the config, or a value of
    another type than the field's; ``common`` items are "a.b=value" as given to ``--set``."""
    module, path, arg = _load_module(config_arg)
    config = _base_config(module, path, arg)
    for item in common:
        key, _, text = item.partition("=")
        where = f"--set {item}"
        _parse(text, _field(config, key.strip(), where), where)
    for i, overrides in enumerate(runs):
        for key, value in overrides.items():
            where = f"{path}: get_sweep() run {i} override {key}={value!r}"
            _check_type(value, _field(config, key, where), where)


def _value(v) -> str:
    if isinstance(v, tuple | list):
        return "(" + ", ".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def run_name(overrides: dict, full_keys: bool = False) -> str:
    parts = []
    for k, v in overrides.items():
        key = k if full_keys else k.split(".")[-1]
        val = _value(v).strip("()").replace(", ", "-").replace(",", "")
        val = val.replace(os.sep, "_").replace(" ", "")
        parts.append(f"{key}={val}")
    return "_".join(parts) or "base"


def commands(
    config_arg: str,
    runs: list[dict],
    root: str,
    python: str = "python",
    common: tuple[str, ...] = (),
) -> list[str]:
    """One command per run; ``common`` ("a.b=value") is added to every run's overrides.

    Each run has its own workdir under ``root``, named after its overrides (full field names
    where the last parts alone would repeat a name).
    """
    names = [run_name(o) for o in runs]
    if len(set(names)) < len(names):
        names = [run_name(o, full_keys=True) for o in runs]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SweepError(f"two runs of the sweep have the same overrides (workdir {twice[0]})")
    out = []
    for overrides, name in zip(runs, names):
        workdir = os.path.join(root, name)
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
        help="a config override for every run, e.g. model.pretrained=runs/pt/pretrain/backbone",
    )
    cli.add_debug_flag(p)
    args = p.parse_args(argv)
    return cli.guarded(lambda: _run(args), debug=args.debug)


def _run(args: argparse.Namespace) -> int:
    for item in args.set:
        if "=" not in item or not item.partition("=")[0].strip():
            raise SweepError(f"--set {item!r}: expected FIELD=VALUE")

    sweeps = load_sweeps(args.config)
    if args.sweep not in sweeps:
        raise SweepError(f"--sweep {args.sweep!r}: the config declares {sorted(sweeps)}")
    check_overrides(args.config, sweeps[args.sweep], tuple(args.set))
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

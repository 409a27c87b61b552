r"""The ``seeds`` sweep: the whole experiment on several draws of the data, one summary.

  python -m posewarper_jax.seeds --config configs/sparse.py --seeds 0,1,2 --workdir runs/seeds

Runs the main job (``job.train_and_evaluate``) once per seed, one after the other, in
``WORKDIR/seed_<s>``, with ``data.synthetic_seed = s`` and nothing else changed: other
training and validation videos (other people, scenes, motions), the same config, the same
pre-training set. Each draw's data set goes to its own root: ``data.root`` for the config's
own seed (the main job's data set is reused), ``<data.root>_seed<s>`` for the others; the
synthetic pre-training set (``pretrain.root``, which does not depend on the seed) is shared
by every draw. Pre-training depends on neither the seed nor the draw's data (the same
stills, ``seed`` and settings), so it runs once: a draw that has not pre-trained yet takes a
copy of the ``pretrain/`` folder (final checkpoint, ``done.json``, exported backbone) of a
draw that has, and its pretrain phase reads it back as finished (its ``timing.json`` repeats
that draw's pre-training time). Every draw resumes like the main job: run the same command
again and finished draws are read back, an interrupted one resumes from its checkpoints.

After each draw, ``WORKDIR/summary.json`` and ``WORKDIR/summary.md`` are written over the
draws finished so far (``apps.seeds_summary``): every report row (propagation per method and
score view, overall and by |δ|; detection, aggregation, augmentation; tracking) as mean ± std
over the draws with each draw's figure, and paired differences between the methods, for the
validation split the config scores (``eval.split``, ``test`` by default). ``--summarize_only``
rewrites the summary from the finished draws without running anything.

Config overrides apply to every draw (``--config.model.pretrained=DIR`` skips pre-training
in all of them, ``configs/sparse.py:runlocal`` runs the tiny variant). Only the synthetic data
set has draws: another ``data.kind`` is an error. Expected failures print one line
``error: ...`` and exit with status 2 (``--debug``: the traceback).
"""

from __future__ import annotations

import copy
import os
import shutil
from typing import Any

import ml_collections as mlc

from posewarper_jax import cli, experiment, fileio, logs, storage

__all__ = [
    "draw_config",
    "draw_workdir",
    "parse_seeds",
    "run_seeds",
    "share_pretraining",
    "write_summary",
]

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


class SeedsError(cli.ExpectedError):
    """A seeds sweep that cannot run; the message names the flag or field."""


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; SeedsError for a non-integer, negative or repeated seed."""
    seeds = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            seed = int(item)
        except ValueError:
            raise SeedsError(f"--seeds {text!r}: {item!r} is not an integer") from None
        if seed < 0 or seed in seeds:
            raise SeedsError(f"--seeds {text!r}: seeds must be distinct integers >= 0")
        seeds.append(seed)
    if not seeds:
        raise SeedsError(f"--seeds {text!r}: give at least one seed (e.g. 0,1,2)")
    return seeds


def draw_config(config: mlc.ConfigDict, seed: int) -> mlc.ConfigDict:
    """``config`` for the draw ``seed``: ``data.synthetic_seed`` and its data root changed,
    the pre-training set pinned to the config's own (module docstring)."""
    if config.data.kind != "synthetic":
        raise SeedsError(
            f"config.data.kind={config.data.kind!r}: a seeds sweep draws the synthetic data set "
            "again; a fixed data set has a single draw"
        )
    out = copy.deepcopy(config)
    base_root = str(config.data.root).rstrip("/\\")
    if seed != int(config.data.synthetic_seed):
        out.data.root = f"{base_root}_seed{seed}"
    out.data.synthetic_seed = int(seed)
    if config.get("pretrain") and not config.pretrain.root:
        out.pretrain.root = experiment.pretrain_root(config)
    return out


def draw_workdir(workdir: str, seed: int) -> str:
    return storage.join(workdir, f"seed_{seed}")


PRETRAIN_DIR = "pretrain"
PRETRAIN_DONE = os.path.join(PRETRAIN_DIR, "done.json")


def share_pretraining(workdir: str, seed: int, seeds: list[int], *, log=logs.log) -> int | None:
    """Gives draw ``seed`` the finished pre-training of another draw of ``seeds`` (module
    docstring); returns that draw's seed, or None when the draw has pre-trained already, no
    other draw has finished pre-training, the workdir is remote or the job runs on several
    processes (each draw then pre-trains).

    The copy goes to a temporary folder first and is renamed into place, so an interruption
    leaves either no ``pretrain/`` or a complete one. A half-written ``pretrain/`` of an
    interrupted pre-training is left alone: the draw resumes it from its own checkpoints.
    """
    dst = draw_workdir(workdir, seed)
    if (
        storage.is_remote(dst)
        or not _single_process()
        or storage.exists(storage.join(dst, PRETRAIN_DIR))
    ):
        return None
    for other in seeds:
        src = draw_workdir(workdir, other)
        if other == seed or not storage.exists(storage.join(src, PRETRAIN_DONE)):
            continue
        os.makedirs(dst, exist_ok=True)
        tmp = os.path.join(dst, PRETRAIN_DIR + ".copying")
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        shutil.copytree(os.path.join(src, PRETRAIN_DIR), tmp)
        os.replace(tmp, os.path.join(dst, PRETRAIN_DIR))
        log(f"seeds: draw {seed} takes the finished pre-training of draw {other} ({src})")
        return other
    return None


def _single_process() -> bool:
    import jax

    return jax.process_count() == 1


def _finished_reports(workdir: str, seeds: list[int]) -> dict[int, dict[str, Any]]:
    from posewarper_jax.apps import report

    out = {}
    for seed in seeds:
        path = storage.join(draw_workdir(workdir, seed), "report.json")
        if storage.exists(path):
            out[seed] = report.load_report(path)
    return out


def write_summary(workdir: str, seeds: list[int]) -> dict[str, Any] | None:
    """``summary.json`` and ``summary.md`` of the finished draws among ``seeds`` (None when
    none has finished)."""
    import jax

    from posewarper_jax.apps import seeds_summary

    reports = _finished_reports(workdir, seeds)
    if not reports:
        return None
    draws = {s: {"workdir": storage.abspath(draw_workdir(workdir, s))} for s in reports}
    try:
        summary = seeds_summary.summarize(reports, draws=draws)
    except ValueError as err:
        raise SeedsError(f"{workdir}: {err}") from err
    summary["missing"] = [s for s in seeds if s not in reports]
    if jax.process_index() != 0:
        return summary
    # No NaN: a missing figure is null.
    fileio.write_json(
        storage.join(workdir, SUMMARY_JSON), summary, indent=2, allow_nan=False, newline=True
    )
    fileio.atomic_write(storage.join(workdir, SUMMARY_MD), seeds_summary.render_summary(summary))
    return summary


def run_seeds(
    config: mlc.ConfigDict, workdir: str, seeds: list[int], *, log=logs.log
) -> dict[str, Any] | None:
    """Runs (or resumes) every draw of ``seeds`` and writes the summary after each."""
    from posewarper_jax import job

    configs = {s: draw_config(config, s) for s in seeds}
    for cfg in configs.values():  # every draw's config is checked before any work
        experiment.validate(cfg)
    cli.check_writable_dir(workdir, "--workdir")
    summary = None
    for i, seed in enumerate(seeds):
        cfg = configs[seed]
        log(
            f"seeds: draw {i + 1}/{len(seeds)}: data.synthetic_seed={seed}, "
            f"data.root={cfg.data.root}, workdir {draw_workdir(workdir, seed)}"
        )
        if experiment.settings(cfg).pretraining:
            share_pretraining(workdir, seed, seeds, log=log)
        job.train_and_evaluate(cfg, draw_workdir(workdir, seed))
        summary = write_summary(workdir, seeds)
    log(f"seeds: summary of {len(seeds)} draws: {storage.join(workdir, SUMMARY_MD)}")
    return summary


def _main(argv):  # pragma: no cover - exercised through the CLI
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    seeds = parse_seeds(flags.FLAGS.seeds)
    if flags.FLAGS.summarize_only:
        if write_summary(workdir, seeds) is None:
            raise SeedsError(f"{workdir}: no draw of seeds {seeds} has a report.json yet")
        logs.log(f"written: {storage.join(workdir, SUMMARY_MD)}")
        return
    from posewarper_jax import distributed

    distributed.initialize()
    run_seeds(config, workdir, seeds)


if __name__ == "__main__":  # pragma: no cover
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    flags.DEFINE_string("workdir", "runs/seeds", "Parent of the draws' workdirs.")
    flags.DEFINE_string("seeds", "0,1,2", "data.synthetic_seed of each draw, comma separated.")
    flags.DEFINE_bool("summarize_only", False, "Rewrite the summary of the finished draws.")
    cli.define_absl_debug_flag()
    flags.mark_flags_as_required(["config"])
    cli.run_absl(_main)

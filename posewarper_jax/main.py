"""Entry point: ``python -m posewarper_jax.main --config configs/sparse.py [--workdir DIR]``.

Variants as ``--config configs/sparse.py:key=value,...``; single fields as
``--config.stage2.lr=3e-4``. The config is locked: a misspelt field fails at start.

Expected failures (a bad config value, bad data, a busy or unwritable workdir, a full disk)
print one line ``error: ...`` and exit with status 2; ``--debug`` shows their traceback.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from posewarper_jax import cli, distributed, experiment, job

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where checkpoints and results go.")
cli.define_absl_debug_flag()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        # Orbax and Grain log every save at INFO; the console keeps to progress lines.
        logging.set_verbosity(logging.WARNING)
    distributed.initialize()
    settings = experiment.settings(_CONFIG.value)  # the config, checked and read once
    summary = job.run(settings, _WORKDIR.value)
    if summary["report"]:
        print(f"report: {summary['report']['markdown']}", flush=True)
    print(f"done: results in {summary['workdir']}", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    cli.run_absl(main)

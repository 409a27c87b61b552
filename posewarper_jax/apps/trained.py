"""A trained model read back from a main-job workdir, for the commands that apply it.

The main job (``job.train_and_evaluate``) leaves in its workdir ``config.json`` (the config
it ran with) and, per training stage, ``<stage>/checkpoints`` (Orbax: the train state and the
data iterator) with ``<stage>/done.json`` once the stage finished. A finished stage is loaded
the way the job itself loads it (``training.run_stage`` on a finished stage):
``training.restore_state`` into a state shaped like the one the stage trained (the model of
``config.json`` and the stage's optimizer state; shapes only, from ``jax.eval_shape``, so
nothing is compiled), keeping ``params`` and ``batch_stats``.

``load_trained(workdir)`` gives stage 2 (HRNet and the warping head: propagation,
aggregation, the tracker's motion model); ``stage="stage1"`` the single-frame HRNet,
``stage="pretrain"`` the pre-trained one.
Errors are ``CheckpointError`` (a ``ValueError``) naming the path and what is wrong: not a
workdir, a stage that did not finish, a checkpoint that does not fit ``config.json``'s model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections as mlc
import optax

from posewarper_jax import experiment, training
from posewarper_jax.cli import ExpectedError
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.settings import Settings

__all__ = ["STAGES", "CheckpointError", "TrainedModel", "load_trained"]

# The training stages a command can apply, and what each trains (``training.run_stage``).
STAGES = {
    "pretrain": training.HRNET,
    "stage1": training.HRNET,
    "stage2": training.HEAD,
    "stage1_augmented": training.HRNET,
}


class CheckpointError(ExpectedError, ValueError):
    """A workdir or checkpoint that cannot give the model; the message names the path."""


@dataclasses.dataclass
class TrainedModel:
    """A finished stage: the run's ``config`` (and its ``settings``), the ``model``
    (``PoseWarper``) and its ``variables`` (``{"params", "batch_stats"}``)."""

    workdir: str
    stage: str
    config: mlc.ConfigDict
    model: Any
    variables: dict
    settings: Settings | None = None

    def pipeline_config(self, **overrides) -> pipeline_lib.PipelineConfig:
        """The evaluation pipeline settings of the run (crop size, σ, heatmap coding, batch
        size), with ``overrides``."""
        run = self.settings if self.settings is not None else self.config
        return experiment.pipeline_config(run, "eval", **overrides)


# Config fields holding local paths that may be relative to the directory the job ran in.
PATH_FIELDS = (
    ("data", "root"), ("data", "val_detections"), ("pretrain", "root"), ("pretrain", "ann"),
    ("model", "pretrained"),
)  # fmt: skip


def _resolve_paths(config: mlc.ConfigDict, workdir: str) -> None:
    """Relative ``PATH_FIELDS`` that do not exist from here but do from the job's directory
    (``workdir.launch_dir``) become absolute paths there (the data set of a run read from
    another directory)."""
    from posewarper_jax import workdir as workdir_lib

    cwd = workdir_lib.launch_dir(workdir)
    if not cwd:
        return
    for group, field in PATH_FIELDS:
        value = config.get(group, {}).get(field, "")
        if not isinstance(value, str) or not value or os.path.isabs(value) or "://" in value:
            continue
        there = os.path.join(cwd, value)
        if not os.path.exists(value) and os.path.exists(there):
            config[group][field] = there


def read_config(workdir: str) -> mlc.ConfigDict:
    """``workdir/config.json`` as a ``ConfigDict``, its relative data paths resolved against
    the job's directory where they are not found from here (``workdir.write_launch``)."""
    from posewarper_jax import storage

    if not storage.isdir(workdir):
        raise CheckpointError(f"{workdir}: no such workdir (the main job's --workdir)")
    path = storage.join(workdir, "config.json")
    if not storage.isfile(path):
        raise CheckpointError(f"{workdir}: not a workdir of the main job (no config.json)")
    try:
        data = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    config = mlc.ConfigDict(data)
    _resolve_paths(config, workdir)
    return config


def abstract_state(settings: Settings, model, stage: str) -> dict:
    """The shapes, dtypes and shardings of the train state ``training.run_stage`` saves for
    the training stage ``stage``, without computing anything (``jax.eval_shape``)."""
    tx = training.make_optimizer(settings.stage(stage), STAGES[stage], optax.constant_schedule(1.0))

    def state():
        like = training.init_variables(model, settings.input.image_size, settings.seed)
        return training.train_state(like, tx)

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), jax.eval_shape(state)
    )


def load_trained(workdir: str, stage: str = "stage2") -> TrainedModel:
    """The variables of a finished stage of the main job's ``workdir`` (module docstring).

    Raises:
      CheckpointError: no workdir / config.json, an unfinished stage, or a checkpoint whose
        arrays do not fit the model of ``config.json``.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
    config = read_config(workdir)
    config_path = os.path.join(workdir, "config.json")
    try:
        settings = experiment.settings(config, check=False)
        model = experiment.make_model(settings)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: not a config of this project ({e})") from None
    from posewarper_jax import storage

    stage_dir = storage.join(workdir, stage)
    if not storage.exists(storage.join(stage_dir, "done.json")):
        raise CheckpointError(
            f"{stage_dir}: the stage did not finish (no done.json); run the main job with "
            "this workdir to the end of the stage first"
        )
    state = abstract_state(settings, model, stage)
    ckpt_dir = storage.join(stage_dir, "checkpoints")
    try:
        restored = training.restore_state(ckpt_dir, state)
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt_dir}: no checkpoint") from None
    except Exception as e:  # Orbax reports shape and structure mismatches in several types
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"{ckpt_dir}: does not match the model of {config_path} ({type(e).__name__}: {detail})"
        ) from None
    variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    return TrainedModel(storage.abspath(workdir), stage, config, model, variables, settings)

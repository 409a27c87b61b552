"""Training a stage: HRNet on labeled frames, or the warping head on frame pairs.

A training stage (``pretrain``, ``stage1``, ``stage2``, ``stage1_augmented``: one folder of
the workdir) is one ``run_stage`` call. What it trains is its ``kind``: ``"hrnet"`` (the
backbone on single frames, the paper's stage 1) or ``"head"`` (the warping head on frame
pairs with the backbone frozen, the paper's stage 2); its recipe is a
``settings.StageSettings``. The train state (``train_state``) is a plain pytree
``{"step", "params", "batch_stats", "opt_state"}`` replicated over a one-axis ``data`` mesh;
batches are sharded over it, so the same code runs on one CPU, 8 GPUs or a pod.

Every ``checkpoint_every`` steps and at the end, the state and the Grain iterator are saved
together (Orbax), so a stage restarted with the same workdir continues with exactly the
batch an uninterrupted run would have seen. A finished stage leaves ``done.json`` and is
skipped on restart. A non-finite loss stops the run before anything non-finite is saved.

Checkpoints are written synchronously, into a temporary directory renamed when complete: a
killed save leaves the previous steps as they were, and a failed one (a full disk) raises
``CheckpointWriteError`` at once. A newest step that cannot be read (a truncated or deleted
file) is moved to ``<stage>/corrupt_checkpoints/`` and the stage resumes from the newest step
that reads, with a warning naming both.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from posewarper_jax import cli, fileio, storage
from posewarper_jax.cli import ExpectedError
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.data.types import VideoDataset
from posewarper_jax.logs import log as _log
from posewarper_jax.models.freeze import freeze_optimizer
from posewarper_jax.models.posewarper import PoseWarper
from posewarper_jax.settings import StageSettings
from posewarper_jax.training_log import MetricWriter, Progress

BATCH_KEYS = ("image", "target", "target_weight")
# Sent to the devices as well where the examples have them (``a_labeled``: pairs whose A is
# an unlabeled frame, ``PipelineConfig.unlabeled_reach``).
OPTIONAL_BATCH_KEYS = ("a_labeled",)


class NonFiniteLossError(RuntimeError, ExpectedError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(ExpectedError):
    """No checkpoint of a stage can be read; the message names them and why."""


class CheckpointWriteError(cli.WriteError):
    """A checkpoint could not be written (full disk, ...); the previous ones are intact."""


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint step that cannot be read was set aside; an older one is used."""


# ----------------------------------------------------------------------------- pieces


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``data`` over all (or the given) devices."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), ("data",))


def joints_mse(pred: jnp.ndarray, target: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
    """HRNet's heatmap loss: 0.5 * mean over (batch, pixels, joints) of (w (pred - target))^2.

    pred, target: ``[B, h, w, J]``; weight: ``[B, J]`` (0 for unlabeled joints).
    """
    w = weight[:, None, None, :].astype(jnp.float32)
    diff = w * (pred.astype(jnp.float32) - target.astype(jnp.float32))
    return 0.5 * jnp.mean(jnp.square(diff))


HRNET, HEAD = "hrnet", "head"
# What a stage trains -> the number of the paper's stage that trains it (``models.freeze``).
KINDS = {HRNET: 1, HEAD: 2}


def stage_number(kind: str | int) -> int:
    """The paper's stage number (1 or 2) of ``kind`` (``"hrnet"`` or ``"head"``); the numbers
    themselves name the same kinds."""
    if kind in KINDS:
        return KINDS[kind]
    if kind in KINDS.values():
        return int(kind)
    raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")


def learning_rate_schedule(
    stage: StageSettings, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The recipe's step schedule (LR x ``lr_factor`` at the epochs in ``lr_steps``), or
    cosine decay; either after an optional linear warm-up."""
    lr = float(stage.lr)
    warmup = int(stage.warmup_steps)
    if stage.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(total_steps, warmup + 1), end_value=0.0
        )
    boundaries = {int(round(e * steps_per_epoch)): float(stage.lr_factor) for e in stage.lr_steps}
    main = optax.piecewise_constant_schedule(lr, boundaries)
    if warmup <= 0:
        return main
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), lambda s: main(s + warmup)], [warmup]
    )


def make_optimizer(stage: StageSettings, kind: str | int, schedule) -> optax.GradientTransformation:
    """Adam (AdamW with ``weight_decay``) on the parameters ``kind`` trains; others frozen."""
    if stage.weight_decay > 0:
        tx = optax.adamw(schedule, weight_decay=float(stage.weight_decay))
    else:
        tx = optax.adam(schedule)
    return freeze_optimizer(tx, stage_number(kind))


def train_state(
    variables: dict[str, Any], tx: optax.GradientTransformation, step: int = 0
) -> dict[str, Any]:
    """The train state a stage trains and checkpoints: ``variables`` at step ``step`` with
    ``tx``'s initial optimizer state."""
    return {
        "step": jnp.asarray(step, jnp.int32),
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "opt_state": tx.init(variables["params"]),
    }


def init_variables(model: PoseWarper, image_size, seed: int) -> dict[str, Any]:
    """Every variable of the model (backbone and head), initialised from ``seed``.

    The ``rbg`` key implementation compiles the many random draws of a network's init in
    a fraction of threefry's time; values still depend on the seed only.
    """
    h, w = image_size
    frames = jnp.zeros((1, 2, h, w, 3), jnp.uint8)
    key = jax.random.key(seed, impl="rbg")
    variables = jax.jit(lambda k: model.init(k, frames, False))(key)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


STAGE2_TARGETS = ("ground_truth", "backbone")


def _loss(model, variables, batch, kind: str | int, target: str, train: bool):
    """(loss, batch_stats updates or None) of one batch; see ``make_train_step``."""
    mutable = ["batch_stats"] if train else False
    if stage_number(kind) == 1:
        out = model.apply(
            variables, batch["image"][:, :1], train, method="heatmaps", mutable=mutable
        )
        hm, updates = out if train else (out, None)
        return joints_mse(hm[:, 0], batch["target"], batch["target_weight"]), updates
    if target not in STAGE2_TARGETS:
        raise ValueError(f"stage-2 target must be one of {STAGE2_TARGETS}, got {target!r}")
    out = model.apply(variables, batch["image"], train, True, method="pair", mutable=mutable)
    (warped, f_a, _), updates = out if train else (out, None)
    own = jax.lax.stop_gradient(f_a).astype(jnp.float32)
    every_joint = jnp.ones(f_a.shape[:1] + f_a.shape[-1:], jnp.float32)
    if target == "backbone":
        # Self-supervised: the frozen backbone's own heatmaps of A, every joint.
        return joints_mse(warped, own, every_joint), updates
    if "a_labeled" in batch:
        # Pairs whose A is unlabeled take the backbone's maps of A, every joint; the others
        # A's labels.
        labeled = batch["a_labeled"].astype(bool)
        goal = jnp.where(labeled[:, None, None, None], batch["target"].astype(jnp.float32), own)
        weight = jnp.where(labeled[:, None], batch["target_weight"], every_joint)
        return joints_mse(warped, goal, weight), updates
    return joints_mse(warped, batch["target"], batch["target_weight"]), updates


def make_train_step(
    model: PoseWarper,
    tx: optax.GradientTransformation,
    kind: str | int,
    target: str = "ground_truth",
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """``step(state, batch) -> (state, metrics)``: one optimizer step.

    ``"hrnet"`` trains the backbone on single frames (``batch["image"][:, :1]``); ``"head"``
    the warping head on frame pairs (A's heatmaps predicted from B's, backbone frozen). The
    head's ``target``: ``ground_truth`` (A's labels, the paper's recipe) or ``backbone`` (the
    frozen backbone's heatmaps of A for every joint: the head can only learn the motion
    between the frames, not to correct the backbone; A's labels are not used).
    """

    def loss_fn(params, batch_stats, batch):
        variables = {"params": params, "batch_stats": batch_stats}
        loss, updates = _loss(model, variables, batch, kind, target, train=True)
        return loss, updates["batch_stats"]

    def step(state, batch):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["batch_stats"], batch
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {
            "step": state["step"] + 1,
            "params": params,
            "batch_stats": batch_stats,
            "opt_state": opt_state,
        }
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        metrics = {"loss": loss, "grad_norm": grad_norm}
        return new_state, metrics

    return step


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_manager(directory: str, keep: int) -> ocp.CheckpointManager:
    """Orbax's manager of a stage's checkpoints (state + Grain iterator).

    Synchronous: ``save`` returns with the step on disk, or raises. (The train loop waited for
    every save anyway, and Orbax's background threads kept a process alive for the
    coordination timeout when a save failed.) Temporary directories of saves killed midway
    are removed when the manager starts.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(
        storage.epath_of(storage.abspath(directory)),
        options=options,
        item_names=("state", "data"),
    )


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_state(directory: str, like: dict, step: int | None = None) -> dict:
    """The train state saved in ``directory`` (latest step by default), shaped like ``like``."""
    mngr = checkpoint_manager(directory, keep=1_000_000)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    restored = mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(like)))
    )
    mngr.close()
    return restored["state"]


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160]}" + ("..." if len(text) > 160 else "")


def _set_aside(ckpt_dir: str, step: int) -> str:
    """Moves step ``step`` out of ``ckpt_dir`` into ``../corrupt_checkpoints``; returns where."""
    dest_dir = storage.join(storage.dirname(storage.abspath(ckpt_dir)), "corrupt_checkpoints")
    dest = storage.join(dest_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
        storage.makedirs(dest_dir)
        storage.move(storage.join(ckpt_dir, str(step)), dest)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"set_aside_{step}")
    return dest


def restore_newest_good(
    mngr: ocp.CheckpointManager, ckpt_dir: str, name: str, restore_args: Callable[[], Any]
) -> tuple[int | None, Any]:
    """Restores the newest step of ``mngr`` that reads, newest first.

    Steps newer than the one restored could not be read (a truncated or deleted file): they
    are moved to ``corrupt_checkpoints/`` beside ``ckpt_dir`` (so that the stage can write
    those steps again) with a ``CorruptCheckpointWarning`` naming both steps.
    ``restore_args()`` gives fresh restore arguments for each attempt.

    Returns:
      ``(step, restored)``, or ``(None, None)`` when there is no checkpoint.

    Raises:
      CheckpointError: there are checkpoints and none reads (a changed config, or all
        damaged); nothing is moved.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    failures: list[tuple[int, BaseException]] = []
    for step in steps:
        try:
            restored = mngr.restore(step, args=restore_args())
        except Exception as err:  # any reason the files do not read back
            failures.append((step, err))
            continue
        if failures:
            for bad, err in failures:
                where = _set_aside(ckpt_dir, bad)
                warnings.warn(
                    f"[{name}] checkpoint step {bad} in {ckpt_dir} cannot be read "
                    f"({_reason(err)}); moved to {where}; resuming from step {step} instead",
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
            mngr.reload()
        return step, restored
    if not failures:
        return None, None
    listed = "; ".join(f"step {s}: {_reason(e)}" for s, e in failures)
    raise CheckpointError(
        f"[{name}] no checkpoint in {ckpt_dir} can be read ({listed}); if the config "
        f"changed, use a new --workdir; to train the stage again, delete {ckpt_dir}"
    )


# ----------------------------------------------------------------------------- a stage


def stage_steps(stage: StageSettings, steps_per_epoch: int) -> int:
    """The optimizer steps of ``stage``: its epochs, capped (or given) by ``max_steps``."""
    total = int(stage.epochs) * steps_per_epoch
    if stage.max_steps > 0:
        total = min(total, int(stage.max_steps)) if total > 0 else int(stage.max_steps)
    return max(total, 1)


def run_stage(
    *,
    name: str,
    kind: str | int,
    workdir: str,
    model: PoseWarper,
    variables: dict[str, Any],
    dataset: VideoDataset,
    pipe_cfg: pipeline_lib.PipelineConfig,
    settings: StageSettings,
    checkpoint_every: int,
    keep_checkpoints: int,
    log_every: int,
    writer: MetricWriter,
    mesh: Mesh | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Trains the stage ``name`` (``kind``: ``"hrnet"`` or ``"head"``) with the recipe
    ``settings`` from ``variables`` and returns the trained variables.

    Resumes from ``workdir/name/checkpoints`` when a checkpoint is there; returns the final
    variables straight away when ``workdir/name/done.json`` says the stage finished.
    ``stop_after`` ends the call after that many steps of this call without finishing the
    stage (for tests of resumption).
    """
    mesh = data_mesh() if mesh is None else mesh
    stage_dir = storage.join(workdir, name)
    done_file = storage.join(stage_dir, "done.json")
    ckpt_dir = storage.join(stage_dir, "checkpoints")
    spe = max(1, pipeline_lib.steps_per_epoch(dataset, pipe_cfg))
    total = stage_steps(settings, spe)
    schedule = learning_rate_schedule(settings, spe, total)
    tx = make_optimizer(settings, kind, schedule)

    replicated = NamedSharding(mesh, PartitionSpec())
    # A private copy: the train step donates its state, and the caller keeps ``variables``.
    state = jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=replicated)(
        train_state(variables, tx)
    )
    final = _finished_state(name, done_file, ckpt_dir, state)
    if final is not None:
        return final

    def new_iterator():
        paired = stage_number(kind) == 2
        return iter(pipeline_lib.train_dataset(dataset, pipe_cfg, paired=paired))

    mngr = checkpoint_manager(ckpt_dir, keep_checkpoints)
    start, state, data_iter = _resume(mngr, ckpt_dir, name, state, new_iterator)
    step_fn = jax.jit(
        make_train_step(model, tx, kind, settings.target),
        in_shardings=(replicated, NamedSharding(mesh, PartitionSpec("data"))),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    t_stage = time.perf_counter()
    loop = _TrainLoop(name, ckpt_dir, mngr, mesh, schedule, writer, total, start)
    state, finished = loop.run(
        step_fn, state, data_iter, checkpoint_every, log_every, stop_after=stop_after
    )
    if finished:
        mngr.wait_until_finished()
    mngr.close()
    if finished and jax.process_index() == 0:
        done = {"stage": name, "steps": total, "seconds": time.perf_counter() - t_stage}
        fileio.write_json(done_file, done, indent=None)
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _finished_state(name: str, done_file: str, ckpt_dir: str, like: dict) -> dict | None:
    """The final variables of a stage that ``done_file`` says finished, or None: not finished,
    or its final checkpoint cannot be read (then ``done_file`` is removed, with a
    ``CorruptCheckpointWarning``, and the stage trains on from its newest good checkpoint)."""
    if not storage.exists(done_file):
        return None
    try:
        final = restore_state(ckpt_dir, like)
    except Exception as err:  # a damaged final checkpoint: train the rest again
        warnings.warn(
            f"[{name}] finished ({done_file}), but its final checkpoint cannot be read "
            f"({_reason(err)}); training the stage on from its newest good checkpoint",
            CorruptCheckpointWarning,
            stacklevel=3,
        )
        if jax.process_index() == 0:
            storage.remove(done_file)
        return None
    _log(f"[{name}] already finished ({done_file}); loaded its final state")
    return {"params": final["params"], "batch_stats": final["batch_stats"]}


def _resume(mngr, ckpt_dir: str, name: str, state: dict, new_iterator: Callable[[], Any]):
    """``(start step, state, data iterator)``: from the newest checkpoint that reads, or
    step 0 with ``state`` and a fresh iterator; ``mngr`` is closed if restoring fails."""
    attempt: dict[str, Any] = {}

    def restore_args():
        # A fresh iterator for every attempt: a failed restore may leave it half set.
        attempt["iter"] = new_iterator()
        return ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state)),
            data=grain.checkpoint.CheckpointRestore(attempt["iter"]),
        )

    try:
        start, restored = restore_newest_good(mngr, ckpt_dir, name, restore_args)
    except BaseException:
        mngr.close()
        raise
    if start is None:
        return 0, state, new_iterator()
    _log(f"[{name}] resumed from step {start} ({ckpt_dir})")
    return int(start), restored["state"], attempt["iter"]


class _TrainLoop:
    """The steps of a stage from ``start`` to ``total``: metrics written every ``log_every``
    steps, a checkpoint every ``checkpoint_every`` steps and at the end, and every loss
    checked before a checkpoint (``NonFiniteLossError``: nothing non-finite is saved)."""

    def __init__(self, name, ckpt_dir, mngr, mesh, schedule, writer, total: int, start: int):
        self.name, self.ckpt_dir, self.mngr, self.mesh = name, ckpt_dir, mngr, mesh
        self.schedule, self.writer, self.total, self.start = schedule, writer, total, start
        self.progress = Progress(name, start, total)
        self.last_good = start

    def run(
        self,
        step_fn,
        state,
        data_iter,
        checkpoint_every: int,
        log_every: int,
        *,
        stop_after: int | None = None,
    ) -> tuple[dict, bool]:
        """``(state, finished)``: the state after the last step run; ``finished`` unless
        ``stop_after`` steps of this call ended it early."""
        window: list[dict[str, jax.Array]] = []
        step, total = self.start, self.total
        while step < total:
            local = next(data_iter)
            keys = BATCH_KEYS + tuple(k for k in OPTIONAL_BATCH_KEYS if k in local)
            batch = pipeline_lib.make_global_batch(local, self.mesh, keys=keys)
            state, metrics = step_fn(state, batch)
            step += 1
            window.append(metrics)
            at_log = step % log_every == 0 or step == total
            at_ckpt = step % checkpoint_every == 0 or step == total
            if at_log or at_ckpt:
                # One host sync per log/checkpoint interval: every loss since the last one is
                # checked, so nothing non-finite is ever saved.
                self._report(step, window, at_log)
                window = []
            if at_ckpt:
                _save(self.mngr, step, state, data_iter, self.name, self.ckpt_dir, self.last_good)
                self.last_good = step
            if stop_after is not None and step - self.start >= stop_after and step < total:
                return state, False
        return state, True

    def _report(self, step: int, window: list[dict[str, jax.Array]], at_log: bool) -> None:
        """Checks the losses of ``window`` (the steps up to ``step``) and, ``at_log``, writes
        their metrics."""
        losses = np.asarray(jax.device_get([m["loss"] for m in window]))
        if not np.all(np.isfinite(losses)):
            bad = step - len(window) + int(np.argmax(~np.isfinite(losses))) + 1
            self.mngr.close()
            raise NonFiniteLossError(
                f"[{self.name}] the loss became {losses[~np.isfinite(losses)][0]} at step "
                f"{bad}; stopped. The last good checkpoint is step {self.last_good} in "
                f"{self.ckpt_dir} (lower {self.name}.lr, or check the data)."
            )
        scalars = {
            "loss": float(np.mean(losses)),
            "grad_norm": float(window[-1]["grad_norm"]),
            "lr": float(self.schedule(step - 1)),
        }
        if at_log:
            scalars["steps_per_s"] = self.progress.update(step, scalars)
            self.writer.write(self.name, step, scalars)


def _save(mngr, step: int, state, data_iter, name: str, ckpt_dir: str, last_good: int) -> None:
    """Saves step ``step``; a storage failure becomes ``CheckpointWriteError``."""
    try:
        mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iter),
            ),
            force=True,
        )
        mngr.wait_until_finished()
    except OSError as err:
        mngr.close()
        if not cli.storage_error(err):
            raise
        previous = f"step {last_good}" if last_good else "none yet"
        out = cli.write_error(
            storage.join(ckpt_dir, str(step)), err, f"[{name}]'s checkpoint of step {step}"
        )
        final = CheckpointWriteError(f"{out} (the last good checkpoint: {previous})")
        final.errno, final.filename = out.errno, out.filename
        raise final from err


def batch_loss(
    model: PoseWarper,
    variables: dict,
    batch: dict,
    kind: str | int,
    target: str = "ground_truth",
) -> jax.Array:
    """The training loss of ``kind`` on ``batch`` in evaluation mode (no BN updates)."""
    return _loss(model, variables, batch, kind, target, train=False)[0]

"""The two training stages: HRNet on the labeled frames, then the warping head.

One stage = one ``run_stage`` call. The train state is a plain pytree
``{"step", "params", "batch_stats", "opt_state"}`` replicated over a one-axis ``data`` mesh;
batches are sharded over it, so the same code runs on one CPU, 8 GPUs or a pod.

Every ``checkpoint_every`` steps and at the end, the state and the Grain iterator are saved
together (Orbax), so a stage restarted with the same workdir continues with exactly the
batch an uninterrupted run would have seen. A finished stage leaves ``done.json`` and is
skipped on restart. A non-finite loss stops the run before anything non-finite is saved.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.data.types import VideoDataset
from posewarper_jax.metrics import MetricWriter, Progress
from posewarper_jax.models.freeze import freeze_optimizer
from posewarper_jax.models.posewarper import PoseWarper

BATCH_KEYS = ("image", "target", "target_weight")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


def learning_rate_schedule(
    stage_cfg: mlc.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The recipe's step schedule (LR x ``lr_factor`` at the epochs in ``lr_steps``), or
    cosine decay; either after an optional linear warm-up."""
    lr = float(stage_cfg.lr)
    warmup = int(stage_cfg.warmup_steps)
    if stage_cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(total_steps, warmup + 1), end_value=0.0
        )
    boundaries = {
        int(round(e * steps_per_epoch)): float(stage_cfg.lr_factor) for e in stage_cfg.lr_steps
    }
    main = optax.piecewise_constant_schedule(lr, boundaries)
    if warmup <= 0:
        return main
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), lambda s: main(s + warmup)], [warmup]
    )


def make_optimizer(stage_cfg: mlc.ConfigDict, stage: int, schedule) -> optax.GradientTransformation:
    """Adam (AdamW with ``weight_decay``) on the parameters ``stage`` trains; others frozen."""
    if stage_cfg.weight_decay > 0:
        tx = optax.adamw(schedule, weight_decay=float(stage_cfg.weight_decay))
    else:
        tx = optax.adam(schedule)
    return freeze_optimizer(tx, stage)


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


def _stage_loss(model, variables, batch, stage: int, target: str, train: bool):
    """(loss, batch_stats updates or None) of one batch; see ``make_train_step``."""
    mutable = ["batch_stats"] if train else False
    if stage == 1:
        out = model.apply(
            variables, batch["image"][:, :1], train, method="heatmaps", mutable=mutable
        )
        hm, updates = out if train else (out, None)
        return joints_mse(hm[:, 0], batch["target"], batch["target_weight"]), updates
    if target not in STAGE2_TARGETS:
        raise ValueError(f"stage-2 target must be one of {STAGE2_TARGETS}, got {target!r}")
    out = model.apply(variables, batch["image"], train, True, method="pair", mutable=mutable)
    (warped, f_a, _), updates = out if train else (out, None)
    if target == "backbone":
        # Self-supervised: the frozen backbone's own heatmaps of A, every joint.
        weight = jnp.ones(f_a.shape[:1] + f_a.shape[-1:], f_a.dtype)
        return joints_mse(warped, jax.lax.stop_gradient(f_a), weight), updates
    return joints_mse(warped, batch["target"], batch["target_weight"]), updates


def make_train_step(
    model: PoseWarper, tx: optax.GradientTransformation, stage: int, target: str = "ground_truth"
) -> Callable[[dict, dict], tuple[dict, dict]]:
    """``step(state, batch) -> (state, metrics)``: one optimizer step.

    Stage 1 trains the backbone on single frames (``batch["image"][:, :1]``); stage 2 the
    warping head on frame pairs (A's heatmaps predicted from B's, backbone frozen). Stage 2's
    ``target``: ``ground_truth`` (A's labels, the paper's recipe) or ``backbone`` (the frozen
    backbone's heatmaps of A for every joint: the head can only learn the motion between the
    frames, not to correct the backbone; A's labels are not used).
    """

    def loss_fn(params, batch_stats, batch):
        variables = {"params": params, "batch_stats": batch_stats}
        loss, updates = _stage_loss(model, variables, batch, stage, target, train=True)
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
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=options, item_names=("state", "data")
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


# ----------------------------------------------------------------------------- a stage


def stage_steps(stage_cfg: mlc.ConfigDict, steps_per_epoch: int) -> int:
    total = int(stage_cfg.epochs) * steps_per_epoch
    if stage_cfg.max_steps > 0:
        total = min(total, int(stage_cfg.max_steps)) if total > 0 else int(stage_cfg.max_steps)
    return max(total, 1)


def run_stage(
    *,
    name: str,
    stage: int,
    workdir: str,
    model: PoseWarper,
    variables: dict[str, Any],
    dataset: VideoDataset,
    pipe_cfg: pipeline_lib.PipelineConfig,
    stage_cfg: mlc.ConfigDict,
    checkpoint_every: int,
    keep_checkpoints: int,
    log_every: int,
    writer: MetricWriter,
    mesh: Mesh | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Trains ``stage`` (1: backbone, 2: warping head) and returns the trained variables.

    Resumes from ``workdir/name/checkpoints`` when a checkpoint is there; returns the final
    variables straight away when ``workdir/name/done.json`` says the stage finished.
    ``stop_after`` ends the call after that many steps of this call without finishing the
    stage (for tests of resumption).
    """
    mesh = data_mesh() if mesh is None else mesh
    stage_dir = os.path.join(workdir, name)
    done_file = os.path.join(stage_dir, "done.json")
    spe = max(1, pipeline_lib.steps_per_epoch(dataset, pipe_cfg))
    total = stage_steps(stage_cfg, spe)
    schedule = learning_rate_schedule(stage_cfg, spe, total)
    tx = make_optimizer(stage_cfg, stage, schedule)

    replicated = NamedSharding(mesh, PartitionSpec())
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": variables["params"],
        "batch_stats": variables["batch_stats"],
        "opt_state": tx.init(variables["params"]),
    }
    # A private copy: the train step donates its state, and the caller keeps ``variables``.
    state = jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=replicated)(state)
    ckpt_dir = os.path.join(stage_dir, "checkpoints")

    if os.path.exists(done_file):
        state = restore_state(ckpt_dir, state)
        _log(f"[{name}] already finished ({done_file}); loaded its final state")
        return {"params": state["params"], "batch_stats": state["batch_stats"]}

    data_iter = iter(pipeline_lib.train_dataset(dataset, pipe_cfg, paired=stage == 2))
    mngr = checkpoint_manager(ckpt_dir, keep_checkpoints)
    start = mngr.latest_step()
    if start is not None:
        restored = mngr.restore(
            start,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(state)),
                data=grain.checkpoint.CheckpointRestore(data_iter),
            ),
        )
        state = restored["state"]
        _log(f"[{name}] resumed from step {start} ({ckpt_dir})")
    start = int(start or 0)

    step_fn = jax.jit(
        make_train_step(model, tx, stage, str(stage_cfg.get("target", "ground_truth"))),
        in_shardings=(replicated, NamedSharding(mesh, PartitionSpec("data"))),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )
    progress = Progress(name, start, total)
    last_good = start
    window: list[dict[str, jax.Array]] = []
    step = start
    t_stage = time.perf_counter()
    while step < total:
        local = next(data_iter)
        batch = pipeline_lib.make_global_batch(local, mesh, keys=BATCH_KEYS)
        state, metrics = step_fn(state, batch)
        step += 1
        window.append(metrics)
        at_log = step % log_every == 0 or step == total
        at_ckpt = step % checkpoint_every == 0 or step == total
        if at_log or at_ckpt:
            # One host sync per log/checkpoint interval: every loss since the last one is
            # checked, so nothing non-finite is ever saved.
            losses = np.asarray(jax.device_get([m["loss"] for m in window]))
            if not np.all(np.isfinite(losses)):
                bad = step - len(window) + int(np.argmax(~np.isfinite(losses))) + 1
                mngr.close()
                raise NonFiniteLossError(
                    f"[{name}] the loss became {losses[~np.isfinite(losses)][0]} at step "
                    f"{bad}; stopped. The last good checkpoint is step {last_good} in "
                    f"{ckpt_dir} (lower {name}.lr, or check the data)."
                )
            scalars = {
                "loss": float(np.mean(losses)),
                "grad_norm": float(window[-1]["grad_norm"]),
                "lr": float(schedule(step - 1)),
            }
            window = []
            if at_log:
                scalars["steps_per_s"] = progress.update(step, scalars)
                writer.write(name, step, scalars)
        if at_ckpt:
            mngr.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=grain.checkpoint.CheckpointSave(data_iter),
                ),
                force=True,
            )
            mngr.wait_until_finished()
            last_good = step
        if stop_after is not None and step - start >= stop_after and step < total:
            mngr.close()
            return {"params": state["params"], "batch_stats": state["batch_stats"]}
    mngr.wait_until_finished()
    mngr.close()
    if jax.process_index() == 0:
        with open(done_file + ".tmp", "w") as f:
            json.dump({"stage": name, "steps": total, "seconds": time.perf_counter() - t_stage}, f)
        os.replace(done_file + ".tmp", done_file)
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def batch_loss(
    model: PoseWarper, variables: dict, batch: dict, stage: int, target: str = "ground_truth"
) -> jax.Array:
    """The training loss of ``stage`` on ``batch`` in evaluation mode (no BN updates)."""
    return _stage_loss(model, variables, batch, stage, target, train=False)[0]

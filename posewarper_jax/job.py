"""The main job: the whole sparse-label experiment in one workdir, resumable at any point.

  1. data      generate (or reuse) the data set; keep the sparse training labels.
  2. stage1    HRNet on the labeled frames.
  3. stage2    the warping head on frame pairs, backbone frozen.
  4. evaluate  propagation (PoseWarper and three baselines) on the validation videos'
               held-back frames; detection (single-frame HRNet, PoseWarper aggregation).
  5. augment   pseudo labels propagated from the sparse labels; HRNet retrained on real +
               pseudo labels (``stage1_augmented``) and evaluated like the single-frame HRNet.
  6. report    ``report.md``, ``report.json`` and pictures in the workdir.

Every finished piece leaves its result on disk (checkpoints, ``done.json``, prediction files,
``eval/*.json``), and a restarted job skips it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from posewarper_jax import experiment, training
from posewarper_jax.data.types import VideoDataset
from posewarper_jax.metrics import MetricWriter


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _sync(tag: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(tag)


def _write_json(path: str, data: Any) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=2)
    os.replace(path + ".tmp", path)


def cached(path: str, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON-able result, stored at ``path``: computed once per workdir."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    result = compute()
    _write_json(path, result)
    return result


def load_pretrained(variables: dict, path: str) -> dict:
    """``variables`` with the backbone (and a head, if it has one) of a converted checkpoint.

    Raises:
      experiment.ConfigError: the checkpoint's shapes don't fit ``config.model``.
    """
    from posewarper_jax import convert

    loaded, meta = convert.load_converted(path)
    params, stats = loaded["params"], loaded.get("batch_stats", {})
    if "backbone" not in params:  # an HRNet checkpoint: the bare backbone tree
        params, stats = {"backbone": params}, {"backbone": stats}
    out = {"params": dict(variables["params"]), "batch_stats": dict(variables["batch_stats"])}
    for part in ("backbone", "head"):
        if part not in params:
            continue
        want = jax.tree.map(np.shape, variables["params"][part])
        got = jax.tree.map(np.shape, params[part])
        if want != got:
            raise experiment.ConfigError(
                f"config.model.pretrained={path!r}: its {part} ({meta.get('variant', '?')}) "
                f"does not fit config.model ({part} shapes differ)"
            )
        out["params"][part] = params[part]
        out["batch_stats"][part] = stats.get(part, variables["batch_stats"][part])
    return out


def train_and_evaluate(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the experiment of ``config`` in ``workdir``.

    Returns a summary (result paths and timings), also written to ``workdir/summary.json``.
    """
    experiment.validate(config)
    os.makedirs(workdir, exist_ok=True)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()

    # ------------------------------------------------------------------ data
    if jax.process_index() == 0:
        experiment.ensure_data(config)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    _sync("data")
    train_full = experiment.load_split(config, "train")
    train, held_back = experiment.sparse_subset(config, train_full)
    if jax.process_index() == 0:
        from posewarper_jax.data import sparse

        sparse.write_sparse_subset(train, held_back, os.path.join(workdir, "sparse_labels"))
    _log(
        f"data: {len(train.videos)} training videos, {_count_labeled(train)} labeled frames "
        f"kept, {_count_labeled(held_back)} held back ({config.data.root})"
    )
    timing["data"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ model
    model = experiment.make_model(config)
    mesh = training.data_mesh()
    writer = MetricWriter(workdir)
    t = time.perf_counter()
    initial = training.init_variables(model, config.input.image_size, config.seed)
    if config.model.pretrained:
        initial = load_pretrained(initial, config.model.pretrained)
    timing["init"] = time.perf_counter() - t

    def stage(name: str, index: int, variables: dict, dataset: VideoDataset, stage_cfg):
        t = time.perf_counter()
        out = training.run_stage(
            name=name,
            stage=index,
            workdir=workdir,
            model=model,
            variables=variables,
            dataset=dataset,
            pipe_cfg=experiment.pipeline_config(config, "stage1" if index == 1 else "stage2"),
            stage_cfg=stage_cfg,
            checkpoint_every=int(config.checkpoint_every),
            keep_checkpoints=int(config.keep_checkpoints),
            log_every=int(config.log_every),
            writer=writer,
            mesh=mesh,
        )
        timing[name] = time.perf_counter() - t
        return out

    # ------------------------------------------------------------------ stages 1 and 2
    stage1 = stage("stage1", 1, initial, train, config.stage1)
    stage2 = stage("stage2", 2, stage1, train, config.stage2)

    # ------------------------------------------------------------------ evaluation
    results = evaluate_all(config, workdir, model, initial, stage1, stage2, train, stage, timing)
    writer.close()

    # ------------------------------------------------------------------ report
    from posewarper_jax.apps import report

    timing["total"] = time.perf_counter() - t0
    t = time.perf_counter()
    paths = {}
    if jax.process_index() == 0:
        paths = report.write_report(
            workdir, results, json.loads(config.to_json_best_effort()), timing
        )
    timing["report"] = time.perf_counter() - t
    summary = {
        "workdir": os.path.abspath(workdir),
        "report": paths,
        "checkpoints": {
            s: os.path.abspath(os.path.join(workdir, s, "checkpoints"))
            for s in ("stage1", "stage2", "stage1_augmented")
        },
        "metrics": os.path.abspath(os.path.join(workdir, "metrics.jsonl")),
        "timing_s": timing,
    }
    _write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def _count_labeled(dataset: VideoDataset) -> int:
    return sum(1 for _ in dataset.labeled_frames())

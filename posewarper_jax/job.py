"""The main job: the whole sparse-label experiment in one workdir, resumable at any point.

  1. data      generate (or reuse) the data set; keep the sparse training labels.
     pretrain  HRNet pre-trained on a separate, fully labeled image set (the paper's COCO
               initialisation), unless ``model.pretrained`` gives weights.
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
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from posewarper_jax import cli, experiment, fileio, storage, training
from posewarper_jax import workdir as workdir_lib
from posewarper_jax.data.types import VideoDataset
from posewarper_jax.metrics import MetricWriter, close_metric_writers


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
    fileio.write_json(path, data)


class _Timing(dict):
    """Seconds per phase, written to ``timing.json`` as soon as a phase has its figure, so a
    run killed later keeps the figures of the phases it finished; a resumed run adds its own.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        if storage.exists(path):
            self.update(json.loads(storage.read_text(path)))

    def __setitem__(self, name: str, seconds: float) -> None:
        super().__setitem__(name, float(seconds))
        if name != "total":
            super().__setitem__("total", _total(self))
        _write_json(self.path, dict(self))


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

    Raises:
      experiment.ConfigError: a config value that cannot work (before any work).
      cli.ExpectedError: the workdir is a file or cannot be written to.
      workdir.WorkdirBusyError: another job uses the workdir (``WORKDIR/job.lock``).
    """
    experiment.validate(config)
    cli.check_writable_dir(workdir, "workdir")
    storage.check_checkpoint_dir(workdir, "workdir")
    with workdir_lib.lock(workdir, enabled=jax.process_index() == 0):
        try:
            return _train_and_evaluate(config, workdir)
        finally:
            # Written out even when the job stops on an error (on a bucket the metrics and
            # TensorBoard files are uploaded when their writer closes).
            close_metric_writers()


def _train_and_evaluate(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
    # Seconds per phase, as measured when the phase finished: a resumed job keeps the
    # figures of the phases an earlier run finished.
    timing_file = storage.join(workdir, "timing.json")
    timing = _Timing(timing_file)
    t0 = time.perf_counter()

    # ------------------------------------------------------------------ data
    if jax.process_index() == 0:
        experiment.ensure_data(config)
        fileio.atomic_write(
            storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2)
        )
    _sync("data")
    train_full = experiment.load_split(config, "train")
    train, held_back = experiment.sparse_subset(config, train_full)
    if jax.process_index() == 0:
        from posewarper_jax.data import sparse

        sparse.write_sparse_subset(train, held_back, storage.join(workdir, "sparse_labels"))
    _log(
        f"data: {len(train.videos)} training videos, {_count_labeled(train)} labeled frames "
        f"kept, {_count_labeled(held_back)} held back ({config.data.root})"
    )
    if "data" not in timing:
        timing["data"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ model
    model = experiment.make_model(config)
    mesh = training.data_mesh()
    writer = MetricWriter(workdir)
    t = time.perf_counter()
    initial = training.init_variables(model, config.input.image_size, config.seed)
    if config.model.pretrained:
        initial = load_pretrained(initial, config.model.pretrained)
    if "init" not in timing:
        timing["init"] = time.perf_counter() - t

    def stage(name: str, index: int, variables: dict, dataset: VideoDataset, stage_cfg):
        t = time.perf_counter()
        done_file = storage.join(workdir, name, "done.json")
        finished = storage.exists(done_file)
        out = run_job_stage(
            config, workdir, model, name, index, variables, dataset, stage_cfg, writer, mesh
        )
        if not finished:
            timing[name] = time.perf_counter() - t
        elif name not in timing:  # killed after the stage ended, before its time was kept
            timing[name] = json.loads(storage.read_text(done_file)).get("seconds", 0.0)
        return out

    # ------------------------------------------------------------------ stages 1 and 2
    if experiment.pretraining(config):
        initial = pretrain(config, workdir, initial, stage)
    elif not config.model.pretrained:
        _log("stage1: HRNet starts from random weights (no model.pretrained, pretrain.data=none)")
    stage1 = stage("stage1", 1, initial, train, config.stage1)
    stage2 = stage("stage2", 2, stage1, train, config.stage2)

    report_paths: dict[str, Any] = {}
    if config.evaluate:
        # -------------------------------------------------------------- evaluation
        results = evaluate_all(
            config, workdir, model, initial, stage1, stage2, train, stage, timing
        )
        # -------------------------------------------------------------- report
        t = time.perf_counter()
        report_paths = write_report(config, workdir, results, timing)
        timing["report"] = time.perf_counter() - t
    writer.close()
    summary = {
        "workdir": storage.abspath(workdir),
        "report": report_paths,
        "checkpoints": {
            s: storage.abspath(storage.join(workdir, s, "checkpoints"))
            for s in ("pretrain", "stage1", "stage2", "stage1_augmented")
        },
        "metrics": storage.abspath(storage.join(workdir, "metrics.jsonl")),
        "timing_s": dict(timing),
    }
    _write_json(storage.join(workdir, "summary.json"), summary)
    return summary


BAD_IMAGES = "bad_images.jsonl"


def bad_image_log(config: mlc.ConfigDict, workdir: str) -> str:
    """Where the job notes the bad images it skips (``data.skip_bad_images``), else ""."""
    if not config.data.get("skip_bad_images", False):
        return ""
    return storage.abspath(storage.join(workdir, BAD_IMAGES))


def run_job_stage(
    config: mlc.ConfigDict,
    workdir: str,
    model,
    name: str,
    index: int,
    variables: dict,
    dataset: VideoDataset,
    stage_cfg: mlc.ConfigDict,
    writer: MetricWriter | None,
    mesh,
) -> dict:
    """``training.run_stage`` with the job's settings from ``config``: stage ``index`` (1:
    HRNet, 2: warping head) named ``name`` in ``workdir``; a finished stage is loaded."""
    return training.run_stage(
        name=name,
        stage=index,
        workdir=workdir,
        model=model,
        variables=variables,
        dataset=dataset,
        pipe_cfg=experiment.pipeline_config(
            config,
            "stage1" if index == 1 else "stage2",
            batch_size=int(stage_cfg.batch_size),
            bad_image_log=bad_image_log(config, workdir),
        ),
        stage_cfg=stage_cfg,
        checkpoint_every=int(config.checkpoint_every),
        keep_checkpoints=int(config.keep_checkpoints),
        log_every=int(config.log_every),
        writer=writer,
        mesh=mesh,
    )


PRETRAINED_BACKBONE = os.path.join("pretrain", "backbone")


def pretrain(config: mlc.ConfigDict, workdir: str, initial: dict, stage) -> dict:
    """HRNet trained on ``config.pretrain``'s data set: the variables stage 1 starts from.

    The backbone is also written as a converted checkpoint, ``WORKDIR/pretrain/backbone``,
    which other runs take as ``model.pretrained`` instead of pre-training again.
    """
    from posewarper_jax import convert

    dataset = experiment.pretrain_dataset(config)
    _log(
        f"pretrain: {_count_labeled(dataset)} labeled frames of {len(dataset.videos)} "
        f"videos ({config.pretrain.data}, {experiment.pretrain_root(config)})"
    )
    variables = stage("pretrain", 1, initial, dataset, config.pretrain)
    out = storage.join(workdir, PRETRAINED_BACKBONE)
    if jax.process_index() == 0 and not _exported(out):
        # The temporary folder of an export killed midway (Orbax renames it when complete;
        # on gs:// it writes in place and marks it complete with a commit file).
        leftovers = storage.glob(storage.dirname(out), "backbone.orbax-checkpoint-tmp*")
        if storage.exists(out):
            leftovers.append(out)
        for leftover in leftovers:
            storage.rmtree(leftover)
        backbone = {k: variables[k]["backbone"] for k in ("params", "batch_stats")}
        metadata = {
            "format_version": convert.FORMAT_VERSION,
            "layout": "posewarper_jax",
            "target": "hrnet",
            "variant": config.model.backbone,
            "source": f"pretrain.data={config.pretrain.data} "
            f"({experiment.pretrain_root(config)}), {config.pretrain.max_steps} steps",
        }
        convert.save_converted(out, jax.device_get(backbone), metadata)
    _sync("pretrain")
    return variables


def _exported(out: str) -> bool:
    """Whether the exported backbone at ``out`` is complete (on gs://, Orbax writes the
    folder in place and adds ``commit_success.txt`` last)."""
    if not storage.exists(out):
        return False
    if storage.scheme(out) in ("gs", "gcs"):
        return storage.exists(storage.join(out, "commit_success.txt"))
    return True


def _count_labeled(dataset: VideoDataset) -> int:
    return sum(1 for _ in dataset.labeled_frames())


# ----------------------------------------------------------------------------- evaluation

PROPAGATION = ("posewarper", "copy_nearest", "farneback", "hrnet_pseudo")
DETECTION = ("hrnet", "posewarper_aggregation", "hrnet_pseudo_augmented")


def _scored(workdir, section, name, gt, compute, timing, image_root):
    """(mAP table, predictions) of one method, from disk when an earlier run finished it."""
    from posewarper_jax.data import posetrack18
    from posewarper_jax.eval import posetrack_map
    from posewarper_jax.eval.predictions import write_poseval_predictions

    pred_dir = storage.join(workdir, "predictions", section, name)
    score_file = storage.join(workdir, "eval", f"{section}_{name}.json")
    if storage.exists(score_file):
        table = json.loads(storage.read_text(score_file))
        pred = posetrack18.load_posetrack18(pred_dir, image_root)
        return table, pred, pred_dir
    t = time.perf_counter()
    pred = compute()
    table = posetrack_map(gt, pred)
    if jax.process_index() == 0:
        write_poseval_predictions(pred, gt, pred_dir)
    # The time first, then the score file that marks the method finished.
    timing[f"{section}.{name}"] = time.perf_counter() - t
    _write_json(score_file, table)
    _log(f"[{section}] {name}: mAP {table['Total']:.1f}")
    return table, pred, pred_dir


EVAL_SPLIT = storage.join("eval", "split.json")


def _claim_eval_split(workdir: str, evaluation: dict) -> None:
    """Marks the workdir's scores (``eval/``, ``predictions/``) as those of ``evaluation``'s
    split and videos, before the first score file; a resumed run that would score another
    split stops instead of reading the other split's scores back.

    Raises:
      cli.ExpectedError: ``eval/`` holds the scores of another split (or scores written
        before the split existed: every validation video).
    """
    marker = storage.join(workdir, EVAL_SPLIT)
    want = {"split": evaluation["split"], "videos": evaluation["videos"]}
    if storage.exists(marker):
        have = json.loads(storage.read_text(marker))
        have = {"split": have.get("split"), "videos": have.get("videos")}
    elif storage.glob(storage.join(workdir, "eval"), "*.json"):
        have = {"split": "all (written before eval.split existed)", "videos": None}
    else:
        _write_json(marker, want)
        return
    if have != want:
        raise cli.ExpectedError(
            f"{marker}: this workdir's evaluation scored the {have['split']!r} split, "
            f"config.eval.split={want['split']!r} asks for "
            + ("other videos" if have["split"] == want["split"] else "another")
            + "; evaluate it in another workdir (a copy of this one without eval/, "
            "predictions/ and report*), or run with the workdir's split"
        )


def evaluate_all(config, workdir, model, initial, stage1, stage2, train, stage, timing):
    """Propagation, detection and augmentation results (mAP tables, predictions, extras)."""
    from posewarper_jax.apps import augment, detection, propagation_eval
    from posewarper_jax.data import detections, sparse, splits
    from posewarper_jax.data import pipeline as pipeline_lib

    mesh = training.data_mesh()
    bad_log = bad_image_log(config, workdir)
    eval_cfg = experiment.pipeline_config(config, "eval", bad_image_log=bad_log)
    root = config.data.root
    # The validation videos of eval.split (data.splits: a fixed rule halves them into dev
    # and test); every table of the report scores these and no others.
    val = experiment.eval_videos(config)
    split = experiment.eval_split(config)
    evaluation = {
        "split": split,
        "rule": splits.RULE,
        "videos": [v.name for v in val.videos],
        "of_videos": int(val.extra["split"]["of_videos"]),
    }
    _log(
        f"evaluation: the {split!r} split, {len(val.videos)} of "
        f"{evaluation['of_videos']} validation videos"
    )
    _claim_eval_split(workdir, evaluation)
    flip = bool(config.eval.get("flip_test", False))
    # The sparse labels, the held-back ground truth (for scoring only) and the plan: every
    # held-back frame cut with its nearest labeled frame's box, for every method.
    setting = propagation_eval.held_out(
        val,
        every_k=int(config.eval.propagation_every_k),
        seed=int(config.sparse.seed),
        reach=int(config.eval.propagation_reach),
    )
    val_held, plan = setting.held_back, setting.plan
    tables: dict[str, dict] = {"propagation": {}, "detection": {}}
    preds: dict[str, dict] = {"propagation": {}, "detection": {}}
    paths: dict[str, dict] = {"propagation": {}, "detection": {}}

    def record(section, name, gt, compute):
        table, pred, path = _scored(workdir, section, name, gt, compute, timing, root)
        tables[section][name] = table
        preds[section][name] = pred
        paths[section][name] = storage.abspath(path)

    # ------------------------------------------------------------------ propagation
    _log(
        f"propagation: {len(plan)} people on {_count_labeled(val_held)} held-back frames, "
        f"from every {config.eval.propagation_every_k}th frame of {len(val.videos)} videos"
    )
    prop = propagation_eval.methods(
        setting, model=model, hrnet=stage1, posewarper=stage2, pipe_cfg=eval_cfg, mesh=mesh,
        flip_test=flip, bad_image_log=bad_log, decoding=experiment.heatmap_coding(config)[1],
    )  # fmt: skip
    scoring: dict[str, Any] = {}
    for name in PROPAGATION:
        # Scored on the videos that lost labels (a video with at most one labeled frame
        # keeps all of them and has nothing held back).
        record("propagation", name, val_held, prop[name])
        # mAP, mAP with constant scores, PCKh@0.5, overall and by |δ|: scoring only, redone on
        # every run from the predictions (read back from their files on a resumed run, the
        # same float32 values).
        scoring[name] = propagation_eval.views(setting, preds["propagation"][name])
        _log(
            f"[propagation] {name}: mAP with constant scores "
            f"{scoring[name]['map_constant_scores']['Total']:.1f}, "
            f"PCKh@0.5 {scoring[name]['pckh']['Total']:.1f}"
        )
    # The same by the conditions the synthetic data records (None on other data).
    from posewarper_jax.apps import report_conditions

    by_condition = report_conditions.measure(
        root, "val", val_held, {n: preds["propagation"][n] for n in PROPAGATION}, split=split
    )

    # ------------------------------------------------------------------ detection
    boxes: Any = "gt"
    if config.data.val_detections:
        boxes = detections.load_detections(
            config.data.val_detections, val, float(config.data.detection_threshold)
        )
    detect = dict(
        boxes=boxes, mesh=mesh, flip_test=flip, decoding=experiment.heatmap_coding(config)[1]
    )
    record(
        "detection",
        "hrnet",
        val,
        lambda: detection.detect_single_frame(model, stage1, val, eval_cfg, **detect),
    )
    record(
        "detection",
        "posewarper_aggregation",
        val,
        lambda: detection.detect_aggregated(model, stage2, val, eval_cfg, **detect),
    )
    extra_tables = {}
    causal, _, _ = _scored(
        workdir,
        "detection",
        "posewarper_aggregation_causal",
        val,
        lambda: detection.detect_aggregated(model, stage2, val, eval_cfg, causal=True, **detect),
        timing,
        root,
    )
    extra_tables["posewarper_aggregation_causal"] = causal

    # ------------------------------------------------------------------ tracking
    # Detect and track: the aggregation's poses linked by the PoseWarper motion model and by
    # box IoU, scored with poseval's tracking metrics (apps.detect_track.job_tracking).
    from posewarper_jax.apps import detect_track

    tracking = detect_track.job_tracking(
        model, stage2, val, preds["detection"]["posewarper_aggregation"], eval_cfg,
        workdir=workdir, flip_test=flip, mesh=mesh, timing=timing, log=_log,
        decoding=experiment.heatmap_coding(config)[1],
    )  # fmt: skip

    # ------------------------------------------------------------------ augmentation
    pseudo_file = storage.join(workdir, "pseudo_labels")
    if storage.exists(storage.join(pseudo_file, "done.json")):
        augmented = sparse.read_sparse_subset(pseudo_file, root)[0]
    else:
        t = time.perf_counter()
        augmented = augment.pseudo_labels(
            model,
            stage2,
            train,
            deltas=tuple(int(d) for d in config.augment.deltas),
            min_confidence=float(config.augment.min_confidence),
            pipe_cfg=eval_cfg,
            mesh=mesh,
            flip_test=flip,
            decoding=experiment.heatmap_coding(config)[1],
        )
        if jax.process_index() == 0:
            empty = VideoDataset(videos=[], fmt=augmented.fmt, root=augmented.root)
            sparse.write_sparse_subset(augmented, empty, pseudo_file)
        timing["augment.pseudo_labels"] = time.perf_counter() - t
        _write_json(storage.join(pseudo_file, "done.json"), {"ok": True})
    num_pseudo = _count_labeled(augmented) - _count_labeled(train)
    _log(f"augmentation: {num_pseudo} pseudo-labeled frames added to {_count_labeled(train)}")
    aug_cfg = _augmented_stage_config(config, train, augmented)
    stage1_aug = stage("stage1_augmented", 1, initial, augmented, aug_cfg)
    record(
        "detection",
        "hrnet_pseudo_augmented",
        val,
        lambda: detection.detect_single_frame(model, stage1_aug, val, eval_cfg, **detect),
    )

    return {
        "propagation": tables["propagation"],
        "detection": tables["detection"],
        "evaluation": evaluation,
        "propagation_scoring": {"split": split, "methods": scoring},
        **({report_conditions.KEY: by_condition} if by_condition else {}),
        "predictions": paths,
        "extra": {
            "detection": extra_tables,
            "tracking": tracking,
            "counts": {
                "train_labeled_frames": _count_labeled(train),
                "pseudo_labeled_frames": num_pseudo,
                "propagation_people": len(plan),
                "val_videos": len(val.videos),
                # data.skip_bad_images: distinct image files skipped, over every run of the job
                "bad_images_skipped": len(pipeline_lib.bad_images_in_log(bad_log)),
            },
        },
        "_gt": {"propagation": val_held, "detection": val},
        "_predictions": preds,
        "_motion": (model, stage2, val, eval_cfg),
    }


def _augmented_stage_config(config, train: VideoDataset, augmented: VideoDataset):
    """Stage-1 settings for HRNet on real + pseudo labels.

    With ``augment.match_stage1_steps`` the retraining gets as many steps as stage 1 had (and
    its LR drops at the same steps), so the two HRNets differ only in their labels, not in
    compute; otherwise it trains ``stage1.epochs`` epochs of the larger set, as the paper.
    """
    from posewarper_jax.data import pipeline as pipeline_lib

    cfg = mlc.ConfigDict(config.stage1.to_dict())
    if not config.augment.match_stage1_steps:
        return cfg
    pipe = experiment.pipeline_config(config, "stage1")
    spe1 = max(1, pipeline_lib.steps_per_epoch(train, pipe))
    spe_aug = max(1, pipeline_lib.steps_per_epoch(augmented, pipe))
    steps = training.stage_steps(config.stage1, spe1)
    cfg.max_steps = steps
    cfg.epochs = max(1, -(-steps // spe_aug))
    cfg.lr_steps = tuple(e * spe1 / spe_aug for e in config.stage1.lr_steps)
    return cfg


def motion_sample(model, variables, dataset: VideoDataset, pipe_cfg):
    """The learned offsets of one frame pair (frame t+1 warped onto t) for the report."""
    from posewarper_jax.apps.report import MotionSample
    from posewarper_jax.data import pipeline as pipeline_lib
    from posewarper_jax.models.warping import WarpingHead

    batch = next(iter(pipeline_lib.eval_map_dataset(dataset, pipe_cfg, offsets=(0, 1))))
    frames = batch["image"][:1]
    f = model.apply(variables, frames, False, method="heatmaps")
    head = WarpingHead(model.head_config)
    head_vars = {
        "params": variables["params"]["head"],
        "batch_stats": variables["batch_stats"]["head"],
    }
    _, offsets = head.apply(head_vars, f[:, 0] - f[:, 1], f[:, 1], False, return_offsets=True)
    return MotionSample(
        image=np.asarray(frames[0, 0]),
        offsets=[np.asarray(o[0]) for o in offsets],
        dilations=tuple(model.head_config.dilations),
    )


def _tolerant_reader(path: str) -> np.ndarray:
    """``draw.read_image``, or a grey picture for a bad image (``data.skip_bad_images``)."""
    from posewarper_jax.apps import draw

    try:
        return draw.read_image(path)
    except FileNotFoundError:
        return np.full((240, 320, 3), 128, np.uint8)


def _total(timing: dict) -> float:
    return sum(v for k, v in timing.items() if k not in ("total", "report"))


def write_report(config, workdir: str, results: dict, timing: dict) -> dict:
    """report.md, report.json and the pictures (process 0 only)."""
    from posewarper_jax.apps import draw, report

    gt = results.pop("_gt")
    preds = results.pop("_predictions")
    model, variables, val, eval_cfg = results.pop("_motion")
    if jax.process_index() != 0:
        return {}
    figures = report.write_figures(
        workdir,
        results,
        gt=gt["detection"],
        predictions=preds,
        motion=motion_sample(model, variables, val, eval_cfg),
        reader=_tolerant_reader if eval_cfg.skip_bad_images else draw.read_image,
    )
    timing["total"] = _total(timing)
    report.write_report(
        workdir, results, json.loads(config.to_json_best_effort()), timing, figures=figures
    )
    return {
        "markdown": storage.abspath(storage.join(workdir, "report.md")),
        "json": storage.abspath(storage.join(workdir, "report.json")),
        "figures": {k: storage.abspath(v) for k, v in figures.items()},
    }

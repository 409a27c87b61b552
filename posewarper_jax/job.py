"""The main job: the whole sparse-label experiment in one workdir, resumable at any point.

The experiment is ``PHASES``, run in order, each a function of (settings, workdir, the
outputs of the phases before it) returning its own outputs:

  data         generate (or reuse) the data set; keep the sparse training labels.
  init         the model and its initial variables (``model.pretrained``'s weights, if given).
  pretrain     HRNet pre-trained on a separate, fully labeled image set (the paper's COCO
               initialisation), unless ``model.pretrained`` gives weights.
  stage1       HRNet on the labeled frames.
  stage2       the warping head on frame pairs, backbone frozen.
  validation   the validation videos of ``eval.split`` and the propagation plan on them.
  propagation  PoseWarper and three baselines on the validation videos' held-back frames.
  detection    single-frame HRNet and PoseWarper aggregation on the validation frames.
  tracking     the aggregation's poses linked into tracks (PoseWarper motion, box IoU).
  augment      pseudo labels propagated from the sparse labels; HRNet retrained on real +
               pseudo labels (``stage1_augmented``) and evaluated like the single-frame HRNet.
  report       ``report.md``, ``report.json`` and pictures in the workdir.

The phases from ``validation`` on run when ``evaluate`` is set. Every finished piece leaves
its result on disk (checkpoints and ``<stage>/done.json``, prediction files and
``eval/*.json`` scores, ``pseudo_labels/done.json``), and a restarted job skips it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from posewarper_jax import cli, experiment, fileio, storage, training
from posewarper_jax import workdir as workdir_lib
from posewarper_jax.data.types import VideoDataset
from posewarper_jax.logs import log as _log
from posewarper_jax.methods import DETECTION, PROPAGATION
from posewarper_jax.settings import Settings, StageSettings
from posewarper_jax.training_log import MetricWriter, close_metric_writers

__all__ = [
    "DETECTION",
    "PHASES",
    "PROPAGATION",
    "Phase",
    "bad_image_log",
    "load_pretrained",
    "run",
    "train_and_evaluate",
    "train_stage",
    "training_data",
]

Outputs = dict[str, Any]  # what the phases so far produced, by name


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


# ----------------------------------------------------------------------------- the job


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the experiment of ``config`` (an ``ml_collections`` config) in
    ``workdir``: ``run(experiment.settings(config), workdir)``.

    Returns a summary (result paths and timings), also written to ``workdir/summary.json``.

    Raises:
      experiment.ConfigError: a config value that cannot work (before any work).
      cli.ExpectedError: the workdir is a file or cannot be written to.
      workdir.WorkdirBusyError: another job uses the workdir (``WORKDIR/job.lock``).
    """
    return run(experiment.settings(config), workdir)


def run(settings: Settings, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the experiment of ``settings`` in ``workdir`` (``train_and_evaluate``)."""
    cli.check_writable_dir(workdir, "workdir")
    storage.check_checkpoint_dir(workdir, "workdir")
    with workdir_lib.lock(workdir, enabled=jax.process_index() == 0):
        try:
            return _run_phases(settings, workdir)
        finally:
            # Written out even when the job stops on an error (on a bucket the metrics and
            # TensorBoard files are uploaded when their writer closes).
            close_metric_writers()


def _run_phases(settings: Settings, workdir: str) -> dict[str, Any]:
    # Seconds per phase, as measured when the phase finished: a resumed job keeps the
    # figures of the phases an earlier run finished.
    outputs: Outputs = {
        "timing": _Timing(storage.join(workdir, "timing.json")),
        "t0": time.perf_counter(),
    }
    for phase in PHASES:
        if phase.when(settings):
            outputs.update(phase.run(settings, workdir, outputs))
        if phase.name == settings.stop_after:
            _log(f"stop_after={phase.name}: the job stops here")
            break
    outputs["writer"].close()
    summary = {
        "workdir": storage.abspath(workdir),
        "report": outputs.get("report", {}),
        "checkpoints": {
            s: storage.abspath(storage.join(workdir, s, "checkpoints"))
            for s in ("pretrain", "stage1", "stage2", "stage1_augmented")
        },
        "metrics": storage.abspath(storage.join(workdir, "metrics.jsonl")),
        "timing_s": dict(outputs["timing"]),
    }
    _write_json(storage.join(workdir, "summary.json"), summary)
    return summary


# ----------------------------------------------------------------------------- training


def training_data(settings: Settings) -> tuple[VideoDataset, VideoDataset]:
    """(the sparse training labels, the held-back labels) of the training videos."""
    return experiment.sparse_subset(settings, experiment.load_split(settings, "train"))


BAD_IMAGES = "bad_images.jsonl"


def bad_image_log(settings: Settings, workdir: str) -> str:
    """Where the job notes the bad images it skips (``data.skip_bad_images``), else ""."""
    if not settings.data.skip_bad_images:
        return ""
    return storage.abspath(storage.join(workdir, BAD_IMAGES))


def train_stage(
    settings: Settings,
    workdir: str,
    model,
    name: str,
    kind: str,
    variables: dict,
    dataset: VideoDataset,
    *,
    stage: StageSettings | None = None,
    writer: MetricWriter | None = None,
    mesh=None,
) -> dict:
    """``training.run_stage`` with the job's settings: the training stage ``name`` of
    ``kind`` (``"hrnet"`` or ``"head"``) in ``workdir``, with the recipe ``stage`` (default:
    ``settings.stage(name)``); a finished stage is loaded."""
    stage = settings.stage(name) if stage is None else stage
    return training.run_stage(
        name=name,
        kind=kind,
        workdir=workdir,
        model=model,
        variables=variables,
        dataset=dataset,
        pipe_cfg=experiment.pipeline_config(
            settings,
            "stage1" if training.stage_number(kind) == 1 else "stage2",
            batch_size=stage.batch_size,
            bad_image_log=bad_image_log(settings, workdir),
        ),
        settings=stage,
        checkpoint_every=settings.checkpoint_every,
        keep_checkpoints=settings.keep_checkpoints,
        log_every=settings.log_every,
        writer=writer,
        mesh=mesh,
    )


def _timed_stage(settings, workdir, out: Outputs, name, kind, variables, dataset, stage=None):
    """``train_stage`` with the job's model, mesh and writer, its time kept in ``timing``
    under ``name`` (for a stage finished by an earlier run: the time its ``done.json`` has,
    unless that run kept it)."""
    timing = out["timing"]
    t = time.perf_counter()
    done_file = storage.join(workdir, name, "done.json")
    finished = storage.exists(done_file)
    trained = train_stage(
        settings, workdir, out["model"], name, kind, variables, dataset,
        stage=stage, writer=out["writer"], mesh=out["mesh"],
    )  # fmt: skip
    if not finished:
        timing[name] = time.perf_counter() - t
    elif name not in timing:  # killed after the stage ended, before its time was kept
        timing[name] = json.loads(storage.read_text(done_file)).get("seconds", 0.0)
    return trained


PRETRAINED_BACKBONE = os.path.join("pretrain", "backbone")


def _export_backbone(settings: Settings, workdir: str, variables: dict) -> None:
    """The pre-trained backbone as a converted checkpoint, ``WORKDIR/pretrain/backbone``,
    unless it is there already."""
    from posewarper_jax import convert

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
        p = settings.pretrain
        metadata = {
            "format_version": convert.FORMAT_VERSION,
            "layout": "posewarper_jax",
            "target": "hrnet",
            "variant": settings.model.backbone,
            "source": f"pretrain.data={p.data} ({p.root}), {p.stage.max_steps} steps",
        }
        convert.save_converted(out, jax.device_get(backbone), metadata)
    _sync("pretrain")


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


def _augmented_stage(settings: Settings, train: VideoDataset, augmented: VideoDataset):
    """Stage-1 settings for HRNet on real + pseudo labels.

    With ``augment.match_stage1_steps`` the retraining gets as many steps as stage 1 had (and
    its LR drops at the same steps), so the two HRNets differ only in their labels, not in
    compute; otherwise it trains ``stage1.epochs`` epochs of the larger set, as the paper.
    """
    from posewarper_jax.data import pipeline as pipeline_lib

    stage1 = settings.stage1
    if not settings.augment.match_stage1_steps:
        return stage1
    pipe = experiment.pipeline_config(settings, "stage1")
    spe1 = max(1, pipeline_lib.steps_per_epoch(train, pipe))
    spe_aug = max(1, pipeline_lib.steps_per_epoch(augmented, pipe))
    steps = training.stage_steps(stage1, spe1)
    return dataclasses.replace(
        stage1,
        max_steps=steps,
        epochs=max(1, -(-steps // spe_aug)),
        lr_steps=tuple(e * spe1 / spe_aug for e in stage1.lr_steps),
    )


# ----------------------------------------------------------------------------- evaluation


class _Scores:
    """The evaluation's mAP tables, predictions and prediction folders, by section
    ("propagation", "detection") and method, in the order the methods were scored."""

    def __init__(self, workdir: str, image_root: str, timing: dict):
        self.workdir, self.image_root, self.timing = workdir, image_root, timing
        self.tables: dict[str, dict] = {"propagation": {}, "detection": {}}
        self.predictions: dict[str, dict] = {"propagation": {}, "detection": {}}
        self.paths: dict[str, dict] = {"propagation": {}, "detection": {}}

    def record(self, section: str, name: str, gt: VideoDataset, compute) -> None:
        """Scores one method of the report's tables (``_scored``) and keeps its results."""
        table, pred, path = self.score(section, name, gt, compute)
        self.tables[section][name] = table
        self.predictions[section][name] = pred
        self.paths[section][name] = storage.abspath(path)

    def score(self, section: str, name: str, gt: VideoDataset, compute):
        return _scored(self.workdir, section, name, gt, compute, self.timing, self.image_root)


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


def write_report(settings: Settings, workdir: str, results: dict, timing: dict) -> dict:
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
    report.write_report(workdir, results, json.loads(settings.config_json), timing, figures=figures)
    return {
        "markdown": storage.abspath(storage.join(workdir, "report.md")),
        "json": storage.abspath(storage.join(workdir, "report.json")),
        "figures": {k: storage.abspath(v) for k, v in figures.items()},
    }


# ----------------------------------------------------------------------------- the phases


def data_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """The data set (generated unless there), ``config.json``, the sparse training labels
    (also written to ``WORKDIR/sparse_labels``)."""
    if jax.process_index() == 0:
        experiment.ensure_data(settings)
        fileio.atomic_write(storage.join(workdir, "config.json"), settings.config_json)
        workdir_lib.write_launch(workdir)
    _sync("data")
    train, held_back = training_data(settings)
    if jax.process_index() == 0:
        from posewarper_jax.data import sparse

        sparse.write_sparse_subset(train, held_back, storage.join(workdir, "sparse_labels"))
    _log(
        f"data: {len(train.videos)} training videos, {_count_labeled(train)} labeled frames "
        f"kept, {_count_labeled(held_back)} held back ({settings.data.root})"
    )
    if "data" not in out["timing"]:
        out["timing"]["data"] = time.perf_counter() - out["t0"]
    return {"train": train}


def init_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """The model, the device mesh, the metrics writer and the initial variables."""
    model = experiment.make_model(settings)
    mesh = training.data_mesh()
    writer = MetricWriter(workdir)
    t = time.perf_counter()
    initial = training.init_variables(model, settings.input.image_size, settings.seed)
    if settings.model.pretrained:
        initial = load_pretrained(initial, settings.model.pretrained)
    if "init" not in out["timing"]:
        out["timing"]["init"] = time.perf_counter() - t
    return {"model": model, "mesh": mesh, "writer": writer, "initial": initial}


def pretrain_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """HRNet trained on ``pretrain``'s data set: the variables stage 1 starts from.

    The backbone is also written as a converted checkpoint, ``WORKDIR/pretrain/backbone``,
    which other runs take as ``model.pretrained`` instead of pre-training again.
    """
    dataset = experiment.pretrain_dataset(settings)
    _log(
        f"pretrain: {_count_labeled(dataset)} labeled frames of {len(dataset.videos)} "
        f"videos ({settings.pretrain.data}, {settings.pretrain.root})"
    )
    variables = _timed_stage(settings, workdir, out, "pretrain", "hrnet", out["initial"], dataset)
    _export_backbone(settings, workdir, variables)
    return {"initial": variables}


def stage1_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """HRNet on the sparse labels, from the pre-trained (or given, or random) weights."""
    if not settings.pretraining and not settings.model.pretrained:
        _log("stage1: HRNet starts from random weights (no model.pretrained, pretrain.data=none)")
    trained = _timed_stage(settings, workdir, out, "stage1", "hrnet", out["initial"], out["train"])
    return {"stage1": trained}


def stage2_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """The warping head on frame pairs of the sparse labels, the stage-1 backbone frozen."""
    trained = _timed_stage(settings, workdir, out, "stage2", "head", out["stage1"], out["train"])
    return {"stage2": trained}


def validation_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """The validation videos of ``eval.split`` (``data.splits``: a fixed rule halves them into
    dev and test; every table of the report scores these and no others), the workdir's
    scores claimed for them, and the propagation setting on them."""
    from posewarper_jax.apps import propagation_eval
    from posewarper_jax.data import splits

    bad_log = bad_image_log(settings, workdir)
    val = experiment.eval_videos(settings)
    split = settings.eval.split
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
    # The sparse labels, the held-back ground truth (for scoring only) and the plan: every
    # held-back frame cut with its nearest labeled frame's box, for every method.
    setting = propagation_eval.held_out(
        val,
        every_k=settings.eval.propagation_every_k,
        seed=settings.sparse.seed,
        reach=settings.eval.propagation_reach,
    )
    return {
        "val": val,
        "evaluation": evaluation,
        "setting": setting,
        "bad_log": bad_log,
        "eval_cfg": experiment.pipeline_config(settings, "eval", bad_image_log=bad_log),
        "scores": _Scores(workdir, settings.data.root, out["timing"]),
    }


def _predict_kwargs(settings: Settings, out: Outputs) -> dict[str, Any]:
    """The arguments every prediction of the evaluation shares."""
    return dict(
        mesh=out["mesh"], flip_test=settings.eval.flip_test, decoding=settings.eval.decoding
    )


def propagation_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """Every propagation method on the held-back frames: mAP tables, their score views
    (mAP with constant scores, PCKh@0.5, by |δ|) and, on synthetic data, by condition."""
    from posewarper_jax.apps import propagation_eval, report_conditions

    setting, scores, val = out["setting"], out["scores"], out["val"]
    val_held, plan = setting.held_back, setting.plan
    _log(
        f"propagation: {len(plan)} people on {_count_labeled(val_held)} held-back frames, "
        f"from every {settings.eval.propagation_every_k}th frame of {len(val.videos)} videos"
    )
    prop = propagation_eval.methods(
        setting, model=out["model"], hrnet=out["stage1"], posewarper=out["stage2"],
        pipe_cfg=out["eval_cfg"], bad_image_log=out["bad_log"],
        path=settings.eval.propagation_path, **_predict_kwargs(settings, out),
    )  # fmt: skip
    views: dict[str, Any] = {}
    for name in PROPAGATION:
        # Scored on the videos that lost labels (a video with at most one labeled frame
        # keeps all of them and has nothing held back).
        scores.record("propagation", name, val_held, prop[name])
        # mAP, mAP with constant scores, PCKh@0.5, overall and by |δ|: scoring only, redone on
        # every run from the predictions (read back from their files on a resumed run, the
        # same float32 values).
        views[name] = propagation_eval.views(setting, scores.predictions["propagation"][name])
        _log(
            f"[propagation] {name}: mAP with constant scores "
            f"{views[name]['map_constant_scores']['Total']:.1f}, "
            f"PCKh@0.5 {views[name]['pckh']['Total']:.1f}"
        )
    # The same by the conditions the synthetic data records (None on other data).
    by_condition = report_conditions.measure(
        settings.data.root, "val", val_held,
        {n: scores.predictions["propagation"][n] for n in PROPAGATION},
        split=settings.eval.split,
    )  # fmt: skip
    return {"propagation_views": views, "by_condition": by_condition}


def _detect(settings: Settings, out: Outputs) -> dict[str, Any]:
    """The arguments of every detection: the boxes (``data.val_detections``, else the
    ground truth's) and the shared prediction arguments."""
    from posewarper_jax.data import detections

    boxes: Any = "gt"
    if settings.data.val_detections:
        boxes = detections.load_detections(
            settings.data.val_detections, out["val"], settings.data.detection_threshold
        )
    return dict(boxes=boxes, **_predict_kwargs(settings, out))


def detection_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """Single-frame HRNet and PoseWarper aggregation (and its causal variant) on the
    validation frames."""
    from posewarper_jax.apps import detection

    model, val, eval_cfg, scores = out["model"], out["val"], out["eval_cfg"], out["scores"]
    detect = _detect(settings, out)
    stage1, stage2 = out["stage1"], out["stage2"]
    scores.record(
        "detection", "hrnet", val,
        lambda: detection.detect_single_frame(model, stage1, val, eval_cfg, **detect),
    )  # fmt: skip
    # The symmetric and the causal window from one pass (the causal one's frames are the
    # symmetric one's first three); a resumed run that finished one computes both again.
    both = functools.cache(
        lambda: detection.detect_aggregated_and_causal(model, stage2, val, eval_cfg, **detect)
    )
    scores.record("detection", "posewarper_aggregation", val, lambda: both()[0])
    causal, _, _ = scores.score(
        "detection", "posewarper_aggregation_causal", val, lambda: both()[1]
    )
    return {"detect": detect, "extra_detection": {"posewarper_aggregation_causal": causal}}


def tracking_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """Detect and track: the aggregation's poses linked by the PoseWarper motion model and by
    box IoU, scored with poseval's tracking metrics (``apps.detect_track.job_tracking``)."""
    from posewarper_jax.apps import detect_track

    poses = out["scores"].predictions["detection"]["posewarper_aggregation"]
    tracking = detect_track.job_tracking(
        out["model"], out["stage2"], out["val"], poses, out["eval_cfg"],
        workdir=workdir, timing=out["timing"], log=_log, **_predict_kwargs(settings, out),
    )  # fmt: skip
    return {"tracking": tracking}


PSEUDO_LABELS = "pseudo_labels"


def _pseudo_labels(settings: Settings, workdir: str, out: Outputs) -> VideoDataset:
    """The sparse labels plus the pseudo labels PoseWarper propagates from them, read back
    from ``WORKDIR/pseudo_labels`` when an earlier run finished them (its ``done.json``)."""
    from posewarper_jax.apps import augment
    from posewarper_jax.data import sparse

    folder = storage.join(workdir, PSEUDO_LABELS)
    if storage.exists(storage.join(folder, "done.json")):
        return sparse.read_sparse_subset(folder, settings.data.root)[0]
    t = time.perf_counter()
    augmented = augment.pseudo_labels(
        out["model"],
        out["stage2"],
        out["train"],
        deltas=settings.augment.deltas,
        min_confidence=settings.augment.min_confidence,
        pipe_cfg=out["eval_cfg"],
        **_predict_kwargs(settings, out),
    )
    if jax.process_index() == 0:
        empty = VideoDataset(videos=[], fmt=augmented.fmt, root=augmented.root)
        sparse.write_sparse_subset(augmented, empty, folder)
    out["timing"]["augment.pseudo_labels"] = time.perf_counter() - t
    _write_json(storage.join(folder, "done.json"), {"ok": True})
    return augmented


def augment_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """HRNet retrained on the sparse + pseudo labels (``stage1_augmented``) and scored like
    the single-frame HRNet."""
    from posewarper_jax.apps import detection

    train = out["train"]
    augmented = _pseudo_labels(settings, workdir, out)
    num_pseudo = _count_labeled(augmented) - _count_labeled(train)
    _log(f"augmentation: {num_pseudo} pseudo-labeled frames added to {_count_labeled(train)}")
    stage = _augmented_stage(settings, train, augmented)
    stage1_aug = _timed_stage(
        settings, workdir, out, "stage1_augmented", "hrnet", out["initial"], augmented, stage
    )
    model, val, eval_cfg, detect = out["model"], out["val"], out["eval_cfg"], out["detect"]
    out["scores"].record(
        "detection", "hrnet_pseudo_augmented", val,
        lambda: detection.detect_single_frame(model, stage1_aug, val, eval_cfg, **detect),
    )  # fmt: skip
    return {"num_pseudo": num_pseudo}


def results(out: Outputs) -> dict[str, Any]:
    """The evaluation's results as the report takes them (mAP tables, predictions, extras)."""
    from posewarper_jax.apps import report_conditions
    from posewarper_jax.data import pipeline as pipeline_lib

    scores, evaluation, by_condition = out["scores"], out["evaluation"], out["by_condition"]
    return {
        "propagation": scores.tables["propagation"],
        "detection": scores.tables["detection"],
        "evaluation": evaluation,
        "propagation_scoring": {
            "split": evaluation["split"],
            "methods": out["propagation_views"],
        },
        **({report_conditions.KEY: by_condition} if by_condition else {}),
        "predictions": scores.paths,
        "extra": {
            "detection": out["extra_detection"],
            "tracking": out["tracking"],
            "counts": {
                "train_labeled_frames": _count_labeled(out["train"]),
                "pseudo_labeled_frames": out["num_pseudo"],
                "propagation_people": len(out["setting"].plan),
                "val_videos": len(out["val"].videos),
                # data.skip_bad_images: distinct image files skipped, over every run of the job
                "bad_images_skipped": len(pipeline_lib.bad_images_in_log(out["bad_log"])),
            },
        },
        "_gt": {"propagation": out["setting"].held_back, "detection": out["val"]},
        "_predictions": scores.predictions,
        "_motion": (out["model"], out["stage2"], out["val"], out["eval_cfg"]),
    }


def report_phase(settings: Settings, workdir: str, out: Outputs) -> Outputs:
    """``report.md``, ``report.json`` and the pictures; the paths written."""
    t = time.perf_counter()
    paths = write_report(settings, workdir, results(out), out["timing"])
    out["timing"]["report"] = time.perf_counter() - t
    return {"report": paths}


def _always(settings: Settings) -> bool:
    return True


def _evaluating(settings: Settings) -> bool:
    return settings.evaluate


def _pretraining(settings: Settings) -> bool:
    return settings.pretraining


@dataclasses.dataclass(frozen=True)
class Phase:
    """One piece of the job: ``run(settings, workdir, outputs)`` returns its outputs (added
    to ``outputs`` for the phases after it); the job has it where ``when(settings)``."""

    name: str
    run: Callable[[Settings, str, Outputs], Outputs]
    when: Callable[[Settings], bool] = _always


PHASES: tuple[Phase, ...] = (
    Phase("data", data_phase),
    Phase("init", init_phase),
    Phase("pretrain", pretrain_phase, when=_pretraining),
    Phase("stage1", stage1_phase),
    Phase("stage2", stage2_phase),
    Phase("validation", validation_phase, when=_evaluating),
    Phase("propagation", propagation_phase, when=_evaluating),
    Phase("detection", detection_phase, when=_evaluating),
    Phase("tracking", tracking_phase, when=_evaluating),
    Phase("augment", augment_phase, when=_evaluating),
    Phase("report", report_phase, when=_evaluating),
)

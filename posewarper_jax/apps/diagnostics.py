r"""Where propagation accuracy goes: ceilings and ablations on the report's propagation plan.

  python -m posewarper_jax.apps.diagnostics --config configs/sparse.py --workdir runs/sparse

Reads the finished stages of a main-job workdir (same ``--config`` as the run), rebuilds the
validation propagation plan of the report (``apps.propagation_eval.held_out``: labels kept on
every ``eval.propagation_every_k``-th frame, reach ``eval.propagation_reach``, each held-back
frame cut with its nearest labeled frame's box, the labeled people carried) on the videos of
``--split`` and prints poseval mAP rows, also written to ``WORKDIR/diagnostics.json`` with the
split and its video names (``"evaluation"``). The split is ``dev`` unless asked otherwise
(``--split=test`` or ``all``): the half of the validation videos that settings are chosen on
(``data.splits``), never the ``test`` half that the report scores.

* ``heatmap_ceiling``: every target frame's own ground truth (the person of the same track on
  that frame; none: no pose) rendered as heatmaps in its crop and decoded, with the untrained
  (identity) head: what the heatmap grid, σ and decoding allow at all. It reads the held-back
  ground truth on purpose: it is a bound, not a method.
* ``identity_warp``: the untrained head carries A's ground truth through the heatmaps without
  any motion (≈ copying the nearest label; the difference is the heatmap round trip).
* ``posewarper``: the trained head, as in the report (its ``eval.propagation_path``, as
  every row of the trained head).
* ``posewarper_identity_kernel``: the trained offsets with every deformable kernel reset to
  the identity: the learned motion alone, without the kernels' mixing of joint channels.
* ``posewarper_flip``: the trained head with flip test (mean of the pair and its mirror).
* ``by_delta``: ``posewarper`` and ``farneback`` on the frames whose nearest label is |δ| away,
  for each |δ| (scored against the held-back frames at that distance only), and for both
  ``motion_recovered``: how much of each joint's true motion from A to B the method carries
  (slope 1 follows the motion, 0 copies A's label). PoseWarper uses the config's flip test
  there, as the report does.

Nothing is trained: a stage without ``done.json`` is an error. Expected failures (an
unfinished workdir, a workdir in use by a job, a bad config value) print one line
``error: ...`` and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from posewarper_jax.apps import baselines, propagation
from posewarper_jax.data.types import Frame, VideoDataset
from posewarper_jax.eval import posetrack_map
from posewarper_jax.models.warping import identity_kernel_init

__all__ = [
    "ceiling_plan",
    "frames_at_delta",
    "identity_kernels",
    "motion_recovered",
    "run_diagnostics",
]


def _target_person(boxes: VideoDataset, names: dict, plan, g: int, where: str):
    """The person of row ``g``'s track on its target frame in ``boxes``, or None."""
    name = plan.video_names[int(plan.video[g])]
    if name not in names:
        raise ValueError(f"{where}: video {name!r} of the plan is not in boxes")
    frame = boxes.videos[names[name]].frames[int(plan.frame[g])]
    track = int(plan.track_id[g])
    if track < 0:
        return None
    return next((q for q in frame.people if q.track_id == track), None)


def ceiling_plan(
    plan: propagation.PropagationPlan, boxes: VideoDataset
) -> propagation.PropagationPlan:
    """``plan`` with each row's source joints replaced by the target person's own ground truth.

    Args:
      plan: a propagation plan (with or without boxes).
      boxes: the data set holding the target frames' ground truth; each row takes the person
        of its track on its target frame (a row whose track is not there gets no joints).
    """
    names = {v.name: i for i, v in enumerate(boxes.videos)}
    kpts = plan.source_keypoints.copy()
    for g in range(len(plan)):
        person = _target_person(boxes, names, plan, g, "ceiling_plan")
        kpts[g, :] = 0.0
        if person is not None:
            kpts[g, 0] = person.keypoints
    return dataclasses.replace(plan, source_keypoints=kpts)


def identity_kernels(variables: Mapping[str, Any]) -> dict[str, Any]:
    """``variables`` with every warping-head ``deform_conv*`` kernel set to the identity (the
    head's initial value); the offsets and everything else are kept."""
    params = dict(variables["params"])
    head = dict(params["head"])
    found = False
    for name, sub in head.items():
        if name.startswith("deform_conv"):
            k = sub["kernel"]
            head[name] = {**sub, "kernel": identity_kernel_init(None, k.shape, k.dtype)}
            found = True
    if not found:
        raise ValueError("identity_kernels: no deform_conv* kernels under params/head")
    params["head"] = head
    return {**variables, "params": params}


def frames_at_delta(
    plan: propagation.PropagationPlan, held_back: VideoDataset, delta: int
) -> tuple[np.ndarray, VideoDataset]:
    """The plan rows whose nearest source is ``|δ| = delta`` away, and ``held_back`` with the
    people of every other frame removed (so that only those frames are scored).

    Returns:
      ``(keep, gt)``: bool ``[N]`` over the plan's rows, and the reduced ground truth.
    """
    keep = (plan.source_frame[:, 0] >= 0) & (np.abs(plan.delta[:, 0]) == delta)
    rows = zip(plan.video[keep], plan.frame[keep])
    wanted = {(plan.video_names[int(v)], int(f)) for v, f in rows}
    videos = []
    for video in held_back.videos:
        frames = [
            f
            if (video.name, f.index) in wanted
            else Frame(path=f.path, index=f.index, image_id=f.image_id, is_labeled=False)
            for f in video.frames
        ]
        videos.append(dataclasses.replace(video, frames=frames))
    return keep, dataclasses.replace(held_back, videos=videos)


def motion_recovered(
    pred: VideoDataset, plan: propagation.PropagationPlan, boxes: VideoDataset
) -> dict[str, float]:
    """How much of the true motion a propagation carries each joint.

    For every planned person and joint labeled in its source A, in the ground truth of B
    (``boxes``: the person of the same track on B) and predicted, with head size s of B:
    m = (B's joint − A's joint) / s and p = (predicted − A's joint) / s. Returns
    ``{"slope": Σ p·m / Σ m·m, "error": median |p − m|, "joints": n}``: slope 1 follows the
    motion, 0 stays on A's label (copying); NaN where nothing moved.
    """
    names = {v.name: i for i, v in enumerate(boxes.videos)}
    predicted = {
        (v.name, f.index, q.track_id): q for v in pred.videos for f in v.frames for q in f.people
    }
    true, got = [], []
    for g in range(len(plan)):
        name, frame = plan.video_names[int(plan.video[g])], int(plan.frame[g])
        q = predicted.get((name, frame, int(plan.track_id[g])))
        if q is None or plan.source_frame[g, 0] < 0 or name not in names:
            continue
        b = _target_person(boxes, names, plan, g, "motion_recovered")
        if b is None or b.head_bbox is None:
            continue
        size = 0.6 * float(np.hypot(b.head_bbox[2], b.head_bbox[3]))
        a = plan.source_keypoints[g, 0]
        ok = (a[:, 2] > 0) & (b.keypoints[:, 2] > 0) & (q.keypoints[:, 2] > 0)
        if size <= 0 or not ok.any():
            continue
        true.append((b.keypoints[ok, :2] - a[ok, :2]) / size)
        got.append((q.keypoints[ok, :2] - a[ok, :2]) / size)
    if not true:
        return {"slope": float("nan"), "error": float("nan"), "joints": 0}
    m, p = np.concatenate(true).astype(np.float64), np.concatenate(got).astype(np.float64)
    norm = float((m * m).sum())
    return {
        "slope": float((p * m).sum() / norm) if norm > 0 else float("nan"),
        "error": float(np.median(np.linalg.norm(p - m, axis=1))),
        "joints": int(len(m)),
    }


def run_diagnostics(
    model,
    initial: Mapping[str, Any],
    trained: Mapping[str, Any],
    val: VideoDataset,
    *,
    every_k: int,
    reach: int,
    seed: int,
    pipe_cfg,
    mesh=None,
    flip_test: bool = False,
    log=print,
    decoding: str = "quarter",
    path: str = "direct",
) -> dict[str, Any]:
    """All rows of the module docstring; returns ``{name: mAP table}`` plus ``by_delta``
    (``{str(|δ|): {"posewarper": table, "farneback": table, "people": n,
    "motion_recovered": {"posewarper": ..., "farneback": ...}}}``, see
    ``motion_recovered``); ``flip_test`` is PoseWarper's setting in ``by_delta``; every
    propagation decodes its warped maps with ``decoding`` ("quarter" or "dark"); the trained
    head's rows propagate along ``path`` (the run's ``eval.propagation_path``), the two
    bounds in one warp."""
    from posewarper_jax.apps import propagation_eval

    setting = propagation_eval.held_out(val, every_k=every_k, seed=seed, reach=reach)
    labeled, held, plan = setting.labeled, setting.held_back, setting.plan
    out: dict[str, Any] = {"people": len(plan)}

    def prop(variables, p=plan, **kw):
        pred = propagation.propagate_labels(
            model,
            variables,
            labeled,
            pipe_cfg=pipe_cfg,
            mesh=mesh,
            plan=p,
            decoding=decoding,
            **kw,
        )
        return propagation.select_videos(pred, held)

    def row(name, pred, gt=held):
        table = posetrack_map(gt, pred)
        log(f"{name:28s} " + " ".join(f"{k} {v:5.1f}" for k, v in table.items()))
        return table

    out["heatmap_ceiling"] = row("heatmap_ceiling", prop(initial, ceiling_plan(plan, val)))
    out["identity_warp"] = row("identity_warp", prop(initial))
    out["posewarper"] = row("posewarper", prop(trained, path=path))
    out["posewarper_identity_kernel"] = row(
        "posewarper_identity_kernel", prop(identity_kernels(trained), path=path)
    )
    out["posewarper_flip"] = row("posewarper_flip", prop(trained, flip_test=True, path=path))
    out["by_delta"] = {}
    for delta in range(1, reach + 1):
        keep, gt = frames_at_delta(plan, held, delta)
        if not keep.any():
            continue
        sub = propagation.keep_rows(plan, keep)
        entry = {"people": int(keep.sum())}
        pw = prop(trained, sub, flip_test=flip_test, path=path)
        entry["posewarper"] = row(f"posewarper |δ|={delta}", pw, gt)
        fb = propagation.select_videos(baselines.farneback(labeled, plan=sub), held)
        entry["farneback"] = row(f"farneback |δ|={delta}", fb, gt)
        entry["motion_recovered"] = {
            name: motion_recovered(pred, sub, val)
            for name, pred in (("posewarper", pw), ("farneback", fb))
        }
        log(
            f"motion recovered |δ|={delta}: "
            + ", ".join(f"{k} {v['slope']:.2f}" for k, v in entry["motion_recovered"].items())
        )
        out["by_delta"][str(delta)] = entry
    return out


def _main(argv):  # pragma: no cover - exercised through the CLI
    from absl import app, flags, logging

    from posewarper_jax import cli, experiment

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    for name in ("stage1", "stage2"):
        if not os.path.exists(os.path.join(workdir, name, "done.json")):
            raise cli.ExpectedError(
                f"{workdir}/{name} is not finished (no done.json): run the main job with this "
                "config and workdir first"
            )
    settings = experiment.settings(config)
    from posewarper_jax import workdir as workdir_lib

    with workdir_lib.lock(workdir, enabled=jax.process_index() == 0):
        _diagnose(settings, workdir, flags.FLAGS.split)


def _diagnose(settings, workdir: str, split: str) -> None:  # pragma: no cover - the CLI
    """The diagnostics of the main job's finished stages in ``workdir`` (``settings``: the
    job's) on the validation videos of ``split``, written to ``diagnostics.json``."""
    from posewarper_jax import experiment, fileio, job, training

    val = experiment.eval_videos(settings, split)  # an empty split fails before any work
    model = experiment.make_model(settings)
    mesh = training.data_mesh()
    initial = training.init_variables(model, settings.input.image_size, settings.seed)
    train, _ = job.training_data(settings)
    # The job's stages, finished: read back from their final checkpoints.
    stage1 = job.train_stage(settings, workdir, model, "stage1", "hrnet", initial, train, mesh=mesh)
    stage2 = job.train_stage(settings, workdir, model, "stage2", "head", stage1, train, mesh=mesh)
    print(f"diagnostics: the {split!r} split, {len(val.videos)} validation videos", flush=True)
    out = run_diagnostics(
        model,
        initial,
        stage2,
        val,
        every_k=settings.eval.propagation_every_k,
        reach=settings.eval.propagation_reach,
        seed=settings.sparse.seed,
        pipe_cfg=experiment.pipeline_config(settings, "eval"),
        mesh=mesh,
        flip_test=settings.eval.flip_test,
        decoding=settings.eval.decoding,
        path=settings.eval.propagation_path,
    )
    out["evaluation"] = {
        "split": split,
        "videos": [v.name for v in val.videos],
        "of_videos": int(val.extra["split"]["of_videos"]),
    }
    if jax.process_index() == 0:
        path = os.path.join(workdir, "diagnostics.json")
        fileio.write_json(path, out)
        print(f"written: {path}")


if __name__ == "__main__":  # pragma: no cover
    from absl import flags
    from ml_collections import config_flags

    from posewarper_jax import cli

    config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    flags.DEFINE_string("workdir", "runs/default", "The main job's workdir.")
    flags.DEFINE_enum(
        "split", "dev", ["dev", "test", "all"], "Validation videos to diagnose (data.splits)."
    )
    cli.define_absl_debug_flag()
    flags.mark_flags_as_required(["config"])
    cli.run_absl(_main)

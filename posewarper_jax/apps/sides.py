r"""Left/right confusion of a single-frame pose model, by the way each person faces.

  python -m posewarper_jax.apps.sides --workdir runs/sparse [--split dev] \
      [--stages pretrain,stage1]

Reads a main-job workdir (its ``config.json`` and finished stages), runs each stage's HRNet
on every labeled frame of the validation videos of ``--split`` (``dev`` unless asked
otherwise) and of the training videos' sparse labels, one crop per ground-truth box, as the
report's detection does (the config's flip test and decoding), and counts, for every
left/right joint pair whose two ground-truth joints are labeled, whether the prediction put
them the right way round. Prints one table per stage and writes ``WORKDIR/sides.json``.

The measure (``side_swaps``), per person and pair (left joint ``l``, right joint ``r``): each
predicted joint goes to the nearer of the two ground-truth joints ``g_l``, ``g_r``, and the pair
is

* ``correct``: ``p_l`` nearer ``g_l`` and ``p_r`` nearer ``g_r``;
* ``swapped``: ``p_l`` nearer ``g_r`` and ``p_r`` nearer ``g_l``: the sides exchanged;
* ``collapsed``: both nearer the same ground-truth joint: the model put its left and its right
  joint on one of the two (typically the same point), and the other joint has no prediction.

Pairs whose two ground-truth joints lie within ``min_separation`` head sizes of each other
are not counted (either order is about as good). Predictions are matched to ground-truth
people by the mean of their joints, which a left/right exchange does not move (nearest first,
each prediction used once).

Facing, read off the ground truth: ``s = (x_left_shoulder - x_right_shoulder) / head size``.
``s > +0.5``: the person's left shoulder is on the image's right, the person faces the camera
(``front``); ``s < -0.5``: faces away (``back``); otherwise ``side`` (the shoulders overlap in
the image). Persons without both shoulders labeled are ``unknown`` (in the synthetic data a
hidden joint is unlabeled, so these are mostly side views, whose far shoulder the body
hides). The head size is poseval's (0.6 × the head box's diagonal).

A model that tells left from right by the way the person faces gets most pairs ``correct`` in
every bin. One that cannot tell front from back swaps the pairs of the people it sees one way
(or, unsure, puts both joints of a pair on the stronger one: ``collapsed``).

What the sides cost (``assign_pairs_by_truth``, the validation set only): the same HRNet is
scored again (poseval mAP) with each labeled pair's two joints taken from the two strongest
peaks of the pair's summed map, which peak is which side decided by the ground truth. No
model can use that; it is the most a perfect side decision could add to this HRNet's
heatmaps, and what stays below the heatmap ceiling is localisation (a joint not found, or
found off its place), not the sides.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from posewarper_jax.data.types import FLIP_PAIRS, JOINT_NAMES, Person, VideoDataset
from posewarper_jax.eval.posetrack_map import _head_size

__all__ = [
    "FACINGS",
    "OUTCOMES",
    "assign_pairs_by_truth",
    "facing",
    "render_sides",
    "render_side_cost",
    "side_swaps",
    "truth_assigned_fn",
]

FACINGS = ("front", "side", "back", "unknown")
OUTCOMES = ("correct", "swapped", "collapsed")
SIDE_THRESHOLD = 0.5  # head sizes between the shoulders' x (``facing``)
_L_SHOULDER, _R_SHOULDER = JOINT_NAMES.index("left_shoulder"), JOINT_NAMES.index("right_shoulder")


def _size(person: Person) -> float | None:
    """poseval's head size, None without a head box (or a degenerate one)."""
    if person.head_bbox is None:
        return None
    return _head_size(person) or None


def facing(person: Person) -> str:
    """``front``, ``side``, ``back`` or ``unknown`` (module docstring) of a ground-truth person."""
    kp = np.asarray(person.keypoints, np.float64)
    size = _size(person)
    if size is None or kp[_L_SHOULDER, 2] <= 0 or kp[_R_SHOULDER, 2] <= 0:
        return "unknown"
    s = (kp[_L_SHOULDER, 0] - kp[_R_SHOULDER, 0]) / size
    if s > SIDE_THRESHOLD:
        return "front"
    if s < -SIDE_THRESHOLD:
        return "back"
    return "side"


def _match(gt_people: Sequence[Person], pred_people: Sequence[Person]) -> list[tuple[int, int]]:
    """(gt index, pred index) pairs, nearest joint means first, each used once."""

    def centre(p: Person, labeled: np.ndarray) -> np.ndarray:
        return np.asarray(p.keypoints, np.float64)[labeled, :2].mean(axis=0)

    cands = []
    for i, g in enumerate(gt_people):
        labeled = np.asarray(g.keypoints)[:, 2] > 0
        if not labeled.any():
            continue
        cg = centre(g, labeled)
        for j, p in enumerate(pred_people):
            cands.append((float(np.linalg.norm(centre(p, labeled) - cg)), i, j))
    used_g, used_p, out = set(), set(), []
    for _, i, j in sorted(cands):
        if i not in used_g and j not in used_p:
            used_g.add(i)
            used_p.add(j)
            out.append((i, j))
    return out


def side_swaps(
    gt: VideoDataset, pred: VideoDataset, *, min_separation: float = 0.2
) -> dict[str, Any]:
    """Left/right swaps of ``pred`` against ``gt`` (module docstring), on ``gt``'s labeled
    frames; videos matched by name, frames by position.

    Returns:
      ``{"pairs": {pair name: {facing: cell}}, "all": {facing: cell}, "people": {facing:
      number of matched people}}``, a cell ``{"counted", "correct", "swapped", "collapsed",
      "correct_rate", "swapped_rate", "collapsed_rate"}`` (rates None where nothing was
      counted). A pair's name is its left joint's without ``left_`` (``shoulder``, ...,
      ``ear``).

    Raises:
      ValueError: a video of ``gt`` missing from ``pred``, or a frame count that differs.
    """
    preds = {v.name: v for v in pred.videos}
    names = {pair: JOINT_NAMES[pair[0]].removeprefix("left_") for pair in FLIP_PAIRS}
    counts = {n: {f: dict.fromkeys(OUTCOMES, 0) for f in FACINGS} for n in names.values()}
    people = dict.fromkeys(FACINGS, 0)
    for video in gt.videos:
        if video.name not in preds:
            raise ValueError(f"side_swaps: video {video.name!r} has no predictions")
        pframes = preds[video.name].frames
        if len(pframes) != len(video.frames):
            raise ValueError(
                f"side_swaps: video {video.name!r} has {len(video.frames)} frames, its "
                f"predictions {len(pframes)}"
            )
        for frame, pframe in zip(video.frames, pframes, strict=True):
            if not frame.is_labeled:
                continue
            for i, j in _match(frame.people, pframe.people):
                g = frame.people[i]
                size = _size(g)
                if size is None:
                    continue
                face = facing(g)
                people[face] += 1
                gk = np.asarray(g.keypoints, np.float64)
                pk = np.asarray(pframe.people[j].keypoints, np.float64)
                for (lj, rj), name in names.items():
                    if gk[lj, 2] <= 0 or gk[rj, 2] <= 0:
                        continue
                    gl, gr, pl, pr = gk[lj, :2], gk[rj, :2], pk[lj, :2], pk[rj, :2]
                    if np.linalg.norm(gl - gr) < min_separation * size:
                        continue
                    l_on_l = np.linalg.norm(pl - gl) <= np.linalg.norm(pl - gr)
                    r_on_r = np.linalg.norm(pr - gr) < np.linalg.norm(pr - gl)
                    if l_on_l and r_on_r:
                        outcome = "correct"
                    elif not l_on_l and not r_on_r:
                        outcome = "swapped"
                    else:
                        outcome = "collapsed"
                    counts[name][face][outcome] += 1

    def cell(c: dict[str, int]) -> dict[str, Any]:
        n = sum(c.values())
        return {"counted": n, **c, **{f"{k}_rate": c[k] / n if n else None for k in OUTCOMES}}

    pairs = {n: {f: cell(c[f]) for f in FACINGS} for n, c in counts.items()}
    total = {f: cell({k: sum(c[f][k] for c in counts.values()) for k in OUTCOMES}) for f in FACINGS}
    return {"pairs": pairs, "all": total, "people": people, "min_separation": min_separation}


def assign_pairs_by_truth(
    heatmaps: jnp.ndarray,
    joints: jnp.ndarray,
    pairs: Sequence[tuple[int, int]] = FLIP_PAIRS,
    radius: int = 2,
) -> jnp.ndarray:
    """Heatmaps whose left/right pairs take their sides from the ground truth (a diagnostic).

    For each pair ``(l, r)`` whose two joints are labeled (``joints[..., 2] > 0``): the mean
    ``s`` of the two channels, its maximum ``p1``, and the maximum ``p2`` of ``s`` outside the
    ``(2 radius + 1)²`` window around ``p1``. Channel ``l`` becomes ``s`` inside the window of
    the peak that, with the other peak on ``r``, lies nearer the ground truth (smaller
    ``|p_l - g_l| + |p_r - g_r|``), zero elsewhere; channel ``r`` the other window (``p2``'s
    window without ``p1``'s). Other pairs and the unpaired channels are returned unchanged.
    Any decoding then finds each joint at its assigned peak.

    Args:
      heatmaps: ``[B, h, w, J]``.
      joints: ``[B, J, 3]`` ground truth (x, y, labeled) in heatmap pixels.
      pairs: the left/right channel pairs.
      radius: the window's half-width in heatmap pixels.

    Returns:
      ``[B, h, w, J]``, the dtype of ``heatmaps``.
    """
    hm = jnp.asarray(heatmaps)
    joints = jnp.asarray(joints, jnp.float32)
    b, h, w, _ = hm.shape
    ys = jnp.arange(h)[None, :, None]
    xs = jnp.arange(w)[None, None, :]

    def peak(m):  # [B, h, w] -> [B, 2] (x, y), the first maximum in row-major order
        i = jnp.argmax(m.reshape(b, -1), axis=1)
        return jnp.stack([i % w, i // w], axis=-1).astype(jnp.float32)

    def window(p):  # [B, h, w] bool
        near_x = jnp.abs(xs - p[:, 0, None, None]) <= radius
        return near_x & (jnp.abs(ys - p[:, 1, None, None]) <= radius)

    def dist(a, g):
        return jnp.linalg.norm(a - g, axis=-1)

    out = hm
    for left, right in pairs:
        s = 0.5 * (hm[..., left] + hm[..., right])
        p1 = peak(s)
        w1 = window(p1)
        p2 = peak(jnp.where(w1, -jnp.inf, s))
        w2 = window(p2) & ~w1
        gl, gr = joints[:, left, :2], joints[:, right, :2]
        straight = (dist(p1, gl) + dist(p2, gr) <= dist(p1, gr) + dist(p2, gl))[:, None, None]
        labeled = ((joints[:, left, 2] > 0) & (joints[:, right, 2] > 0))[:, None, None]
        zero = jnp.zeros_like(s)
        new_l = jnp.where(jnp.where(straight, w1, w2), s, zero)
        new_r = jnp.where(jnp.where(straight, w2, w1), s, zero)
        out = out.at[..., left].set(jnp.where(labeled, new_l, hm[..., left]))
        out = out.at[..., right].set(jnp.where(labeled, new_r, hm[..., right]))
    return out


DECODED, BY_TRUTH = "decoded", "sides_by_truth"


@functools.cache
def truth_assigned_fn(model, flip_test: bool, decoding: str):
    """``inference.HeatmapFn`` of the single-frame HRNet (with the flip test, as the report
    runs it), returning two map sets from one pass: ``"decoded"``, the maps as the report
    decodes them, and ``"sides_by_truth"``, the same after ``assign_pairs_by_truth`` with the
    batch's ``joints``. Run it through ``inference.predict`` with ``flip_test=False`` (it flips
    itself, before the assignment) and ``"joints"`` among the keys; ``inference.select_rows``
    picks a set. The same object for equal arguments (one compilation)."""
    from posewarper_jax.apps import inference
    from posewarper_jax.ops.heatmaps import average_flip

    base = inference.single_frame_fn(model)

    def fn(variables, batch):
        hm = base(variables, batch)
        image_w = batch["image"].shape[3]
        if flip_test:
            shift = inference.flip_shift(decoding, image_w, hm.shape[2])
            flipped = base(variables, inference.flip_batch(batch, FLIP_PAIRS, shift))
            hm = average_flip(hm, flipped, FLIP_PAIRS, shift=shift)
        joints = jnp.asarray(batch["joints"], jnp.float32)
        scale = jnp.asarray([hm.shape[2] / image_w, hm.shape[1] / batch["image"].shape[2], 1.0])
        return {DECODED: hm, BY_TRUTH: assign_pairs_by_truth(hm, joints * scale)}

    return fn


def render_sides(title: str, result: dict[str, Any]) -> str:
    """A markdown table of ``side_swaps``' result: per pair and facing, % of the pairs
    swapped / collapsed (pairs counted)."""

    def fmt(c: dict[str, Any]) -> str:
        if not c["counted"]:
            return "–"
        return f"{100 * c['swapped_rate']:.0f} / {100 * c['collapsed_rate']:.0f} ({c['counted']})"

    people = result["people"]
    head = " | ".join(f"{f} ({people[f]} people)" for f in FACINGS)
    lines = [f"#### {title}", "", f"| pair | {head} |", "|---" + "|---:" * len(FACINGS) + "|"]
    for name, row in result["pairs"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(row[f]) for f in FACINGS) + " |")
    lines.append("| all | " + " | ".join(fmt(result["all"][f]) for f in FACINGS) + " |")
    return "\n".join(lines) + "\n"


def render_side_cost(title: str, cost: dict[str, dict[str, float]]) -> str:
    """A markdown table of poseval mAP as decoded and with the sides from the ground truth
    (``cost``: ``{"decoded": columns, "sides_by_truth": columns}``, ``posetrack_map``'s)."""
    columns = list(cost["decoded"])
    lines = [f"#### {title}", "", "| decoding | " + " | ".join(columns) + " |"]
    lines.append("|---" + "|---:" * len(columns) + "|")
    for key, label in (("decoded", "as the report decodes"), ("sides_by_truth", _BY_TRUTH)):
        lines.append(f"| {label} | " + " | ".join(f"{cost[key][c]:.1f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"


_BY_TRUTH = "each pair's two peaks, sides from the ground truth"


def _main(argv):  # pragma: no cover - exercised through the CLI
    from absl import app, flags, logging

    from posewarper_jax import cli, experiment, fileio, job, training
    from posewarper_jax.apps import detection, inference, trained
    from posewarper_jax.eval.posetrack_map import posetrack_map

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    workdir, split = flags.FLAGS.workdir, flags.FLAGS.split
    stages = [s.strip() for s in flags.FLAGS.stages.split(",") if s.strip()]
    unknown = [s for s in stages if trained.STAGES.get(s) != training.HRNET]
    if not stages or unknown:
        hrnets = sorted(k for k, v in trained.STAGES.items() if v == training.HRNET)
        raise cli.ExpectedError(f"--stages {flags.FLAGS.stages!r}: give stages among {hrnets}")

    # The stages share the workdir's config: its data is read once.
    s = experiment.settings(trained.read_config(workdir), check=False)
    sets = {
        f"validation ({split})": experiment.eval_videos(s, split),
        "training (sparse labels)": job.training_data(s)[0],
    }
    pipe_cfg = experiment.pipeline_config(s, "eval")
    out: dict[str, Any] = {"split": split, "stages": {}}
    mesh = training.data_mesh()
    for stage in stages:
        run = trained.load_trained(workdir, stage)
        out["stages"][stage] = {}
        for what, data in sets.items():
            validation = what.startswith("validation")
            if validation:
                # The decoded maps and the sides given by the truth from one pass.
                rows = detection.crop_rows(
                    run.model, run.variables, data, pipe_cfg, mesh=mesh,
                    decoding=s.eval.decoding,
                    fn=truth_assigned_fn(run.model, s.eval.flip_test, s.eval.decoding),
                    keys=(*inference.DEFAULT_KEYS, "joints"),
                )  # fmt: skip
                pred = inference.to_predictions(inference.select_rows(rows, DECODED), data)
            else:
                pred = detection.detect_single_frame(
                    run.model, run.variables, data, pipe_cfg,
                    flip_test=s.eval.flip_test, mesh=mesh, decoding=s.eval.decoding,
                )  # fmt: skip
            result = side_swaps(data, pred)
            out["stages"][stage][what] = result
            title = f"{stage}, {what}: % of left/right pairs swapped / collapsed"
            print(render_sides(title, result))
            if not validation:
                continue
            by_truth = inference.to_predictions(inference.select_rows(rows, BY_TRUTH), data)
            cost = {DECODED: posetrack_map(data, pred), BY_TRUTH: posetrack_map(data, by_truth)}
            out["stages"][stage][f"{what}: poseval mAP"] = cost
            print(render_side_cost(f"{stage}, {what}: poseval mAP (%)", cost))
    path = os.path.join(workdir, "sides.json")
    fileio.write_json(path, out)
    print(f"written: {path}")


if __name__ == "__main__":  # pragma: no cover
    from absl import flags

    from posewarper_jax import cli

    flags.DEFINE_string("workdir", None, "A main-job workdir with finished stages.")
    flags.DEFINE_enum("split", "dev", ["dev", "test", "all"], "Validation videos (data.splits).")
    flags.DEFINE_string("stages", "pretrain,stage1", "Finished stages whose HRNet to measure.")
    cli.define_absl_debug_flag()
    flags.mark_flags_as_required(["workdir"])
    cli.run_absl(_main)

"""PoseTrack's tracking metrics (MOTA, MOTP, precision, recall per joint), as poseval
computes them, with ``motmetrics``.

Works on ``VideoDataset`` objects (17-joint layout; the 15 PoseTrack17 joints are scored, as
for the mAP) with track ids on the ground truth and on the predictions. The rules are
poseval's (``eval_helpers.load_data_dir``, ``cleanupData``, ``removeIgnoredPoints``,
``assignGTmulti``; ``evaluateTracking.computeMetrics``):

* Pairing and frames. Video by video (same name, same number of frames, frames paired by
  position); only frames with at least one ground-truth person are kept (the predictions on
  the other frames are dropped). Of the frames kept, the **last one of each video is left
  out** (poseval's ``imgidxs[:-1]``); ``drop_last_frame=False`` scores it too.
* Joints. Labeled joints (``v > 0``) only. Joints inside the ground-truth frame's ignore
  regions are removed from both sides, and on such frames a person left without joints is
  removed. A person without any joint is removed from a side read from PoseTrack17 files
  (poseval's ``cleanupData`` drops an ``annorect`` whose ``annopoints`` is empty) and kept on
  a side read from PoseTrack18 files (poseval's converter gives it an empty point list, which
  ``cleanupData`` keeps): it matches nothing, but a frame where it is the only prediction is
  not a frame without predictions. The side's format is its data set's ``fmt``.
* One multi-object-tracking problem per joint and video: on every frame the objects are the
  ground-truth people that have that joint (ids: their track ids), the hypotheses the
  predicted people that have it (ids: their track ids), and the distance of a pair is
  ``||p - g|| / head size`` (head size ``0.6 * ||head box diagonal||`` of the ground truth)
  when it is at most ``dist_thresh`` (0.5, PCKh), else "no match". ``motmetrics``'
  ``MOTAccumulator`` links them over the frames (a pair matched on the previous frame stays
  matched while allowed, the rest by minimum-distance assignment; a ground-truth track that
  changes hypothesis is an identity switch).
* A kept frame with no predicted person (or, after the ignore regions, no ground-truth
  person) gets, for every joint, one fake object and one fake hypothesis that cannot match,
  exactly as poseval does: one miss and one false positive per joint, whatever the number of
  people on the frame.
* Per joint, summed over videos: misses, switches, false positives, objects, matches
  (``num_detections``) and the sum of the matched distances. MOTA = 100 (1 − (misses +
  switches + false positives) / objects); MOTP = 100 (1 − distance sum / matches), 0 without
  matches; precision = 100 matches / (matches + false positives); recall = 100 matches /
  objects (NaN when the denominator is 0). Total: the mean over the joints that are not NaN.
  Poseval's table shows MOTA per joint group (Head = mean of head top, neck and nose;
  Shoulder ... Ankle = mean of right and left) and Total, then MOTP, precision and recall
  Total.

The distance sum is that of the matched pairs (motmetrics' own MOTP). poseval sums the
``D`` column of ``MOTAccumulator.events``, which is the same with the ``motmetrics`` of its
time; from ``motmetrics`` 1.2 on that table also holds the candidate pairs (``RAW``) and
``TRANSFER`` rows, and poseval's MOTP then differs: ``motp_poseval`` is that figure, with
the installed ``motmetrics``. MOTA, precision and recall do not use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from posewarper_jax.data.types import VideoDataset
from posewarper_jax.eval.posetrack_map import (
    _COLUMN_JOINTS,
    NUM_POSEVAL_JOINTS,
    POSEVAL_JOINT_NAMES,
    _frame_arrays,
    _head_size,
    _paired_videos,
)

__all__ = [
    "MOT_COLUMNS",
    "MOT_COUNTS",
    "TRACKING_TITLE",
    "format_mot_table",
    "frame_mot_inputs",
    "markdown_tracking_table",
    "mot_columns",
    "mot_summary",
    "posetrack_tracking",
]

MOT_COUNTS = ("num_misses", "num_switches", "num_false_positives", "num_objects")
MOT_COLUMNS = (
    *(f"MOTA {c}" for c in _COLUMN_JOINTS),
    "MOTA Total",
    "MOTP Total",
    "Prec Total",
    "Rec Total",
)
_FAKE = ([0], [0], np.full((1, 1), np.nan))  # poseval's entry for a frame without people


def frame_mot_inputs(
    gt_xy: np.ndarray,
    gt_has: np.ndarray,
    gt_ids: Sequence[int],
    head_sizes: np.ndarray,
    pr_xy: np.ndarray,
    pr_has: np.ndarray,
    pr_ids: Sequence[int],
    dist_thresh: float = 0.5,
) -> list[tuple[list[int], list[int], np.ndarray]]:
    """The motmetrics update of one frame for each joint (poseval's ``motAll[frame][joint]``).

    Args:
      gt_xy: ``[G, K, 2]``, gt_has: bool ``[G, K]``, gt_ids: ``G`` track ids, head_sizes
        ``[G]`` (pixels); pr_xy, pr_has, pr_ids: the same for the ``P`` predictions.
      dist_thresh: largest distance / head size of a match.

    Returns:
      ``K`` tuples ``(object ids, hypothesis ids, distances [objects, hypotheses])`` with NaN
      where a pair may not match; a frame without ground truth or without predictions gives
      poseval's ``([0], [0], [[NaN]])`` for every joint.
    """
    gt_has = np.asarray(gt_has, bool)
    pr_has = np.asarray(pr_has, bool)
    k = gt_has.shape[1] if gt_has.ndim == 2 else pr_has.shape[1]
    if len(gt_has) == 0 or len(pr_has) == 0:
        return [_FAKE for _ in range(k)]
    diff = np.asarray(pr_xy, np.float64)[:, None] - np.asarray(gt_xy, np.float64)[None]
    norm = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)  # [P, G, K]
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = norm / np.asarray(head_sizes, np.float64)[None, :, None]
    both = pr_has[:, None, :] & gt_has[None, :, :]
    dist = np.where(both & (dist <= dist_thresh), dist, np.nan)
    out = []
    for j in range(k):
        g = np.flatnonzero(gt_has[:, j])
        p = np.flatnonzero(pr_has[:, j])
        out.append(
            (
                [int(gt_ids[i]) for i in g],
                [int(pr_ids[i]) for i in p],
                dist[np.ix_(p, g, [j])][..., 0].T.copy(),
            )
        )
    return out


def _people(frame_people, frame, where, drop_empty: bool):
    xy, has, _ = _frame_arrays(
        frame_people, frame, False, where, neck="head_bottom", missing_scores="min_score"
    )
    keep = np.ones(len(frame_people), bool)
    if drop_empty or frame.ignore_regions:
        keep = has.any(axis=1)
    return [p for p, k in zip(frame_people, keep) if k], xy[keep], has[keep]


def _check_ids(people, where: str) -> list[int]:
    ids = [int(p.track_id) for p in people]
    if len(set(ids)) != len(ids):
        dup = sorted({t for t in ids if ids.count(t) > 1})
        raise ValueError(f"{where}: track id(s) {dup} appear twice in the frame")
    return ids


def posetrack_tracking(
    gt: VideoDataset,
    pred: VideoDataset,
    *,
    dist_thresh: float = 0.5,
    drop_last_frame: bool = True,
) -> dict:
    """poseval's tracking metrics of ``pred`` against ``gt`` (module docstring).

    Args:
      gt: ground truth with track ids; every video needs a same-named prediction video of
        equal length.
      pred: predictions with track ids (distinct within a frame).
      dist_thresh: PCKh threshold as a fraction of the head size.
      drop_last_frame: leave out the last scored frame of each video, as poseval does.

    Returns:
      ``{"joints": 15 names, "mota", "motp", "precision", "recall": 15 per-joint values in
      percent (NaN where undefined), "total": {"mota", "motp", "precision", "recall"},
      "counts": {"num_misses", "num_switches", "num_false_positives", "num_objects",
      "num_detections", "sum_distance"}: 15 values each, "num_frames": frames scored}``.

    Raises:
      ValueError: unpaired videos, a ground-truth person without head box who has joints,
        a track id twice in one frame.
    """
    import motmetrics as mm

    k = NUM_POSEVAL_JOINTS
    gt_drop, pred_drop = gt.fmt == "posetrack17", pred.fmt == "posetrack17"
    names = (*MOT_COUNTS, "num_detections", "sum_distance", "sum_distance_events")
    counts = {name: np.zeros(k) for name in names}
    metrics = mm.metrics.create()
    num_frames = 0
    for video, pvideo in _paired_videos(gt, pred):
        frames = [(f, pf) for f, pf in zip(video.frames, pvideo.frames) if f.people]
        if drop_last_frame:
            frames = frames[:-1]
        accs = [mm.MOTAccumulator(auto_id=True) for _ in range(k)]
        for frame, pframe in frames:
            num_frames += 1
            where = f"video {video.name!r} frame {frame.index}"
            g_people, g_xy, g_has = _people(frame.people, frame, f"ground truth, {where}", gt_drop)
            p_people, p_xy, p_has = _people(
                pframe.people, frame, f"predictions, {where}", pred_drop
            )
            heads = np.full(len(g_people), np.nan)
            for g, person in enumerate(g_people):
                if not g_has[g].any():
                    continue
                if person.head_bbox is None:
                    raise ValueError(
                        f"ground truth, {where} person {g}: no head box (bbox_head / x1..y2); "
                        "the PCKh distance needs it"
                    )
                heads[g] = _head_size(person)
            g_ids = _check_ids(g_people, f"ground truth ({video.source}), {where}")
            p_ids = _check_ids(p_people, f"predictions ({pvideo.source}), {where}")
            inputs = frame_mot_inputs(
                g_xy, g_has, g_ids, heads, p_xy, p_has, p_ids, dist_thresh=dist_thresh
            )
            for j, (oids, hids, dists) in enumerate(inputs):
                accs[j].update(oids, hids, dists)
        if not frames:
            continue
        for j in range(k):
            got = metrics.compute(
                accs[j],
                metrics=[*MOT_COUNTS, "num_detections", "motp"],
                return_dataframe=False,
                name="acc",
            )
            for name in (*MOT_COUNTS, "num_detections"):
                counts[name][j] += float(got[name])
            if got["num_detections"] > 0:
                counts["sum_distance"][j] += float(got["motp"]) * float(got["num_detections"])
            events = float(accs[j].events["D"].sum())
            counts["sum_distance_events"][j] += 0.0 if np.isnan(events) else events
    out = mot_summary(counts)
    out["num_frames"] = num_frames
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _mean_valid(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else float("nan")


def mot_summary(counts: dict[str, np.ndarray]) -> dict:
    """Per-joint and total MOTA, MOTP, precision and recall (percent) from summed counts
    (``num_misses``, ``num_switches``, ``num_false_positives``, ``num_objects``,
    ``num_detections``, ``sum_distance``; ``[15]`` each), with poseval's formulas."""
    c = {name: np.asarray(v, np.float64) for name, v in counts.items()}
    errors = c["num_misses"] + c["num_switches"] + c["num_false_positives"]
    mota = 100 * (1 - _ratio(errors, c["num_objects"]))
    det = c["num_detections"]
    motp = np.where(det > 0, 100 * (1 - _ratio(c["sum_distance"], det)), 0.0)
    events = c.get("sum_distance_events", c["sum_distance"])
    motp_poseval = np.where(det > 0, 100 * (1 - _ratio(events, det)), 0.0)
    precision = 100 * _ratio(det, det + c["num_false_positives"])
    recall = 100 * _ratio(det, c["num_objects"])
    return {
        "joints": list(POSEVAL_JOINT_NAMES),
        "mota": mota.tolist(),
        "motp": motp.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "motp_poseval": motp_poseval.tolist(),
        "total": {
            "mota": _mean_valid(mota),
            "motp": _mean_valid(motp),
            "precision": _mean_valid(precision),
            "recall": _mean_valid(recall),
            "motp_poseval": _mean_valid(motp_poseval),
        },
        "counts": {name: v.tolist() for name, v in c.items()},
    }


def mot_columns(summary: dict) -> dict[str, float]:
    """poseval's MOT table row: MOTA per joint group and Total, MOTP, Prec and Rec Total."""
    mota = np.asarray(summary["mota"], np.float64)
    out = {f"MOTA {c}": float(mota[list(ids)].mean()) for c, ids in _COLUMN_JOINTS.items()}
    total = summary["total"]
    out["MOTA Total"] = float(total["mota"])
    out["MOTP Total"] = float(total["motp"])
    out["Prec Total"] = float(total["precision"])
    out["Rec Total"] = float(total["recall"])
    return out


def format_mot_table(summary: dict, title: str = "Multiple Object Tracking (MOT) metrics:") -> str:
    """The table poseval prints for ``--evalPoseTracking`` (two header lines, one row)."""
    header = (
        "& MOTA & MOTA & MOTA & MOTA & MOTA & MOTA & MOTA & MOTA & MOTP & Prec & Rec  \\\\\n"
        "& Head & Shou & Elb  & Wri  & Hip  & Knee & Ankl & Total& Total& Total& Total\\\\"
    )
    cols = mot_columns(summary)
    cells = ["{:>5}".format(f"{cols[name]:1.1f}") for name in MOT_COLUMNS]
    row = "&" + " &".join(cells[:-1]) + " &" + cells[-1] + " \\\\"
    return "\n".join([title, header, row]) if title else "\n".join([header, row])


TRACKING_TITLE = "Detect and track (validation videos; poseval's MOTA, MOTP, precision, recall)"
TRACKER_LABELS = {
    "posewarper": "PoseWarper motion model (previous poses warped to the frame)",
    "iou": "Box IoU with the previous frame (no motion model)",
}


def markdown_tracking_table(rows: dict[str, dict[str, float]], labels: dict | None = None) -> str:
    """A Markdown table of tracking rows ``{name: {"MOTA", "MOTP", "Prec", "Rec",
    "switches"}}`` (percent; identity switches summed over the joints); the best MOTA bold."""
    labels = TRACKER_LABELS if labels is None else labels
    best = max((r["MOTA"] for r in rows.values() if r.get("MOTA") is not None), default=None)
    lines = [
        "| Tracker | MOTA | MOTP | Prec | Rec | ID switches |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        cells = []
        for key in ("MOTA", "MOTP", "Prec", "Rec"):
            v = r.get(key)
            text = "n/a" if v is None or v != v else f"{v:.1f}"
            if key == "MOTA" and len(rows) > 1 and v is not None and round(v, 1) == round(best, 1):
                text = f"**{text}**"
            cells.append(text)
        cells.append(str(r.get("switches", "")))
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

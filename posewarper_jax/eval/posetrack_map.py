"""The PoseTrack mAP, computed the way the official evaluation (poseval, ``evaluateAP``) does.

Works on ``VideoDataset`` objects (17-joint layout) and scores the 15 PoseTrack17 joints
(poseval's ids 0..14, slots ``PT17_TO_PT18``; the ears are never scored). Pixel coordinates:
pixel centres at integers, x right, y down.

The rules, as poseval applies them (``eval_helpers.py``: ``load_data_dir``, ``cleanupData``,
``removeIgnoredPoints``, ``assignGTmulti``, ``computeRPC``, ``VOCap``; ``evaluateAP.py``:
``computeMetrics``; the table: ``getCum``):

* Pairing. Every ground-truth video needs a prediction video with the same number of frames;
  frames pair by position.
* Frames. Only frames with at least one ground-truth person are scored (``cleanupData`` drops
  the others, together with the predictions on them), whatever ``is_labeled`` says.
* Joints. A joint is present when it is labeled (``v > 0``). Joints of ground truth *and*
  predictions that fall strictly inside one of the ground-truth frame's ignore regions are
  removed (shapely's ``Polygon.contains``: points on the outline stay). A person left without
  joints no longer counts (it could not match or be matched anyway).
* Distance. Each ground-truth person has a head size ``0.6 * ||(x2 - x1, y2 - y1)||`` from its
  head box; a predicted joint matches the ground-truth joint when
  ``||p - g|| / head_size <= 0.5`` (PCKh@0.5). A head size of 0 matches nothing.
* Assignment, per frame. ``pck[p, g]`` = matched joints / labeled joints of g. Each
  prediction keeps only its best ground truth (the first one on ties); each ground truth then
  takes, among the predictions that kept it, the one with the highest ``pck`` (the first on
  ties), provided it is > 0. Prediction scores play no part. A prediction left unassigned is a
  false positive on every joint it has; an assigned one is a true positive on the joints that
  match, a false positive on the others (including joints the ground truth lacks).
* Per joint, all predicted joints of the data set are ranked by score (``np.argsort`` of the
  frame-ordered scores, reversed, as poseval does), precision and recall (over all
  ground-truth joints) are computed along the ranking and the AP is the VOC area under the
  precision made monotone. Ties: poseval's default ``argsort`` is not stable, and NumPy's
  SIMD sorts order equal scores differently on different CPUs (AVX-512 or not), so
  poseval's AP of tied scores depends on the machine. Here the sort is stable: equal scores
  rank in reverse frame order (the later entry first, as NumPy's default gives on short
  arrays), the same on every machine; untied scores rank exactly as in poseval.
* Degenerate joints, as in poseval: no predicted joint at all gives AP 0; predictions but no
  ground truth give NaN. Total is the mean of the non-NaN joint APs; the Head, Shoulder, ...
  columns are plain means (NaN if one of their joints is NaN).
* Columns: Head = mean(head_top, neck, nose), Shoulder/Elbow/Wrist/Hip/Knee/Ankle = mean of
  right and left, Total = mean of the 15 joints (not of the columns). All in percent.
* Missing scores: poseval gives a predicted point without score the score -9999 (with a
  warning); here that is ``missing_scores="min_score"``, and the default ``"error"`` refuses.

The neck is the PoseTrack18 ``head_bottom`` joint. ``neck="shoulder_midpoint"`` reproduces the
original PoseWarper release, which wrote the midpoint of the predicted shoulders as the neck
(score: the mean of the two shoulder scores) and dropped the predicted head_bottom.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from posewarper_jax.data.types import JOINT_NAMES, PT17_TO_PT18, Frame, Person, VideoDataset

__all__ = [
    "COLUMNS",
    "MIN_SCORE",
    "POSEVAL_JOINT_NAMES",
    "format_table",
    "frame_assignment",
    "points_in_polygons",
    "posetrack_joint_metrics",
    "posetrack_map",
    "precision_recall",
    "summarize",
    "voc_ap",
]

MIN_SCORE = -9999.0
POSEVAL_SLOTS = np.asarray(PT17_TO_PT18)  # poseval joint id -> JOINT_NAMES slot
POSEVAL_JOINT_NAMES: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
    "left_wrist", "neck", "nose", "head_top",
)  # fmt: skip
NUM_POSEVAL_JOINTS = len(POSEVAL_JOINT_NAMES)
# Columns of the table -> poseval joint ids averaged.
_COLUMN_JOINTS: dict[str, tuple[int, ...]] = {
    "Head": (14, 12, 13),
    "Shoulder": (8, 9),
    "Elbow": (7, 10),
    "Wrist": (6, 11),
    "Hip": (2, 3),
    "Knee": (1, 4),
    "Ankle": (0, 5),
}
COLUMNS: tuple[str, ...] = (*_COLUMN_JOINTS, "Total")
_NECK = 12
_SLOT_HEAD_BOTTOM = JOINT_NAMES.index("head_bottom")
_SLOT_SHOULDERS = (JOINT_NAMES.index("left_shoulder"), JOINT_NAMES.index("right_shoulder"))
NECK_MODES = ("head_bottom", "shoulder_midpoint")
MISSING_SCORE_MODES = ("error", "min_score")


# ------------------------------------------------------------------------------------------------
# Geometry.
# ------------------------------------------------------------------------------------------------


def points_in_polygons(points: np.ndarray, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Which points lie strictly inside at least one polygon (even-odd rule; outline excluded).

    Args:
      points: ``[N, 2]`` (x, y).
      polygons: each ``[K, 2]`` vertices (x, y), open or closed; fewer than 3 vertices cover
        nothing.

    Returns:
      bool ``[N]``. For simple polygons this is shapely's ``Polygon.contains(Point)``.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    inside = np.zeros(len(pts), bool)
    if not len(pts):
        return inside
    x, y = pts[:, :1], pts[:, 1:]  # [N, 1]
    for polygon in polygons:
        poly = np.asarray(polygon, np.float64).reshape(-1, 2)
        if len(poly) < 3:
            continue
        x1, y1 = poly[:, 0], poly[:, 1]  # [K]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)  # [N, K]
        on_edge = (
            (cross == 0)
            & (np.minimum(x1, x2) <= x)
            & (x <= np.maximum(x1, x2))
            & (np.minimum(y1, y2) <= y)
            & (y <= np.maximum(y1, y2))
        )
        spans = (y1 > y) != (y2 > y)  # the edge crosses the horizontal line through the point
        dy = np.where(y2 != y1, y2 - y1, 1.0)
        x_cross = x1 + (y - y1) * (x2 - x1) / dy
        odd = (np.sum(spans & (x < x_cross), axis=1) % 2) == 1
        inside |= odd & ~on_edge.any(axis=1)
    return inside


def _head_size(person: Person) -> float:
    """poseval's ``0.6 * ||(x2 - x1, y2 - y1)||`` with ``x2 = x1 + w`` as its converter forms it."""
    x, y, w, h = (float(v) for v in person.head_bbox)
    dx, dy = (x + w) - x, (y + h) - y
    return 0.6 * float(np.sqrt(dx * dx + dy * dy))


# ------------------------------------------------------------------------------------------------
# Matching.
# ------------------------------------------------------------------------------------------------


def frame_assignment(
    gt_xy: np.ndarray,
    gt_has: np.ndarray,
    head_sizes: np.ndarray,
    pr_xy: np.ndarray,
    pr_has: np.ndarray,
    dist_thresh: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """poseval's assignment of one frame's predicted poses to its ground-truth poses.

    Args:
      gt_xy: ``[G, K, 2]`` ground-truth joints (x, y); ``gt_has``: bool ``[G, K]``.
      head_sizes: ``[G]`` head sizes in pixels (only used where a distance is needed).
      pr_xy: ``[P, K, 2]`` predicted joints; ``pr_has``: bool ``[P, K]``.
      dist_thresh: match when distance / head size <= this (0.5: PCKh@0.5).

    Returns:
      assigned: int ``[P]`` the ground-truth index each prediction is assigned to, -1 if none.
      labels: bool ``[P, K]`` true positives (False wherever ``pr_has`` is False).
    """
    gt_has = np.asarray(gt_has, bool)
    pr_has = np.asarray(pr_has, bool)
    num_p, num_g = pr_has.shape[0], gt_has.shape[0]
    assigned = np.full(num_p, -1, np.int64)
    labels = np.zeros(pr_has.shape, bool)
    if num_p == 0 or num_g == 0:
        return assigned, labels
    diff = np.asarray(pr_xy, np.float64)[:, None] - np.asarray(gt_xy, np.float64)[None]
    norm = np.sqrt(diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1])  # [P, G, K]
    both = pr_has[:, None, :] & gt_has[None, :, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = norm / np.asarray(head_sizes, np.float64)[None, :, None]
    match = both & (dist <= dist_thresh)  # NaN and inf never match
    n_gt = gt_has.sum(axis=1)  # [G]
    pck = match.sum(axis=2) / np.where(n_gt > 0, n_gt, 1)[None, :]  # [P, G]
    best = np.argmax(pck, axis=1)  # each prediction keeps its best ground truth
    kept = np.zeros_like(pck)
    kept[np.arange(num_p), best] = pck[np.arange(num_p), best]
    winner = np.argmax(kept, axis=0)  # [G] each ground truth takes its best prediction
    winner[kept.max(axis=0) == 0] = -1
    for g, p in enumerate(winner):
        if p >= 0:
            assigned[p] = g
            labels[p] = match[p, g] & pr_has[p]
    return assigned, labels


def _pose(
    person: Person,
    *,
    is_prediction: bool,
    neck: str,
    missing_scores: str,
    where: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One person in poseval's 15 joints: xy float64 [15, 2], has bool [15], scores [15]."""
    keypoints = np.asarray(person.keypoints, np.float64)
    xy = keypoints[POSEVAL_SLOTS, :2].copy()
    has = keypoints[POSEVAL_SLOTS, 2] > 0
    if not is_prediction:
        return xy, has, np.zeros(NUM_POSEVAL_JOINTS)
    if person.keypoint_scores is None:
        if has.any() and missing_scores == "error":
            raise ValueError(
                f"{where}: the prediction has no keypoint scores (poseval would rank its joints "
                "with the fallback score -9999; pass missing_scores='min_score' to do the same)"
            )
        all_scores = np.full(len(keypoints), MIN_SCORE)
    else:
        all_scores = np.asarray(person.keypoint_scores, np.float64).reshape(-1)
    if neck == "shoulder_midpoint":
        # The original release: neck := midpoint of the shoulders, head_bottom dropped.
        sho = list(_SLOT_SHOULDERS)
        keypoints = keypoints.copy()
        all_scores = all_scores.copy()
        keypoints[_SLOT_HEAD_BOTTOM, :2] = keypoints[sho, :2].mean(axis=0)
        keypoints[_SLOT_HEAD_BOTTOM, 2] = float(np.all(keypoints[sho, 2] > 0))
        all_scores[_SLOT_HEAD_BOTTOM] = all_scores[sho].mean()
        xy[_NECK] = keypoints[_SLOT_HEAD_BOTTOM, :2]
        has[_NECK] = keypoints[_SLOT_HEAD_BOTTOM, 2] > 0
    scores = all_scores[POSEVAL_SLOTS]
    if not np.all(np.isfinite(scores[has])):
        raise ValueError(f"{where}: non-finite keypoint score among {scores[has].tolist()}")
    return xy, has, scores


def _frame_arrays(people: list[Person], frame: Frame, is_prediction: bool, where: str, **kw):
    """Stacks a frame's people (xy [N, 15, 2], has [N, 15], scores [N, 15]) and drops the
    joints inside the ground-truth frame's ignore regions."""
    k = NUM_POSEVAL_JOINTS
    if not people:
        return np.zeros((0, k, 2)), np.zeros((0, k), bool), np.zeros((0, k))
    poses = [
        _pose(p, is_prediction=is_prediction, where=f"{where} person {i}", **kw)
        for i, p in enumerate(people)
    ]
    xy = np.stack([p[0] for p in poses])
    has = np.stack([p[1] for p in poses])
    scores = np.stack([p[2] for p in poses])
    if frame.ignore_regions:
        has &= ~points_in_polygons(xy.reshape(-1, 2), frame.ignore_regions).reshape(has.shape)
    return xy, has, scores


def _paired_videos(gt: VideoDataset, pred: VideoDataset) -> Iterator[tuple]:
    by_name = {}
    for video in pred.videos:
        if video.name in by_name:
            raise ValueError(f"predictions: video {video.name!r} appears twice ({video.source})")
        by_name[video.name] = video
    gt_names = {v.name for v in gt.videos}
    if len(gt_names) != len(gt.videos):
        dup = sorted({v.name for v in gt.videos if [w.name for w in gt.videos].count(v.name) > 1})
        raise ValueError(f"ground truth: video name(s) {dup} appear more than once")
    unknown = sorted(set(by_name) - gt_names)
    if unknown:
        raise ValueError(
            f"predictions for videos that are not in the ground truth: {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''} (first from {by_name[unknown[0]].source})"
        )
    for video in gt.videos:
        if video.name not in by_name:
            raise ValueError(
                f"no predictions for ground-truth video {video.name!r} ({video.source})"
            )
        pvideo = by_name[video.name]
        if pvideo.nframes != video.nframes:
            raise ValueError(
                f"video {video.name!r}: the predictions ({pvideo.source}) have {pvideo.nframes} "
                f"frames, the ground truth ({video.source}) {video.nframes}"
            )
        yield video, pvideo


def _collect(gt: VideoDataset, pred: VideoDataset, *, dist_thresh: float, **kw):
    """Per joint: scores and labels of every predicted joint (frame order), and GT counts."""
    k = NUM_POSEVAL_JOINTS
    scores: list[list[np.ndarray]] = [[] for _ in range(k)]
    labels: list[list[np.ndarray]] = [[] for _ in range(k)]
    n_gt = np.zeros(k, np.int64)
    n_frames = 0
    for video, pvideo in _paired_videos(gt, pred):
        for frame, pframe in zip(video.frames, pvideo.frames):
            if not frame.people:
                continue  # poseval scores only frames with ground-truth people
            n_frames += 1
            where = f"video {video.name!r} frame {frame.index}"
            g_xy, g_has, _ = _frame_arrays(
                frame.people, frame, False, f"ground truth, {where}", **kw
            )
            p_xy, p_has, p_sc = _frame_arrays(
                pframe.people, frame, True, f"predictions, {where}", **kw
            )
            n_gt += g_has.sum(axis=0)
            heads = np.full(len(frame.people), np.nan)
            if p_has.any():
                for g, person in enumerate(frame.people):
                    if not g_has[g].any():
                        continue
                    if person.head_bbox is None:
                        raise ValueError(
                            f"ground truth, {where} person {g}: no head box (bbox_head / x1..y2); "
                            "the PCKh distance needs it"
                        )
                    heads[g] = _head_size(person)
            _, lab = frame_assignment(g_xy, g_has, heads, p_xy, p_has, dist_thresh)
            for j in range(k):
                rows = p_has[:, j]
                if rows.any():
                    scores[j].append(p_sc[rows, j])
                    labels[j].append(lab[rows, j])
    scores_j = [np.concatenate(s) if s else np.zeros(0) for s in scores]
    labels_j = [np.concatenate(s) if s else np.zeros(0, bool) for s in labels]
    return scores_j, labels_j, n_gt, n_frames


# ------------------------------------------------------------------------------------------------
# Precision, recall, AP.
# ------------------------------------------------------------------------------------------------


def precision_recall(
    scores: np.ndarray, labels: np.ndarray, n_gt: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall along the ranking by decreasing score (poseval's ``computeRPC``).

    The order is ``np.argsort(scores, kind="stable")[::-1]``: poseval's for untied scores,
    and equal scores in reverse input order on every machine (see the module docstring).
    With ``n_gt == 0`` the recall is NaN (poseval divides by zero).

    Args:
      scores: float ``[N]``; labels: ``[N]`` 1/True for a true positive; n_gt: number of
        ground-truth joints.

    Returns:
      precision float64 ``[N]``, recall float64 ``[N]``, order int ``[N]``.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    order = scores.argsort(kind="stable")[::-1]
    tp = np.cumsum(labels[order] == 1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / np.float64(n_gt)
    precision = tp / np.arange(1, len(tp) + 1, dtype=np.float64)
    return precision, recall, order


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC average precision (poseval's ``VOCap``): the area under the precision made
    monotone (each value replaced by the maximum to its right), summed where recall changes.

    Args:
      recall, precision: float ``[N]`` along the ranking. Returns the AP as a fraction.
    """
    rec = np.asarray(recall, np.float64).reshape(-1)
    prec = np.asarray(precision, np.float64).reshape(-1)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


# ------------------------------------------------------------------------------------------------
# Public entry points.
# ------------------------------------------------------------------------------------------------


def _check_modes(neck: str, missing_scores: str) -> None:
    if neck not in NECK_MODES:
        raise ValueError(f"neck must be one of {NECK_MODES}, got {neck!r}")
    if missing_scores not in MISSING_SCORE_MODES:
        raise ValueError(
            f"missing_scores must be one of {MISSING_SCORE_MODES}, got {missing_scores!r}"
        )


def posetrack_joint_metrics(
    gt: VideoDataset,
    pred: VideoDataset,
    *,
    neck: str = "head_bottom",
    missing_scores: str = "error",
    dist_thresh: float = 0.5,
) -> dict:
    """Per-joint AP, precision and recall (percent) over poseval's 15 joints.

    Args:
      gt: ground truth; every video needs a same-named prediction video of equal length.
      pred: predictions (``Person.keypoint_scores`` holds the per-joint scores).
      neck: "head_bottom" (the predicted head_bottom is the neck) or "shoulder_midpoint"
        (the original release: the midpoint of the predicted shoulders).
      missing_scores: "error" or "min_score" (poseval's fallback score -9999).
      dist_thresh: PCKh threshold as a fraction of the head size.

    Returns a dict: ``joints`` (poseval's 15 names), ``ap``, ``precision``, ``recall`` (lists of
    15 floats in percent; precision and recall at the end of the ranking, so ``recall`` is the
    PCKh@``dist_thresh`` of the assigned predictions), ``total_ap``, ``total_precision``,
    ``total_recall`` (means over the non-NaN joints), ``num_gt_joints``,
    ``num_predicted_joints`` and ``num_frames`` (frames scored).
    """
    _check_modes(neck, missing_scores)
    scores, labels, n_gt, n_frames = _collect(
        gt, pred, dist_thresh=dist_thresh, neck=neck, missing_scores=missing_scores
    )
    k = NUM_POSEVAL_JOINTS
    ap, pre, rec = np.zeros(k), np.zeros(k), np.zeros(k)
    for j in range(k):
        if len(scores[j]) == 0:
            continue  # poseval leaves 0 for a joint without predictions
        precision, recall, _ = precision_recall(scores[j], labels[j], n_gt[j])
        ap[j] = voc_ap(recall, precision) * 100
        pre[j] = precision[-1] * 100
        rec[j] = recall[-1] * 100

    def mean_valid(v):
        v = v[~np.isnan(v)]
        return float(v.mean()) if len(v) else float("nan")

    return {
        "joints": list(POSEVAL_JOINT_NAMES),
        "ap": ap.tolist(),
        "precision": pre.tolist(),
        "recall": rec.tolist(),
        "total_ap": mean_valid(ap),
        "total_precision": mean_valid(pre),
        "total_recall": mean_valid(rec),
        "num_gt_joints": n_gt.tolist(),
        "num_predicted_joints": [len(s) for s in scores],
        "num_frames": n_frames,
    }


def summarize(per_joint: Sequence[float], total: float | None = None) -> dict[str, float]:
    """poseval's table columns from 15 per-joint values (poseval's joint order).

    Head = mean(head_top, neck, nose); Shoulder ... Ankle = mean(right, left); Total = ``total``
    if given, else the mean of the non-NaN joints.
    """
    v = np.asarray(per_joint, np.float64).reshape(-1)
    if v.shape != (NUM_POSEVAL_JOINTS,):
        raise ValueError(f"expected {NUM_POSEVAL_JOINTS} per-joint values, got {v.shape[0]}")
    out = {name: float(v[list(ids)].mean()) for name, ids in _COLUMN_JOINTS.items()}
    if total is None:
        valid = v[~np.isnan(v)]
        total = float(valid.mean()) if len(valid) else float("nan")
    out["Total"] = float(total)
    return out


def posetrack_map(
    gt: VideoDataset,
    pred: VideoDataset,
    *,
    neck: str = "head_bottom",
    missing_scores: str = "error",
    dist_thresh: float = 0.5,
) -> dict[str, float]:
    """The PoseTrack mAP table: ``{"Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee",
    "Ankle", "Total"}`` in percent. Arguments as for ``posetrack_joint_metrics``."""
    m = posetrack_joint_metrics(
        gt, pred, neck=neck, missing_scores=missing_scores, dist_thresh=dist_thresh
    )
    return summarize(m["ap"], m["total_ap"])


def format_table(columns: dict[str, float], title: str = "Average Precision (AP) metric:") -> str:
    """The two-line table poseval prints (``& Head & Shou & ... & Total\\\\``), with a title."""
    header = "& Head & Shou & Elb  & Wri  & Hip  & Knee & Ankl & Total\\\\"
    cells = ["{:>5}".format(f"{columns[name]:1.1f}") for name in COLUMNS]
    row = "&" + " &".join(cells[:-1]) + " &" + cells[-1] + " \\\\"
    return "\n".join([title, header, row]) if title else "\n".join([header, row])

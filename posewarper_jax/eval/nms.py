"""OKS non-maximum suppression and the pose rescoring of top-down pipelines (NumPy).

Both follow HRNet's ``lib/nms/nms.py`` and its COCO ``evaluate`` (also mmpose's):

* OKS between a kept pose g and another pose d, over the joints ``k``:
  ``mean_k exp(-||d_k - g_k||^2 / (2 * ((a_g + a_d) / 2 + eps) * (2 * sigma_k)^2))`` with
  ``a`` the poses' areas and ``eps = np.spacing(1)``. With ``vis_thr`` only the joints whose
  score in *d* exceeds it count (HRNet writes ``list(vg > t) and list(vd > t)``, which Python
  evaluates to the second list: the kept pose's scores play no part).
* Greedy NMS: take the highest score (a stable ``argsort`` reversed: of equal scores the later
  pose first, on every machine), drop every remaining pose whose OKS with it is > ``thresh``,
  repeat. Soft NMS instead multiplies the remaining scores by
  ``exp(-oks^2 / thresh)`` and keeps at most ``max_dets`` poses.
* Rescoring: person score = box score x the mean of the joint scores above ``vis_thr`` (0 when
  none is).

Sigmas: ``COCO_SIGMAS`` are COCO's per-joint constants; ``POSETRACK_SIGMAS`` gives the 17
PoseTrack18 slots COCO's values slot by slot (head_bottom and head_top take the eyes'), as
mmpose's PoseTrack18 set does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from posewarper_jax.data.types import Person, Video, VideoDataset

__all__ = [
    "COCO_SIGMAS",
    "POSETRACK_SIGMAS",
    "apply_oks_nms",
    "nms_people",
    "oks_iou",
    "oks_nms",
    "rescore",
    "soft_oks_nms",
]

COCO_SIGMAS = (
    np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07,
              0.87, 0.87, 0.89, 0.89]) / 10.0
)  # fmt: skip
POSETRACK_SIGMAS = COCO_SIGMAS.copy()


def _sigmas(sigmas, num_joints: int) -> np.ndarray:
    s = COCO_SIGMAS if sigmas is None else np.asarray(sigmas, np.float64).reshape(-1)
    if s.shape[0] != num_joints:
        raise ValueError(f"{s.shape[0]} sigmas for {num_joints} joints")
    return s


def oks_iou(
    g: np.ndarray,
    d: np.ndarray,
    area_g: float,
    areas_d: np.ndarray,
    sigmas: np.ndarray | None = None,
    vis_thr: float | None = None,
) -> np.ndarray:
    """OKS of one pose against several (HRNet's ``oks_iou``).

    Args:
      g: ``[J, 3]`` (x, y, score) of the reference pose.
      d: ``[N, J, 3]`` the other poses.
      area_g: the reference pose's area; ``areas_d``: ``[N]``.
      sigmas: ``[J]`` (default ``COCO_SIGMAS``).
      vis_thr: count only the joints of each ``d`` with score > ``vis_thr`` (see the module
        notes); a pose with none gets OKS 0.

    Returns:
      float64 ``[N]``.
    """
    g = np.asarray(g, np.float64).reshape(-1, 3)
    d = np.asarray(d, np.float64).reshape(-1, g.shape[0], 3)
    s = _sigmas(sigmas, g.shape[0])
    variances = (s * 2) ** 2
    areas_d = np.asarray(areas_d, np.float64).reshape(-1)
    dx = d[:, :, 0] - g[None, :, 0]
    dy = d[:, :, 1] - g[None, :, 1]
    scale = ((area_g + areas_d) / 2 + np.spacing(1))[:, None]
    e = np.exp(-((dx**2 + dy**2) / variances / scale / 2))  # [N, J]
    if vis_thr is None:
        return e.mean(axis=1) if e.shape[1] else np.zeros(len(d))
    keep = d[:, :, 2] > vis_thr
    count = keep.sum(axis=1)
    return np.where(count > 0, (e * keep).sum(axis=1) / np.maximum(count, 1), 0.0)


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    thresh: float,
    sigmas: np.ndarray | None = None,
    vis_thr: float | None = None,
) -> list[int]:
    """Greedy OKS NMS. keypoints ``[N, J, 3]`` (x, y, score), scores ``[N]``, areas ``[N]``.

    Returns the kept indices, highest score first.
    """
    keypoints = np.asarray(keypoints, np.float64)
    scores = np.asarray(scores, np.float64).reshape(-1)
    areas = np.asarray(areas, np.float64).reshape(-1)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        ovr = oks_iou(keypoints[i], keypoints[rest], areas[i], areas[rest], sigmas, vis_thr)
        order = rest[ovr <= thresh]
    return keep


def soft_oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    thresh: float,
    sigmas: np.ndarray | None = None,
    vis_thr: float | None = None,
    max_dets: int = 20,
) -> list[int]:
    """Soft OKS NMS (HRNet's ``soft_oks_nms``, Gaussian decay ``exp(-oks^2 / thresh)``).

    Returns at most ``max_dets`` kept indices in the order they were taken.
    """
    keypoints = np.asarray(keypoints, np.float64)
    scores = np.asarray(scores, np.float64).reshape(-1)
    areas = np.asarray(areas, np.float64).reshape(-1)
    order = scores.argsort(kind="stable")[::-1]
    scores = scores[order]
    keep: list[int] = []
    while order.size > 0 and len(keep) < max_dets:
        i = order[0]
        ovr = oks_iou(
            keypoints[i], keypoints[order[1:]], areas[i], areas[order[1:]], sigmas, vis_thr
        )
        order, scores = order[1:], scores[1:] * np.exp(-(ovr**2) / thresh)
        resort = scores.argsort(kind="stable")[::-1]
        order, scores = order[resort], scores[resort]
        keep.append(int(i))
    return keep


def rescore(
    keypoint_scores: np.ndarray, box_scores: np.ndarray, vis_thr: float = 0.2
) -> np.ndarray:
    """Person scores = box score x mean of the joint scores > ``vis_thr`` (0 if none).

    Args:
      keypoint_scores: ``[N, J]`` raw joint confidences (heatmap maxima).
      box_scores: ``[N]``.

    Returns:
      float64 ``[N]``.
    """
    ks = np.asarray(keypoint_scores, np.float64)
    ks = ks.reshape(ks.shape[0] if ks.ndim else 1, -1)
    box = np.asarray(box_scores, np.float64).reshape(-1)
    valid = ks > vis_thr
    count = valid.sum(axis=1)
    mean = np.where(count > 0, (ks * valid).sum(axis=1) / np.maximum(count, 1), 0.0)
    return mean * box


def _area(person: Person) -> float:
    return float(person.bbox[2]) * float(person.bbox[3])


def nms_people(
    people: list[Person],
    *,
    thresh: float = 0.9,
    sigmas: np.ndarray | None = POSETRACK_SIGMAS,
    vis_thr: float | None = None,
    soft: bool = False,
    max_dets: int = 20,
) -> list[Person]:
    """OKS NMS over one frame's predicted people.

    Poses are ranked by ``Person.score``; the joint scores are ``keypoint_scores`` (1 where
    None); the area is the box's ``w * h`` (for crops made by ``predictions_from_crops``, the
    crop box, i.e. HRNet's ``scale_x * scale_y * 200^2``). Defaults are mmpose's PoseTrack18
    settings (threshold 0.9, PoseTrack sigmas, no joint-score threshold).
    """
    if len(people) < 2:
        return list(people)
    kpts = []
    for p in people:
        ks = np.ones(len(p.keypoints)) if p.keypoint_scores is None else p.keypoint_scores
        kpts.append(np.concatenate([np.asarray(p.keypoints)[:, :2], np.asarray(ks)[:, None]], 1))
    scores = np.array([p.score for p in people])
    areas = np.array([_area(p) for p in people])
    if soft:
        keep = soft_oks_nms(np.stack(kpts), scores, areas, thresh, sigmas, vis_thr, max_dets)
    else:
        keep = oks_nms(np.stack(kpts), scores, areas, thresh, sigmas, vis_thr)
    return [people[i] for i in keep]


def apply_oks_nms(dataset: VideoDataset, **kwargs) -> VideoDataset:
    """A copy of a prediction data set with ``nms_people`` applied to every frame.

    Keyword arguments go to ``nms_people``. The people kept are the same objects.
    """
    videos = []
    for video in dataset.videos:
        frames = [
            dataclasses.replace(f, people=nms_people(f.people, **kwargs)) for f in video.frames
        ]
        videos.append(Video(video.name, frames, video.source, dict(video.extra)))
    return VideoDataset(videos, dataset.fmt, dataset.root, dict(dataset.extra))

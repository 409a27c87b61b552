"""COCO keypoint AP (OKS) of predictions against ground truth, through pycocotools.

Both sides are ``VideoDataset`` objects in the 17-joint layout; the COCO dictionaries are built
in memory (each scored frame is one COCO image, numbered 1, 2, ... in data-set order, so that
frames of different files never share an id). Conventions follow
pycocotools: a ground-truth person without labeled joints is ignored (``num_keypoints == 0``),
a prediction's area and box come from the min/max of its written keypoints (as
``COCO.loadRes`` computes them), at most 20 predictions per image count.

Choices where the data say nothing:

* Images: every frame that is labeled or has ground-truth people (predictions elsewhere are
  dropped). Ignore regions are not used (COCO has no such notion).
* Ground-truth area (the OKS scale): ``areas[annotation_id]`` when given (e.g. COCO's
  segmentation areas from ``read_coco_areas``), else the box's ``w * h``.
* Sigmas: ``POSETRACK_SIGMAS`` (COCO's constants slot by slot), right for the 17-joint layout
  of PoseTrack and of COCO read into it (COCO's eyes have no slot; the slots they would take
  hold head_bottom/head_top, which COCO ground truth never labels).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping

import numpy as np

from posewarper_jax.data.formats import read_json
from posewarper_jax.data.types import JOINT_NAMES, NUM_JOINTS, SKELETON, VideoDataset
from posewarper_jax.eval.nms import POSETRACK_SIGMAS

__all__ = ["COCO_STATS", "coco_dicts", "coco_keypoint_ap", "read_coco_areas"]

COCO_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def _flat(keypoints: np.ndarray, visibility: np.ndarray) -> list[float]:
    k = np.concatenate([np.asarray(keypoints, np.float64)[:, :2], visibility[:, None]], axis=1)
    return [float(v) for v in k.reshape(-1)]


def coco_dicts(
    gt: VideoDataset,
    pred: VideoDataset,
    *,
    areas: Mapping[int, float] | None = None,
) -> tuple[dict, list[dict]]:
    """The ground truth as a COCO keypoints dict and the predictions as a COCO results list.

    Predictions pair with the ground truth by video name and frame index. Each result holds
    ``image_id``, ``category_id`` (1), ``keypoints`` (17 x (x, y, v); v = 1 for a labeled
    joint, unlabeled joints written as (0, 0, 0)) and ``score`` (``Person.score``).
    """
    images, annotations, results = [], [], []
    by_name = {v.name: v for v in pred.videos}
    for video in gt.videos:
        pvideo = by_name.get(video.name)
        if pvideo is not None and pvideo.nframes != video.nframes:
            raise ValueError(
                f"video {video.name!r}: {pvideo.nframes} predicted frames, {video.nframes} in "
                "the ground truth"
            )
        for frame in video.frames:
            if not (frame.is_labeled or frame.people):
                continue
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": frame.path, "frame_id": frame.image_id})
            for person in frame.people:
                labeled = np.asarray(person.keypoints)[:, 2] > 0
                x, y, w, h = (float(v) for v in person.bbox)
                area = w * h
                if areas is not None and person.annotation_id in areas:
                    area = float(areas[person.annotation_id])
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "keypoints": _flat(person.keypoints * labeled[:, None], 2.0 * labeled),
                        "num_keypoints": int(labeled.sum()),
                        "area": area,
                        "bbox": [x, y, w, h],
                        "iscrowd": 0,
                    }
                )
            if pvideo is None:
                continue
            for person in pvideo.frames[frame.index].people:
                labeled = np.asarray(person.keypoints)[:, 2] > 0
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": 1,
                        "keypoints": _flat(person.keypoints * labeled[:, None], 1.0 * labeled),
                        "score": float(person.score),
                    }
                )
    unknown = sorted(set(by_name) - {v.name for v in gt.videos})
    if unknown:
        raise ValueError(f"predictions for videos that are not in the ground truth: {unknown[:10]}")
    category = {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(JOINT_NAMES),
        "skeleton": [[a + 1, b + 1] for a, b in SKELETON],
    }
    gt_dict = {"images": images, "annotations": annotations, "categories": [category]}
    return gt_dict, results


def _results_coco(coco_gt, results: list[dict]):
    """The results object ``COCO.loadRes`` makes, built directly (it refuses an empty list)."""
    from pycocotools.coco import COCO

    anns = []
    for k, r in enumerate(results):
        kp = np.asarray(r["keypoints"], np.float64)
        x, y = kp[0::3], kp[1::3]
        x0, x1, y0, y1 = x.min(), x.max(), y.min(), y.max()
        anns.append(
            dict(r, id=k + 1, area=float((x1 - x0) * (y1 - y0)), bbox=[x0, y0, x1 - x0, y1 - y0])
        )
    res = COCO()
    res.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": list(coco_gt.dataset["categories"]),
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def coco_keypoint_ap(
    gt: VideoDataset,
    pred: VideoDataset,
    *,
    sigmas: np.ndarray | None = None,
    areas: Mapping[int, float] | None = None,
) -> dict[str, float]:
    """COCO keypoint AP/AR (fractions in [0, 1]; -1 where pycocotools has nothing to average).

    Args:
      gt, pred: ground truth and predictions (``Person.score`` ranks the predictions).
      sigmas: ``[17]`` OKS constants; None means ``POSETRACK_SIGMAS``.
      areas: ground-truth areas by ``Person.annotation_id`` (default: box ``w * h``).

    Returns ``{"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    s = POSETRACK_SIGMAS if sigmas is None else np.asarray(sigmas, np.float64).reshape(-1)
    if s.shape != (NUM_JOINTS,):
        raise ValueError(f"sigmas must hold {NUM_JOINTS} values, got {s.shape[0]}")
    gt_dict, results = coco_dicts(gt, pred, areas=areas)
    if not gt_dict["images"]:
        raise ValueError("the ground truth has no labeled frame to evaluate")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        coco_dt = _results_coco(coco_gt, results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.params.kpt_oks_sigmas = s
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(COCO_STATS, evaluator.stats)}


def read_coco_areas(json_file: str) -> dict[int, float]:
    """``{annotation id: area}`` of a COCO keypoints file (the OKS scale COCO itself uses)."""
    data = read_json(json_file)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{json_file}: no 'annotations' list")
    out = {}
    for j, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "id" not in ann or "area" not in ann:
            raise ValueError(f"{json_file}: annotations[{j}] lacks 'id' or 'area'")
        out[int(ann["id"])] = float(ann["area"])
    return out

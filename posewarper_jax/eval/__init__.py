"""Measurement: poseval's PoseTrack mAP, COCO OKS AP, OKS NMS and prediction assembly/writing;
poseval's tracking metrics (MOTA, MOTP) in ``eval.tracking`` (imported on use: motmetrics).

Everything here is host-side NumPy (pycocotools for the COCO AP); decoding lives in
``posewarper_jax.ops.heatmaps``.
"""

from posewarper_jax.eval.coco import coco_dicts, coco_keypoint_ap, read_coco_areas
from posewarper_jax.eval.nms import (
    COCO_SIGMAS,
    POSETRACK_SIGMAS,
    apply_oks_nms,
    nms_people,
    oks_iou,
    oks_nms,
    rescore,
    soft_oks_nms,
)
from posewarper_jax.eval.posetrack_map import (
    COLUMNS,
    format_table,
    posetrack_joint_metrics,
    posetrack_map,
    summarize,
)
from posewarper_jax.eval.predictions import (
    predictions_from_crops,
    shoulder_midpoint_neck,
    write_poseval_predictions,
)

__all__ = [
    "COCO_SIGMAS",
    "COLUMNS",
    "POSETRACK_SIGMAS",
    "apply_oks_nms",
    "coco_dicts",
    "coco_keypoint_ap",
    "format_table",
    "nms_people",
    "oks_iou",
    "oks_nms",
    "posetrack_joint_metrics",
    "posetrack_map",
    "predictions_from_crops",
    "read_coco_areas",
    "rescore",
    "shoulder_midpoint_neck",
    "soft_oks_nms",
    "summarize",
    "write_poseval_predictions",
]

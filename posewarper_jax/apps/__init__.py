"""Applications of a trained PoseWarper on videos.

* ``inference``: the shared loop (``predict``): heatmap functions over sharded evaluation
  batches, decoded to keypoints in image pixels, assembled into per-frame predictions
  (``to_predictions``) that ``eval.posetrack_map`` scores.
* ``detection``: test-time pose detection, single-frame (stage-1 HRNet) and with temporal
  aggregation over a window of neighbouring frames (symmetric or causal).
* ``propagation``: sparse labels carried to unlabeled frames by the warping head;
  ``baselines``: copying the nearest label, Farneback optical flow, single-frame HRNet;
  ``propagation_eval``: the main job's setting (labels held back, every method cut with the
  labeled frame's box) and its three score views (``report_scoring`` in the report).
* ``augment``: pseudo labels propagated to the neighbours of labeled frames.
* ``report`` / ``draw``: the main job's report and its pictures.
* One's own video (the ``label``, ``propagate`` and ``track`` commands): ``trained`` (a
  finished stage of a workdir), ``dense_labels`` (labels propagated to every frame within
  reach, boxes carried with the pose), ``overlay`` (skeletons over the video, an offline
  viewer), ``tracker`` (frame-to-frame linking, pure functions) and ``detect_track`` (poses
  from boxes, the PoseWarper motion model, the job's tracking rows), ``outputs`` (staged
  writes, the commands' errors).
"""

from posewarper_jax.apps.augment import add_pseudo_labels, pseudo_labels
from posewarper_jax.apps.baselines import FarnebackParams, copy_nearest, farneback, hrnet_pseudo
from posewarper_jax.apps.detection import (
    CAUSAL_WEIGHTS,
    CAUSAL_WINDOW,
    WINDOW,
    WINDOW_WEIGHTS,
    detect_aggregated,
    detect_aggregated_and_causal,
    detect_single_frame,
)
from posewarper_jax.apps.inference import (
    aggregation_fn,
    aggregations_fn,
    flip_batch,
    iter_predict,
    predict,
    single_frame_fn,
    to_predictions,
)
from posewarper_jax.apps.propagation import (
    DEFAULT_REACH,
    PropagationPlan,
    plan_propagation,
    propagate_labels,
    propagate_plan,
    select_videos,
)

__all__ = [
    "DEFAULT_REACH",
    "FarnebackParams",
    "PropagationPlan",
    "add_pseudo_labels",
    "copy_nearest",
    "farneback",
    "hrnet_pseudo",
    "plan_propagation",
    "propagate_labels",
    "propagate_plan",
    "pseudo_labels",
    "select_videos",
    "CAUSAL_WEIGHTS",
    "CAUSAL_WINDOW",
    "WINDOW",
    "WINDOW_WEIGHTS",
    "aggregation_fn",
    "aggregations_fn",
    "detect_aggregated",
    "detect_aggregated_and_causal",
    "detect_single_frame",
    "flip_batch",
    "iter_predict",
    "predict",
    "single_frame_fn",
    "to_predictions",
]

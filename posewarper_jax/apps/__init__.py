"""Applications of a trained PoseWarper on videos.

* ``inference``: the shared loop (``predict``): heatmap functions over sharded evaluation
  batches, decoded to keypoints in image pixels, assembled into per-frame predictions
  (``to_predictions``) that ``eval.posetrack_map`` scores.
* ``detection``: test-time pose detection, single-frame (stage-1 HRNet) and with temporal
  aggregation over a window of neighbouring frames (symmetric or causal).
"""

from posewarper_jax.apps.detection import (
    CAUSAL_WEIGHTS,
    CAUSAL_WINDOW,
    WINDOW,
    WINDOW_WEIGHTS,
    detect_aggregated,
    detect_single_frame,
)
from posewarper_jax.apps.inference import (
    aggregation_fn,
    flip_batch,
    iter_predict,
    predict,
    single_frame_fn,
    to_predictions,
)

__all__ = [
    "CAUSAL_WEIGHTS",
    "CAUSAL_WINDOW",
    "WINDOW",
    "WINDOW_WEIGHTS",
    "aggregation_fn",
    "detect_aggregated",
    "detect_single_frame",
    "flip_batch",
    "iter_predict",
    "predict",
    "single_frame_fn",
    "to_predictions",
]

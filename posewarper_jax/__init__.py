"""posewarper_jax: temporal pose estimation from sparsely labeled videos, in JAX/Flax.

Layers:
  * ``posewarper_jax.ops``    pure functions over arrays (deformable convolution, sampling).
  * ``posewarper_jax.models`` Flax modules (HRNet, the warping head, PoseWarper).
  * ``posewarper_jax.data``   PoseTrack readers, the embedded synthetic data set, Grain pipeline.
"""

__version__ = "0.1.0"

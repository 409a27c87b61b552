"""Pure functions over arrays (no Flax, no config): deformable convolution and sampling."""

from posewarper_jax.ops.deform_conv import deform_conv2d, deform_conv2d_multi
from posewarper_jax.ops.sampling import bilinear_sample, grouped_bilinear_sample

__all__ = [
    "bilinear_sample",
    "deform_conv2d",
    "deform_conv2d_multi",
    "grouped_bilinear_sample",
]

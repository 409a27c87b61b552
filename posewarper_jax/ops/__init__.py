"""Pure functions over arrays (no Flax, no config): deformable convolution, bilinear sampling,
heatmap decoding."""

from posewarper_jax.ops.deform_conv import IMPLS, deform_conv2d, deform_conv2d_multi
from posewarper_jax.ops.heatmaps import (
    average_flip,
    decode_heatmaps,
    flip_back,
    heatmap_to_image_coords,
)
from posewarper_jax.ops.sampling import bilinear_sample, grouped_bilinear_sample

__all__ = [
    "IMPLS",
    "average_flip",
    "bilinear_sample",
    "decode_heatmaps",
    "deform_conv2d",
    "deform_conv2d_multi",
    "flip_back",
    "grouped_bilinear_sample",
    "heatmap_to_image_coords",
]

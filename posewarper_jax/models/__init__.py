"""Flax modules: HRNet, the warping head and the full PoseWarper model."""

from posewarper_jax.models.freeze import freeze_optimizer, trainable_labels, trainable_mask
from posewarper_jax.models.hrnet import (
    HRNET_VARIANTS,
    HighResolutionModule,
    HRNet,
    HRNetConfig,
    get_hrnet_config,
)
from posewarper_jax.models.layers import BasicBlock, BatchNorm, Bottleneck, ConvBN, conv
from posewarper_jax.models.posewarper import PoseWarper, default_aggregation_weights
from posewarper_jax.models.warping import (
    HEAD_VARIANTS,
    WarpingHead,
    WarpingHeadConfig,
    get_head_config,
)

__all__ = [
    "HEAD_VARIANTS",
    "HRNET_VARIANTS",
    "BasicBlock",
    "BatchNorm",
    "Bottleneck",
    "ConvBN",
    "HRNet",
    "HRNetConfig",
    "HighResolutionModule",
    "PoseWarper",
    "WarpingHead",
    "WarpingHeadConfig",
    "conv",
    "default_aggregation_weights",
    "freeze_optimizer",
    "get_head_config",
    "get_hrnet_config",
    "trainable_labels",
    "trainable_mask",
]

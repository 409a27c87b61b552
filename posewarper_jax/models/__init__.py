"""Flax modules: HRNet, the warping head and the full PoseWarper model."""

from posewarper_jax.models.freeze import freeze_optimizer, trainable_labels, trainable_mask
from posewarper_jax.models.hrnet import (
    HRNET_VARIANTS,
    HighResolutionModule,
    HRNet,
    HRNetConfig,
    count_torch_parameters,
    expected_torch_state_dict_shapes,
    flax_path_to_torch_key,
    get_hrnet_config,
    torch_key_to_flax_path,
    torch_to_flax_array,
    variables_from_torch_state_dict,
)
from posewarper_jax.models.layers import BasicBlock, BatchNorm, Bottleneck, ConvBN, conv
from posewarper_jax.models.posewarper import PoseWarper, default_aggregation_weights
from posewarper_jax.models.warping import (
    HEAD_VARIANTS,
    WarpingHead,
    WarpingHeadConfig,
    get_head_config,
    head_key_map,
    head_param_count,
    head_torch_keys,
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
    "count_torch_parameters",
    "default_aggregation_weights",
    "expected_torch_state_dict_shapes",
    "flax_path_to_torch_key",
    "freeze_optimizer",
    "get_head_config",
    "get_hrnet_config",
    "head_key_map",
    "head_param_count",
    "head_torch_keys",
    "torch_key_to_flax_path",
    "torch_to_flax_array",
    "trainable_labels",
    "trainable_mask",
    "variables_from_torch_state_dict",
]

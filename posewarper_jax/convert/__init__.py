"""Import PyTorch HRNet / PoseWarper weights into this project's variables (an Orbax checkpoint).

Usage::

  python -m posewarper_jax.convert --src pose_hrnet_w48_384x288.pth --out /ckpt/hrnet_w48
  python -m posewarper_jax.convert --src posewarper.pth --out /ckpt/pw [--layout official]

Source layouts (``--layout``, detected by default):

* ``hrnet``: the official HRNet pose models (deep-high-resolution-net.pytorch), a plain
  ``state_dict`` with keys such as ``conv1.weight``, ``layer1.0.conv1.weight``,
  ``stage4.2.fuse_layers.0.1.0.weight``, ``final_layer.weight``.
* ``official``: the official PoseWarper release (facebookresearch/PoseWarper): the HRNet keys
  at top level plus the warping head ``offset_feats.*``, ``offsets{i}.weight``,
  ``deform_conv{i}.weight`` (i = 1..D).
* ``mmpose``: mmpose's port. HRNet keys under ``backbone.`` (mmpose's HRNet names its
  modules as the official one: ``conv1``/``bn1``, ``layer1``, ``transition{k}``,
  ``stage{k}.{m}.branches`` / ``fuse_layers``), the head under ``neck.`` (``offset_feats``,
  ``offset_layers.{i-1}``, ``deform_conv_layers.{i-1}``), and HRNet's heatmap layer as
  ``neck.trans_layer`` (PoseWarper models) or ``keypoint_head.final_layer`` (plain top-down
  HRNet models).

A file may hold the ``state_dict`` itself or a dict with a ``'state_dict'`` entry (training
checkpoints, mmpose's ``{'meta', 'state_dict', ...}``); a ``module.`` prefix on every key
(``nn.DataParallel``) is removed. BatchNorm ``num_batches_tracked`` entries are ignored.
``.npz`` files holding the ``state_dict``'s arrays need no PyTorch; ``.pth`` files are read
with ``torch.load(weights_only=True)`` (numpy scalars and arrays allowed, as mmpose's metadata
holds them), or with full unpickling when asked (``--unsafe-pickle``, trusted files only).

The network is read off the tensor shapes: the HRNet width from ``stage2.0.branches.0.0.conv1``,
module and block counts from the key indices, the number of joints J and the final kernel
from ``final_layer``, the head's width and depth from ``offset_feats`` and its number of
dilations from the offsets convs. Dilation *rates* are not stored in the weights: five offsets
convs are taken as the method's (3, 6, 12, 18, 24); any other count needs ``--dilations``.

Every key must be accounted for: unknown keys, missing keys and shapes that differ from the
network built from the inferred (or given) configuration are all listed in one
``ConversionError`` and nothing is written.

Targets (``--target``): ``hrnet`` gives HRNet variables (``params``/``batch_stats`` of
``models.hrnet.HRNet``); ``posewarper`` gives ``PoseWarper`` variables (``backbone`` and
``head`` subtrees), with a freshly initialised warping head when the source has none (seeded,
``--seed``). By default a source with a head gives ``posewarper``, one without ``hrnet``;
``--target hrnet`` on a PoseWarper source checks the head's keys and leaves them out.

Output: one Orbax ``StandardCheckpointer`` directory holding the pytree
``{'params': ..., 'batch_stats': ...}`` (float32) with the conversion's metadata (layout,
configurations, source file and its SHA-256) as its JSON ``custom_metadata``; read it back with
``load_converted``, and rebuild the module configurations with ``configs_from_metadata``.

Modules: ``files`` (reading weight files), ``hrnet_keys`` and ``head_keys`` (torch keys <->
Flax paths of HRNet and of the warping head), ``layouts`` (recognising the source's layout
and architecture), ``plan`` (``plan_conversion``), ``apply`` (``convert_state_dict``,
``convert_file``), ``checkpoint`` (the Orbax output and its metadata), ``command`` (the
command line), ``errors``.
"""

from posewarper_jax.convert.apply import apply_plan, convert_file, convert_state_dict
from posewarper_jax.convert.checkpoint import (
    FORMAT_VERSION,
    configs_from_metadata,
    conversion_metadata,
    load_converted,
    save_converted,
)
from posewarper_jax.convert.command import main
from posewarper_jax.convert.errors import ConversionError, WeightFileError
from posewarper_jax.convert.files import MODULE_PREFIX, prepare_state_dict, read_checkpoint
from posewarper_jax.convert.layouts import LAYOUTS, detect_layout
from posewarper_jax.convert.plan import (
    IGNORED_LEAF,
    METHOD_DILATIONS,
    TARGETS,
    ConversionPlan,
    plan_conversion,
)

__all__ = [
    "FORMAT_VERSION",
    "IGNORED_LEAF",
    "LAYOUTS",
    "METHOD_DILATIONS",
    "MODULE_PREFIX",
    "TARGETS",
    "ConversionError",
    "ConversionPlan",
    "WeightFileError",
    "apply_plan",
    "configs_from_metadata",
    "conversion_metadata",
    "convert_file",
    "convert_state_dict",
    "detect_layout",
    "load_converted",
    "main",
    "plan_conversion",
    "prepare_state_dict",
    "read_checkpoint",
    "save_converted",
]

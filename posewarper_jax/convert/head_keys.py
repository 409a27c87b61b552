"""The warping head's torch ``state_dict`` keys and their places in the Flax variables of
``models.warping.WarpingHead``.

Flax paths mirror the official release's module names (``lib/models/pose_hrnet_PoseAgg.py``
of facebookresearch/PoseWarper), so the head of an official checkpoint maps key by key.
Paths below are relative to the head (``params['head']`` / ``batch_stats['head']`` inside
``PoseWarper``); convs are torch OIHW -> flax HWIO (transpose ``(2, 3, 1, 0)``), BN
``weight``/``bias`` -> ``scale``/``bias`` params, ``running_mean``/``running_var`` ->
``mean``/``var`` batch stats, ``num_batches_tracked`` is dropped. b = 0..num_blocks-1,
i = 1..len(dilations):

=================================================  =====================================
official key (top level; ``module.`` if wrapped)   flax path under the head
=================================================  =====================================
``offset_feats.{b}.conv1.weight``  [C, Cin, 3, 3]  ``offset_feats/{b}/conv1/kernel``
``offset_feats.{b}.bn1.{weight,bias}``             ``offset_feats/{b}/bn1/{scale,bias}``
``offset_feats.{b}.bn1.running_{mean,var}``        ``offset_feats/{b}/bn1/{mean,var}`` (*)
``offset_feats.{b}.conv2.weight``  [C, C, 3, 3]    ``offset_feats/{b}/conv2/kernel``
``offset_feats.{b}.bn2.*``                         ``offset_feats/{b}/bn2/*`` (as bn1)
``offset_feats.0.downsample.0.weight`` [C,J,1,1]   ``offset_feats/0/downsample/0/kernel``
``offset_feats.0.downsample.1.*``                  ``offset_feats/0/downsample/1/*`` (BN)
``offsets{i}.weight``            [18 J, C, 3, 3]   ``offsets{i}/kernel``
``deform_conv{i}.weight``        [J, J, 3, 3]      ``deform_conv{i}/kernel``
=================================================  =====================================

(*) in the ``batch_stats`` collection; everything else in ``params``.
(Cin = J for block 0, C otherwise.) The official offset convs are ``nn.Conv2d(bias=False)``
and the deformable convs are mmdetection-v1 ``DeformConv`` modules, which have no bias; their
``weight`` is the full ``[out=J, in=J, 3, 3]`` (``groups=1``) kernel.

mmpose's ``PoseWarperNeck`` (checkpoint prefix ``neck.``) holds the same tensors under other
names: ``neck.offset_feats.*`` as above, ``neck.offset_layers.{i-1}.weight`` for
``offsets{i}`` and ``neck.deform_conv_layers.{i-1}.weight`` for ``deform_conv{i}`` (0-based).
It also holds ``neck.trans_layer.{weight,bias}`` (a 1x1 conv with bias, backbone width ->
J): that is HRNet's final heatmap layer, which mmpose moved out of its backbone, so it maps
to the backbone's ``final_layer/{kernel,bias}``, not to the head. mmpose's keypoint head for
PoseWarper is an identity (``final_conv_kernel=0``) without parameters.

``head_torch_keys`` lists the torch keys and shapes, ``head_key_map`` the flax targets.
"""

from __future__ import annotations

import math

from posewarper_jax.models.warping import KERNEL_SIZE, WarpingHeadConfig

HEAD_LAYOUTS = ("official", "mmpose")


def _check_layout(layout: str) -> None:
    if layout not in HEAD_LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; expected one of {HEAD_LAYOUTS}")


def _torch_names(config: WarpingHeadConfig, layout: str) -> list[tuple[str, str]]:
    """``(torch module name, flax module path)`` of every conv-like and BN module."""
    _check_layout(layout)
    mods = []
    pre = "neck." if layout == "mmpose" else ""
    for b in range(config.num_blocks):
        t, f = f"{pre}offset_feats.{b}", f"offset_feats/{b}"
        mods += [(f"{t}.conv1", f"{f}/conv1"), (f"{t}.bn1", f"{f}/bn1")]
        mods += [(f"{t}.conv2", f"{f}/conv2"), (f"{t}.bn2", f"{f}/bn2")]
        if b == 0:
            mods += [(f"{t}.downsample.0", f"{f}/downsample/0")]
            mods += [(f"{t}.downsample.1", f"{f}/downsample/1")]
    # Both releases register all offsets convs, then all deformable convs.
    n = len(config.dilations)
    if layout == "official":
        mods += [(f"offsets{i}", f"offsets{i}") for i in range(1, n + 1)]
        mods += [(f"deform_conv{i}", f"deform_conv{i}") for i in range(1, n + 1)]
    else:
        mods += [(f"neck.offset_layers.{i - 1}", f"offsets{i}") for i in range(1, n + 1)]
        mods += [(f"neck.deform_conv_layers.{i - 1}", f"deform_conv{i}") for i in range(1, n + 1)]
    return mods


def head_torch_keys(
    config: WarpingHeadConfig, layout: str = "official"
) -> dict[str, tuple[int, ...]]:
    """Every torch ``state_dict`` key of the head with its shape (conv weights OIHW).

    Args:
      config: the head's configuration.
      layout: ``"official"`` (facebookresearch/PoseWarper: top-level ``offset_feats``,
        ``offsets{i}``, ``deform_conv{i}``; strip a ``module.`` prefix first) or
        ``"mmpose"`` (``PoseWarperNeck`` under ``neck.``: ``offset_layers.{i}``,
        ``deform_conv_layers.{i}``). mmpose's ``neck.trans_layer`` is HRNet's final layer
        and is not listed (see the module docstring).

    Returns:
      ``{key: shape}`` including BN ``num_batches_tracked`` (shape ``()``), in the torch
      modules' registration order.
    """
    j, c = config.num_joints, config.channels
    k = KERNEL_SIZE
    shapes: dict[str, tuple[int, ...]] = {}
    for torch_name, flax_path in _torch_names(config, layout):
        leaf = flax_path.rsplit("/", 1)[-1]
        if leaf.startswith("bn") or leaf == "1":
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{torch_name}.{name}"] = (c,)
            shapes[f"{torch_name}.num_batches_tracked"] = ()
        elif leaf == "conv1":
            cin = j if flax_path.startswith("offset_feats/0/") else c
            shapes[f"{torch_name}.weight"] = (c, cin, k, k)
        elif leaf == "conv2":
            shapes[f"{torch_name}.weight"] = (c, c, k, k)
        elif leaf == "0":  # projection shortcut conv
            shapes[f"{torch_name}.weight"] = (c, j, 1, 1)
        elif leaf.startswith("offsets"):
            shapes[f"{torch_name}.weight"] = (config.offset_channels, c, k, k)
        else:  # deform_conv{i}
            shapes[f"{torch_name}.weight"] = (j, j, k, k)
    return shapes


def head_key_map(
    config: WarpingHeadConfig, layout: str = "official"
) -> dict[str, tuple[str, tuple[str, ...]] | None]:
    """Where each torch key of ``head_torch_keys(config, layout)`` goes in the head's flax
    variables: ``(collection, path)`` with ``path`` relative to the head, or None for BN's
    ``num_batches_tracked`` (no counterpart). 4-D values need a ``(2, 3, 1, 0)`` transpose
    (OIHW -> HWIO); 1-D values are copied as they are.

    Example: ``'offsets2.weight' -> ('params', ('offsets2', 'kernel'))``,
    ``'neck.offset_feats.0.bn1.running_var' -> ('batch_stats', ('offset_feats', '0', 'bn1',
    'var'))``.
    """
    out: dict[str, tuple[str, tuple[str, ...]] | None] = {}
    for torch_name, flax_path in _torch_names(config, layout):
        path = tuple(flax_path.split("/"))
        if path[-1].startswith("bn") or path[-1] == "1":
            out[f"{torch_name}.weight"] = ("params", (*path, "scale"))
            out[f"{torch_name}.bias"] = ("params", (*path, "bias"))
            out[f"{torch_name}.running_mean"] = ("batch_stats", (*path, "mean"))
            out[f"{torch_name}.running_var"] = ("batch_stats", (*path, "var"))
            out[f"{torch_name}.num_batches_tracked"] = None
        else:
            out[f"{torch_name}.weight"] = ("params", (*path, "kernel"))
    return out


def head_param_count(config: WarpingHeadConfig) -> int:
    """Trainable parameters of the head (torch ``parameters()``: conv weights, BN scale and
    bias; running statistics excluded), from the torch key list."""
    return sum(
        math.prod(shape)
        for key, shape in head_torch_keys(config).items()
        if key.endswith((".weight", ".bias"))
    )

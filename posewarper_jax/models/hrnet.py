"""HRNet pose backbone (Sun et al., CVPR 2019), layer for layer as the official PyTorch
``PoseHighResolutionNet`` (deep-high-resolution-net.pytorch, ``lib/models/pose_hrnet.py``).

Architecture (C = ``width``):
  stem     conv1 3x3/2 + bn1 + ReLU, conv2 3x3/2 + bn2 + ReLU            -> 1/4 resolution
  layer1   Bottleneck blocks (planes = stem channels, out 4x that)
  stage2   2 branches (C, 2C) at 1/4, 1/8;          1 module (W32/W48)
  stage3   3 branches (C, 2C, 4C) down to 1/16;      4 modules
  stage4   4 branches (C, 2C, 4C, 8C) down to 1/32;  3 modules, the last keeps only 1/4
  final    1x1 conv with bias, C -> J heatmaps
Each stage is preceded by a transition (``transition1..3``) that adapts channels and adds the
new lowest-resolution branch (3x3/2 conv + BN + ReLU from the previous lowest branch). Each
module runs a stack of BasicBlocks per branch, then fuses: output branch i sums, over input
branches j, x_j itself (j = i), ``1x1 conv + BN`` then nearest upsampling by 2^(j-i)
(j > i), or i - j 3x3/2 conv + BN steps with ReLU between them (j < i); then ReLU.

Parameter paths mirror the torch ``state_dict`` keys: ``stage2.0.branches.1.3.bn2.weight``
is ``params['stage2']['0']['branches']['1']['3']['bn2']['scale']`` (the key maps are in
``posewarper_jax.convert.hrnet_keys``). Convs are HWIO (torch OIHW), BN running stats live in
the ``batch_stats`` collection as ``mean``/``var``.

Inputs are NHWC RGB crops; heatmaps come out NHWC at 1/4 resolution. Since the fuse layers
upsample the 1/32 branch by 8 onto the 1/4 one, ``ceil(H / 4)`` and ``ceil(W / 4)`` must be
multiples of 8 (e.g. H, W multiples of 32: 256x192, 384x288).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from posewarper_jax.models.layers import (
    BasicBlock,
    BatchNorm,
    Bottleneck,
    ConvBN,
    Dtype,
    conv,
)

# ImageNet statistics (RGB, for pixel values scaled to [0, 1]) used by the official models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NUM_STAGES = 3  # stages 2, 3, 4 with 2, 3, 4 branches


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class HRNetConfig:
    """Hyper-parameters of the HRNet pose network.

    Attributes:
      width: C, channels of the 1/4-resolution branch; branch k has C * 2^k.
      stem_channels: channels of conv1/conv2 and bottleneck width of layer1 (whose output
        has 4x as many). The official network uses 64.
      layer1_blocks: number of Bottleneck blocks in layer1.
      num_modules: HighResolutionModules in stages 2, 3, 4.
      num_blocks: BasicBlocks per branch per module.
      num_joints: J, output heatmap channels.
      final_conv_kernel: 1 or 3 (3 pads by 1), with bias.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); BN statistics are computed in float32.
      param_dtype: dtype of the parameters.
    """

    width: int = 32
    stem_channels: int = 64
    layer1_blocks: int = 4
    num_modules: tuple[int, int, int] = (1, 4, 3)
    num_blocks: int = 4
    num_joints: int = 17
    final_conv_kernel: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        positive = ("width", "stem_channels", "layer1_blocks", "num_blocks", "num_joints")
        for field in positive:
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"HRNetConfig.{field} must be a positive int, got {value!r}")
        mods = tuple(self.num_modules)
        if len(mods) != NUM_STAGES or any(not isinstance(m, int) or m < 1 for m in mods):
            raise ValueError(
                f"HRNetConfig.num_modules must be 3 positive ints (stages 2, 3, 4), "
                f"got {self.num_modules!r}"
            )
        object.__setattr__(self, "num_modules", mods)
        if self.final_conv_kernel not in (1, 3):
            raise ValueError(
                f"HRNetConfig.final_conv_kernel must be 1 or 3, got {self.final_conv_kernel!r}"
            )

    def branch_channels(self, num_branches: int) -> tuple[int, ...]:
        """Channels of the first ``num_branches`` branches: ``(C, 2C, 4C, ...)``."""
        return tuple(self.width * 2**k for k in range(num_branches))

    @property
    def layer1_channels(self) -> int:
        return self.stem_channels * Bottleneck.expansion


HRNET_VARIANTS: dict[str, HRNetConfig] = {
    # The paper's networks (COCO/PoseTrack pose models).
    "w32": HRNetConfig(width=32),
    "w48": HRNetConfig(width=48),
    # Small networks with the full topology (all transitions and fuse paths) for CPU tests.
    "tiny": HRNetConfig(
        width=8, stem_channels=16, layer1_blocks=1, num_modules=(1, 1, 1), num_blocks=1
    ),
    "small": HRNetConfig(
        width=16, stem_channels=32, layer1_blocks=2, num_modules=(1, 1, 1), num_blocks=2
    ),
}


def get_hrnet_config(name: str, **overrides: Any) -> HRNetConfig:
    """The registered variant ``name`` (see ``HRNET_VARIANTS``) with fields replaced by
    ``overrides`` (e.g. ``num_joints=15``, ``dtype=jnp.bfloat16``)."""
    if name not in HRNET_VARIANTS:
        raise ValueError(
            f"unknown HRNet variant {name!r}; known variants: {sorted(HRNET_VARIANTS)}"
        )
    fields = {f.name for f in dataclasses.fields(HRNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown HRNetConfig field(s) {unknown}; fields: {sorted(fields)}")
    return dataclasses.replace(HRNET_VARIANTS[name], **overrides)


# ----------------------------------------------------------------------------- modules


def _upsample_nearest(x: jnp.ndarray, factor: int) -> jnp.ndarray:
    """``[N, H, W, C] -> [N, H * f, W * f, C]``, each pixel repeated f x f (torch 'nearest')."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class _BlockStack(nn.Module):
    """Residual blocks named ``0..n-1`` (torch ``nn.Sequential`` of blocks)."""

    block: str  # "basic" or "bottleneck"
    features: int  # BasicBlock output channels / Bottleneck planes
    num_blocks: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        cls = BasicBlock if self.block == "basic" else Bottleneck
        for b in range(self.num_blocks):
            x = cls(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=str(b))(
                x, train
            )
        return x


class _Branches(nn.Module):
    """One BasicBlock stack per branch, named ``0..B-1``."""

    channels: tuple[int, ...]
    num_blocks: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, xs: Sequence[jnp.ndarray], train: bool) -> list[jnp.ndarray]:
        return [
            _BlockStack("basic", c, self.num_blocks, self.dtype, self.param_dtype, name=str(i))(
                x, train
            )
            for i, (c, x) in enumerate(zip(self.channels, xs, strict=True))
        ]


class _FuseUp(nn.Module):
    """Fuse path j -> i for j > i: 1x1 conv (``0``) + BN (``1``), then nearest upsampling by
    ``factor`` = 2^(j - i). ``[N, h, w, C_j] -> [N, h * f, w * f, features]``."""

    features: int
    factor: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = conv(self.features, 1, dtype=self.dtype, param_dtype=self.param_dtype, name="0")(x)
        x = BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="1")(x, train)
        return _upsample_nearest(x, self.factor)


class _StridedChain(nn.Module):
    """Steps ``0..n-1``, each a 3x3/2 conv + BN (``ConvBN``) halving the resolution, with
    ``channels[k]`` outputs; ReLU after every step but the last, and after the last too if
    ``relu_last``. Fuse paths j -> i (j < i) use it without the last ReLU, transitions to a
    new branch with it."""

    channels: tuple[int, ...]
    relu_last: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        n = len(self.channels)
        for k, c in enumerate(self.channels):
            relu = self.relu_last or k < n - 1
            x = ConvBN(
                c, 3, 2, relu=relu, dtype=self.dtype, param_dtype=self.param_dtype, name=str(k)
            )(x, train)
        return x


class _FuseRow(nn.Module):
    """Output branch ``i`` of a fusion: ``relu(sum_j path_j(xs[j]))``, paths named ``j``.

    ``xs[j]: [N, H / 2^j, W / 2^j, C_j]`` -> ``[N, H / 2^i, W / 2^i, C_i]``; ``path_i`` is the
    identity (no parameters, like torch's ``None`` entry).
    """

    index: int
    channels: tuple[int, ...]
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, xs: Sequence[jnp.ndarray], train: bool) -> jnp.ndarray:
        i, ch = self.index, self.channels
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = None
        for j, x in enumerate(xs):
            if j == i:
                z = x
            elif j > i:
                z = _FuseUp(ch[i], 2 ** (j - i), name=str(j), **kw)(x, train)
            else:
                steps = (ch[j],) * (i - j - 1) + (ch[i],)
                z = _StridedChain(steps, relu_last=False, name=str(j), **kw)(x, train)
            y = z if y is None else y + z
        return nn.relu(y)


class _FuseLayers(nn.Module):
    """Rows ``0..num_outputs-1`` of ``_FuseRow``."""

    channels: tuple[int, ...]
    num_outputs: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, xs: Sequence[jnp.ndarray], train: bool) -> list[jnp.ndarray]:
        return [
            _FuseRow(i, self.channels, self.dtype, self.param_dtype, name=str(i))(xs, train)
            for i in range(self.num_outputs)
        ]


class HighResolutionModule(nn.Module):
    """One HRNet module: per-branch BasicBlock stacks (``branches``), then ``fuse_layers``.

    Attributes:
      channels: ``(C_0, ..., C_{B-1})``, B >= 2 branches; input and output channels agree.
      num_blocks: BasicBlocks per branch.
      multi_scale_output: False keeps only the highest-resolution output.

    Call: ``xs[j]: [N, H / 2^j, W / 2^j, C_j]``, ``train`` -> list of B (or 1) maps of the
    same shapes.
    """

    channels: tuple[int, ...]
    num_blocks: int
    multi_scale_output: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[jnp.ndarray], train: bool) -> list[jnp.ndarray]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        xs = _Branches(self.channels, self.num_blocks, name="branches", **kw)(xs, train)
        num_outputs = len(self.channels) if self.multi_scale_output else 1
        return _FuseLayers(self.channels, num_outputs, name="fuse_layers", **kw)(xs, train)


class _Stage(nn.Module):
    """HighResolutionModules named ``0..M-1``; only the last one may drop the low branches."""

    channels: tuple[int, ...]
    num_modules: int
    num_blocks: int
    multi_scale_output: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, xs: Sequence[jnp.ndarray], train: bool) -> list[jnp.ndarray]:
        for m in range(self.num_modules):
            multi = self.multi_scale_output or m < self.num_modules - 1
            xs = HighResolutionModule(
                self.channels,
                self.num_blocks,
                multi,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=str(m),
            )(xs, train)
        return xs


class _Transition(nn.Module):
    """From the previous stage's branches (``in_channels``) to the next's (``out_channels``,
    one branch more).

    Branch i < len(in): 3x3 conv + BN + ReLU (``i.0``, ``i.1``) where the channel count
    changes, else the identity. New branch i: a chain (``i.k.0``, ``i.k.1``) of 3x3/2
    conv + BN + ReLU steps from the previous lowest-resolution branch. (The official code
    feeds the lowest branch also into a channel-changing conv at i < len(in) beyond the
    first transition; with channels C * 2^k that case never arises.)
    """

    in_channels: tuple[int, ...]
    out_channels: tuple[int, ...]
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, xs: Sequence[jnp.ndarray], train: bool) -> list[jnp.ndarray]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        n_in = len(self.in_channels)
        outs = []
        for i, c in enumerate(self.out_channels):
            if i < n_in:
                if c == self.in_channels[i]:
                    outs.append(xs[i])
                else:
                    outs.append(ConvBN(c, 3, 1, relu=True, name=str(i), **kw)(xs[i], train))
            else:
                steps = (self.in_channels[-1],) * (i - n_in) + (c,)
                chain = _StridedChain(steps, relu_last=True, name=str(i), **kw)
                outs.append(chain(xs[-1], train))
        return outs


def _check_input(x: jnp.ndarray) -> None:
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"HRNet input must be [N, H, W, 3] RGB, got shape {tuple(x.shape)}")
    if not (x.dtype == jnp.uint8 or jnp.issubdtype(x.dtype, jnp.floating)):
        raise ValueError(f"HRNet input must be uint8 or floating, got dtype {x.dtype}")
    h, w = x.shape[1:3]
    if math.ceil(h / 4) % 8 or math.ceil(w / 4) % 8:
        raise ValueError(
            f"HRNet input height/width {h}x{w}: ceil(H/4) and ceil(W/4) must be multiples of 8 "
            "(the 1/32 branch is upsampled x8 onto the 1/4 one), e.g. multiples of 32"
        )


class HRNet(nn.Module):
    """HRNet pose network: RGB crops -> keypoint heatmaps.

    Attributes:
      config: an ``HRNetConfig`` (see ``get_hrnet_config``).

    Call:
      x: ``[N, H, W, 3]`` RGB. ``uint8`` pixels are normalised here,
        ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD``; floating input is taken as already
        normalised. ``ceil(H / 4)``, ``ceil(W / 4)`` must be multiples of 8.
      train: True normalises with batch statistics and updates ``batch_stats`` (pass
        ``mutable=['batch_stats']``); False uses the running averages.

    Returns:
      heatmaps ``[N, ceil(H / 4), ceil(W / 4), J]`` in ``config.dtype``. Heatmap pixel
      (u, v) sits on input pixel (4u, 4v) (pixel centres at integers, x right, y down): the
      stem's two 3x3/2 convs with padding 1 centre it there.
    """

    config: HRNetConfig

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        cfg = self.config
        _check_input(x)
        if x.dtype == jnp.uint8:
            mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
            std = jnp.asarray(IMAGENET_STD, jnp.float32)
            x = (x.astype(jnp.float32) / 255.0 - mean) / std
        x = x.astype(cfg.dtype)
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)

        # Stem: two 3x3/2 convs, [N, H, W, 3] -> [N, H/4, W/4, S].
        s = cfg.stem_channels
        x = conv(s, 3, 2, name="conv1", **kw)(x)
        x = nn.relu(BatchNorm(name="bn1", **kw)(x, train))
        x = conv(s, 3, 2, name="conv2", **kw)(x)
        x = nn.relu(BatchNorm(name="bn2", **kw)(x, train))
        x = _BlockStack("bottleneck", s, cfg.layer1_blocks, name="layer1", **kw)(x, train)

        xs = [x]
        prev = (cfg.layer1_channels,)
        for k in range(NUM_STAGES):
            cur = cfg.branch_channels(k + 2)
            xs = _Transition(prev, cur, name=f"transition{k + 1}", **kw)(xs, train)
            xs = _Stage(
                cur,
                cfg.num_modules[k],
                cfg.num_blocks,
                multi_scale_output=k < NUM_STAGES - 1,
                name=f"stage{k + 2}",
                **kw,
            )(xs, train)
            prev = cur

        return conv(cfg.num_joints, cfg.final_conv_kernel, use_bias=True, name="final_layer", **kw)(
            xs[0]
        )

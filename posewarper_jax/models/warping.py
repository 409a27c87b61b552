"""The PoseWarper warping head: warp one frame's heatmaps with motion read off a difference.

Given a difference of heatmaps ``psi`` (e.g. ``f_A - f_B``) and the maps to warp (e.g.
``f_B``), all ``[N, h, w, J]``:

1. Offset features: ``num_blocks`` ResNet BasicBlocks at ``channels`` channels applied to
   ``psi``; the first block's shortcut is a 1x1 conv + BN projection J -> channels.
2. For each dilation d: a 3x3 conv with dilation d (padding d, no bias), channels -> J * 18
   offsets, **zero-initialised**; then a 3x3 deformable convolution J -> J (dilation d,
   padding d, J deformable groups, no bias) of the maps to warp with those offsets. Its
   kernel is a full ``[3, 3, J, J]`` (HWIO) kernel **initialised to the identity** (centre
   tap, channel k -> k) and trained.
3. Output: the mean of the per-dilation warped maps.

At initialisation every offset is 0 and every deformable kernel the identity, so the head
returns the maps to warp unchanged.

Offset channel layout (that of the official CUDA kernel and ``posewarper_jax.ops``): for
deformable group g (= joint g here) and tap k = 3 i + j (row i, column j of the 3x3 kernel),
channel ``18 g + 2 k`` holds the y (down) displacement and ``18 g + 2 k + 1`` the x (right)
one, in heatmap pixels; tap (i, j) at output pixel (y, x) samples
``(y - d + i d + dy, x - d + j d + dx)`` bilinearly (pixel centres at integers, zero outside).

Flax paths mirror the official release's module names (``lib/models/pose_hrnet_PoseAgg.py``
of facebookresearch/PoseWarper), so the head of an official checkpoint maps key by key; the
key maps (official and mmpose names) are in ``posewarper_jax.convert.head_keys``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from posewarper_jax.models.layers import BasicBlock, Dtype, conv
from posewarper_jax.ops import IMPLS, deform_conv2d_multi

KERNEL_SIZE = 3  # offsets convs and deformable convs are 3x3 in the method


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class WarpingHeadConfig:
    """Hyper-parameters of the warping head.

    Attributes:
      num_joints: J, heatmap channels (also the number of deformable groups).
      channels: C, width of the offset-feature BasicBlocks (128 in the method).
      num_blocks: number of offset-feature BasicBlocks (20 in the method).
      dilations: one offsets conv + deformable conv per entry (3, 6, 12, 18, 24 in the
        method); any non-empty tuple of positive ints.
      dtype: compute dtype of the offset-feature blocks and offsets convs (offsets are cast
        to float32 before sampling; the deformable convs run in float32).
      param_dtype: dtype of the parameters.
      deform_impl: implementation of the deformable convolutions (``deform_conv2d_multi``'s
        ``impl``): ``"auto"`` (the fused Pallas kernel on GPUs, the pure-``jnp`` gathers
        elsewhere), ``"xla"`` or ``"pallas"``. All compute the same function.
    """

    num_joints: int = 17
    channels: int = 128
    num_blocks: int = 20
    dilations: tuple[int, ...] = (3, 6, 12, 18, 24)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    deform_impl: str = "auto"

    def __post_init__(self):
        for field in ("num_joints", "channels", "num_blocks"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"WarpingHeadConfig.{field} must be a positive int, got {value!r}")
        try:
            dilations = tuple(self.dilations)
        except TypeError:
            raise ValueError(
                f"WarpingHeadConfig.dilations must be a tuple of ints, got {self.dilations!r}"
            ) from None
        if not dilations or any(
            not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in dilations
        ):
            raise ValueError(
                "WarpingHeadConfig.dilations must be a non-empty tuple of positive ints, "
                f"got {self.dilations!r}"
            )
        object.__setattr__(self, "dilations", dilations)
        if self.deform_impl not in IMPLS:
            raise ValueError(
                f"WarpingHeadConfig.deform_impl must be one of {IMPLS}, got {self.deform_impl!r}"
            )

    @property
    def offset_channels(self) -> int:
        """Channels of each offsets conv: J groups x 9 taps x (dy, dx)."""
        return self.num_joints * KERNEL_SIZE * KERNEL_SIZE * 2


HEAD_VARIANTS: dict[str, WarpingHeadConfig] = {
    # The method's head (about 7.6M parameters for J = 17).
    "default": WarpingHeadConfig(),
    # A small head with the same structure for CPU tests and quick runs.
    "tiny": WarpingHeadConfig(channels=16, num_blocks=2, dilations=(1, 2)),
}


def get_head_config(name: str = "default", **overrides: Any) -> WarpingHeadConfig:
    """The registered head ``name`` (see ``HEAD_VARIANTS``) with fields replaced by
    ``overrides`` (e.g. ``num_joints=15``, ``dilations=(3,)``)."""
    if name not in HEAD_VARIANTS:
        raise ValueError(f"unknown warping-head variant {name!r}; known: {sorted(HEAD_VARIANTS)}")
    return dataclasses.replace(HEAD_VARIANTS[name], **overrides)


# ----------------------------------------------------------------------------- modules


def identity_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32):
    """``[kh, kw, C, C]`` HWIO kernel that copies channel c to channel c at the centre tap."""
    del key
    kh, kw, cin, cout = shape
    if cin != cout or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"identity kernel needs odd taps and Cin == Cout, got shape {shape}")
    eye = jnp.eye(cin, dtype=dtype)
    return jnp.zeros(shape, dtype).at[kh // 2, kw // 2].set(eye)


class _OffsetFeatures(nn.Module):
    """BasicBlocks named ``0..n-1`` (torch ``nn.Sequential``); block 0 always projects its
    shortcut (as the official head, even if J == C). ``[N, h, w, J] -> [N, h, w, C]``."""

    channels: int
    num_blocks: int
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        for b in range(self.num_blocks):
            x = BasicBlock(
                self.channels,
                downsample=b == 0,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=str(b),
            )(x, train)
        return x


class _DeformKernel(nn.Module):
    """Holds one deformable conv's ``kernel [3, 3, J, J]`` (HWIO), identity-initialised."""

    num_joints: int
    param_dtype: Dtype

    @nn.compact
    def __call__(self) -> jnp.ndarray:
        j = self.num_joints
        shape = (KERNEL_SIZE, KERNEL_SIZE, j, j)
        return self.param("kernel", identity_kernel_init, shape, self.param_dtype)


class WarpingHead(nn.Module):
    """The warping head (see the module docstring).

    Attributes:
      config: a ``WarpingHeadConfig``.

    Submodules: ``offset_feats`` (blocks ``0..num_blocks-1``), ``offsets1..offsetsD`` and
    ``deform_conv1..deform_convD`` for the D dilations in order.
    """

    config: WarpingHeadConfig

    @nn.compact
    def __call__(
        self,
        psi: jnp.ndarray,
        maps: jnp.ndarray,
        train: bool = False,
        return_offsets: bool = False,
    ) -> jnp.ndarray | tuple[jnp.ndarray, tuple[jnp.ndarray, ...]]:
        """Warp ``maps`` by the motion that ``psi`` reveals.

        Args:
          psi: ``[N, h, w, J]`` float, the heatmap difference (caller picks the direction).
          maps: ``[N, h, w, J]`` float, the maps to warp.
          train: BatchNorm of the offset features uses batch statistics and updates
            ``batch_stats`` (pass ``mutable=['batch_stats']``) when True.
          return_offsets: also return the offsets.

        Returns:
          warped ``[N, h, w, J]`` float32; with ``return_offsets`` also a tuple with, per
          dilation, the offsets ``[N, h, w, J * 18]`` float32 (layout in the module
          docstring: heatmap pixels, dy then dx per tap, joint-major).
        """
        cfg = self.config
        j = cfg.num_joints
        if psi.ndim != 4 or psi.shape[-1] != j:
            raise ValueError(f"WarpingHead psi must be [N, h, w, {j}], got {tuple(psi.shape)}")
        if maps.shape != psi.shape:
            raise ValueError(
                f"WarpingHead maps shape {tuple(maps.shape)} differs from psi {tuple(psi.shape)}"
            )
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        feats = _OffsetFeatures(cfg.channels, cfg.num_blocks, name="offset_feats", **kw)(
            psi.astype(cfg.dtype), train
        )
        offsets, kernels = [], []
        for i, d in enumerate(cfg.dilations, start=1):
            off = conv(
                cfg.offset_channels,
                KERNEL_SIZE,
                dilation=d,
                kernel_init=nn.initializers.zeros,
                name=f"offsets{i}",
                **kw,
            )(feats)
            offsets.append(off.astype(jnp.float32))
            kernels.append(
                _DeformKernel(j, cfg.param_dtype, name=f"deform_conv{i}")().astype(jnp.float32)
            )
        warped = deform_conv2d_multi(
            maps.astype(jnp.float32),
            offsets,
            kernels,
            dilations=cfg.dilations,
            deformable_groups=j,
            reduce="mean",
            # Full float32 contraction (not TF32/bf16 passes on accelerators): it is tiny, and
            # keeps the identity at initialisation exact.
            precision=jax.lax.Precision.HIGHEST,
            impl=cfg.deform_impl,
        )
        if return_offsets:
            return warped, tuple(offsets)
        return warped

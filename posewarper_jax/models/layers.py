"""Convolution, BatchNorm and residual blocks shared by HRNet and the warping head.

Numerics follow PyTorch so that converted torch weights give the same outputs:
explicit zero padding (``k // 2`` on each side, as torch's ``padding=1`` for 3x3), and a
BatchNorm whose running variance is updated with the *unbiased* batch variance.

Submodule names mirror a torch ``state_dict``: a residual block's layers are ``conv1``,
``bn1``, ...; its projection shortcut is ``downsample`` holding ``0`` (conv) and ``1`` (BN),
as torch's ``nn.Sequential(Conv2d, BatchNorm2d)``. Variables are named ``kernel`` (HWIO, torch
OIHW weight), ``bias``, and BN's ``scale``/``bias`` params and ``mean``/``var`` batch stats.

All tensors are NHWC.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from posewarper_jax.ops.conv import conv_general_dilated

Dtype = Any

# HRNet's init: every conv weight ~ N(0, 0.001^2), conv biases 0, BN scale 1 and bias 0.
CONV_KERNEL_INIT = nn.initializers.normal(stddev=0.001)


def conv(
    features: int,
    kernel_size: int,
    strides: int = 1,
    *,
    dilation: int = 1,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init: Any = CONV_KERNEL_INIT,
    name: str | None = None,
) -> nn.Conv:
    """A square ``kernel_size`` conv padded as torch's ``padding=dilation * (k // 2)``.

    Explicit padding matters for stride 2: 'SAME' would pad (0, 1) on an even input where
    torch pads (1, 1), shifting every output by half a pixel. The convolution is
    ``ops.conv.conv_general_dilated``: ``lax``'s, with a backward pass written as matrix
    products on CPUs where the kernel's shape makes that faster
    (``ops.conv.gemm_backward_pays``).
    """
    p = dilation * (kernel_size // 2)
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=((p, p), (p, p)),
        kernel_dilation=(dilation, dilation),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last, with PyTorch's ``BatchNorm2d`` semantics.

    Attributes:
      momentum: flax convention, ``running = momentum * running + (1 - momentum) * batch``
        (torch momentum 0.1 is 0.9 here).
      epsilon: added to the variance (torch default 1e-5).
      dtype: output dtype; statistics and normalisation are always computed in float32.
      param_dtype: dtype of ``scale``/``bias``; running stats are float32.

    Call: ``x [..., C]`` -> same shape. With ``train=True`` it normalises with the batch mean
    and biased variance and (outside ``init``) updates the ``batch_stats`` collection, which
    the caller must pass as mutable; the running variance takes the unbiased variance
    (n / (n - 1) times the biased one) as torch does. With ``train=False`` it uses the
    running averages and changes nothing.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))

        xf = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)  # biased, used to normalise
            if not self.is_initializing():
                n = xf.size // c
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
                ra_var.value = m * ra_var.value + (1.0 - m) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = scale.astype(jnp.float32) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        y = (xf - mean) * mul + bias.astype(jnp.float32)
        return y.astype(self.dtype)


class ConvBN(nn.Module):
    """``conv -> BN [-> ReLU]`` named ``0`` (conv) and ``1`` (BN), like torch's
    ``nn.Sequential(Conv2d(bias=False), BatchNorm2d[, ReLU])``.

    ``[N, H, W, Cin] -> [N, ceil(H / strides), ceil(W / strides), features]``.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    relu: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = conv(
            self.features,
            self.kernel_size,
            self.strides,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="0",
        )(x)
        x = BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="1")(x, train)
        return nn.relu(x) if self.relu else x


def _needs_projection(downsample: bool | None, strides: int, cin: int, cout: int) -> bool:
    return (strides != 1 or cin != cout) if downsample is None else downsample


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    conv1 is 3x3 with ``strides``, conv2 3x3 stride 1, both without bias.

    Attributes:
      features: output channels.
      strides: stride of conv1 (and of the projection).
      downsample: whether the shortcut is a 1x1 conv + BN projection (``downsample.0``,
        ``downsample.1``); ``None`` projects exactly when the stride is not 1 or the input
        channel count differs from ``features``.

    Call: ``x [N, H, W, Cin]``, ``train`` -> ``[N, ceil(H / s), ceil(W / s), features]``.
    """

    features: int
    strides: int = 1
    downsample: bool | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = conv(self.features, 3, self.strides, name="conv1", **kw)(x)
        y = nn.relu(BatchNorm(name="bn1", **kw)(y, train))
        y = conv(self.features, 3, name="conv2", **kw)(y)
        y = BatchNorm(name="bn2", **kw)(y, train)
        if _needs_projection(self.downsample, self.strides, x.shape[-1], self.features):
            x = ConvBN(self.features, 1, self.strides, relu=False, name="downsample", **kw)(
                x, train
            )
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """ResNet bottleneck block (v1.5: the stride sits on the 3x3 conv).

    ``1x1 planes -> 3x3 planes (strides) -> 1x1 planes * 4``, each with BN, ReLU between,
    residual added before the last ReLU.

    Attributes:
      planes: bottleneck width; the output has ``planes * expansion`` (= 4 * planes) channels.
      strides: stride of conv2 (and of the projection).
      downsample: as in ``BasicBlock`` (``None``: project when the shape changes).

    Call: ``x [N, H, W, Cin]``, ``train`` -> ``[N, ceil(H / s), ceil(W / s), 4 * planes]``.
    """

    planes: int
    strides: int = 1
    downsample: bool | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out = self.planes * self.expansion
        y = conv(self.planes, 1, name="conv1", **kw)(x)
        y = nn.relu(BatchNorm(name="bn1", **kw)(y, train))
        y = conv(self.planes, 3, self.strides, name="conv2", **kw)(y)
        y = nn.relu(BatchNorm(name="bn2", **kw)(y, train))
        y = conv(out, 1, name="conv3", **kw)(y)
        y = BatchNorm(name="bn3", **kw)(y, train)
        if _needs_projection(self.downsample, self.strides, x.shape[-1], out):
            x = ConvBN(out, 1, self.strides, relu=False, name="downsample", **kw)(x, train)
        return nn.relu(y + x)

"""2-D convolution whose backward pass is written as matrix products (for CPUs).

XLA's CPU backend computes a convolution's forward pass well, but its two backward
convolutions (input and kernel gradients) were measured several times slower than the
forward pass at the shapes of this project (HRNet, the warping head's offsets convs).
``conv2d`` keeps ``lax.conv_general_dilated`` for the forward pass and gives it a
``custom_vjp`` in which

* the kernel gradient is ``cols^T @ g``, with ``cols [B, Ho, Wo, kh * kw * Cin]`` the input's
  patches (im2col: one strided slice per tap, concatenated), and
* the input gradient is ``g @ kernel^T`` scattered back patch by patch (col2im: each tap's
  slice placed with ``lax.pad``, whose interior padding undoes the stride, and summed).

Both are the exact gradients of the same function (equal to autodiff's up to float
rounding). ``conv_general_dilated`` is a drop-in for ``lax.conv_general_dilated`` (the
arguments ``flax.linen.Conv`` passes) that takes this path on the CPU backend for NHWC/HWIO
convolutions with explicit padding and no grouping, where the kernel's shape says it pays
(``gemm_backward_pays``), and ``lax`` everywhere else (on GPUs and TPUs the vendor
libraries' backward passes are the fast ones).

The im2col/col2im arrays hold ``kh * kw * Cin`` values per output pixel, against ``Cout``
multiply-adds per value in the matrix products: with few output channels and a large patch
(HRNet's 3x3 transition from 128 to 16 channels: 4-5x slower than ``lax``'s backward on the
CPU this was measured on) the GEMM backward is memory-bound, while for 1x1 convolutions
(no im2col at all), widening convolutions and the warping head's offsets convs
(32 -> 306 channels) it is 1.5-3x faster than ``lax``'s.

Shapes: ``x [B, H, W, Cin]`` (NHWC), ``kernel [kh, kw, Cin, Cout]`` (HWIO).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv2d", "conv_general_dilated", "gemm_backward_pays"]

_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


def _out_size(size, pad, k, stride, dil):
    return (size + pad[0] + pad[1] - dil * (k - 1) - 1) // stride + 1


def _forward(x, kernel, strides, padding, dilation, precision):
    return lax.conv_general_dilated(
        x,
        kernel,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv2d(x, kernel, strides, padding, dilation, precision=None):
    """``lax.conv_general_dilated`` (NHWC, HWIO, explicit padding) with a GEMM backward.

    Args:
      x: ``[B, H, W, Cin]``.
      kernel: ``[kh, kw, Cin, Cout]``.
      strides, dilation: ``(sh, sw)``, ``(dh, dw)`` (kernel dilation).
      padding: ``((top, bottom), (left, right))``, each >= 0.
      precision: passed to the convolution and the matrix products.

    Returns:
      ``[B, Ho, Wo, Cout]``, the convolution's output (bitwise ``lax``'s).
    """
    return _forward(x, kernel, strides, padding, dilation, precision)


def _conv2d_fwd(x, kernel, strides, padding, dilation, precision):
    return _forward(x, kernel, strides, padding, dilation, precision), (x, kernel)


def _taps(kernel_hw, dilation):
    (kh, kw), (dh, dw) = kernel_hw, dilation
    return [(i * dh, j * dw) for i in range(kh) for j in range(kw)]


def _conv2d_bwd(strides, padding, dilation, precision, res, g):
    x, kernel = res
    b, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    (sh, sw), (pt, pb), (pl, pr) = strides, padding[0], padding[1]
    ho, wo = g.shape[1], g.shape[2]
    acc = jnp.promote_types(jnp.float32, x.dtype)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    hp, wp = xp.shape[1], xp.shape[2]
    taps = _taps((kh, kw), dilation)

    def tap_slice(a, oy, ox):  # the input pixels tap (oy, ox) reads, [B, Ho, Wo, Cin]
        return a[:, oy : oy + (ho - 1) * sh + 1 : sh, ox : ox + (wo - 1) * sw + 1 : sw]

    cols = jnp.concatenate([tap_slice(xp, oy, ox) for oy, ox in taps], axis=-1)
    contract_pixels = (((0, 1, 2), (0, 1, 2)), ((), ()))
    g_kernel = lax.dot_general(
        cols, g.astype(cols.dtype), contract_pixels, precision=precision, preferred_element_type=acc
    ).reshape(kh, kw, cin, cout)

    g_cols = lax.dot_general(
        g,
        kernel.reshape(-1, cout).astype(g.dtype),
        (((3,), (1,)), ((), ())),
        precision=precision,
        preferred_element_type=acc,
    )  # [B, Ho, Wo, kh * kw * Cin]
    g_xp = jnp.zeros((b, hp, wp, cin), acc)
    zero = jnp.zeros((), acc)
    for t, (oy, ox) in enumerate(taps):
        part = g_cols[..., t * cin : (t + 1) * cin]
        hi_y = hp - oy - (ho - 1) * sh - 1
        hi_x = wp - ox - (wo - 1) * sw - 1
        cfg = ((0, 0, 0), (oy, hi_y, sh - 1), (ox, hi_x, sw - 1), (0, 0, 0))
        g_xp = g_xp + lax.pad(part, zero, cfg)
    g_x = g_xp[:, pt : pt + h, pl : pl + w]
    return g_x.astype(x.dtype), g_kernel.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def gemm_backward_pays(kernel_shape) -> bool:
    """Whether ``conv2d``'s GEMM backward beats ``lax``'s on a CPU for an HWIO kernel shape:
    1x1 kernels (the products read the input and gradient as they are), and kernels with at
    least twice as many output as input channels (the stem's 3 -> 32, HRNet's downsampling
    transitions, the offsets convs). Measured per layer of HRNet ``small`` and the warping
    head at 128x96, batch 16 (``benchmarks/conv_backward.py`` checks it on another CPU)."""
    kh, kw, cin, cout = kernel_shape
    return kh * kw == 1 or cout >= 2 * cin


def _gemm_backward_applies(lhs, rhs, padding, lhs_dilation, dimension_numbers, groups) -> bool:
    if jax.default_backend() != "cpu" or groups != 1 or lhs.ndim != 4 or rhs.ndim != 4:
        return False
    if lhs_dilation not in (None, (1, 1)) or isinstance(padding, str):
        return False
    if any(lo < 0 or hi < 0 for lo, hi in padding):
        return False
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return dn == _NHWC


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
    *,
    backward: str = "auto",
):
    """``lax.conv_general_dilated``; on the CPU backend, ``conv2d``'s backward where it pays.

    Takes ``conv2d``'s path for 2-D NHWC/HWIO convolutions with explicit non-negative
    padding, no input dilation and no feature or batch grouping, when JAX's default backend
    is the CPU and ``backward`` allows it: ``"auto"`` where ``gemm_backward_pays(kernel
    shape)``, ``"gemm"`` always, ``"lax"`` never. Otherwise (and for
    ``preferred_element_type``) it calls ``lax`` unchanged.
    """
    if backward not in ("auto", "gemm", "lax"):
        raise ValueError(f"backward must be 'auto', 'gemm' or 'lax', got {backward!r}")
    padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    lhs_dilation = None if lhs_dilation is None else tuple(lhs_dilation)
    if (
        batch_group_count == 1
        and preferred_element_type is None
        and backward != "lax"
        and _gemm_backward_applies(
            lhs, rhs, padding, lhs_dilation, dimension_numbers, feature_group_count
        )
        and (backward == "gemm" or gemm_backward_pays(rhs.shape))  # HWIO once it applies
    ):
        strides = tuple(int(s) for s in window_strides)
        dilation = (1, 1) if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
        return conv2d(lhs, rhs, strides, padding, dilation, precision)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )

"""``ops.conv``: lax's forward pass, and a GEMM backward equal to autodiff of lax's conv
where the kernel's shape says it pays.

References: ``lax.conv_general_dilated`` and its autodiff gradients, ``Precision.HIGHEST``.
Tolerance: 1e-5 of each gradient's largest value (float32 sums in another order).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from posewarper_jax.models.layers import conv
from posewarper_jax.ops.conv import conv2d, conv_general_dilated, gemm_backward_pays

HIGHEST = lax.Precision.HIGHEST


def _lax(x, k, strides, padding, dilation):
    return lax.conv_general_dilated(
        x,
        k,
        strides,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=HIGHEST,
    )


CASES = [
    # (B, H, W, Cin, Cout, k, stride, dilation, padding)
    (2, 9, 7, 3, 5, 3, 1, 1, ((1, 1), (1, 1))),
    (2, 9, 8, 3, 5, 3, 2, 1, ((1, 1), (1, 1))),  # stride 2, odd height
    (1, 12, 9, 4, 6, 3, 1, 3, ((3, 3), (3, 3))),  # dilated (the offsets convs)
    (2, 8, 8, 4, 3, 1, 1, 1, ((0, 0), (0, 0))),  # 1x1
    (1, 7, 6, 2, 3, 3, 2, 2, ((1, 2), (2, 0))),  # uneven padding, stride and dilation
    (1, 11, 9, 3, 4, 5, 3, 1, ((2, 2), (2, 2))),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_forward_is_lax_and_gradients_equal_autodiff(case):
    b, h, w, ci, co, k, s, d, pad = case
    rng = np.random.default_rng(len(str(case)))
    x = jnp.asarray(rng.normal(size=(b, h, w, ci)), jnp.float32)
    kern = jnp.asarray(rng.normal(size=(k, k, ci, co)), jnp.float32)
    ref_out, ref_vjp = jax.vjp(lambda x, k: _lax(x, k, (s, s), pad, (d, d)), x, kern)
    out, vjp = jax.vjp(lambda x, k: conv2d(x, k, (s, s), pad, (d, d), HIGHEST), x, kern)
    np.testing.assert_array_equal(out, ref_out)  # the forward pass is lax's, bitwise
    cot = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    for got, want in zip(vjp(cot), ref_vjp(cot)):
        scale = float(jnp.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


def test_bfloat16_gradients_close_to_float32():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 8, 6, 4)).astype(np.float32)
    k = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    cot = rng.normal(size=(2, 8, 6, 5)).astype(np.float32)
    pad = ((1, 1), (1, 1))

    def grads(dtype):
        f = lambda x, k: conv2d(x, k, (1, 1), pad, (1, 1))  # noqa: E731
        _, vjp = jax.vjp(f, jnp.asarray(x, dtype), jnp.asarray(k, dtype))
        return vjp(jnp.asarray(cot, dtype))

    for g16, g32 in zip(grads(jnp.bfloat16), grads(jnp.float32)):
        assert g16.dtype == jnp.bfloat16
        scale = float(jnp.abs(g32).max())
        np.testing.assert_allclose(np.asarray(g16, np.float32), g32, rtol=0, atol=2e-2 * scale)


def test_drop_in_takes_the_gemm_path_on_cpu_only_where_it_applies():
    x = jnp.ones((1, 6, 5, 2))
    k = jnp.ones((3, 3, 2, 4))
    dn = lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))

    def jaxpr(**kw):
        f = lambda x, k: conv_general_dilated(x, k, (1, 1), **kw)  # noqa: E731
        return str(jax.make_jaxpr(f)(x, k))

    assert jax.default_backend() == "cpu"
    assert "custom_vjp_call" in jaxpr(padding=((1, 1), (1, 1)), dimension_numbers=dn)
    # Its gradient has no backward convolution: the forward conv only, then matrix products.
    f = lambda x, k: conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)  # noqa: E731
    grad = str(jax.make_jaxpr(jax.grad(lambda x, k: f(x, k).sum(), argnums=(0, 1)))(x, k))
    assert grad.count("conv_general_dilated[") == 1 and "dot_general" in grad
    # Anything else is lax's conv with lax's autodiff.
    assert "custom_vjp_call" not in jaxpr(padding="SAME", dimension_numbers=dn)
    assert "custom_vjp_call" not in jaxpr(
        padding=((1, 1), (1, 1)), dimension_numbers=dn, lhs_dilation=(2, 2)
    )
    nchw = lax.conv_dimension_numbers((1, 2, 6, 5), (4, 2, 3, 3), ("NCHW", "OIHW", "NCHW"))
    f = lambda x, k: conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=nchw)  # noqa: E731
    assert "custom_vjp_call" not in str(
        jax.make_jaxpr(f)(jnp.ones((1, 2, 6, 5)), jnp.ones((4, 2, 3, 3)))
    )


def test_flax_layer_gradients_equal_lax_layer():
    """The project's conv layer against the same flax layer on plain lax, stride 2."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 10, 8, 3)), jnp.float32)
    ours = conv(6, 3, 2, name="c")
    plain = nn.Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False)
    params = ours.init(jax.random.key(0), x)
    g_ours = jax.grad(lambda p: jnp.sum(ours.apply(p, x) ** 2))(params)
    g_plain = jax.grad(lambda p: jnp.sum(plain.apply(p, x) ** 2))(params)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))


def test_gemm_backward_only_where_the_kernel_shape_pays():
    """``backward="auto"`` takes the GEMM path for 1x1 and widening kernels only; ``"gemm"``
    and ``"lax"`` force either; the gradients agree whichever path is taken."""
    assert gemm_backward_pays((1, 1, 128, 32))  # 1x1: no im2col
    assert gemm_backward_pays((3, 3, 3, 32))  # the stem
    assert gemm_backward_pays((3, 3, 32, 306))  # the offsets convs
    assert gemm_backward_pays((3, 3, 16, 32))  # a downsampling transition
    assert not gemm_backward_pays((3, 3, 128, 16))  # HRNet's first transition
    assert not gemm_backward_pays((3, 3, 32, 32))  # a BasicBlock
    assert not gemm_backward_pays((3, 3, 17, 32))  # just under twice the input channels

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 8, 4)), jnp.float32)
    pad = ((1, 1), (1, 1))
    dn = lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))

    def conv_fn(backward):
        return lambda x, k: conv_general_dilated(
            x, k, (1, 1), pad, dimension_numbers=dn, precision=HIGHEST, backward=backward
        )

    def grads(backward):
        loss = lambda x, k: jnp.sum(conv_fn(backward)(x, k) ** 2)  # noqa: E731
        return jax.grad(loss, argnums=(0, 1))(x, k), str(jax.make_jaxpr(loss)(x, k))

    (g_auto, jaxpr_auto), (g_gemm, jaxpr_gemm), (g_lax, jaxpr_lax) = (
        grads(b) for b in ("auto", "gemm", "lax")
    )
    assert "custom_vjp_call" not in jaxpr_auto  # 8 -> 4 channels, 3x3: lax's backward
    assert "custom_vjp_call" in jaxpr_gemm
    assert "custom_vjp_call" not in jaxpr_lax
    for a, b in zip(g_gemm, g_lax):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))
    for a, b in zip(g_auto, g_lax):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="backward"):
        conv_fn("fast")(x, k)

"""The fused Pallas kernel of the multi-dilation deformable convolution against the jnp operator.

Off the GPU the kernel body runs through Pallas' interpreter, so these tests check the kernel's
own arithmetic, masks and backward (shapes are kept to a few programs: the interpreter is
slow). Its Triton lowering for CUDA is checked here too (no GPU needed to lower); the GPU run
itself is in ``benchmarks/deform_conv.py``. Tolerances: float32 everywhere (the kernel computes
in IEEE float32, the reference with ``Precision.HIGHEST``): 2e-5 relative to each array's
largest value.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posewarper_jax.models.warping import WarpingHead, get_head_config
from posewarper_jax.ops import deform_conv2d_multi
from posewarper_jax.ops.deform_conv_pallas import deform_conv2d_multi_pallas


def _inputs(seed, b=2, h=6, w=5, c=3, cout=4, dils=((1, 1), (3, 2)), k=(3, 3), scale=3.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, h, w, c)).astype(np.float32)
    taps = k[0] * k[1]
    offs = [(scale * rng.normal(size=(b, h, w, c * taps * 2))).astype(np.float32) for _ in dils]
    # Integer-valued offsets (corner kinks) and far-away / non-finite points (zero by the rule).
    offs[0][0, 0, 0, :4] = [1.0, -2.0, 0.0, 3.0]
    offs[-1][-1, -1, -1, :3] = [np.inf, -50.0, np.nan]
    ks = [rng.normal(size=(*k, c, cout)).astype(np.float32) for _ in dils]
    cot = rng.normal(size=(b, h, w, cout)).astype(np.float32)
    return x, offs, ks, cot, dils


def _reference(x, offs, ks, dils):
    return deform_conv2d_multi(
        x,
        offs,
        ks,
        dilations=dils,
        deformable_groups=x.shape[-1],
        precision=jax.lax.Precision.HIGHEST,
        impl="xla",
    )


def _close(got, want, rel=2e-5):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.all(np.isfinite(got)), "non-finite values"
    scale = max(float(np.abs(want).max()), 1e-6)
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * scale)


def _value_and_grads(fn, x, offs, ks, cot):
    out, vjp = jax.vjp(fn, x, offs, ks)
    return out, vjp(jnp.asarray(cot, out.dtype))


@pytest.mark.parametrize(
    "case",
    [
        dict(block_pixels=16, h=7, w=5),  # 3 blocks per image, the last one partial
        dict(block_pixels=32, k=(3, 5), dils=((2, 1),), c=2, cout=3, h=5, w=6, b=1),
    ],
    ids=["two-dilations-partial-blocks", "3x5-kernel-one-block"],
)
def test_forward_and_gradients_equal_the_jnp_operator(case):
    case = dict(case)
    bp = case.pop("block_pixels")
    x, offs, ks, cot, dils = _inputs(0, **case)
    pallas = functools.partial(
        deform_conv2d_multi_pallas, dilations=dils, interpret=True, block_pixels=bp
    )
    out, grads = _value_and_grads(pallas, x, offs, ks, cot)
    ref, ref_grads = _value_and_grads(lambda *a: _reference(*a, dils), x, offs, ks, cot)
    _close(out, ref)
    gx, goffs, gks = grads
    rx, roffs, rks = ref_grads
    _close(gx, rx)
    for g, r in zip(goffs, roffs):
        _close(g, r)
    for g, r in zip(gks, rks):
        _close(g, r)
    # The non-finite / far points read zero and pass no gradient.
    assert np.all(np.asarray(goffs[-1])[-1, -1, -1, :4] == 0)


def test_bfloat16_inputs_equal_the_jnp_operator_in_bfloat16():
    x, offs, ks, cot, dils = _inputs(1)
    xb = jnp.asarray(x, jnp.bfloat16)
    ob = [jnp.asarray(o, jnp.bfloat16) for o in offs]
    out = deform_conv2d_multi_pallas(xb, ob, ks, dilations=dils, interpret=True)
    ref = _reference(xb, ob, ks, dils)
    assert out.dtype == jnp.bfloat16
    # Both sample and contract in float32 and round once to bfloat16 (8 mantissa bits).
    _close(out, ref, rel=1e-2)


def test_switch_on_deform_conv2d_multi():
    x, offs, ks, _, dils = _inputs(2, dils=((1, 1), (2, 2)))
    c = x.shape[-1]
    kw = dict(dilations=dils, deformable_groups=c)
    # On this CPU backend "auto" is the jnp operator: no Pallas call in the program.
    jaxpr = str(jax.make_jaxpr(lambda *a: deform_conv2d_multi(*a, impl="auto", **kw))(x, offs, ks))
    assert "pallas_call" not in jaxpr
    jaxpr = str(
        jax.make_jaxpr(lambda *a: deform_conv2d_multi(*a, impl="pallas", **kw))(x, offs, ks)
    )
    assert "pallas_call" in jaxpr
    _close(deform_conv2d_multi(x, offs, ks, impl="pallas", **kw), _reference(x, offs, ks, dils))
    with pytest.raises(ValueError, match="impl must be one of"):
        deform_conv2d_multi(x, offs, ks, impl="triton", **kw)
    masks = [np.ones((*x.shape[:3], c * 9), np.float32)] * 2
    with pytest.raises(ValueError, match="masks are not supported"):
        deform_conv2d_multi(x, offs, ks, impl="pallas", mask=masks, **kw)
    with pytest.raises(ValueError, match="one channel per group"):
        one_group = [o[..., :18] for o in offs]
        deform_conv2d_multi(x, one_group, ks, impl="pallas", dilations=dils, deformable_groups=1)
    with pytest.raises(ValueError, match='reduce="mean"'):
        deform_conv2d_multi(x, offs, ks, impl="pallas", reduce=None, **kw)


def test_lowers_to_triton_for_cuda():
    """The kernel and its backward lower to Triton for CUDA (checked without a GPU)."""
    x, offs, ks, cot, dils = _inputs(3)

    def loss(offs, ks):
        out = deform_conv2d_multi_pallas(x, offs, ks, dilations=dils)
        return jnp.sum(out * cot)

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(offs, ks)
    text = text.lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == 2  # forward (residuals) and backward kernels


def test_warping_head_equal_with_either_implementation():
    cfg = get_head_config("tiny", num_joints=3, deform_impl="xla")
    rng = np.random.default_rng(4)
    psi = rng.normal(size=(1, 6, 5, 3)).astype(np.float32)
    maps = rng.normal(size=(1, 6, 5, 3)).astype(np.float32)
    variables = WarpingHead(cfg).init(jax.random.key(0), psi, maps)
    # Non-zero offsets convs, so the samples move.
    params = jax.tree.map(lambda v: v + 0.05, variables["params"])
    variables = {**variables, "params": params}
    out = {}
    for impl in ("xla", "pallas"):
        head = WarpingHead(get_head_config("tiny", num_joints=3, deform_impl=impl))
        out[impl] = head.apply(variables, psi, maps)
    _close(out["pallas"], out["xla"])
    with pytest.raises(ValueError, match="deform_impl must be one of"):
        get_head_config("tiny", deform_impl="cuda")

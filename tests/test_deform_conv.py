"""Deformable convolution against independent references.

References: a loop-by-loop NumPy transcription of the CUDA DCN forward and backward rules,
``lax.conv_general_dilated`` (zero / integer offsets), finite differences in float64.
Tolerances: float32 results vs the float64 NumPy reference 1e-5 (abs and rel); gradients vs the
NumPy backward 1e-4 (they sum C * Cout products); bf16 vs f32 3e-2 relative to the output scale.
"""

from __future__ import annotations

import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.test_util import check_grads

from posewarper_jax.ops import (
    bilinear_sample,
    deform_conv2d,
    deform_conv2d_multi,
)

# Jitted entry points: one compilation per shape instead of op-by-op dispatch (test time).
dc = jax.jit(deform_conv2d, static_argnames=("dilation", "padding", "deformable_groups"))
dcm = jax.jit(
    deform_conv2d_multi, static_argnames=("dilations", "deformable_groups", "reduce", "fused")
)

# ----------------------------------------------------------------------------------------------
# NumPy reference, written from the definition / the CUDA kernels, one sample at a time.
# ----------------------------------------------------------------------------------------------


def _in_range(y, x, h, w):
    return -1 < y < h and -1 < x < w


def ref_bilinear(img, y, x):
    """img [H, W] float64; the CUDA im2col rule with explicit corner checks."""
    h, w = img.shape
    if not _in_range(y, x, h, w):
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    total = 0.0
    for yy, xx, wt in (
        (y0, x0, (1 - ly) * (1 - lx)),
        (y0, x0 + 1, (1 - ly) * lx),
        (y0 + 1, x0, ly * (1 - lx)),
        (y0 + 1, x0 + 1, ly * lx),
    ):
        if 0 <= yy <= h - 1 and 0 <= xx <= w - 1:
            total += wt * img[yy, xx]
    return total


def ref_coordinate_weight(img, y, x, direction):
    """d sample / d y (direction 0) or d x (1) as the CUDA backward computes it."""
    h, w = img.shape
    if not _in_range(y, x, h, w):
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = y0 + 1, x0 + 1

    def v(yy, xx):
        return img[yy, xx] if 0 <= yy <= h - 1 and 0 <= xx <= w - 1 else 0.0

    if direction == 0:
        return (
            -(x0 + 1 - x) * v(y0, x0)
            - (x - x0) * v(y0, x1)
            + (x0 + 1 - x) * v(y1, x0)
            + (x - x0) * v(y1, x1)
        )
    return (
        -(y0 + 1 - y) * v(y0, x0)
        + (y0 + 1 - y) * v(y0, x1)
        - (y - y0) * v(y1, x0)
        + (y - y0) * v(y1, x1)
    )


def ref_image_weight(y, x, py, px, h, w):
    """Weight of pixel (py, px) in the sample at (y, x), as the CUDA col2im computes it."""
    if not _in_range(y, x, h, w):
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    if py == y0 and px == x0:
        return (py + 1 - y) * (px + 1 - x)
    if py == y0 and px == x0 + 1:
        return (py + 1 - y) * (x + 1 - px)
    if py == y0 + 1 and px == x0:
        return (y + 1 - py) * (px + 1 - x)
    if py == y0 + 1 and px == x0 + 1:
        return (y + 1 - py) * (x + 1 - px)
    return 0.0


def ref_forward(x, offsets, kernel, dil, pad, groups, mask=None):
    """Returns (out, cols, points); cols [B, Ho, Wo, kh, kw, C], points [B, Ho, Wo, G, K, 2]."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    b_, h, w, c = x.shape
    kh, kw, _, cout = kernel.shape
    (dh, dw), (ph, pw) = dil, pad
    ho, wo = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
    cg = c // groups
    k_all = kh * kw
    out = np.zeros((b_, ho, wo, cout))
    cols = np.zeros((b_, ho, wo, kh, kw, c))
    points = np.zeros((b_, ho, wo, groups, k_all, 2))
    for b, oh, ow, g, i, j in itertools.product(
        range(b_), range(ho), range(wo), range(groups), range(kh), range(kw)
    ):
        k = i * kw + j
        ch = g * 2 * k_all + 2 * k
        y = float(np.float32(oh - ph + i * dh) + np.float32(offsets[b, oh, ow, ch]))
        xx = float(np.float32(ow - pw + j * dw) + np.float32(offsets[b, oh, ow, ch + 1]))
        points[b, oh, ow, g, k] = (y, xx)
        m = 1.0 if mask is None else float(mask[b, oh, ow, g * k_all + k])
        for cc in range(g * cg, (g + 1) * cg):
            value = m * ref_bilinear(x[b, :, :, cc], y, xx)
            cols[b, oh, ow, i, j, cc] = value
            out[b, oh, ow] += value * kernel[i, j, cc]  # all Cout at once
    return out, cols, points


def ref_backward(x, offsets, kernel, dil, pad, groups, gout, mask=None):
    """CUDA backward rules: returns (d_x, d_offsets, d_kernel, d_mask) for cotangent gout."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    gout = np.asarray(gout, np.float64)
    _, cols, points = ref_forward(x, offsets, kernel, dil, pad, groups, mask)
    b_, h, w, c = x.shape
    kh, kw = kernel.shape[:2]
    k_all = kh * kw
    cg = c // groups
    ho, wo = gout.shape[1:3]
    dcol = np.einsum("bhwo,ijco->bhwijc", gout, kernel)
    d_kernel = np.einsum("bhwijc,bhwo->ijco", cols, gout)
    d_x = np.zeros_like(x)
    d_off = np.zeros(offsets.shape)
    d_mask = np.zeros((b_, ho, wo, groups * k_all))
    for b, oh, ow, g, i, j in itertools.product(
        range(b_), range(ho), range(wo), range(groups), range(kh), range(kw)
    ):
        k = i * kw + j
        y, xx = points[b, oh, ow, g, k]
        m = 1.0 if mask is None else float(mask[b, oh, ow, g * k_all + k])
        for cc in range(g * cg, (g + 1) * cg):
            top = dcol[b, oh, ow, i, j, cc]
            img = x[b, :, :, cc]
            for direction in (0, 1):
                d_off[b, oh, ow, g * 2 * k_all + 2 * k + direction] += (
                    ref_coordinate_weight(img, y, xx, direction) * top * m
                )
            d_mask[b, oh, ow, g * k_all + k] += top * ref_bilinear(img, y, xx)
            # col2im: pixels within distance < 1 around the truncated point, as in CUDA.
            cy, cx = int(y), int(xx)
            for dy, dx in itertools.product(range(-2, 3), range(-2, 3)):
                py, px = cy + dy, cx + dx
                if 0 <= py < h and 0 <= px < w and abs(y - py) < 1 and abs(xx - px) < 1:
                    d_x[b, py, px, cc] += ref_image_weight(y, xx, py, px, h, w) * top * m
    return d_x, d_off, d_kernel, d_mask


# ----------------------------------------------------------------------------------------------
# Test inputs
# ----------------------------------------------------------------------------------------------


def edge_targets(rng, shape, size):
    """Sample coordinates mixing every border case for an axis of length `size`."""
    kinds = rng.integers(0, 7, shape)
    cont = rng.uniform(-2.5, size + 1.5, shape)
    ints = rng.integers(-2, size + 2, shape).astype(np.float64)
    halves = ints + 0.5
    near_lo = -1 + rng.uniform(1e-3, 0.5, shape)  # -1 < t < -0.5
    near_hi = size - rng.uniform(1e-3, 0.5, shape)  # H - 1/2 < t < H
    far = rng.choice([-1.0, 1.0], shape) * rng.uniform(size + 5, size + 60, shape)
    exact = rng.choice([-1.0, 0.0, size - 1.0, float(size)], shape)  # invalid / on the edge
    return np.choose(kinds, [cont, ints, halves, near_lo, near_hi, far, exact])


def offsets_for(targets_y, targets_x, dil, pad, kernel_hw):
    """Offsets [B, Ho, Wo, G*K*2] whose sample points are the targets [B, Ho, Wo, G, K]."""
    b, ho, wo, g, k = targets_y.shape
    kh, kw = kernel_hw
    ti = np.repeat(np.arange(kh), kw) * dil[0]
    tj = np.tile(np.arange(kw), kh) * dil[1]
    base_y = (np.arange(ho) - pad[0])[:, None, None, None] + ti  # [Ho, 1, 1, K]
    base_x = (np.arange(wo) - pad[1])[:, None, None] + tj  # [Wo, 1, K]
    dy = (targets_y - base_y).astype(np.float32)
    dx = (targets_x - base_x).astype(np.float32)
    return np.stack([dy, dx], axis=-1).reshape(b, ho, wo, g * k * 2)


def dilated_conv(x, kernel, d, pad=None):
    pad = d if pad is None else pad
    return lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        [(pad, pad), (pad, pad)],
        rhs_dilation=(d, d),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )


CASES = [
    # (B, H, W, Cin, Cout, G, kh, kw, dilation, padding, with mask)
    (2, 7, 6, 4, 3, 2, 3, 3, (1, 1), None, False),
    (1, 6, 7, 3, 2, 3, 3, 3, (2, 3), (1, 2), True),
    (1, 5, 6, 2, 2, 1, 3, 2, (1, 2), (0, 1), False),
]


def make_case(case, seed, edge=True):
    b, h, w, cin, cout, g, kh, kw, dil, pad, with_mask = case
    rng = np.random.default_rng(seed)
    pad_hw = (dil[0] * (kh - 1) // 2, dil[1] * (kw - 1) // 2) if pad is None else pad
    ho, wo = h + 2 * pad_hw[0] - dil[0] * (kh - 1), w + 2 * pad_hw[1] - dil[1] * (kw - 1)
    x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
    kernel = rng.normal(size=(kh, kw, cin, cout)).astype(np.float32)
    shape = (b, ho, wo, g, kh * kw)
    if edge:
        ty, tx = edge_targets(rng, shape, h), edge_targets(rng, shape, w)
    else:  # fractional parts in [0.15, 0.85], at least 0.15 inside the valid range
        ty = rng.integers(-1, h, shape) + rng.uniform(0.15, 0.85, shape)
        tx = rng.integers(-1, w, shape) + rng.uniform(0.15, 0.85, shape)
    offsets = offsets_for(ty, tx, dil, pad_hw, (kh, kw))
    mask = rng.uniform(0.0, 1.5, (b, ho, wo, g * kh * kw)).astype(np.float32) if with_mask else None
    kwargs = dict(dilation=dil, padding=pad, deformable_groups=g)
    return x, offsets, kernel, mask, kwargs, pad_hw


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_numpy_reference(case):
    x, offsets, kernel, mask, kwargs, pad_hw = make_case(case, seed=0)
    got = dc(x, offsets, kernel, mask=mask, **kwargs)
    want, _, _ = ref_forward(x, offsets, kernel, kwargs["dilation"], pad_hw, case[5], mask)
    assert got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_bilinear_sample_matches_reference():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    y = edge_targets(rng, (2, 40), 5).astype(np.float32)
    x = edge_targets(rng, (2, 40), 4).astype(np.float32)
    got = np.asarray(jax.jit(bilinear_sample)(img, y, x))
    want = np.array(
        [
            [[ref_bilinear(img[b, :, :, c], y[b, n], x[b, n]) for c in range(3)] for n in range(40)]
            for b in range(2)
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


DILATIONS = (3, 6, 12, 18, 24)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_zero_offsets_equal_dilated_conv(groups):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 30, 26, 4)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 4, 3)).astype(np.float32)
    zeros = np.zeros((1, 30, 26, groups * 18), np.float32)

    @jax.jit
    def both(x, zeros, kernel):  # one compilation for all dilations
        got = [deform_conv2d(x, zeros, kernel, dilation=d, deformable_groups=groups)
               for d in DILATIONS]  # fmt: skip
        return jnp.stack(got), jnp.stack([dilated_conv(x, kernel, d) for d in DILATIONS])

    got, want = both(x, zeros, kernel)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_integer_offsets_equal_shifted_conv():
    """A constant integer offset (ty, tx) per group == a VALID dilated conv of the zero-padded
    input, each group's window shifted by its (ty, tx)."""
    rng = np.random.default_rng(3)
    b, h, w, c, g, m = 1, 9, 8, 4, 2, 20
    x = rng.normal(size=(b, h, w, c)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, c, 2)).astype(np.float32)
    shifts = [(2, -3), (-9, 1)]  # the second puts most samples of its group above row 0
    big = np.pad(x, ((0, 0), (m, m), (m, m), (0, 0)))
    for d in (1, 2):
        offsets = np.zeros((b, h, w, g, 9, 2), np.float32)
        window = np.zeros((b, h + 2 * d, w + 2 * d, c), np.float32)
        for gi, (ty, tx) in enumerate(shifts):
            offsets[..., gi, :, :] = (ty, tx)
            sl = slice(gi * (c // g), (gi + 1) * (c // g))
            y0, x0 = m - d + ty, m - d + tx
            window[..., sl] = big[:, y0 : y0 + h + 2 * d, x0 : x0 + w + 2 * d, sl]
        got = dc(x, offsets.reshape(b, h, w, -1), kernel, dilation=d, deformable_groups=g)
        want = dilated_conv(window, kernel, d, pad=0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES[:2])
def test_gradients_follow_cuda_backward_at_edges(case):
    """Integer / on-edge / out-of-range points: the one-sided rules of the CUDA backward."""
    x, offsets, kernel, mask, kwargs, pad_hw = make_case(case, seed=4)
    g = case[5]

    def f(x_, off_, k_, m_):
        return deform_conv2d(x_, off_, k_, mask=m_, **kwargs)

    m_in = mask if mask is not None else np.ones(offsets.shape[:3] + (g * 9,), np.float32)
    out_shape = jax.eval_shape(f, x, offsets, kernel, m_in).shape
    gout = np.random.default_rng(5).normal(size=out_shape).astype(np.float32)
    vjp = jax.jit(lambda *a: jax.vjp(f, *a)[1](jnp.asarray(gout)))
    d_x, d_off, d_k, d_m = vjp(x, offsets, kernel, m_in)
    r_x, r_off, r_k, r_m = ref_backward(
        x, offsets, kernel, kwargs["dilation"], pad_hw, g, gout, m_in
    )
    for got, want in ((d_x, r_x), (d_off, r_off), (d_k, r_k), (d_m, r_m)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_flat_gathers_match_numpy_reference_and_batched_gathers(monkeypatch, case):
    """The single-device form (one table for the whole batch) against the NumPy forward and
    backward, and against the batched form (the suite's 8 fake devices) to 1e-6."""
    from posewarper_jax.ops import deform_conv as module

    x, offsets, kernel, mask, kwargs, pad_hw = make_case(case, seed=12)
    g = case[5]
    m_in = (
        mask
        if mask is not None
        else np.ones(offsets.shape[:3] + (g * case[6] * case[7],), np.float32)
    )

    def f(x_, off_, k_, m_):
        return deform_conv2d(x_, off_, k_, mask=m_, **kwargs)

    out_shape = jax.eval_shape(f, x, offsets, kernel, m_in).shape
    gout = jnp.asarray(np.random.default_rng(13).normal(size=out_shape).astype(np.float32))
    results = {}
    for flat in (True, False):
        monkeypatch.setattr(module, "_flat_gathers", lambda flat=flat: flat)
        # A new function per form: jit's cache would otherwise keep the first trace.
        results[flat] = jax.jit(lambda *a: jax.vjp(lambda *b: f(*b), *a))(x, offsets, kernel, m_in)
        results[flat] = (results[flat][0], results[flat][1](gout))
    out, grads = results[True]
    want, _, _ = ref_forward(x, offsets, kernel, kwargs["dilation"], pad_hw, g, m_in)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
    refs = ref_backward(x, offsets, kernel, kwargs["dilation"], pad_hw, g, np.asarray(gout), m_in)
    for got, ref in zip(grads, refs):
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES[1:])
def test_finite_difference_gradients(case):
    """float64 finite differences (first order, both modes) for x, offsets, kernel, mask."""
    x, offsets, kernel, mask, kwargs, _ = make_case(case, seed=6, edge=False)
    if mask is None:
        mask = np.random.default_rng(7).uniform(0.5, 1.5, offsets.shape[:3] + (case[5] * 6,))
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in (x, offsets, kernel, mask)]

        @jax.jit
        def f(x_, off_, k_, m_):
            return deform_conv2d(x_, off_, k_, mask=m_, **kwargs)

        assert f(*args).dtype == jnp.float64
        check_grads(f, args, order=1, modes=("fwd", "rev"), eps=1e-5, atol=1e-6, rtol=1e-6)


def test_finite_difference_gradients_multi():
    rng = np.random.default_rng(8)
    b, h, w, c, dils = 1, 8, 7, 3, (1, 2, 4)
    offs = [offsets_for(*(rng.integers(-1, s, (b, h, w, c, 9)) + rng.uniform(0.15, 0.85,
                                                                         (b, h, w, c, 9))
                          for s in (h, w)), (d, d), (d, d), (3, 3)) for d in dils]  # fmt: skip
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(b, h, w, c)))
        ks = [jnp.asarray(rng.normal(size=(3, 3, c, c))) for _ in dils]
        offs = [jnp.asarray(o, jnp.float64) for o in offs]

        @jax.jit
        def f(x_, offs_, ks_):  # both evaluations of the multi form
            kw = dict(dilations=dils, deformable_groups=c)
            return tuple(deform_conv2d_multi(x_, offs_, ks_, fused=f, **kw) for f in (False, True))

        check_grads(f, (x, offs, ks), order=1, modes=("rev",), eps=1e-5, atol=1e-6, rtol=1e-6)


def _small_problem(seed=9, b=2, h=6, w=5, c=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, h, w, c)).astype(np.float32)
    offsets = (2 * rng.normal(size=(b, h, w, c * 18))).astype(np.float32)
    kernel = rng.normal(size=(3, 3, c, c)).astype(np.float32)
    return x, offsets, kernel


def _loss(x, offsets, kernel):
    return jnp.sum(deform_conv2d(x, offsets, kernel, dilation=2, deformable_groups=3) ** 2)


def _primitives(jaxpr) -> set[str]:
    """Names of all primitives in a jaxpr, nested jaxprs (jit, custom rules) included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    names |= _primitives(sub)
    return names


_HLO_SCATTER = re.compile(r"\sscatter\(")  # the opcode, not metadata names


def test_offset_and_kernel_gradients_use_no_scatter():
    x, offsets, kernel = _small_problem()
    # grad w.r.t. offsets only: no scatter primitive anywhere in the traced program.
    prims = _primitives(jax.make_jaxpr(jax.grad(_loss, argnums=1))(x, offsets, kernel).jaxpr)
    assert "gather" in prims and not any("scatter" in p for p in prims), prims
    # grad w.r.t. (offsets, kernel) -- x frozen, as in stage 2: none in the compiled HLO either.
    hlo = jax.jit(jax.grad(_loss, argnums=(1, 2))).lower(x, offsets, kernel).compile().as_text()
    assert not _HLO_SCATTER.search(hlo)
    # Same for the DCNv2 mask and for both evaluations of the multi-dilation form.
    mask = np.random.default_rng(11).uniform(size=offsets.shape[:3] + (27,)).astype(np.float32)

    def loss_mask(o, k, m):
        return jnp.sum(deform_conv2d(x, o, k, dilation=2, deformable_groups=3, mask=m) ** 2)

    def loss_multi(offs, ks):
        kw = dict(dilations=(1, 2), deformable_groups=3)
        outs = [deform_conv2d_multi(x, offs, ks, fused=f, **kw) for f in (False, True)]
        return jnp.sum(outs[0] ** 2) + jnp.sum(outs[1] ** 2)

    for fn, args in (
        (loss_mask, (offsets, kernel, mask)),
        (loss_multi, ([offsets, -offsets], [kernel, kernel])),
    ):
        grad = jax.jit(jax.grad(fn, argnums=tuple(range(len(args)))))
        assert not _HLO_SCATTER.search(grad.lower(*args).compile().as_text())
    # Controls: the x gradient is a scatter-add, so the checks above can fail.
    prims_x = _primitives(jax.make_jaxpr(jax.grad(_loss, argnums=0))(x, offsets, kernel).jaxpr)
    assert any("scatter" in p for p in prims_x), prims_x
    hlo_x = jax.jit(jax.grad(_loss, argnums=0)).lower(x, offsets, kernel).compile().as_text()
    assert _HLO_SCATTER.search(hlo_x)


# ----------------------------------------------------------------------------------------------
# Transformations, sharding, multi-dilation form, dtypes, errors
# ----------------------------------------------------------------------------------------------


def test_jit_and_vmap_agree_with_eager():
    x, offsets, kernel = _small_problem()
    eager = deform_conv2d(x, offsets, kernel, dilation=2, deformable_groups=3)
    jitted = dc(x, offsets, kernel, dilation=2, deformable_groups=3)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
    # vmap over a leading axis (here: two kernels, the batch kept) == one call per kernel.
    kernels = np.stack([kernel, -0.5 * kernel])
    mapped = jax.jit(
        jax.vmap(lambda k: deform_conv2d(x, offsets, k, dilation=2, deformable_groups=3))
    )(kernels)
    np.testing.assert_allclose(mapped[0], eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mapped[1], -0.5 * eager, rtol=1e-5, atol=1e-5)
    # vmap over x and offsets (an extra batch axis).
    xs, offs = np.stack([x, x[::-1]]), np.stack([offsets, offsets[::-1]])
    mapped = jax.jit(
        jax.vmap(lambda a, o: deform_conv2d(a, o, kernel, dilation=2, deformable_groups=3))
    )(xs, offs)
    np.testing.assert_allclose(mapped[1], eager[::-1], rtol=1e-6, atol=1e-6)
    # grad under vmap agrees with per-example grads.
    grad = jax.grad(_loss, argnums=1)
    gs = jax.jit(jax.vmap(grad))(xs, offs, np.stack([kernel, kernel]))
    np.testing.assert_allclose(gs[1], jax.jit(grad)(x[::-1], offsets[::-1], kernel), rtol=1e-5)


def test_batch_sharded_equals_unsharded():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices, set by tests/conftest.py")
    x, offsets, kernel = _small_problem(b=8, h=5, w=4)
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    batch, rep = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    args = [jax.device_put(a, s) for a, s in ((x, batch), (offsets, batch), (kernel, rep))]
    fwd = jax.jit(
        lambda a, o, k: deform_conv2d(a, o, k, dilation=2, deformable_groups=3),
        in_shardings=(batch, batch, rep),
        out_shardings=batch,
    )
    fwd = fwd.lower(*args).compile()
    # The gather is batch-parallel: no device fetches another's part of the input.
    assert "all-gather" not in fwd.as_text()
    got = fwd(*args)
    assert got.sharding.is_equivalent_to(batch, got.ndim)
    np.testing.assert_allclose(got, dc(x, offsets, kernel, dilation=2, deformable_groups=3),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    grad = jax.grad(_loss, argnums=(1, 2))
    g_sh = jax.jit(grad, in_shardings=(batch, batch, rep))(*args)
    g_ref = jax.jit(grad)(x, offsets, kernel)
    for a, b in zip(g_sh, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _multi_inputs(seed=10, b=1, h=30, w=26, c=3, dils=DILATIONS, scale=3.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, h, w, c)).astype(np.float32)
    offs = [(scale * rng.normal(size=(b, h, w, c * 18))).astype(np.float32) for _ in dils]
    ks = [rng.normal(size=(3, 3, c, c)).astype(np.float32) for _ in dils]
    masks = [rng.uniform(0, 1, (b, h, w, c * 9)).astype(np.float32) for _ in dils]
    return x, offs, ks, masks, dils


@jax.jit
def _separate_calls(x, offs, ks, masks):
    """Reference for the multi form: one deform_conv2d per dilation, stacked [D, B, H, W, C]."""
    dils, c = DILATIONS, x.shape[-1]
    masks = [None] * len(dils) if masks is None else masks
    return jnp.stack([
        deform_conv2d(x, o, k, dilation=d, deformable_groups=c, mask=m)
        for o, k, d, m in zip(offs, ks, dils, masks)
    ])  # fmt: skip


@pytest.mark.parametrize("use_mask", [False, True])
def test_multi_equals_mean_of_separate_calls(use_mask):
    x, offs, ks, masks, dils = _multi_inputs()
    mask = masks if use_mask else None
    sep = np.asarray(_separate_calls(x, offs, ks, mask))
    kw = dict(dilations=dils, deformable_groups=x.shape[-1], mask=mask)
    for fused in (False, True):
        mean = dcm(x, offs, ks, fused=fused, **kw)
        np.testing.assert_allclose(mean, sep.mean(0), rtol=1e-5, atol=1e-5)
        if not use_mask:
            stacked = dcm(x, offs, ks, reduce=None, fused=fused, **kw)
            np.testing.assert_allclose(stacked, sep, rtol=1e-5, atol=1e-5)


def test_multi_identity_initialisation_returns_input():
    """Zero offsets + identity kernels (centre tap, k -> k): the warping head's initial state."""
    x, offs, _, _, dils = _multi_inputs(c=5)
    eye = np.zeros((3, 3, 5, 5), np.float32)
    eye[1, 1] = np.eye(5)
    zeros = [np.zeros_like(o) for o in offs]
    out = dcm(x, zeros, [eye] * len(dils), dilations=dils, deformable_groups=5)
    np.testing.assert_allclose(out, x, rtol=1e-6, atol=1e-6)
    # And the zero-offset branches are the dilated convolutions for any kernel.
    _, _, ks, _, _ = _multi_inputs(c=5)
    out = dcm(x, zeros, ks, dilations=dils, deformable_groups=5, reduce=None)
    for o, k, d in zip(out, ks, dils):
        np.testing.assert_allclose(o, dilated_conv(x, k, d), rtol=1e-5, atol=1e-5)


def test_bfloat16_close_to_float32():
    x, offs, ks, masks, dils = _multi_inputs(b=1, h=12, w=10, dils=(1, 3))
    c = x.shape[-1]
    f32 = dc(x, offs[0], ks[0], deformable_groups=c, mask=masks[0])
    bf = dc(
        jnp.asarray(x, jnp.bfloat16),
        jnp.asarray(offs[0], jnp.bfloat16),
        jnp.asarray(ks[0], jnp.bfloat16),
        deformable_groups=c,
        mask=jnp.asarray(masks[0], jnp.bfloat16),
    )
    assert bf.dtype == jnp.bfloat16
    scale = float(np.abs(f32).max())
    # bf16 inputs (offsets included) carry 2^-8 relative rounding; 3e-2 of the output scale.
    np.testing.assert_allclose(np.asarray(bf, np.float32), f32, atol=3e-2 * scale)
    multi_bf = dcm(
        jnp.asarray(x, jnp.bfloat16),
        [jnp.asarray(o, jnp.bfloat16) for o in offs],
        [jnp.asarray(k, jnp.bfloat16) for k in ks],
        dilations=dils,
        deformable_groups=c,
    )
    multi_f32 = dcm(x, offs, ks, dilations=dils, deformable_groups=c)
    assert multi_bf.dtype == jnp.bfloat16
    scale = float(np.abs(multi_f32).max())
    np.testing.assert_allclose(np.asarray(multi_bf, np.float32), multi_f32, atol=3e-2 * scale)


def _bad_calls():
    x = np.zeros((2, 6, 5, 4), np.float32)
    k = np.zeros((3, 3, 4, 3), np.float32)
    off = np.zeros((2, 6, 5, 2 * 18), np.float32)
    msk = np.zeros((2, 6, 5, 2 * 9), np.float32)
    kw = dict(deformable_groups=2)
    d12 = dict(kw, dilations=(1, 2))
    return [
        ("x", lambda: deform_conv2d(x[0], off, k, **kw)),
        ("x", lambda: deform_conv2d(x.astype(np.int32), off, k, **kw)),
        ("kernel", lambda: deform_conv2d(x, off, k[..., :3, :], **kw)),
        ("kernel", lambda: deform_conv2d(x, off, k[0], **kw)),
        ("deformable_groups", lambda: deform_conv2d(x, off, k, deformable_groups=3)),
        ("deformable_groups", lambda: deform_conv2d(x, off, k, deformable_groups=0)),
        ("offsets", lambda: deform_conv2d(x, off[..., :-2], k, **kw)),
        ("offsets", lambda: deform_conv2d(x, off[:1], k, **kw)),
        ("offsets", lambda: deform_conv2d(x, off, k, padding=0, **kw)),
        ("mask", lambda: deform_conv2d(x, off, k, mask=msk[..., :9], **kw)),
        ("dilation", lambda: deform_conv2d(x, off, k, dilation=0, **kw)),
        ("dilation", lambda: deform_conv2d(x, off, k, dilation=(1, 2, 3), **kw)),
        ("padding", lambda: deform_conv2d(x, off, k, padding=-1, **kw)),
        ("padding", lambda: deform_conv2d(x, off, k, dilation=4, padding=0, **kw)),
        ("offsets", lambda: deform_conv2d_multi(x, [off], [k, k], **d12)),
        ("kernels", lambda: deform_conv2d_multi(x, [off, off], [k], **d12)),
        ("kernels", lambda: deform_conv2d_multi(x, [off] * 2, [k, k[:2]], **d12)),
        ("kernels", lambda: deform_conv2d_multi(x, [off] * 2, [k[:2, :2]] * 2, **d12)),
        ("offsets[1]", lambda: deform_conv2d_multi(x, [off, off[1:]], [k] * 2, **d12)),
        ("mask", lambda: deform_conv2d_multi(x, [off] * 2, [k] * 2, mask=[msk], **d12)),
        ("mask[0]", lambda: deform_conv2d_multi(x, [off] * 2, [k] * 2, mask=[off, msk], **d12)),
        ("dilations", lambda: deform_conv2d_multi(x, [], [], dilations=(), **kw)),
        ("reduce", lambda: deform_conv2d_multi(x, [off], [k], dilations=(1,), reduce="max", **kw)),
    ]  # fmt: skip


@pytest.mark.parametrize("name,call", _bad_calls())
def test_bad_arguments_raise_value_error_naming_them(name, call):
    with pytest.raises(ValueError, match=r"(^|\W)" + re.escape(name) + r"(?!\w)"):
        call()

"""Deformable convolution (DCNv1, optional DCNv2 modulation) in pure JAX, NHWC.

Definition, for output pixel (h, w), kernel tap (i, j) (k = i * kw + j), deformable group g:

    y = h - ph + i * dh + dy[g, k](h, w)        x = w - pw + j * dw + dx[g, k](h, w)
    out[o](h, w) = sum_{k, c} kernel[i, j, c, o] * m[g(c), k](h, w) * sample_c(y, x)

with pixel centres at integers (y down, x right), stride 1, ``m`` the optional DCNv2 mask (1 for
DCNv1) and ``sample_c`` bilinear sampling of input channel c under the border rule of the
original CUDA kernels (``posewarper_jax.ops.sampling``): a point with ``y <= -1``, ``y >= H``,
``x <= -1`` or ``x >= W`` is 0, otherwise each of the 4 corner pixels outside the image counts as
0. With zero offsets this is exactly a dilated convolution with zero padding.

Offsets keep the channel layout of the CUDA kernels: ``[B, Ho, Wo, G * kh * kw * 2]``, group
major, then tap ``k = i * kw + j``, then ``(dy, dx)``: channel ``g * 2 * kh * kw + 2 * k`` holds
dy and the next one dx. Input channel c belongs to group ``c // (Cin // G)``.

Sampling (``_sample``) reads the four corners of each point with four gathers from the
zero-padded input, in (group, tap) order, so each pixel's offsets are read in the order they
are stored. Its derivative is its own rule (``jax.custom_jvp``): the two coefficient maps of
the offsets' tangent are formed with the samples, so the reverse pass needs no gather for the
offsets, and the input's gradient (a scatter-add) is computed only where it is needed. The
contraction with the kernel and the DCNv2 mask are differentiated by JAX. At integer sample
coordinates the offset gradient is the one-sided (right) derivative, and it is 0 for points
outside the open range above, as in the CUDA backward.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from posewarper_jax.ops.deform_conv_pallas import deform_conv2d_multi_pallas, pallas_supported
from posewarper_jax.ops.sampling import sample_dtype

__all__ = ["IMPLS", "deform_conv2d", "deform_conv2d_multi"]

IMPLS = ("xla", "pallas", "auto")  # implementations of deform_conv2d_multi


def _int_pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a pair."""
    try:
        pair = (operator.index(value),) * 2
    except TypeError:
        try:
            pair = tuple(operator.index(v) for v in value)
        except TypeError:
            pair = ()
    if len(pair) != 2 or min(pair) < minimum:
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {value!r}")
    return pair


def _check_float(name: str, array) -> None:
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {array.dtype}")


def _check_input(x, kernel_shape: tuple[int, ...], kernel_name: str, groups) -> tuple[int, int]:
    """Checks x against a [kh, kw, Cin, Cout] kernel shape; returns (G, Cin // G)."""
    _check_float("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must be [B, H, W, Cin], got shape {x.shape}")
    if len(kernel_shape) != 4:
        raise ValueError(f"{kernel_name} must be [kh, kw, Cin, Cout], got shape {kernel_shape}")
    cin = x.shape[3]
    if kernel_shape[2] != cin:
        raise ValueError(
            f"{kernel_name} must be [kh, kw, Cin={cin}, Cout] to match x {x.shape}, "
            f"got shape {kernel_shape}"
        )
    try:
        g = operator.index(groups)
    except TypeError:
        g = 0
    if g < 1 or cin % g:
        raise ValueError(
            f"deformable_groups must be a positive int dividing Cin={cin}, got {groups!r}"
        )
    return g, cin // g


def _check_offsets(name, offsets, shape) -> None:
    _check_float(name, offsets)
    if tuple(offsets.shape) != shape:
        raise ValueError(
            f"{name} must be [B, Ho, Wo, G * kh * kw * 2] = {shape} (group-major, tap-major, "
            f"(dy, dx)), got shape {tuple(offsets.shape)}"
        )


def _check_mask(name, mask, shape) -> None:
    _check_float(name, mask)
    if tuple(mask.shape) != shape:
        raise ValueError(
            f"{name} must be [B, Ho, Wo, G * kh * kw] = {shape} (group-major, tap-major), "
            f"got shape {tuple(mask.shape)}"
        )


def _contract(cols, kernel, out_dtype, precision):
    """cols [B, Ho, Wo, F] (any float) @ kernel [F, Cout] -> float32 [B, Ho, Wo, Cout]."""
    cols = cols.astype(out_dtype)
    return lax.dot_general(
        cols,
        kernel.astype(out_dtype),
        (((3,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=sample_dtype(out_dtype),
    )


# ----------------------------------------------------------------------------- sampling


class _Geometry(NamedTuple):
    """One deformable convolution's sizes, static under jit (``flat``: ``_flat_gathers()``)."""

    b: int
    h: int
    w: int
    g: int
    cg: int
    ho: int
    wo: int
    kh: int
    kw: int
    dh: int
    dw: int
    ph: int
    pw: int
    flat: bool

    @property
    def steps(self) -> tuple[int, int]:
        """Row steps of ``_pad_rows`` to the next column and to the next row."""
        return self.g, (self.w + 3) * self.g


def _pad_rows(x, groups: int):
    """``x [B, H, W, G * Cg]`` -> ``[B, (H + 3) * (W + 3) * G, Cg]``: the input with 2 zero
    rows and columns before and 1 after, one row per (pixel, group). Row 0 is zeros."""
    b, h, w, cin = x.shape
    xp = jnp.pad(x, ((0, 0), (2, 1), (2, 1), (0, 0)))
    return xp.reshape(b, (h + 3) * (w + 3) * groups, cin // groups)


def _flat_gathers() -> bool:
    """Gather from the rows of all examples as one table (True) or with the batch as a
    batching axis of each gather (False).

    Both read the same values. The flat form is the fast one on XLA's CPU backend, which
    turns a batching axis into an extra index array that it writes out (the warping head's
    deformable convolutions took 3x as long forward at the CPU default's shapes); but a
    batch-sharded call then gathers across devices. So the flat form is taken where there
    is one device, the batched one where the batch may be split.
    """
    return jax.device_count() == 1


def _take(table, idx, flat: bool):
    """``table [B, R, C]``, ``idx`` int32 ``[B, ...]`` in ``[0, R)`` -> ``[B, ..., C]``."""
    b, r, c = table.shape
    if flat:
        shift = (jnp.arange(b, dtype=jnp.int32) * r).reshape((b,) + (1,) * (idx.ndim - 1))
        return table.reshape(b * r, c).at[idx + shift].get(mode="promise_in_bounds")
    dnums = lax.GatherDimensionNumbers(
        offset_dims=(idx.ndim,),
        collapsed_slice_dims=(1,),
        start_index_map=(1,),
        operand_batching_dims=(0,),
        start_indices_batching_dims=(0,),
    )
    return lax.gather(
        table,
        idx[..., None],
        dnums,
        slice_sizes=(1, 1, c),
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )


def _corners(offsets, geom, dtype):
    """Row index of each point's top-left corner and its fractional parts.

    Returns ``idx`` int32 ``[B, Ho, Wo, G, K]`` (into ``_pad_rows``), ``ly``, ``lx``
    ``[B, Ho, Wo, G, K, 1]`` in ``dtype`` and ``valid`` bool ``[B, Ho, Wo, G, K]``. A point
    outside the open range (``y <= -1``, ...; NaN too) is moved to (-2, -2): its corners are
    all zero padding and its fractional parts 0.
    """
    b, h, w, g, _, ho, wo, kh, kw, dh, dw, ph, pw, _ = geom
    off = offsets.reshape(b, ho, wo, g, kh * kw, 2).astype(dtype)
    # Integer tap positions, made float before the offset is added (as the CUDA kernel does).
    tap_y = np.repeat(np.arange(kh), kw) * dh  # [K]
    tap_x = np.tile(np.arange(kw), kh) * dw
    base_y = (np.arange(ho) - ph)[:, None, None, None] + tap_y  # [Ho, 1, 1, K]
    base_x = (np.arange(wo) - pw)[:, None, None] + tap_x  # [Wo, 1, K]
    y = jnp.asarray(base_y, dtype) + off[..., 0]
    x = jnp.asarray(base_x, dtype) + off[..., 1]
    valid = (y > -1) & (y < h) & (x > -1) & (x < w)
    y = jnp.where(valid, y, -2)
    x = jnp.where(valid, x, -2)
    y0, x0 = jnp.floor(y), jnp.floor(x)
    pix = (y0.astype(jnp.int32) + 2) * (w + 3) + x0.astype(jnp.int32) + 2
    idx = pix * g + jnp.arange(g, dtype=jnp.int32)[:, None]
    return idx, (y - y0)[..., None], (x - x0)[..., None], valid


def _gather4(rows, idx, geom, dtype):
    """The four corners ``[B, Ho, Wo, G, K, Cg]`` in ``dtype``: (y0, x0), (y0, x0 + 1),
    (y0 + 1, x0), (y0 + 1, x0 + 1)."""
    step_x, step_y = geom.steps
    return tuple(
        _take(rows, idx + d, geom.flat).astype(dtype) for d in (0, step_x, step_y, step_y + step_x)
    )


def _bilinear(corners, ly, lx):
    v00, v01, v10, v11 = corners
    top = v00 + lx * (v01 - v00)
    bottom = v10 + lx * (v11 - v10)
    return top + ly * (bottom - top)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _sample(rows, offsets, geom, dtype_name):
    """Bilinear samples of every (output pixel, group, tap): ``[B, Ho, Wo, G, K, Cg]``."""
    dtype = jnp.dtype(dtype_name)
    idx, ly, lx, _ = _corners(offsets, geom, dtype)
    return _bilinear(_gather4(rows, idx, geom, dtype), ly, lx)


@functools.partial(_sample.defjvp, symbolic_zeros=True)
def _sample_jvp(geom, dtype_name, primals, tangents):
    """The derivative at fixed corners (one-sided at integer coordinates, 0 outside the open
    range). The offsets' coefficients read a table of the input's differences, so that no
    gathered value is used twice (XLA then keeps every gather inside its loop); the
    input's tangent, where there is one, is the sampling of the input's tangent, whose
    transpose is a scatter-add."""
    rows, offsets = primals
    rows_dot, off_dot = tangents
    dtype = jnp.dtype(dtype_name)
    idx, ly, lx, valid = _corners(offsets, geom, dtype)
    out = _bilinear(_gather4(rows, idx, geom, dtype), ly, lx)
    t_out = jnp.zeros_like(out)
    if not isinstance(off_dot, SymbolicZero):
        # d/dy interpolates the input's vertical differences along x, d/dx its horizontal
        # ones along y. Both difference tables are interleaved in one, and direction c of a
        # point reads two gathers of it: every gather has one use and stays fused, and the
        # offsets' gradient comes out of one loop in its own layout.
        step_x, step_y = geom.steps
        r = rows.astype(dtype)
        zeros = jnp.zeros((r.shape[0], step_y, r.shape[2]), dtype)
        dv = jnp.concatenate([r[:, step_y:] - r[:, :-step_y], zeros], axis=1)
        dh = jnp.concatenate([r[:, step_x:] - r[:, :-step_x], zeros[:, :step_x]], axis=1)
        b, rr, cg = r.shape
        diffs = jnp.stack([dv, dh], axis=2).reshape(b, 2 * rr, cg)  # row 2 p + c
        c = jnp.arange(2, dtype=jnp.int32)
        frac = jnp.where(c[:, None] == 0, lx[..., None, :], ly[..., None, :])  # [..., 2, 1]
        far = jnp.where(c == 0, step_x, step_y)
        near_row = 2 * idx[..., None] + c
        coef = (1 - frac) * _take(diffs, near_row, geom.flat) + frac * _take(
            diffs, near_row + 2 * far, geom.flat
        )  # [B, Ho, Wo, G, K, 2, Cg]
        coef = jnp.where(valid[..., None, None], coef, 0)
        od = off_dot.reshape(b, geom.ho, geom.wo, geom.g, -1, 2).astype(dtype)
        t_out = t_out + jnp.sum(coef * od[..., None], axis=-2)
    if not isinstance(rows_dot, SymbolicZero):
        t_out = t_out + _bilinear(_gather4(rows_dot, idx, geom, dtype), ly, lx)
    return out, t_out


def _columns(rows, offsets, mask, geom, dtype):
    """Sampled columns of one deformable conv: ``[B, Ho, Wo, G * K * Cg]`` in
    (group, tap, channel) order (``_kernel_matrix``'s rows)."""
    b, g, ho, wo, kh, kw = geom.b, geom.g, geom.ho, geom.wo, geom.kh, geom.kw
    cols = _sample(rows, offsets, geom, jnp.dtype(dtype).name)  # [B, Ho, Wo, G, K, Cg]
    if mask is not None:
        m = mask.reshape(b, ho, wo, g, kh * kw, 1)
        cols = cols * m.astype(dtype)
    return cols.reshape(b, ho, wo, -1)


def _kernel_matrix(kernel, groups: int):
    """HWIO ``[kh, kw, G * Cg, Cout]`` -> ``[G * kh * kw * Cg, Cout]`` in (group, tap,
    channel) order."""
    kh, kw, cin, cout = kernel.shape
    k = kernel.reshape(kh * kw, groups, cin // groups, cout)
    return k.transpose(1, 0, 2, 3).reshape(-1, cout)


def deform_conv2d(
    x,
    offsets,
    kernel,
    *,
    dilation=1,
    padding=None,
    deformable_groups: int = 1,
    mask=None,
    precision=None,
):
    """Deformable 2-D convolution (DCNv1; DCNv2 when ``mask`` is given), stride 1, NHWC.

    See the module docstring for the exact definition and border rule.

    Args:
      x: ``[B, H, W, Cin]`` float input (f32 or bf16; f64 under x64).
      offsets: ``[B, Ho, Wo, G * kh * kw * 2]``, CUDA DCN layout: group-major, then tap
        ``k = i * kw + j``, then (dy, dx); channel ``g * 2 * kh * kw + 2 * k`` is dy (rows, down)
        and ``+ 1`` is dx (columns, right), in pixels. Sample points are computed in float32
        (float64 under x64) whatever the dtype of offsets.
      kernel: ``[kh, kw, Cin, Cout]`` (HWIO), a full kernel (every output sees all Cin).
      dilation: int or (dh, dw), >= 1.
      padding: int or (ph, pw), >= 0; default ``(dh * (kh - 1) // 2, dw * (kw - 1) // 2)``,
        which keeps the size for odd kernels. ``Ho = H + 2 ph - dh (kh - 1)``, likewise Wo.
      deformable_groups: G, dividing Cin; input channel c uses the offsets of group
        ``c // (Cin // G)``.
      mask: optional DCNv2 modulation ``[B, Ho, Wo, G * kh * kw]`` (group-major, tap-major),
        multiplying each sampled value.
      precision: passed to the contraction's ``lax.dot_general``.

    Returns:
      ``[B, Ho, Wo, Cout]`` in ``x.dtype``. Bilinear weights and sampled values are computed in
      float32; the contraction takes its operands in ``x.dtype`` (kernel is cast to it) and
      accumulates in float32.

    Raises:
      ValueError: naming the argument at fault, for any shape, dtype or parameter mismatch.
    """
    x, offsets, kernel = jnp.asarray(x), jnp.asarray(offsets), jnp.asarray(kernel)
    _check_float("kernel", kernel)
    g, cg = _check_input(x, kernel.shape, "kernel", deformable_groups)
    b, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    dh, dw = _int_pair(dilation, "dilation", 1)
    if padding is None:
        ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
    else:
        ph, pw = _int_pair(padding, "padding", 0)
    ho, wo = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"padding {(ph, pw)} and dilation {(dh, dw)} leave no output for x {x.shape} "
            f"and kernel {kernel.shape}"
        )
    k = kh * kw
    _check_offsets("offsets", offsets, (b, ho, wo, g * k * 2))
    if mask is not None:
        mask = jnp.asarray(mask)
        _check_mask("mask", mask, (b, ho, wo, g * k))

    dtype = sample_dtype(x.dtype, offsets.dtype)
    geom = _Geometry(b, h, w, g, cg, ho, wo, kh, kw, dh, dw, ph, pw, _flat_gathers())
    cols = _columns(_pad_rows(x, g), offsets, mask, geom, dtype)
    out = _contract(cols, _kernel_matrix(kernel, g), x.dtype, precision)
    return out.astype(x.dtype)


def deform_conv2d_multi(
    x,
    offsets: Sequence,
    kernels: Sequence,
    *,
    dilations: Sequence,
    deformable_groups: int,
    mask: Sequence | None = None,
    reduce: str | None = "mean",
    precision=None,
    fused: bool = False,
    impl: str = "xla",
):
    """Several same-size deformable convolutions of one input, one per dilation, then their mean.

    Branch n is ``deform_conv2d(x, offsets[n], kernels[n], dilation=dilations[n],
    deformable_groups=deformable_groups, mask=mask[n])`` with the default (size-keeping)
    padding; this is the PoseWarper warping head (3x3 kernels, G = Cin, dilations 3, 6, 12,
    18, 24), whose output is the mean of the branches.

    Two equivalent evaluations (equal up to float rounding):

    * ``fused=False`` (default): the zero-padded input is built once and shared; each branch
      samples its own points and is contracted with its kernel, accumulated in float32.
    * ``fused=True``: the branches' samples concatenated and, for ``"mean"``, one
      contraction over (branch, group, tap, channel) (the mean of linear maps is one linear
      map).

    ``benchmarks/deform_conv.py`` compares them with D separate ``deform_conv2d`` calls. On CPU
    the fused form was measured slower (the concatenated samples are materialised; the
    contraction is a small share of the time), so it is not the default.

    ``impl`` picks the implementation:

    * ``"xla"`` (default): the pure-``jnp`` gathers above, on any backend.
    * ``"pallas"``: one fused Pallas (Triton) kernel with its own backward
      (``posewarper_jax.ops.deform_conv_pallas``), for ``G = Cin``, no mask and
      ``reduce="mean"`` (the warping head's case; anything else is a ValueError). Sampling and
      contraction run in float32 (IEEE), whatever ``precision``. Off the GPU it runs through
      Pallas' interpreter, which is only for tests.
    * ``"auto"``: ``"pallas"`` on a GPU backend for the cases it handles, else ``"xla"``.

    Args:
      x: ``[B, H, W, Cin]``.
      offsets: D arrays ``[B, H, W, G * kh * kw * 2]`` (layout of ``deform_conv2d``).
      kernels: D arrays ``[kh, kw, Cin, Cout]``, all the same shape, kh and kw odd.
      dilations: D ints >= 1 (or (dh, dw) pairs).
      deformable_groups: G, dividing Cin.
      mask: None, or D arrays ``[B, H, W, G * kh * kw]`` (DCNv2 modulation per branch).
      reduce: ``"mean"`` -> ``[B, H, W, Cout]``; ``None`` -> stacked ``[D, B, H, W, Cout]``.
      precision: passed to ``lax.dot_general``.
      fused: see above (``impl="xla"`` only).
      impl: ``"xla"``, ``"pallas"`` or ``"auto"`` (above).

    Returns:
      ``x.dtype`` array, shape as given by ``reduce``.

    Raises:
      ValueError: naming the argument at fault.
    """
    x = jnp.asarray(x)
    if reduce not in ("mean", None):
        raise ValueError(f'reduce must be "mean" or None, got {reduce!r}')
    if isinstance(dilations, (int, np.integer)) or len(dilations) == 0:
        raise ValueError(f"dilations must be a non-empty sequence, got {dilations!r}")
    n = len(dilations)
    dils = [_int_pair(d, f"dilations[{i}]", 1) for i, d in enumerate(dilations)]
    if len(offsets) != n:
        raise ValueError(f"offsets must hold one array per dilation ({n}), got {len(offsets)}")
    if len(kernels) != n:
        raise ValueError(f"kernels must hold one array per dilation ({n}), got {len(kernels)}")
    if mask is not None and len(mask) != n:
        raise ValueError(f"mask must hold one array per dilation ({n}), got {len(mask)}")
    kernels = [jnp.asarray(kern) for kern in kernels]
    offsets = [jnp.asarray(o) for o in offsets]
    masks = [None] * n if mask is None else [jnp.asarray(m) for m in mask]
    kshape = tuple(kernels[0].shape)
    for i, kern in enumerate(kernels):
        _check_float(f"kernels[{i}]", kern)
        if tuple(kern.shape) != kshape:
            raise ValueError(
                f"kernels must all have one shape; kernels[0] is {kshape}, "
                f"kernels[{i}] is {tuple(kern.shape)}"
            )
    g, cg = _check_input(x, kshape, "kernels[0]", deformable_groups)
    kh, kw, _, cout = kshape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernels need odd kh and kw (size-keeping padding), got {kshape}")
    b, h, w, cin = x.shape
    k = kh * kw
    for i in range(n):
        _check_offsets(f"offsets[{i}]", offsets[i], (b, h, w, g * k * 2))
        if masks[i] is not None:
            _check_mask(f"mask[{i}]", masks[i], (b, h, w, g * k))

    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "xla":
        why = pallas_supported(x.shape, kshape, g, mask is not None)
        if why is None and reduce != "mean":
            why = 'the Pallas kernel computes reduce="mean" only'
        if why is None and any(jnp.dtype(a.dtype) == jnp.float64 for a in (x, *offsets)):
            why = "the Pallas kernel computes in float32"
        on_gpu = jax.default_backend() == "gpu"
        if impl == "pallas" and why is not None:
            raise ValueError(f'impl="pallas": {why}; use impl="xla" or "auto"')
        if why is None and (impl == "pallas" or on_gpu):
            return deform_conv2d_multi_pallas(
                x, offsets, kernels, dilations=dils, interpret=not on_gpu
            )

    dtype = sample_dtype(x.dtype, *(o.dtype for o in offsets))
    acc = sample_dtype(x.dtype)  # float32 accumulation (float64 under x64)
    rows = _pad_rows(x, g)  # shared by all branches
    flat = _flat_gathers()
    geoms = [
        _Geometry(b, h, w, g, cg, h, w, kh, kw, dh, dw, dh * (kh // 2), dw * (kw // 2), flat)
        for dh, dw in dils
    ]
    mats = [_kernel_matrix(kern, g) for kern in kernels]

    if not fused:
        outs = [
            _contract(
                _columns(rows, offsets[i], masks[i], geoms[i], dtype), mats[i], x.dtype, precision
            )
            for i in range(n)
        ]
        if reduce is None:
            return jnp.stack(outs).astype(x.dtype)
        return (sum(outs) / n).astype(x.dtype)

    # One contraction over (branch, group, tap, channel): the mean of linear maps is one
    # linear map.
    cols = jnp.concatenate(
        [_columns(rows, offsets[i], masks[i], geoms[i], dtype) for i in range(n)], axis=-1
    )  # [B, H, W, D * G * K * Cg]
    kstack = jnp.stack(mats)  # [D, G * K * Cg, Cout]
    if reduce == "mean":
        out = _contract(cols, kstack.reshape(-1, cout), x.dtype, precision)
        return (out / n).astype(x.dtype)
    # Per-branch outputs: D as a batch axis of the contraction -> [D, B, H, W, Cout].
    out = lax.dot_general(
        cols.reshape(b, h, w, n, -1).astype(x.dtype),
        kstack.astype(x.dtype),
        (((4,), (1,)), ((3,), (0,))),
        precision=precision,
        preferred_element_type=acc,
    )
    return out.astype(x.dtype)

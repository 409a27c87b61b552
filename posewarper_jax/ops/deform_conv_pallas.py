"""A fused Pallas (Triton) kernel for the warping head's multi-dilation deformable convolution.

Computes exactly what ``deform_conv2d_multi(x, offsets, kernels, dilations=...,
deformable_groups=Cin, reduce="mean")`` computes (the definition and border rule are in
``posewarper_jax.ops.deform_conv``), for the case the PoseWarper head uses: one input channel
per deformable group (``G = Cin``), odd kernels with size-keeping padding, no DCNv2 mask.

Why a kernel: the operator's HBM traffic is dominated by its offsets (``D * G * kh * kw * 2``
values per output pixel: 1530 for the head, against 17 input and 17 output channels), and the
XLA form of it writes the sampled columns out between fusions and reads each point's offsets
again in the backward pass. The kernel reads each offset once and writes only the output:

* forward: one program per block of ``P`` output pixels of one image; for every (branch, tap)
  it loads the block's ``(dy, dx)`` for all groups ``[P, G]``, gathers the 4 corners from x
  (which stays in L2: it is ``B*H*W*Cin`` values), mixes them and contracts the sampled
  ``[P, Cin]`` with the tap's ``[Cin, Cout]`` kernel slice, accumulating ``[P, Cout]`` in
  registers.
* backward (its own ``custom_vjp`` rule): the same walk recomputes the samples and writes the
  offset gradient (``g @ kernel^T`` times the bilinear slopes, the one-sided derivatives of
  the reference) and, per program, the kernel-gradient partial ``sampled^T @ g`` of every
  tap, summed afterwards in a fixed order (deterministic, no atomics).
* the gradient with respect to x (a scatter-add) is the pure-``jnp`` reference's; stage 2
  never needs it (its x is the frozen backbone's heatmaps, under ``stop_gradient``), and XLA
  drops it when unused.

Channel dimensions are padded to powers of two inside the kernel (Triton's block shapes);
sizes are static. On a machine without a GPU, ``interpret=True`` runs the same kernel body
through Pallas' interpreter (slow; used by the tests to check it against the reference).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

__all__ = ["deform_conv2d_multi_pallas", "pallas_supported"]

BLOCK_PIXELS = 64  # output pixels per program (default)
NUM_WARPS = 4  # warps per program (default)
_INT32_MAX = 2**31 - 1


def _pow2(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())  # tl.dot needs dims >= 16


def pallas_supported(x_shape, kernel_shape, groups: int, has_mask: bool) -> str | None:
    """None if the kernel handles this case, else the reason it does not (a short string)."""
    b, h, w, cin = x_shape
    kh, kw, kin, cout = kernel_shape
    if has_mask:
        return "DCNv2 masks are not supported by the Pallas kernel"
    if groups != cin or kin != cin:
        return f"the Pallas kernel needs one channel per group (G = Cin), got G={groups}"
    if kh % 2 == 0 or kw % 2 == 0:
        return "the Pallas kernel needs odd kernels"
    if b * h * w * max(cin * kh * kw * 2, cout) > _INT32_MAX:
        return "the arrays are too large for 32-bit indexing"
    return None


def _store_index(mask, idx, ref):
    """Store indices with masked lanes sent past the end of ``ref``.

    On the GPU masked lanes write nothing; the interpreter writes every lane and drops
    out-of-bounds ones, so a masked lane must not alias a written element.
    """
    return jnp.where(mask, idx, ref.shape[0])


def _tap_samples(x_ref, off_ref, *, b, p, pmask, c, cmask, tap, dil, hw, cin, kw, k2):
    """Sampled values of one (branch, tap) for a pixel block, and what the backward needs.

    Returns (value [P, CP] f32, (top, bottom, v00, v01, v10, v11, ly, valid), obase).
    """
    h_img, w_img = hw
    i = tap // kw  # tap may be a loop index (traced)
    j = tap - i * kw
    dh, dw = dil
    ph, pw = dh * ((k2[0] - 1) // 2), dw * ((k2[1] - 1) // 2)
    pix = b * h_img * w_img + p  # [P] flat pixel index
    m2 = pmask[:, None] & cmask[None, :]
    row_len = cin * k2[0] * k2[1] * 2
    obase = pix[:, None] * row_len + c[None, :] * (k2[0] * k2[1] * 2) + 2 * tap  # [P, CP]
    obase = jnp.where(m2, obase, 0)
    dy = plgpu.load(off_ref.at[obase], mask=m2, other=0.0).astype(jnp.float32)
    dx = plgpu.load(off_ref.at[obase + 1], mask=m2, other=0.0).astype(jnp.float32)
    hh = p // w_img
    ww = p - hh * w_img
    # Integer tap positions made float before the offset is added, as the CUDA kernel does.
    y = (hh - ph + i * dh).astype(jnp.float32)[:, None] + dy
    xs = (ww - pw + j * dw).astype(jnp.float32)[:, None] + dx
    valid = m2 & (y > -1.0) & (y < h_img) & (xs > -1.0) & (xs < w_img)
    y = jnp.where(valid, y, 0.0)
    xs = jnp.where(valid, xs, 0.0)
    y0 = jnp.floor(y)
    x0 = jnp.floor(xs)
    ly = y - y0
    lx = xs - x0
    y0i = y0.astype(jnp.int32)
    x0i = x0.astype(jnp.int32)

    def corner(oy, ox):
        yy = y0i + oy
        xx = x0i + ox
        inb = valid & (yy >= 0) & (yy < h_img) & (xx >= 0) & (xx < w_img)
        idx = ((b * h_img + yy) * w_img + xx) * cin + c[None, :]
        idx = jnp.where(inb, idx, 0)
        return plgpu.load(x_ref.at[idx], mask=inb, other=0.0).astype(jnp.float32)

    v00, v01, v10, v11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    top = v00 + lx * (v01 - v00)
    bottom = v10 + lx * (v11 - v10)
    value = top + ly * (bottom - top)
    return value, (top, bottom, v00, v01, v10, v11, ly, valid), obase, m2


def _load_tile(ref, t, shape_pad):
    """Tile t of a [T, R_pad, C_pad] array stored flat: [R_pad, C_pad] f32 (padding is 0)."""
    r_pad, c_pad = shape_pad
    r = jnp.arange(r_pad)
    cc = jnp.arange(c_pad)
    idx = t * (r_pad * c_pad) + r[:, None] * c_pad + cc[None, :]
    return plgpu.load(ref.at[idx]).astype(jnp.float32)


def _program_block(meta):
    """This program's image b, its pixels p [P] (flat h * W + w) and channels c [CP], masked."""
    nblk, bp = meta["blocks_per_image"], meta["block_pixels"]
    pid = pl.program_id(0)
    b = pid // nblk
    p = (pid - b * nblk) * bp + jnp.arange(bp)
    c = jnp.arange(meta["cp"])
    return pid, b, p, p < meta["hw"][0] * meta["hw"][1], c, c < meta["cin"]


def _fwd_kernel(x_ref, *refs, meta):
    d_n = meta["num_branches"]
    off_refs, k_ref, o_ref = refs[:d_n], refs[d_n], refs[d_n + 1]
    h_img, w_img = meta["hw"]
    cin, cout, cp, cop = meta["cin"], meta["cout"], meta["cp"], meta["cop"]
    kh, kw = meta["k2"]
    pid, b, p, pmask, c, cmask = _program_block(meta)
    acc = jnp.zeros((p.shape[0], cop), jnp.float32)
    # Branches unrolled (each has its own offsets array and dilation), taps in a loop: an
    # unrolled (branch, tap) nest makes a program Triton compiles very slowly.
    for n in range(d_n):

        def tap_step(tap, acc, n=n):
            value, _, _, _ = _tap_samples(
                x_ref, off_refs[n], b=b, p=p, pmask=pmask, c=c, cmask=cmask, tap=tap,
                dil=meta["dilations"][n], hw=(h_img, w_img), cin=cin, kw=kw, k2=(kh, kw),
            )  # fmt: skip
            wt = _load_tile(k_ref, n * kh * kw + tap, (cp, cop))
            return acc + jnp.dot(value, wt, precision=lax.Precision.HIGHEST)

        acc = lax.fori_loop(0, kh * kw, tap_step, acc)
    o = jnp.arange(cop)
    out_idx = (b * h_img * w_img + p)[:, None] * cout + o[None, :]
    omask = pmask[:, None] & (o < cout)[None, :]
    out = acc * (1.0 / d_n)
    plgpu.store(o_ref.at[_store_index(omask, out_idx, o_ref)], out.astype(o_ref.dtype), mask=omask)


def _bwd_kernel(x_ref, g_ref, *refs, meta):
    d_n = meta["num_branches"]
    off_refs = refs[:d_n]
    kt_ref = refs[d_n]
    goff_refs = refs[d_n + 1 : 2 * d_n + 1]
    gk_ref = refs[2 * d_n + 1]
    h_img, w_img = meta["hw"]
    cin, cout, cp, cop = meta["cin"], meta["cout"], meta["cp"], meta["cop"]
    kh, kw = meta["k2"]
    pid, b, p, pmask, c, cmask = _program_block(meta)
    o = jnp.arange(cop)
    omask = pmask[:, None] & (o < cout)[None, :]
    g_idx = (b * h_img * w_img + p)[:, None] * cout + o[None, :]
    # d(mean)/d(branch) = 1 / D.
    g = plgpu.load(g_ref.at[jnp.where(omask, g_idx, 0)], mask=omask, other=0.0)
    g = g.astype(jnp.float32) * (1.0 / d_n)  # [P, COP]
    # Kernel-gradient partial of this program: [taps, Cin, Cout] rows of gk_ref.
    gk_rows = jnp.arange(cp)[:, None]
    gk_cols = o[None, :]
    gk_mask = (gk_rows < cin) & (gk_cols < cout)
    for n in range(d_n):  # as in the forward: branches unrolled, taps in a loop

        def tap_step(tap, carry, n=n):
            value, (top, bottom, v00, v01, v10, v11, ly, valid), obase, m2 = _tap_samples(
                x_ref, off_refs[n], b=b, p=p, pmask=pmask, c=c, cmask=cmask, tap=tap,
                dil=meta["dilations"][n], hw=(h_img, w_img), cin=cin, kw=kw, k2=(kh, kw),
            )  # fmt: skip
            t = n * kh * kw + tap
            wt_t = _load_tile(kt_ref, t, (cop, cp))  # [COP, CP] = kernel^T
            gval = jnp.dot(g, wt_t, precision=lax.Precision.HIGHEST)  # [P, CP]
            # Slopes at fixed corners (one-sided at integers), 0 outside the valid range.
            slope_y = bottom - top
            slope_x = (v01 - v00) + ly * ((v11 - v10) - (v01 - v00))
            gdy = jnp.where(valid, gval * slope_y, 0.0)
            gdx = jnp.where(valid, gval * slope_x, 0.0)
            goff = goff_refs[n]
            plgpu.store(goff.at[_store_index(m2, obase, goff)], gdy.astype(goff.dtype), mask=m2)
            plgpu.store(goff.at[_store_index(m2, obase + 1, goff)], gdx.astype(goff.dtype), mask=m2)
            part = jnp.dot(value.T, g, precision=lax.Precision.HIGHEST)  # [CP, COP]
            gk_idx = ((pid * d_n * kh * kw + t) * cin + gk_rows) * cout + gk_cols
            plgpu.store(gk_ref.at[_store_index(gk_mask, gk_idx, gk_ref)], part, mask=gk_mask)
            return carry

        lax.fori_loop(0, kh * kw, tap_step, 0)


def _meta(x_shape, kernel_shape, dilations, block_pixels, num_warps):
    b, h, w, cin = x_shape
    kh, kw, _, cout = kernel_shape
    if block_pixels < 16 or block_pixels & (block_pixels - 1):
        raise ValueError(f"block_pixels must be a power of two >= 16, got {block_pixels}")
    nblk = -(-h * w // block_pixels)
    return dict(
        block_pixels=block_pixels,
        num_warps=num_warps,
        num_branches=len(dilations),
        dilations=tuple(tuple(d) for d in dilations),
        hw=(h, w),
        cin=cin,
        cout=cout,
        cp=_pow2(cin),
        cop=_pow2(cout),
        k2=(kh, kw),
        blocks_per_image=nblk,
        grid=b * nblk,
    )


def _padded_taps(kernels, meta, transpose: bool):
    """D kernels [kh, kw, Cin, Cout] -> flat f32 [D * kh * kw * R_pad * C_pad] tiles."""
    k = jnp.stack([kk.astype(jnp.float32) for kk in kernels])  # [D, kh, kw, Cin, Cout]
    d_n, kh, kw, cin, cout = k.shape
    k = k.reshape(d_n * kh * kw, cin, cout)
    if transpose:
        k = k.transpose(0, 2, 1)
        pad = ((0, 0), (0, meta["cop"] - cout), (0, meta["cp"] - cin))
    else:
        pad = ((0, 0), (0, meta["cp"] - cin), (0, meta["cop"] - cout))
    return jnp.pad(k, pad).reshape(-1)


def _call(kernel, out_shape, meta, interpret, *args):
    return pl.pallas_call(
        functools.partial(kernel, meta=meta),
        out_shape=out_shape,
        grid=(meta["grid"],),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)] * len(args),
        out_specs=jax.tree.map(lambda _: pl.BlockSpec(memory_space=pl.ANY), out_shape),
        interpret=interpret,
        compiler_params=None if interpret else plgpu.CompilerParams(num_warps=meta["num_warps"]),
        name="deform_conv_multi_" + kernel.__name__.strip("_"),
    )(*args)


def _forward(x, offsets, kernels, dilations, config):
    interpret, *tiles = config
    meta = _meta(x.shape, kernels[0].shape, dilations, *tiles)
    b, h, w, _ = x.shape
    out = _call(
        _fwd_kernel,
        jax.ShapeDtypeStruct((b * h * w * meta["cout"],), x.dtype),
        meta,
        interpret,
        x.reshape(-1),
        *(o.reshape(-1) for o in offsets),
        _padded_taps(kernels, meta, transpose=False),
    )
    return out.reshape(b, h, w, meta["cout"])


# config = (interpret, block_pixels, num_warps): static.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _multi(x, offsets, kernels, dilations, config):
    return _forward(x, offsets, kernels, dilations, config)


def _multi_fwd(x, offsets, kernels, dilations, config):
    return _forward(x, offsets, kernels, dilations, config), (x, offsets, kernels)


def _multi_bwd(dilations, config, res, g):
    x, offsets, kernels = res
    interpret, *tiles = config
    meta = _meta(x.shape, kernels[0].shape, dilations, *tiles)
    d_n, (kh, kw) = meta["num_branches"], meta["k2"]
    cin, cout = meta["cin"], meta["cout"]
    outs = _call(
        _bwd_kernel,
        (
            *(jax.ShapeDtypeStruct((o.size,), o.dtype) for o in offsets),
            jax.ShapeDtypeStruct((meta["grid"] * d_n * kh * kw * cin * cout,), jnp.float32),
        ),
        meta,
        interpret,
        x.reshape(-1),
        g.reshape(-1),
        *(o.reshape(-1) for o in offsets),
        _padded_taps(kernels, meta, transpose=True),
    )
    g_offsets = [go.reshape(o.shape) for go, o in zip(outs[:d_n], offsets)]
    gk = outs[d_n].reshape(meta["grid"], d_n, kh, kw, cin, cout).sum(0)
    g_kernels = [gk[n].astype(k.dtype) for n, k in enumerate(kernels)]
    # The input gradient (a scatter-add) from the pure-jnp operator; unused in stage 2.
    from posewarper_jax.ops.deform_conv import deform_conv2d_multi  # (imports this module)

    def reference(xx):
        return deform_conv2d_multi(
            xx,
            [lax.stop_gradient(o) for o in offsets],
            [lax.stop_gradient(k) for k in kernels],
            dilations=dilations,
            deformable_groups=cin,
            precision=lax.Precision.HIGHEST,
        )

    _, vjp = jax.vjp(reference, x)
    (g_x,) = vjp(g.astype(x.dtype))
    return g_x, g_offsets, g_kernels


_multi.defvjp(_multi_fwd, _multi_bwd)


def deform_conv2d_multi_pallas(
    x,
    offsets,
    kernels,
    *,
    dilations,
    interpret: bool = False,
    block_pixels: int = BLOCK_PIXELS,
    num_warps: int = NUM_WARPS,
):
    """``deform_conv2d_multi(..., deformable_groups=Cin, reduce="mean")`` as one Pallas kernel.

    Args:
      x: ``[B, H, W, Cin]`` (f32 or bf16).
      offsets: D arrays ``[B, H, W, Cin * kh * kw * 2]`` (CUDA DCN layout; f32 or bf16).
      kernels: D arrays ``[kh, kw, Cin, Cout]``, kh and kw odd.
      dilations: D (dh, dw) pairs.
      interpret: run the kernel through Pallas' interpreter (any backend; slow).
      block_pixels, num_warps: the tiling (output pixels and warps per program).

    Returns:
      ``[B, H, W, Cout]`` in x.dtype. Sampling and the contraction are float32 (IEEE).
    """
    dils = tuple((int(d[0]), int(d[1])) for d in np.asarray(dilations).reshape(-1, 2))
    config = (bool(interpret), int(block_pixels), int(num_warps))
    return _multi(x, list(offsets), list(kernels), dils, config)

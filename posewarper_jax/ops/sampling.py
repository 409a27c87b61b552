"""Bilinear sampling with the border rule of the deformable-convolution (DCN) kernels.

Coordinates: pixel centres at integers, ``y`` is the row (down), ``x`` the column (right); pixel
``(h, w)`` of an ``H x W`` image sits at ``(y, x) = (h, w)``.

Border rule (the DCNv1/DCNv2 ``im2col`` kernels, reproduced exactly):

* A sample with ``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W`` is 0, and so is its gradient
  with respect to the coordinates and to the image.
* Otherwise the four corners ``(floor(y) + {0, 1}, floor(x) + {0, 1})`` are mixed with weights
  ``(1 - ly)(1 - lx), (1 - ly) lx, ly (1 - lx), ly lx`` (``ly = y - floor(y)``,
  ``lx = x - floor(x)``), a corner outside the image counting as 0. The value is continuous and
  goes linearly to 0 over the last pixel outside the image.
* The coordinate gradient is the derivative at fixed ``floor(y)``, ``floor(x)`` (one-sided from
  the right at integer coordinates, where the function has a kink): at ``y == H - 1`` exactly it
  is ``-value(H - 1, x)`` per unit of ``y``, the slope towards the zero row below the image.

Everything is gathers: the four corners of every top-left pixel are packed into one table
(``corner_table``) so that each sample is a single gather of ``4 * Cg`` contiguous values. The
table has two rows and columns of zero padding above and to the left, so its first entries are
all zeros; samples outside the image point there, which makes both the value and its
coordinate gradient 0 with no mask. The gradient with respect to the coordinates needs
only the gathered corners (no scatter); the image gradient is the transpose of the gather, a
scatter-add.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = [
    "bilinear_sample",
    "corner_table",
    "grouped_bilinear_sample",
    "sample_corner_table",
    "sample_dtype",
]


def sample_dtype(*dtypes) -> jnp.dtype:
    """The dtype that sampling computes and returns in: float32, or float64 if an input is."""
    out = jnp.dtype(jnp.float32)
    for d in dtypes:
        out = jnp.promote_types(out, d)
    return out


def corner_table(image: jnp.ndarray) -> jnp.ndarray:
    """Packs the 4 corners of every top-left pixel: [B, H, W, G, Cg] -> [B, P * G, 4 * Cg].

    P = (H + 2) * (W + 2). Row ``p * G + g`` with ``p = r * (W + 2) + s`` holds group g of the
    padded image at (r, s), (r, s + 1), (r + 1, s), (r + 1, s + 1), where the padded image has 2
    zero rows/columns before and 1 after: a sample whose top-left pixel is (h, w) (h, w >= -1)
    reads p = (h + 2) * (W + 2) + (w + 2), and rows with p = 0 are all zeros.
    """
    b, h, w, g, cg = image.shape
    xp = jnp.pad(image, ((0, 0), (2, 1), (2, 1), (0, 0), (0, 0)))  # [B, H + 3, W + 3, G, Cg]
    table = jnp.concatenate(
        [xp[:, :-1, :-1], xp[:, :-1, 1:], xp[:, 1:, :-1], xp[:, 1:, 1:]], axis=-1
    )  # [B, H + 2, W + 2, G, 4 * Cg]
    return table.reshape(b, (h + 2) * (w + 2) * g, 4 * cg)


def sample_corner_table(
    table: jnp.ndarray, image_hw: tuple[int, int], y: jnp.ndarray, x: jnp.ndarray
) -> jnp.ndarray:
    """``grouped_bilinear_sample`` from a prebuilt ``corner_table`` (shared by several calls).

    Args:
      table: ``[B, (H + 2) * (W + 2) * G, 4 * Cg]`` from ``corner_table``.
      image_hw: (H, W) of the image the table was built from.
      y, x: ``[B, *S, G]`` sample points.

    Returns:
      ``[B, *S, G, Cg]`` in ``sample_dtype(table, y, x)``.
    """
    h, w = image_hw
    b, rows, cg4 = table.shape
    if y.shape != x.shape:
        raise ValueError(f"y and x must have the same shape, got {y.shape} and {x.shape}")
    g = y.shape[-1] if y.ndim else 0
    if y.ndim < 2 or y.shape[0] != b or g < 1 or rows != (h + 2) * (w + 2) * g or cg4 % 4:
        raise ValueError(
            f"y, x must be [B={b}, ..., G] with table [B, (H + 2) * (W + 2) * G, 4 * Cg] for "
            f"(H, W) = {(h, w)}; got y {y.shape} and table {table.shape}"
        )
    cg = cg4 // 4
    dtype = sample_dtype(table.dtype, y.dtype, x.dtype)
    lead = y.shape[:-1]
    y = y.astype(dtype).reshape(b, -1, g)  # [B, N, G]
    x = x.astype(dtype).reshape(b, -1, g)

    valid = (y > -1) & (y < h) & (x > -1) & (x < w)
    # Invalid points get coordinate 0: finite floor, zero gradient through `where`.
    y = jnp.where(valid, y, 0)
    x = jnp.where(valid, x, 0)
    y0 = jnp.floor(y)  # zero gradient: d/dy acts on ly only, at fixed corners
    x0 = jnp.floor(x)
    ly = (y - y0)[..., None]  # [B, N, G, 1]
    lx = (x - x0)[..., None]
    pix = (y0.astype(jnp.int32) + 2) * (w + 2) + (x0.astype(jnp.int32) + 2)
    # Invalid points read (p = 0, own group): zeros, and no single hot row in the x-gradient.
    row = jnp.where(valid, pix, 0) * g + jnp.arange(g, dtype=jnp.int32)  # [B, N, G]

    # Batch is a gather batching axis (batch-parallel under sharding); groups are folded into
    # the row index, which keeps the gather's index array small.
    dnums = lax.GatherDimensionNumbers(
        offset_dims=(3,),
        collapsed_slice_dims=(1,),
        start_index_map=(1,),
        operand_batching_dims=(0,),
        start_indices_batching_dims=(0,),
    )
    corners = lax.gather(
        table,
        row[..., None],
        dnums,
        slice_sizes=(1, 1, 4 * cg),
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    ).astype(dtype)  # [B, N, G, 4 * Cg]
    v00, v01, v10, v11 = (corners[..., i * cg : (i + 1) * cg] for i in range(4))
    top = v00 + lx * (v01 - v00)
    bottom = v10 + lx * (v11 - v10)
    out = top + ly * (bottom - top)  # [B, N, G, Cg]
    return out.reshape(*lead, g, cg)


def grouped_bilinear_sample(image: jnp.ndarray, y: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """Sample each channel group of an image at its own points, DCN border rule.

    Args:
      image: ``[B, H, W, G, Cg]``, any float dtype: G groups of Cg channels.
      y, x: ``[B, *S, G]`` sample rows and columns (any float dtype, same shape); the points of
        group g are applied to the Cg channels of group g. Any values are allowed (far outside,
        inf, NaN: all give 0).

    Returns:
      ``[B, *S, G, Cg]`` in ``sample_dtype(image, y, x)`` (float32 for bf16/f32 inputs): the
      bilinear weights and the mixing are computed in that dtype even for a bf16 image.
    """
    if image.ndim != 5:
        raise ValueError(f"image must be [B, H, W, G, Cg], got shape {image.shape}")
    b, h, w, g, _ = image.shape
    if y.ndim < 2 or y.shape[0] != b or y.shape[-1] != g:
        raise ValueError(f"y, x must be [B={b}, ..., G={g}], got shape {y.shape}")
    return sample_corner_table(corner_table(image), (h, w), y, x)


def bilinear_sample(image: jnp.ndarray, y: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """Sample all channels of an image at points, DCN border rule (see the module docstring).

    Args:
      image: ``[B, H, W, C]``, any float dtype.
      y, x: ``[B, *S]`` sample rows and columns, pixel centres at integers.

    Returns:
      ``[B, *S, C]`` in ``sample_dtype(image, y, x)`` (float32 for bf16/f32 inputs).
    """
    if image.ndim != 4:
        raise ValueError(f"image must be [B, H, W, C], got shape {image.shape}")
    if y.shape != x.shape or y.ndim < 1 or y.shape[0] != image.shape[0]:
        raise ValueError(
            f"y and x must both be [B={image.shape[0]}, ...], got {y.shape} and {x.shape}"
        )
    out = grouped_bilinear_sample(image[..., None, :], y[..., None], x[..., None])
    return out[..., 0, :]

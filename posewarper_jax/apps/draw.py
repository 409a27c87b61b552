"""Pictures of poses and of learned motion: pure drawing functions over NumPy images.

Images are uint8 ``[H, W, 3]`` in RGB order (as the input pipeline yields them) and colours
are RGB triples; ``read_image``/``write_image`` convert from/to the BGR files OpenCV uses.
Coordinates are pixels with pixel centres at integers, x right, y down. No function changes
its inputs: each returns a new image.

* ``draw_skeleton`` draws one pose (limbs of ``types.SKELETON``, left side, right side and
  centre line in three colours; joints below a score threshold are left out, and so is every
  limb touching one).
* ``pose_comparison`` lays out, for a few (video, frame) samples, a row per sample: the
  ground truth, then each method's prediction, on the same crop, each with a caption.
* ``offset_vectors`` / ``draw_motion_fields`` show the warping head's learned offsets as
  arrows over the crop image: one panel per (dilation, joint), rows = dilations, columns =
  joints.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

import cv2
import numpy as np

from posewarper_jax.data.types import JOINT_NAMES, SKELETON, Person, VideoDataset

__all__ = [
    "CENTER_COLOR",
    "LEFT_COLOR",
    "RIGHT_COLOR",
    "Arrows",
    "draw_motion_fields",
    "draw_person",
    "draw_skeleton",
    "joint_sides",
    "offset_vectors",
    "pick_samples",
    "pose_comparison",
    "read_image",
    "write_image",
]

LEFT_COLOR: tuple[int, int, int] = (255, 140, 0)  # orange
RIGHT_COLOR: tuple[int, int, int] = (30, 110, 255)  # blue
CENTER_COLOR: tuple[int, int, int] = (0, 200, 60)  # green
DEFAULT_THRESHOLD = 0.2
_SHIFT = 4  # cv2 fractional bits: sub-pixel endpoints at 1/16 px
_COORD_LIMIT = 1e5  # far-off points are clipped so that cv2's fixed-point maths cannot overflow
OFFSET_TAPS = 9  # 3x3 deformable taps
_CENTRE_TAP = 4  # tap k = 3 i + j with (i, j) = (1, 1)


# ----------------------------------------------------------------------------- image files


def read_image(path: str) -> np.ndarray:
    """An image file as uint8 ``[H, W, 3]`` RGB; FileNotFoundError naming ``path`` if it cannot
    be read."""
    from posewarper_jax import storage

    image = storage.read_image(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path!r}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image(path: str, image: np.ndarray) -> str:
    """Writes uint8 ``[H, W, 3]`` RGB ``image`` to ``path`` (format from the suffix, e.g. PNG),
    creating the folder. Returns ``path``; OSError if OpenCV cannot write it."""
    from posewarper_jax import fileio, storage

    image = _check_image(image, "image")
    if storage.is_remote(path):  # encoded in memory, uploaded whole
        ok, data = cv2.imencode(os.path.splitext(path)[1], cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"cannot write image {path!r}")
        fileio.atomic_write(path, data.tobytes())
        return path
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    if not cv2.imwrite(os.fspath(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write image {path!r}")
    return os.fspath(path)


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    return image


# ----------------------------------------------------------------------------- skeletons


def joint_sides(names: Sequence[str] = JOINT_NAMES) -> np.ndarray:
    """int ``[J]``: -1 for a left joint (``left_*``), +1 for a right one, 0 for the centre."""
    return np.asarray(
        [-1 if n.startswith("left_") else 1 if n.startswith("right_") else 0 for n in names],
        np.int32,
    )


_SIDES = joint_sides()


def _side_color(side: int, left, right, center) -> tuple[int, int, int]:
    return tuple(int(c) for c in (left if side < 0 else right if side > 0 else center))


def _limb_side(a: int, b: int, sides: np.ndarray) -> int:
    """A limb belongs to a side when neither end is on the other side and one end is on it
    (e.g. neck -> left shoulder is left; left hip -> right hip is centre)."""
    s = {int(sides[a]), int(sides[b])} - {0}
    return s.pop() if len(s) == 1 else 0


def _fixed(points: np.ndarray) -> np.ndarray:
    """float ``[..., 2]`` pixels -> int ``[..., 2]`` cv2 fixed-point with ``_SHIFT`` bits."""
    return np.round(np.clip(points, -_COORD_LIMIT, _COORD_LIMIT) * (1 << _SHIFT)).astype(np.int64)


def draw_skeleton(
    image: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    skeleton: Sequence[tuple[int, int]] = SKELETON,
    left_color: Sequence[int] = LEFT_COLOR,
    right_color: Sequence[int] = RIGHT_COLOR,
    center_color: Sequence[int] = CENTER_COLOR,
    thickness: int = 2,
    radius: int = 3,
) -> np.ndarray:
    """A copy of ``image`` with one pose drawn on it.

    Args:
      image: uint8 ``[H, W, 3]`` (colours are used in the image's channel order, RGB here).
      keypoints: float ``[J, 2]`` (x, y) or ``[J, 3]`` (x, y, v) pixels, ``types.JOINT_NAMES``
        order when J = 17 (the side of each joint comes from its name).
      scores: float ``[J]`` per-joint confidences; None: the third column of ``keypoints``
        (a ground truth's visibility), or 1 for every joint when there is none.
      threshold: joints with ``score < threshold`` or non-finite coordinates are not drawn,
        nor any limb that touches one.
      skeleton: limbs as 0-based joint-index pairs.
      left_color, right_color, center_color: colours of the left side, the right side and
        the centre line (a limb between a side and the centre takes the side's colour).
      thickness: limb width in pixels (anti-aliased lines with sub-pixel endpoints).
      radius: joint disc radius in pixels (0: no discs).

    Returns:
      a new uint8 ``[H, W, 3]`` image.
    """
    out = _check_image(image, "image").copy()
    kpts = np.asarray(keypoints, np.float64)
    if kpts.ndim != 2 or kpts.shape[1] not in (2, 3):
        raise ValueError(f"keypoints must be [J, 2] or [J, 3], got shape {kpts.shape}")
    j = kpts.shape[0]
    if scores is None:
        scores = kpts[:, 2] if kpts.shape[1] == 3 else np.ones(j)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if scores.shape != (j,):
        raise ValueError(f"scores must have {j} entries (one per joint), got {scores.shape[0]}")
    sides = _SIDES if j == len(_SIDES) else np.zeros(j, np.int32)
    shown = (scores >= threshold) & np.all(np.isfinite(kpts[:, :2]), axis=1)
    pts = _fixed(np.where(np.isfinite(kpts[:, :2]), kpts[:, :2], 0.0))
    for a, b in skeleton:
        if not (0 <= a < j and 0 <= b < j):
            raise ValueError(f"skeleton limb ({a}, {b}) is out of range for {j} joints")
        if shown[a] and shown[b]:
            color = _side_color(_limb_side(a, b, sides), left_color, right_color, center_color)
            cv2.line(out, tuple(pts[a]), tuple(pts[b]), color, thickness, cv2.LINE_AA, shift=_SHIFT)
    if radius > 0:
        for k in np.flatnonzero(shown):
            color = _side_color(sides[k], left_color, right_color, center_color)
            cv2.circle(out, tuple(pts[k]), radius << _SHIFT, color, -1, cv2.LINE_AA, _SHIFT)
    return out


def draw_person(
    image: np.ndarray, person: Person, *, threshold: float = DEFAULT_THRESHOLD, **kwargs
) -> np.ndarray:
    """``draw_skeleton`` of a ``Person``: its ``keypoint_scores`` when it has them (a
    prediction), else its visibilities (ground truth: unlabeled joints are not drawn)."""
    scores = person.keypoint_scores
    if scores is None:
        scores = np.asarray(person.keypoints)[:, 2]
    return draw_skeleton(image, person.keypoints, scores, threshold=threshold, **kwargs)


# ----------------------------------------------------------------------------- comparisons


def pick_samples(
    gt: VideoDataset, num: int = 3, predictions: Mapping[str, VideoDataset] | None = None
) -> list[tuple[int, int]]:
    """``num`` (video index, frame index) samples spread evenly over the frames of ``gt`` with
    a ground-truth person; frames where every prediction has a person are preferred."""
    candidates = [(vi, f.index) for vi, v in enumerate(gt.videos) for f in v.frames if f.people]
    if predictions:
        lookups = [_video_lookup(p) for p in predictions.values()]
        full = [
            s
            for s in candidates
            if all(_pred_people(look, gt.videos[s[0]].name, s[1]) for look in lookups)
        ]
        candidates = full or candidates
    if num <= 0 or not candidates:
        return []
    picks = np.linspace(0, len(candidates) - 1, min(num, len(candidates)))
    return [candidates[int(round(i))] for i in picks]


def _video_lookup(ds: VideoDataset) -> dict:
    return {v.name: v for v in ds.videos}


def _pred_people(lookup: dict, name: str, index: int) -> list[Person]:
    video = lookup.get(name)
    if video is None or not 0 <= index < len(video.frames):
        return []
    return video.frames[index].people


def _crop_box(people: Sequence[Person], size: tuple[int, int], margin: float) -> tuple:
    """Integer (x0, y0, x1, y1) around the people's boxes, widened by ``margin`` per side
    (fraction of the union's size), clipped to the image; the whole image if none."""
    h, w = size
    boxes = [np.asarray(p.bbox, np.float64) for p in people if np.asarray(p.bbox)[2:].min() > 0]
    if not boxes:
        return 0, 0, w, h
    b = np.stack(boxes)
    x0, y0 = b[:, 0].min(), b[:, 1].min()
    x1, y1 = (b[:, 0] + b[:, 2]).max(), (b[:, 1] + b[:, 3]).max()
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    x0, y0 = int(np.clip(np.floor(x0 - mx), 0, w - 1)), int(np.clip(np.floor(y0 - my), 0, h - 1))
    x1, y1 = int(np.clip(np.ceil(x1 + mx), x0 + 1, w)), int(np.clip(np.ceil(y1 + my), y0 + 1, h))
    return x0, y0, x1, y1


def _pose_cell(
    image: np.ndarray, box: tuple, height: int, people: Sequence[Person], threshold: float
) -> np.ndarray:
    """The ``box`` (x0, y0, x1, y1) of ``image`` scaled to ``height`` rows, people drawn."""
    x0, y0, x1, y1 = box
    s = height / (y1 - y0)
    size = (max(1, round((x1 - x0) * s)), height)
    out = cv2.resize(image[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    for p in people:
        kp = np.asarray(p.keypoints, np.float64).copy()
        # Pixel centres stay at integers in the scaled crop: x' = (x - x0 + 0.5) * s - 0.5.
        kp[:, :2] = (kp[:, :2] - (x0, y0) + 0.5) * s - 0.5
        out = draw_person(out, dataclasses.replace(p, keypoints=kp), threshold=threshold)
    return out


def _caption(cell: np.ndarray, text: str, height: int = 20) -> np.ndarray:
    strip = np.full((height, cell.shape[1], 3), 255, np.uint8)
    scale = 0.42
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    if tw > cell.shape[1] - 4 and tw > 0:  # shrink long names to fit the cell
        scale *= (cell.shape[1] - 4) / tw
    cv2.putText(
        strip, text, (2, height - 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA
    )
    return np.concatenate([strip, cell], axis=0)


def _hstack(cells: Sequence[np.ndarray], gap: int) -> np.ndarray:
    h = max(c.shape[0] for c in cells)
    parts = []
    for i, c in enumerate(cells):
        if i:
            parts.append(np.full((h, gap, 3), 255, np.uint8))
        parts.append(np.pad(c, ((0, h - c.shape[0]), (0, 0), (0, 0)), constant_values=255))
    return np.concatenate(parts, axis=1)


def _vstack(rows: Sequence[np.ndarray], gap: int) -> np.ndarray:
    w = max(r.shape[1] for r in rows)
    parts = []
    for i, r in enumerate(rows):
        if i:
            parts.append(np.full((gap, w, 3), 255, np.uint8))
        parts.append(np.pad(r, ((0, 0), (0, w - r.shape[1]), (0, 0)), constant_values=255))
    return np.concatenate(parts, axis=0)


def pose_comparison(
    gt: VideoDataset,
    predictions: Mapping[str, VideoDataset],
    samples: Sequence[tuple[int, int]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    cell_height: int = 240,
    margin: float = 0.15,
    gap: int = 4,
    reader: Callable[[str], np.ndarray] = read_image,
) -> np.ndarray:
    """A grid of poses: one row per sample, columns = ground truth then each method.

    Every cell of a row shows the same crop of the frame (the ground-truth people's boxes,
    widened by ``margin``; the whole frame when it has none) scaled to ``cell_height``, with
    every person of that dataset's frame drawn by ``draw_person`` and a caption (the method
    name; the ground truth's names the video and frame). Prediction videos are matched to
    ground-truth ones by name and frames by index; each cell reads its own dataset's frame
    path (identical paths are read once).

    Args:
      gt: the ground truth.
      predictions: method name -> predictions, in column order.
      samples: (video index in ``gt``, frame index) pairs (see ``pick_samples``).
      threshold: per-joint score below which a predicted joint is not drawn.
      reader: path -> uint8 ``[H, W, 3]`` RGB image.

    Returns:
      uint8 ``[H, W, 3]`` RGB grid on a white background.
    """
    if not samples:
        raise ValueError("pose_comparison needs at least one (video, frame) sample")
    lookups = {name: _video_lookup(ds) for name, ds in predictions.items()}
    cache: dict[str, np.ndarray] = {}

    def load(path: str) -> np.ndarray:
        if path not in cache:
            cache[path] = _check_image(reader(path), f"image {path!r}")
        return cache[path]

    rows = []
    for vi, fi in samples:
        if not 0 <= vi < len(gt.videos):
            raise ValueError(f"sample video index {vi} is out of range ({len(gt.videos)} videos)")
        video = gt.videos[vi]
        if not 0 <= fi < len(video.frames):
            raise ValueError(
                f"sample frame {fi} is out of range for video {video.name!r} "
                f"({len(video.frames)} frames)"
            )
        frame = video.frames[fi]
        image = load(frame.path)

        box = _crop_box(frame.people, image.shape[:2], margin)
        columns = [(frame.path, frame.people, f"ground truth ({video.name} #{fi})")]
        for name, lookup in lookups.items():
            pv = lookup.get(video.name)
            if pv is None:
                raise ValueError(f"predictions of {name!r} have no video {video.name!r}")
            if fi >= len(pv.frames):
                raise ValueError(
                    f"predictions of {name!r}: video {video.name!r} has {len(pv.frames)} "
                    f"frames, sample asks for frame {fi}"
                )
            pf = pv.frames[fi]
            columns.append((pf.path or frame.path, pf.people, name))
        cells = []
        for path, people, caption in columns:
            img = load(path)
            if img.shape != image.shape:
                raise ValueError(
                    f"image {path!r} has shape {img.shape}, the ground truth's {frame.path!r} "
                    f"has {image.shape}"
                )
            cells.append(_caption(_pose_cell(img, box, cell_height, people, threshold), caption))
        rows.append(_hstack(cells, gap))
    return _vstack(rows, gap)


# ----------------------------------------------------------------------------- motion fields


def offset_vectors(offsets: np.ndarray, joint: int, tap: str | int = "mean") -> np.ndarray:
    """The (dy, dx) displacement of one joint's deformable taps, per heatmap pixel.

    Args:
      offsets: float ``[h, w, J * 18]`` from one dilation of the warping head; channel
        ``18 g + 2 k`` is the y (down) and ``18 g + 2 k + 1`` the x (right) displacement of
        tap k = 3 i + j (row i, column j of the 3x3 kernel) of joint g, in heatmap pixels.
      joint: g.
      tap: ``"mean"`` (mean over the 9 taps), ``"center"`` (tap 4) or a tap index 0..8.

    Returns:
      float32 ``[h, w, 2]`` (dy, dx) in heatmap pixels: output pixel p reads the warped maps
      at p + (dy, dx) (plus the tap's fixed dilated position).
    """
    off = np.asarray(offsets, np.float32)
    if off.ndim != 3 or off.shape[-1] % (2 * OFFSET_TAPS):
        raise ValueError(f"offsets must be [h, w, J * 18], got shape {off.shape}")
    num_joints = off.shape[-1] // (2 * OFFSET_TAPS)
    if not 0 <= joint < num_joints:
        raise ValueError(f"joint {joint} is out of range for offsets of {num_joints} joints")
    taps = off.reshape(*off.shape[:2], num_joints, OFFSET_TAPS, 2)[:, :, joint]  # [h, w, 9, 2]
    if isinstance(tap, str):
        if tap == "mean":
            return taps.mean(axis=2)
        if tap == "center":
            return taps[:, :, _CENTRE_TAP]
        raise ValueError(f"tap must be 'mean', 'center' or 0..8, got {tap!r}")
    if not 0 <= int(tap) < OFFSET_TAPS:
        raise ValueError(f"tap must be 'mean', 'center' or 0..8, got {tap!r}")
    return taps[:, :, int(tap)]


@dataclasses.dataclass(frozen=True)
class Arrows:
    """The arrows of one motion-field panel as drawn (read back from the plot).

    ``x``, ``y``: float ``[n]`` arrow tails in crop-image pixels; ``u``, ``v``: float ``[n]``
    the arrow (dx, dy) in crop-image pixels (y down), i.e. the offsets times the heatmap
    stride times ``arrow_scale``.
    """

    dilation: int
    joint: int
    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray


def draw_motion_fields(
    image: np.ndarray,
    offsets: np.ndarray | Sequence[np.ndarray],
    *,
    dilations: Sequence[int] | None = None,
    joints: Sequence[int] = (0,),
    joint_names: Sequence[str] = JOINT_NAMES,
    tap: str | int = "mean",
    step: int = 2,
    arrow_scale: float = 1.0,
    panel_size: float = 2.6,
    dpi: int = 100,
    path: str | None = None,
) -> tuple[np.ndarray, list[Arrows]]:
    """The learned offsets of one frame as arrows over its crop image.

    One panel per (dilation, joint): rows are the dilations (one offsets tensor each), columns
    the ``joints``. Each panel shows ``image`` with an arrow at every ``step``-th heatmap pixel
    from that pixel's centre along its (dx, dy) displacement (``offset_vectors``). Heatmap
    pixel q sits at crop pixel ``q * stride`` (the crop transforms at the two sizes share the
    centre and differ by the scale ``stride = W / w``), so an arrow runs from ``q * stride`` to
    ``(q + d) * stride``: towards where the tap reads. ``arrow_scale`` lengthens every arrow
    (the panel title says by how much) since learned offsets are often a pixel or less.

    Args:
      image: uint8 ``[H, W, 3]`` RGB crop (e.g. the frame whose maps are warped).
      offsets: float ``[h, w, J * 18]`` or a sequence of them, one per dilation (the warping
        head's ``return_offsets`` gives ``[N, h, w, J * 18]`` per dilation: pass one row).
      dilations: the dilation of each offsets tensor, for the titles (default 1, 2, ...).
      joints: joint indices g to draw; ``joint_names`` names them in the titles.
      tap: as in ``offset_vectors``.
      step: draw every ``step``-th heatmap row and column.
      path: also save the figure there (PNG).

    Returns:
      (uint8 ``[H', W', 3]`` RGB rendering of the figure, the ``Arrows`` of every panel in
      row-major order, as read back from the drawn quiver artists).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = _check_image(image, "image")
    fields = [offsets] if isinstance(offsets, np.ndarray) and offsets.ndim == 3 else offsets
    fields = [np.asarray(f, np.float32) for f in fields]
    if not fields:
        raise ValueError("draw_motion_fields needs at least one offsets tensor")
    if dilations is None:
        dilations = tuple(range(1, len(fields) + 1))
    if len(dilations) != len(fields):
        raise ValueError(f"{len(dilations)} dilations given for {len(fields)} offsets tensors")
    if not joints:
        raise ValueError("draw_motion_fields needs at least one joint")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    hh, ww = fields[0].shape[:2]
    for f in fields:
        if f.ndim != 3 or f.shape[:2] != (hh, ww):
            raise ValueError(f"offsets tensors must all be [{hh}, {ww}, C], got {f.shape}")
    sy, sx = image.shape[0] / hh, image.shape[1] / ww
    qy, qx = np.mgrid[0:hh:step, 0:ww:step].astype(np.float64)

    fig = Figure(figsize=(panel_size * len(joints), panel_size * len(fields) * sy / sx * hh / ww))
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(fields), len(joints), squeeze=False)
    drawn: list[Arrows] = []
    for r, (field, d) in enumerate(zip(fields, dilations)):
        for c, g in enumerate(joints):
            vec = offset_vectors(field, g, tap)[::step, ::step].astype(np.float64)  # (dy, dx)
            ax = axes[r, c]
            ax.imshow(image, interpolation="nearest")
            q = ax.quiver(
                qx * sx,
                qy * sy,
                vec[..., 1] * sx * arrow_scale,
                vec[..., 0] * sy * arrow_scale,
                color="yellow",
                angles="xy",  # data coordinates: with imshow's y axis, +v points down
                scale_units="xy",
                scale=1.0,
                width=0.006,
            )
            name = joint_names[g] if g < len(joint_names) else f"joint {g}"
            scale_note = f", x{arrow_scale:g}" if arrow_scale != 1 else ""
            ax.set_title(f"d={d}, {name}{scale_note}", fontsize=8)
            ax.set_xlim(-0.5, image.shape[1] - 0.5)
            ax.set_ylim(image.shape[0] - 0.5, -0.5)
            ax.set_axis_off()
            xy = np.asarray(q.get_offsets(), np.float64)
            drawn.append(
                Arrows(
                    int(d),
                    int(g),
                    xy[:, 0],
                    xy[:, 1],
                    np.asarray(q.U, np.float64).ravel(),
                    np.asarray(q.V, np.float64).ravel(),
                )
            )
    fig.tight_layout()
    canvas.draw()
    rendered = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        write_image(path, rendered)
    return rendered, drawn

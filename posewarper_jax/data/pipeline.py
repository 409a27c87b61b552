"""Grain input pipelines: training frame pairs (or single frames), evaluation windows and
propagation pairs.

Training (``train_dataset``): one record per (labeled frame A, person with at least one
labeled joint and a non-empty box). In every epoch each record draws a supporting frame B
uniformly from ``[t_A - R, t_A + R]`` (0 included), clipped to the video. A and B get the
same crop (from A's box) and the same augmentation; the target is A's. A batch is::

  image          uint8   [B, T, H, W, 3]  RGB; t=0 is A, t=1 is B (T=1 in single-frame mode)
  target         float32 [B, h, w, J]     Gaussian heatmaps of A's joints (NHWC)
  target_weight  float32 [B, J]
  joints         float32 [B, J, 3]        A's joints in crop pixels (x, y, labeled)
  video, frame_a, frame_b, person  int32 [B]   indices into the VideoDataset
  image_id       int64   [B]               A's image id
  center, scale  float32 [B, 2]            crop in A's unflipped image (scale in 200 px)
  rotation       float32 [B]               degrees;  flip  bool [B]
  replaced       int32   [B]               1 where a bad image made the record be replaced

Evaluation / inference (``eval_dataset``): fixed order; for each (frame, person box) a window
of frames ``frame + offsets``, all cropped with that frame's box (no augmentation). Frames past
the video's ends are clipped (``eval_edge="clip"``) or blanked and flagged (``"mask"``). The
last batch is padded to the full batch size; ``mask`` marks real rows::

  image        uint8 [B, T, H, W, 3];   frame_valid bool [B, T];   frame_index int32 [B, T]
  mask         bool  [B]
  target, target_weight, joints   as above, for the box's own keypoints (weight 0 if none)
  video, frame, person, track_id  int32 [B];  image_id int64 [B];  score float32 [B]
  center, scale  float32 [B, 2]

With ``skip_bad_images`` a bad window frame is blanked with ``frame_valid`` False, and a bad
centre frame sets the row's ``mask`` False (each counted with a ``BadImageWarning``).

Propagation (``pair_dataset``): fixed order; for each row of a propagation plan
(``apps.propagation.plan_propagation``) the target frame and its source frames, all cropped
with the row's box, and each source's joints as Gaussian maps (``pair_map_dataset`` lists the
fields). Padded like the evaluation batches; a row with a bad image is a padding row under
``skip_bad_images``.

All three read images with one reader (``BadImageError`` naming the file and the record),
check each person's arrays with ``person_arrays`` and skip bad images the same way.

Pixel coordinates: pixel centres at integers, x right, y down.

Worker processes (``num_workers > 0``) are started with "spawn": a script that iterates such
a pipeline needs the usual ``if __name__ == "__main__":`` guard. Bad images skipped in workers
are counted there; the ``replaced`` field counts them in the batches themselves.

Determinism: every random choice of an example is drawn from a generator seeded by
``(seed, epoch, record index)`` and the order of epoch e by ``(seed, e)``, so batches do not
depend on the number of worker processes or threads. Batches are formed before Grain's
multiprocess prefetch, which hands whole batches to workers round-robin.

Multi-host: ``batch_size`` is the global batch; process p of P reads rows
``[p * B/P, (p+1) * B/P)`` of every global batch, and ``make_global_batch`` assembles the
global ``jax.Array`` from the local parts.

Resume: ``it = iter(train_dataset(...))``; ``it.get_state()`` / ``it.set_state(state)``, or
through Orbax with Grain's handler::

  mngr = ocp.CheckpointManager(directory, item_names=("state", "data"))
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(train_state), data=grain.checkpoint.CheckpointSave(it)))
  mngr.restore(step, args=ocp.args.Composite(..., data=grain.checkpoint.CheckpointRestore(it)))
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import logging
import math
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import cv2
import grain
import numpy as np

from posewarper_jax import storage
from posewarper_jax.cli import ExpectedError
from posewarper_jax.data import transforms
from posewarper_jax.data.types import NUM_JOINTS, Person, VideoDataset

if TYPE_CHECKING:
    from posewarper_jax.apps.propagation import PropagationPlan

logger = logging.getLogger(__name__)

# Stream tags keep the shuffle and the per-record draws independent for equal seeds.
_SHUFFLE_STREAM = 0
_RECORD_STREAM = 1


class BadImageError(ValueError, ExpectedError):
    """An image that is missing or cannot be decoded; the message names file and record.

    ``path`` is the image file (when known).
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class BadImageWarning(UserWarning):
    """A bad image skipped because ``PipelineConfig.skip_bad_images`` is set."""


_bad_image_lock = threading.Lock()
_bad_image_count = 0


def bad_image_count() -> int:
    """Number of bad images skipped so far in this process (workers count their own)."""
    return _bad_image_count


def note_bad_image(err: BadImageError, log: str = "") -> None:
    """Counts a skipped bad image (``bad_image_count``), warns, and appends a JSON line
    ``{"path", "reason"}`` to the file ``log`` when given (one line per skip: processes,
    workers included, append to the same file, and the count survives a resumed job)."""
    global _bad_image_count
    with _bad_image_lock:
        _bad_image_count += 1
        n = _bad_image_count
    warnings.warn(f"skipped bad image #{n} in this process: {err}", BadImageWarning, stacklevel=3)
    if log:
        import json

        # A leading newline: a line cut short by a killed process stays a line of its own.
        line = "\n" + json.dumps({"path": getattr(err, "path", None), "reason": str(err)})
        if storage.is_remote(log):
            # No appends on an object store: the log is read and written back whole
            # (two processes skipping at the same moment may lose one of their lines).
            try:
                old = storage.read_text(log)
            except FileNotFoundError:
                old = ""
            storage.write_bytes(log, (old + line).encode("utf-8"))
            return
        with open(log, "a", encoding="utf-8") as f:  # one short append: atomic on POSIX
            f.write(line)


def bad_images_in_log(log: str) -> list[str]:
    """The distinct bad image files recorded in ``log`` (``note_bad_image``), sorted."""
    import json

    if not log or not storage.exists(log):
        return []
    paths = set()
    with storage.open_file(log) as f:
        for line in f:
            try:
                paths.add(str(json.loads(line)["path"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a killed process
    return sorted(paths)


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Input-pipeline settings.

    image_size: crop (H, W). 128×96 is the CPU-sized default; the paper uses 384×288.
    heatmap_stride: crop pixels per heatmap pixel; heatmaps are (H/stride, W/stride).
    sigma: target Gaussian σ in heatmap pixels. HRNet uses 2 at 64×48 heatmaps and 3 at 96×72
      (σ ≈ heatmap height / 32); the default 1.0 follows that rule for 32×24 heatmaps.
      Set 3.0 with image_size (384, 288).
    target_encoding: "integer" (HRNet: each Gaussian centred on the rounded heatmap pixel) or
      "subpixel" (centred on the joint's exact position), ``transforms.gaussian_targets``;
      it shapes the training targets and the maps that propagation warps.
    support_range: R, the supporting frame B is drawn from [t_A - R, t_A + R].
    unlabeled_reach: D > 0 makes pairs (training with ``paired=True`` only) whose A is also an
      unlabeled frame at most D frames from a labeled one (``unlabeled_records``); their
      examples carry ``a_labeled`` False and no joints, and the stage-2 loss takes the frozen
      backbone's maps of A as their target. 0: A is a labeled frame (the paper's recipe).
      ``steps_per_epoch`` still counts the labeled records, so a stage's steps do not change.
    augment: apply ``aug`` to training examples (evaluation never augments).
    aug: augmentation probabilities and factors.
    box_padding: box enlargement before cropping.
    shuffle: shuffle training records (a new order every epoch).
    num_epochs: training epochs; None repeats forever.
    batch_size: global batch size (split evenly across processes).
    num_workers: Grain worker processes for decoding; 0 decodes in this process.
    read_threads: threads per process preparing batches (cv2 releases the GIL).
    frame_cache_mb: decoded frames kept in memory per process (MiB, least recently used
      first out; 0: decode every read). The default holds every frame of the CPU default's
      data set.
    prefetch_batches: batches buffered per process.
    seed: non-negative seed of all shuffling and augmentation.
    skip_bad_images: replace/skip records with missing or corrupt images (counted
      ``BadImageWarning``) instead of raising ``BadImageError``.
    bad_image_log: a file to which every skipped bad image appends a JSON line (see
      ``note_bad_image``); empty: none.
    eval_offsets: frame offsets of the evaluation window, e.g. (-2, -1, 0, 1, 2).
    eval_edge: "clip" repeats the first/last frame past the video's ends; "mask" blanks those
      frames and sets ``frame_valid`` False.
    """

    image_size: tuple[int, int] = (128, 96)
    heatmap_stride: int = 4
    sigma: float = 1.0
    target_encoding: str = "integer"
    support_range: int = 2
    unlabeled_reach: int = 0
    augment: bool = True
    aug: transforms.AugmentConfig = dataclasses.field(default_factory=transforms.AugmentConfig)
    box_padding: float = transforms.BOX_PADDING
    shuffle: bool = True
    num_epochs: int | None = None
    batch_size: int = 32
    num_workers: int = 0
    read_threads: int = 2
    frame_cache_mb: int = 1024
    prefetch_batches: int = 2
    seed: int = 0
    skip_bad_images: bool = False
    bad_image_log: str = ""
    eval_offsets: tuple[int, ...] = (-2, -1, 0, 1, 2)
    eval_edge: str = "clip"

    def __post_init__(self):
        def bad(field, value, want):
            raise ValueError(f"PipelineConfig.{field} {want}, got {value!r}")

        # Lists from config files become tuples: the config stays hashable and comparable.
        object.__setattr__(self, "image_size", tuple(self.image_size))
        object.__setattr__(self, "eval_offsets", tuple(self.eval_offsets))
        size = self.image_size
        if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
            bad("image_size", self.image_size, "must be two positive integers (H, W)")
        if self.heatmap_stride <= 0 or int(self.heatmap_stride) != self.heatmap_stride:
            bad("heatmap_stride", self.heatmap_stride, "must be a positive integer")
        if any(s % self.heatmap_stride for s in size):
            bad("image_size", self.image_size, f"must be divisible by {self.heatmap_stride}")
        if not (isinstance(self.sigma, int | float) and self.sigma > 0):
            bad("sigma", self.sigma, "must be > 0")
        encodings = transforms.TARGET_ENCODINGS
        if self.target_encoding not in encodings:
            bad("target_encoding", self.target_encoding, f"must be one of {encodings}")
        if self.support_range < 0:
            bad("support_range", self.support_range, "must be >= 0")
        if self.unlabeled_reach < 0:
            bad("unlabeled_reach", self.unlabeled_reach, "must be >= 0")
        if not isinstance(self.aug, transforms.AugmentConfig):
            bad("aug", self.aug, "must be an AugmentConfig")
        if not self.box_padding > 0:
            bad("box_padding", self.box_padding, "must be > 0")
        if self.num_epochs is not None and self.num_epochs <= 0:
            bad("num_epochs", self.num_epochs, "must be positive or None")
        if self.batch_size <= 0:
            bad("batch_size", self.batch_size, "must be positive")
        if self.num_workers < 0:
            bad("num_workers", self.num_workers, "must be >= 0")
        if self.read_threads < 0:
            bad("read_threads", self.read_threads, "must be >= 0")
        if (
            not isinstance(self.frame_cache_mb, int)
            or isinstance(self.frame_cache_mb, bool)
            or self.frame_cache_mb < 0
        ):
            bad("frame_cache_mb", self.frame_cache_mb, "must be an integer >= 0")
        if self.prefetch_batches < 0:
            bad("prefetch_batches", self.prefetch_batches, "must be >= 0")
        if not 0 <= self.seed < 2**63:
            bad("seed", self.seed, "must be a non-negative integer")
        if len(self.eval_offsets) == 0:
            bad("eval_offsets", self.eval_offsets, "must not be empty")
        if self.eval_edge not in ("clip", "mask"):
            bad("eval_edge", self.eval_edge, 'must be "clip" or "mask"')

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(h, w) of the target heatmaps."""
        return (
            self.image_size[0] // self.heatmap_stride,
            self.image_size[1] // self.heatmap_stride,
        )

    @property
    def aspect_ratio(self) -> float:
        """Crop width / height."""
        return self.image_size[1] / self.image_size[0]


# ----------------------------------------------------------------------------- tables


@dataclasses.dataclass
class _Records:
    """Flat, picklable arrays of person records (N of them)."""

    video: np.ndarray  # int32 [N]
    frame: np.ndarray  # int32 [N]
    person: np.ndarray  # int32 [N] index in the frame's person list
    box: np.ndarray  # float32 [N, 4] (x, y, w, h)
    keypoints: np.ndarray  # float32 [N, J, 3]
    score: np.ndarray  # float32 [N]
    track_id: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.video)


class _FrameTable:
    """Paths and ids of every frame, flat and picklable (sent to each worker)."""

    def __init__(self, dataset: VideoDataset):
        self.video_names = [v.name for v in dataset.videos]
        self.nframes = np.array([v.nframes for v in dataset.videos], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.nframes)]).astype(np.int64)
        self.paths: list[str] = []
        image_ids = []
        for video in dataset.videos:
            for i, frame in enumerate(video.frames):
                if frame.index != i:
                    raise ValueError(
                        f"video {video.name!r} ({video.source}): frame at position {i} has "
                        f"index {frame.index}; frames must be complete and in order"
                    )
                self.paths.append(frame.path)
                image_ids.append(frame.image_id)
        self.image_ids = np.array(image_ids, dtype=np.int64)

    def path(self, video: int, frame: int) -> str:
        return self.paths[self.offsets[video] + frame]

    def image_id(self, video: int, frame: int) -> int:
        return int(self.image_ids[self.offsets[video] + frame])


def person_arrays(person: Person, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints float32 [J, 3], box float32 [4] (x, y, w, h)) of a person; a ValueError
    naming ``where`` (the file and the person) for a malformed array. No keypoints: zeros."""
    if person.keypoints is None:
        kpts = np.zeros((NUM_JOINTS, 3), np.float32)
    else:
        kpts = np.asarray(person.keypoints, dtype=np.float32)
    if kpts.shape != (NUM_JOINTS, 3):
        raise ValueError(
            f"{where}: keypoints have shape {kpts.shape}, expected ({NUM_JOINTS}, 3) (x, y, v)"
        )
    box = np.asarray(person.bbox, dtype=np.float32)
    if box.shape != (4,):
        raise ValueError(f"{where}: bbox has shape {box.shape}, expected (4,) (x, y, w, h)")
    if not np.all(np.isfinite(box)):
        raise ValueError(f"{where}: bbox {box.tolist()} is not finite")
    return kpts, box


BoxSource = (
    str
    | VideoDataset
    | Callable[[str, int], Sequence[Person]]
    | Mapping[tuple[str, int], Sequence[Person]]
)


def _collect(
    dataset: VideoDataset,
    people_of: Callable[[int, int], Sequence[Person]],
    frames: str,
    require_labeled_joint: bool,
) -> _Records:
    cols: dict[str, list] = {k: [] for k in ("video", "frame", "person", "box", "kpts", "sc", "tr")}
    skipped_boxes = 0
    for vi, video in enumerate(dataset.videos):
        for frame in video.frames:
            if frames == "labeled" and not frame.is_labeled:
                continue
            for pi, person in enumerate(people_of(vi, frame.index)):
                where = f"video {video.name!r} frame {frame.index} person {pi} ({video.source})"
                kpts, box = person_arrays(person, where)
                if require_labeled_joint and not np.any(kpts[:, 2] > 0):
                    continue
                if box[2] <= 0 or box[3] <= 0:
                    skipped_boxes += 1
                    continue
                cols["video"].append(vi)
                cols["frame"].append(frame.index)
                cols["person"].append(pi)
                cols["box"].append(box)
                cols["kpts"].append(kpts)
                cols["sc"].append(person.score)
                cols["tr"].append(person.track_id)
    if skipped_boxes:
        logger.info("left out %d people with empty boxes (w or h <= 0)", skipped_boxes)
    return _Records(
        video=np.array(cols["video"], np.int32),
        frame=np.array(cols["frame"], np.int32),
        person=np.array(cols["person"], np.int32),
        box=np.array(cols["box"], np.float32).reshape(-1, 4),
        keypoints=np.array(cols["kpts"], np.float32).reshape(-1, NUM_JOINTS, 3),
        score=np.array(cols["sc"], np.float32),
        track_id=np.array(cols["tr"], np.int32),
    )


def _people_source(
    dataset: VideoDataset, boxes: BoxSource
) -> Callable[[int, int], Sequence[Person]]:
    if isinstance(boxes, str):
        if boxes != "gt":
            raise ValueError(
                f'boxes must be "gt", a VideoDataset, a callable or a mapping, got {boxes!r}'
            )
        return lambda vi, fi: dataset.videos[vi].frames[fi].people
    if isinstance(boxes, VideoDataset):
        # e.g. ``load_detections``' output: the same videos, detections as people.
        by_name = {v.name: v for v in boxes.videos}

        def from_dataset(vi: int, fi: int) -> Sequence[Person]:
            video = by_name.get(dataset.videos[vi].name)
            return video.frames[fi].people if video is not None and fi < video.nframes else ()

        return from_dataset
    if isinstance(boxes, Mapping):
        return lambda vi, fi: boxes.get((dataset.videos[vi].name, fi), ())
    if callable(boxes):
        return lambda vi, fi: boxes(dataset.videos[vi].name, fi) or ()
    raise ValueError(
        f'boxes must be "gt", a VideoDataset, a callable or a mapping, got {type(boxes).__name__}'
    )


def train_records(dataset: VideoDataset) -> _Records:
    """The training records: every labeled frame's people with a labeled joint and a box."""
    return _collect(
        dataset, _people_source(dataset, "gt"), frames="labeled", require_labeled_joint=True
    )


def unlabeled_records(dataset: VideoDataset, reach: int) -> _Records:
    """Records of the unlabeled frames at most ``reach`` frames from a labeled one: the
    people of the nearest labeled frame (the earlier one on a tie), each with its box carried
    over (linearly interpolated to the frame where the same track is labeled on both sides)
    and no labeled joint. Frames are within their video; ``person`` indexes the labeled
    frame's people."""
    labeled: dict[int, list[int]] = collections.defaultdict(list)
    for vi, fi in dataset.labeled_frames():  # in order
        labeled[vi].append(fi)

    def unlabeled_people(vi: int, fi: int) -> list[Person]:
        frames, marks = dataset.videos[vi].frames, labeled[vi]
        at = bisect.bisect_left(marks, fi)
        if at < len(marks) and marks[at] == fi:
            return []  # a labeled frame
        prev = marks[at - 1] if at > 0 else None
        nxt = marks[at] if at < len(marks) else None
        near = [f for f in (prev, nxt) if f is not None and abs(f - fi) <= reach]
        if not near:
            return []
        near = min(near, key=lambda f: (abs(f - fi), f))
        other = nxt if near == prev else prev
        tracks = {}
        if other is not None:
            tracks = {q.track_id: q for q in frames[other].people if q.track_id >= 0}
        out = []
        for person in frames[near].people:
            box = np.asarray(person.bbox, np.float32)
            twin = tracks.get(person.track_id) if person.track_id >= 0 else None
            if twin is not None:
                w = (fi - near) / (other - near)
                box = (1 - w) * box + w * np.asarray(twin.bbox, np.float32)
            kpts = np.zeros_like(np.asarray(person.keypoints, np.float32))
            out.append(dataclasses.replace(person, keypoints=kpts, bbox=box))
        return out

    return _collect(dataset, unlabeled_people, frames="all", require_labeled_joint=False)


def _concat_records(*parts: _Records) -> _Records:
    fields = [f.name for f in dataclasses.fields(_Records)]
    return _Records(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in fields})


def steps_per_epoch(dataset: VideoDataset, config: PipelineConfig) -> int:
    """Global batches per epoch of training records (the stream runs on across epochs)."""
    return len(train_records(dataset)) // config.batch_size


# ----------------------------------------------------------------------------- examples


def _read_bgr(path: str, record: str) -> np.ndarray:
    """The BGR image at ``path``; a ``BadImageError`` naming it and ``record`` if it is
    missing or cannot be decoded."""
    img = storage.read_image(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        why = "missing" if not storage.exists(path) else "unreadable (corrupt or not an image)"
        raise BadImageError(f"image {path!r} is {why}; needed by {record}", path)
    return img


class _FrameCache:
    """A thread-safe LRU of decoded frames (``_read_bgr``), bounded in bytes, one per
    process (Grain workers have their own).

    Training reads each labeled frame and its neighbours again every epoch, and an
    evaluation window reads each frame once per person and per window that holds it; with
    the cache each frame is decoded once while it fits. Frames are returned read-only;
    callers crop from them. A frame that cannot be read is not kept (the error is raised
    again on the next read).
    """

    def __init__(self):
        self._items: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, path: str, record: str, limit_bytes: int) -> np.ndarray:
        if limit_bytes <= 0:
            return _read_bgr(path, record)
        with self._lock:
            img = self._items.get(path)
            if img is not None:
                self._items.move_to_end(path)
                return img
        img = _read_bgr(path, record)
        img.flags.writeable = False
        with self._lock:
            if path not in self._items and img.nbytes <= limit_bytes:
                self._items[path] = img
                self._bytes += img.nbytes
            while self._bytes > limit_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return img

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_FRAMES = _FrameCache()


def _frame(path: str, record: str, cfg: PipelineConfig) -> np.ndarray:
    """The decoded BGR frame at ``path``, through the process's frame cache."""
    return _FRAMES.get(path, record, cfg.frame_cache_mb << 20)


def _skip_bad_image(err: BadImageError, cfg: PipelineConfig) -> None:
    """Re-raises ``err`` unless ``cfg.skip_bad_images``; otherwise notes the skip
    (``note_bad_image``) and returns, and the caller leaves the image out."""
    if not cfg.skip_bad_images:
        raise err
    note_bad_image(err, cfg.bad_image_log)


def _crop_rgb(bgr: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # Converting the small crop, not the whole frame, is cheaper.
    return cv2.cvtColor(transforms.warp_crop(bgr, m, size), cv2.COLOR_BGR2RGB)


def _crop_joints(
    kpts: np.ndarray, m: np.ndarray, flip: bool, cfg: PipelineConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps keypoints [J, 3] into the crop; returns joints [J, 3], target, target_weight."""
    labeled = kpts[:, 2] > 0
    xy = transforms.affine_points(kpts[:, :2], m)
    if flip:
        xy, labeled = transforms.swap_left_right(xy), transforms.swap_left_right(labeled)
    xy = np.where(labeled[:, None], xy, 0.0)
    target, weight = transforms.gaussian_targets(
        xy, labeled, cfg.heatmap_size, cfg.image_size, cfg.sigma, cfg.target_encoding
    )
    joints = np.concatenate([xy, labeled[:, None]], axis=1).astype(np.float32)
    return joints, target, weight


class _TrainSource:
    """Global example index → training example; picklable, no JAX."""

    def __init__(
        self, table: _FrameTable, records: _Records, cfg: PipelineConfig, paired: bool
    ) -> None:
        self.table, self.records, self.cfg, self.paired = table, records, cfg, paired
        self._order_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def order(self, epoch: int) -> np.ndarray:
        """Record order of an epoch, int64 [N]."""
        cached = self._order_cache  # one read: other threads may replace it
        if cached is not None and cached[0] == epoch:
            return cached[1]
        n = len(self.records)
        if self.cfg.shuffle:
            order = np.random.default_rng([self.cfg.seed, epoch, _SHUFFLE_STREAM]).permutation(n)
        else:
            order = np.arange(n)
        self._order_cache = (epoch, order)
        return order

    def example(self, g: int) -> dict[str, np.ndarray]:
        n = len(self.records)
        epoch, pos = divmod(int(g), n)
        rec = int(self.order(epoch)[pos])
        # A bad image replaces the record by the next ones, deterministically.
        for attempt in range(n):
            try:
                ex = self._make(epoch, (rec + attempt) % n)
            except BadImageError as err:
                _skip_bad_image(err, self.cfg)
                continue
            ex["replaced"] = np.int32(attempt > 0)
            return ex
        raise BadImageError(f"no record of the data set has readable images (epoch {epoch})")

    def _make(self, epoch: int, r: int) -> dict[str, np.ndarray]:
        cfg, rec = self.cfg, self.records
        v, fa, p = int(rec.video[r]), int(rec.frame[r]), int(rec.person[r])
        rng = np.random.default_rng([cfg.seed, epoch, r, _RECORD_STREAM])
        # Drawn in both modes, so single-frame examples see the pair's augmentation.
        delta = int(rng.integers(-cfg.support_range, cfg.support_range + 1))
        fb = int(np.clip(fa + delta, 0, self.table.nframes[v] - 1)) if self.paired else fa
        kpts = rec.keypoints[r]
        center, scale = transforms.box_to_center_scale(
            rec.box[r], cfg.aspect_ratio, padding=cfg.box_padding
        )
        if cfg.augment:
            aug = transforms.sample_augmentation(
                rng, center, scale, kpts, kpts[:, 2] > 0, cfg.aspect_ratio, cfg.aug
            )
        else:
            aug = transforms.Augmentation(center, scale, 0.0, False)

        name = self.table.video_names[v]
        where = f"record (video {name!r}, frame {fa}, person {p})"
        img_a = _frame(self.table.path(v, fa), f"{where}, frame A {fa}", cfg)
        m = transforms.crop_transform(
            aug.center, aug.scale, aug.rotation, cfg.image_size,
            flip=aug.flip, image_width=img_a.shape[1],
        )  # fmt: skip
        crops = [_crop_rgb(img_a, m, cfg.image_size)]
        if self.paired:
            img_b = img_a
            if fb != fa:
                img_b = _frame(self.table.path(v, fb), f"{where}, frame B {fb}", cfg)
            crops.append(_crop_rgb(img_b, m, cfg.image_size))
        joints, target, weight = _crop_joints(kpts, m, aug.flip, cfg)
        extra = {}
        if cfg.unlabeled_reach > 0:
            extra["a_labeled"] = np.bool_(np.any(kpts[:, 2] > 0))
        return {
            **extra,
            "image": np.stack(crops),
            "target": target,
            "target_weight": weight,
            "joints": joints,
            "video": np.int32(v),
            "frame_a": np.int32(fa),
            "frame_b": np.int32(fb),
            "person": np.int32(p),
            "image_id": np.int64(self.table.image_id(v, fa)),
            "center": aug.center.astype(np.float32),
            "scale": aug.scale.astype(np.float32),
            "rotation": np.float32(aug.rotation),
            "flip": np.bool_(aug.flip),
        }


def _blank_row() -> dict[str, np.ndarray]:
    """The row fields of an evaluation window or propagation pair, as on a padding row."""
    return {
        "mask": np.bool_(False),
        "video": np.int32(-1),
        "frame": np.int32(-1),
        "person": np.int32(-1),
        "track_id": np.int32(-1),
        "image_id": np.int64(-1),
        "score": np.float32(0.0),
        "center": np.zeros((2,), np.float32),
        "scale": np.ones((2,), np.float32),
    }


class _EvalSource:
    """Global example index → evaluation window (index >= len: a padding row)."""

    def __init__(
        self, table: _FrameTable, records: _Records, cfg: PipelineConfig, offsets: Sequence[int]
    ) -> None:
        self.table, self.records, self.cfg = table, records, cfg
        self.offsets = np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def _blank(self) -> dict[str, np.ndarray]:
        cfg, t, j = self.cfg, len(self.offsets), NUM_JOINTS
        h, w = cfg.image_size
        return {
            "image": np.zeros((t, h, w, 3), np.uint8),
            "frame_valid": np.zeros((t,), np.bool_),
            "frame_index": np.full((t,), -1, np.int32),
            "target": np.zeros((*cfg.heatmap_size, j), np.float32),
            "target_weight": np.zeros((j,), np.float32),
            "joints": np.zeros((j, 3), np.float32),
            **_blank_row(),
        }

    def example(self, g: int) -> dict[str, np.ndarray]:
        ex = self._blank()
        g = int(g)
        if g >= len(self.records):
            return ex
        cfg, rec = self.cfg, self.records
        v, f, p = int(rec.video[g]), int(rec.frame[g]), int(rec.person[g])
        center, scale = transforms.box_to_center_scale(
            rec.box[g], cfg.aspect_ratio, padding=cfg.box_padding
        )
        m = transforms.get_affine_transform(center, scale, 0.0, cfg.image_size)
        n = int(self.table.nframes[v])
        frames = f + self.offsets
        valid = (frames >= 0) & (frames < n)
        if cfg.eval_edge == "clip":
            frames, valid = np.clip(frames, 0, n - 1), np.ones_like(valid)
        name = self.table.video_names[v]
        where = f"record (video {name!r}, frame {f}, person {p})"
        crops: dict[int, np.ndarray | None] = {}
        for t, (fi, ok) in enumerate(zip(frames.tolist(), valid.tolist())):
            if not ok:
                continue
            if fi not in crops:
                try:
                    crops[fi] = _crop_rgb(
                        _frame(self.table.path(v, fi), f"{where}, window frame {fi}", cfg),
                        m,
                        cfg.image_size,
                    )
                except BadImageError as err:
                    _skip_bad_image(err, cfg)
                    crops[fi] = None
            if crops[fi] is not None:
                ex["image"][t] = crops[fi]
                ex["frame_valid"][t] = True
                ex["frame_index"][t] = fi
        joints, target, weight = _crop_joints(rec.keypoints[g], m, False, cfg)
        # A skipped centre frame leaves nothing to predict on: the row is masked out.
        centre_ok = f not in crops or crops[f] is not None
        ex.update(
            mask=np.bool_(centre_ok),
            target=target,
            target_weight=weight,
            joints=joints,
            video=np.int32(v),
            frame=np.int32(f),
            person=np.int32(p),
            track_id=np.int32(rec.track_id[g]),
            image_id=np.int64(self.table.image_id(v, f)),
            score=np.float32(rec.score[g]),
            center=center,
            scale=scale,
        )
        return ex


class _PairSource:
    """Propagation plan row → pair example (index >= len: a padding row)."""

    def __init__(self, table: _FrameTable, plan: PropagationPlan, cfg: PipelineConfig) -> None:
        self.table, self.plan, self.cfg = table, plan, cfg

    def __len__(self) -> int:
        return len(self.plan)

    def _blank(self) -> dict[str, np.ndarray]:
        cfg, s, j = self.cfg, self.plan.num_sources, NUM_JOINTS
        h, w = cfg.image_size
        return {
            "image": np.zeros((1 + s, h, w, 3), np.uint8),
            "frame_valid": np.zeros((1 + s,), np.bool_),
            "target": np.zeros((s, *cfg.heatmap_size, j), np.float32),
            "target_weight": np.zeros((s, j), np.float32),
            "source_weight": np.zeros((s,), np.float32),
            **_blank_row(),
        }

    def _crop(self, v: int, f: int, m: np.ndarray, record: str) -> np.ndarray:
        return _crop_rgb(_frame(self.table.path(v, f), record, self.cfg), m, self.cfg.image_size)

    def example(self, g: int) -> dict[str, np.ndarray]:
        ex = self._blank()
        g = int(g)
        if g >= len(self.plan):
            return ex
        cfg, plan = self.cfg, self.plan
        v, b = int(plan.video[g]), int(plan.frame[g])
        center, scale = transforms.box_to_center_scale(
            plan.box[g], cfg.aspect_ratio, padding=cfg.box_padding
        )
        m = transforms.get_affine_transform(center, scale, 0.0, cfg.image_size)
        record = f"propagation row {g} (video {plan.video_names[v]!r}, frame {b})"
        try:
            ex["image"][0] = self._crop(v, b, m, record)
            ex["frame_valid"][0] = True
            for k in range(plan.num_sources):
                a = int(plan.source_frame[g, k])
                if a < 0:
                    continue
                _, ex["target"][k], ex["target_weight"][k] = _crop_joints(
                    plan.source_keypoints[g, k], m, False, cfg
                )
                ex["image"][1 + k] = self._crop(v, a, m, f"{record}, source frame {a}")
                ex["frame_valid"][1 + k] = True
                ex["source_weight"][k] = plan.source_weight[g, k]
        except BadImageError as err:
            _skip_bad_image(err, cfg)
            return ex  # a padding row (mask False): no prediction for this person
        ex.update(
            mask=np.bool_(True),
            video=np.int32(v),
            frame=np.int32(b),
            person=np.int32(g),
            track_id=np.int32(plan.track_id[g]),
            image_id=np.int64(self.table.image_id(v, b)),
            score=np.float32(1.0),
            center=center.astype(np.float32),
            scale=scale.astype(np.float32),
        )
        return ex


class _LocalExample:
    """Local example index k of process p → the source's example at global index
    ``(k // b) * B + p * b + k % b`` (b = local, B = global batch size)."""

    def __init__(self, source, global_batch: int, local_batch: int, process_index: int):
        self.source = source
        self.global_batch, self.local_batch = global_batch, local_batch
        self.process_index = process_index

    def global_index(self, k: int) -> int:
        step, row = divmod(int(k), self.local_batch)
        return step * self.global_batch + self.process_index * self.local_batch + row

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        return self.source.example(self.global_index(k))


def _process_slice(
    config: PipelineConfig, process_index: int | None, process_count: int | None
) -> tuple[int, int, int]:
    """Returns (process_index, process_count, local batch size)."""
    if process_index is None or process_count is None:
        import jax  # imported here so data workers never load JAX

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if config.batch_size % process_count:
        raise ValueError(
            f"PipelineConfig.batch_size {config.batch_size} is not divisible by the "
            f"process count {process_count}"
        )
    return process_index, process_count, config.batch_size // process_count


def _worker_init(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    cv2.setNumThreads(1)  # one core per worker process: no oversubscription


def _batched(
    source, num_batches: int, config: PipelineConfig, process_index: int, local_batch: int
) -> grain.MapDataset:
    """The ``source``'s examples as ``num_batches`` local batches of this process."""
    ds = grain.MapDataset.range(num_batches * local_batch)
    ds = ds.map(_LocalExample(source, config.batch_size, local_batch, process_index))
    return ds.batch(local_batch, drop_remainder=True)


def _to_iter(
    ds: grain.MapDataset, config: PipelineConfig, workers: bool = True
) -> grain.IterDataset:
    """``ds`` read by ``config.read_threads`` threads, and by ``config.num_workers``
    processes when ``workers``."""
    it = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_batches
        )
    )
    if workers and config.num_workers > 0:
        # Grain's worker start-up reads absl flags and fails when the program never parsed
        # them (pytest, notebooks; google/grain#1355): take the defaults in that case.
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.num_workers,
                per_worker_buffer_size=max(1, config.prefetch_batches),
            ),
            worker_init_fn=_worker_init,
        )
    return it


# ----------------------------------------------------------------------------- public


def train_map_dataset(
    dataset: VideoDataset,
    config: PipelineConfig,
    *,
    paired: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """This process's training batches as a random-access ``grain.MapDataset``.

    Element i is the local part (``batch_size / process_count`` rows) of global batch i; see
    the module docstring for the fields. ``paired=False`` gives single frames (T = 1) for
    backbone training. With ``num_epochs=None`` the length is effectively infinite.

    Raises:
      ValueError: no training record, a keypoint/box array of the wrong shape (naming the
        record), or a bad process split.
    """
    pi, _, local = _process_slice(config, process_index, process_count)
    records = train_records(dataset)
    if len(records) == 0:
        raise ValueError("the data set has no labeled person to train on")
    if config.unlabeled_reach > 0:
        if not paired:
            raise ValueError(
                "PipelineConfig.unlabeled_reach > 0 makes frame pairs: it needs paired=True"
            )
        records = _concat_records(records, unlabeled_records(dataset, config.unlabeled_reach))
    source = _TrainSource(_FrameTable(dataset), records, config, paired)
    if config.num_epochs is None:
        num_batches = sys.maxsize // (2 * config.batch_size)
    else:
        num_batches = len(records) * config.num_epochs // config.batch_size
    return _batched(source, num_batches, config, pi, local)


def train_dataset(
    dataset: VideoDataset, config: PipelineConfig, **options: Any
) -> grain.IterDataset:
    """Training batches as a ``grain.IterDataset`` with ``config.num_workers`` decoding
    processes. ``iter()`` it; the iterator's ``get_state``/``set_state`` resume exactly.
    The keyword ``options`` (paired, process_index, process_count) as for
    ``train_map_dataset``."""
    return _to_iter(train_map_dataset(dataset, config, **options), config)


def eval_map_dataset(
    dataset: VideoDataset,
    config: PipelineConfig,
    *,
    boxes: BoxSource = "gt",
    frames: str = "labeled",
    offsets: Sequence[int] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """This process's evaluation batches, in a fixed order, as a ``grain.MapDataset``.

    Args:
      dataset: the videos.
      config: crop size, batch size, ``eval_edge`` and (default) ``eval_offsets``.
      boxes: "gt" (each frame's ``people``); a ``VideoDataset`` with the same videos whose
        people are the boxes (e.g. from ``load_detections``), matched by video name and frame
        index; a callable ``(video_name, frame_index) -> list[Person]``; or a mapping
        ``{(video_name, frame_index): list[Person]}`` (missing keys: no boxes). Detections
        may have ``keypoints=None`` or all-zero keypoints.
      frames: "labeled" (frames with ``is_labeled``) or "all".
      offsets: window offsets; defaults to ``config.eval_offsets``.

    All processes get the same number of batches; rows past the end have ``mask`` False.
    """
    if frames not in ("labeled", "all"):
        raise ValueError(f'frames must be "labeled" or "all", got {frames!r}')
    offsets = tuple(config.eval_offsets if offsets is None else offsets)
    if not offsets or any(int(o) != o for o in offsets):
        raise ValueError(f"offsets must be a non-empty sequence of integers, got {offsets!r}")
    pi, _, local = _process_slice(config, process_index, process_count)
    records = _collect(
        dataset, _people_source(dataset, boxes), frames=frames, require_labeled_joint=False
    )
    source = _EvalSource(_FrameTable(dataset), records, config, offsets)
    return _batched(source, math.ceil(len(records) / config.batch_size), config, pi, local)


def eval_dataset(
    dataset: VideoDataset, config: PipelineConfig, **options: Any
) -> grain.IterDataset:
    """Evaluation batches as a finite ``grain.IterDataset``; the keyword ``options`` (boxes,
    frames, offsets, process_index, process_count) as for ``eval_map_dataset``."""
    return _to_iter(eval_map_dataset(dataset, config, **options), config)


def pair_map_dataset(
    dataset: VideoDataset,
    plan: PropagationPlan,
    config: PipelineConfig,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """This process's propagation pair batches, in plan order, as a ``grain.MapDataset``.

    Args:
      dataset: the videos ``plan`` was made for (``apps.propagation.plan_propagation``).
      plan: one row per (target frame B, person) with S sources each.
      config: crop size, heatmap stride, σ, target encoding, box padding and batch size; no
        augmentation.

    A batch::

      image          uint8   [B, 1+S, H, W, 3]  t=0 the target frame B, t=1..S the sources A
      frame_valid    bool    [B, 1+S]           False for a missing source
      target         float32 [B, S, h, w, J]    Gaussian maps of each source's joints in the crop
      target_weight  float32 [B, S, J]          1 where the joint is labeled and on the heatmap
      source_weight  float32 [B, S]             the plan's weight of each source (0: none)
      mask           bool    [B]                real rows
      video, frame, track_id   int32 [B]        target video, frame B, track
      person         int32   [B]                the row's index in the plan
      image_id       int64   [B];  score float32 [B] (1)
      center, scale  float32 [B, 2]             the crop of the row's box (B's image)

    Every frame of a row is cut with the row's box. With ``skip_bad_images`` a row with a bad
    frame becomes a padding row (``mask`` False). All processes get the same number of
    batches; rows past the end have ``mask`` False.
    """
    pi, _, local = _process_slice(config, process_index, process_count)
    source = _PairSource(_FrameTable(dataset), plan, config)
    return _batched(source, math.ceil(len(plan) / config.batch_size), config, pi, local)


def pair_dataset(
    dataset: VideoDataset, plan: PropagationPlan, config: PipelineConfig, **options: Any
) -> grain.IterDataset:
    """Propagation pair batches as a finite ``grain.IterDataset`` read by ``read_threads``
    threads of this process (no worker processes: the rows share decoded frames); the
    keyword ``options`` as for ``pair_map_dataset``."""
    return _to_iter(pair_map_dataset(dataset, plan, config, **options), config, workers=False)


def make_global_batch(
    local_batch: Mapping[str, Any],
    mesh,
    *,
    axis: str = "data",
    keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Assembles global ``jax.Array``s, sharded along ``axis`` of ``mesh`` on the batch
    dimension, from every process's local batch (the same call on all processes).

    Args:
      local_batch: this process's rows, e.g. ``{"image": uint8 [b, T, H, W, 3], ...}``.
      mesh: a ``jax.sharding.Mesh`` with an axis named ``axis``.
      keys: fields to convert; default: every field except 64-bit ones (``image_id`` stays
        with the host-side local batch, since JAX would truncate it to 32 bits).

    Returns:
      ``{key: jax.Array [B, ...]}`` with B = b × process count.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    if keys is None:
        keys = [k for k, v in local_batch.items() if np.asarray(v).dtype.itemsize < 8]
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[k]))
        for k in keys
    }

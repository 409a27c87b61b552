"""Video pose propagation: carry sparse ground truth to nearby unlabeled frames.

The setting of the paper's propagation experiment: a video has ground truth on some frames
(e.g. every 7th, ``sparse.make_sparse_subset(val, every_k=7)``) and the other frames are to be
labeled. Every method here and in ``apps.baselines`` works on the same *plan*
(``plan_propagation``), so all of them predict exactly the same (video, frame, track) people
from the same boxes:

* Targets. Every unlabeled frame B with a labeled frame A = B - δ for an allowed δ (default
  1 <= |δ| <= ``reach`` = 3). B takes the labels of the NEAREST such A; on a tie (A at B - δ
  and at B + δ) the earlier frame wins. Frames with no labeled frame within reach get no
  prediction.
* People. Without ``boxes`` (the main job's setting, ``apps.propagation_eval``) B receives
  A's people, with A's track ids, cropped with A's box (the crop the warping head was trained
  with: stage 2 cuts both frames of a pair with A's box); nothing of B but its image is read.
  With ``boxes`` (a ``VideoDataset`` holding the people of the target frames from elsewhere,
  e.g. tracked detections or a box file of one's own) each person on B is matched by
  ``track_id`` to the person of A with the same track; the crop is B's own box. A person on B
  without a same-track person in A (someone entering the video), without a track id (< 0) or
  whose A has no labeled joint cannot be propagated and gets no pose. Boxes taken from B's
  held-back ground truth would hand a method information it cannot have at test time.
* Blend (optional, ``blend=True``). The nearest labeled frame on the other side of B within
  reach, if it holds the same track, is a second source. The warped maps of the sources are
  averaged per joint with weights ``1/|δ|`` renormalised over the sources in which that joint
  is labeled, so a joint seen from one side only keeps its full peak. The people and frames
  are the same as without blending.

PoseWarper propagation (``propagate_labels``): per planned person, A's ground-truth joints of
that track are mapped into the crop (B's box, enlarged by ``box_padding`` and widened to the
crop's aspect ratio), rendered as Gaussian heatmaps (``transforms.gaussian_targets``, σ of the
pipeline config) and warped onto B by ``PoseWarper.propagate`` (ψ = f_B − f_A). The warped maps
are decoded (``decoding``: HRNet's quarter-pixel step or the sub-pixel "dark") and
mapped back to B's image pixels; the Gaussians follow ``pipe_cfg.target_encoding``. Joint score =
warped heatmap maximum × presence (1 if the joint is labeled in a source and its Gaussian lies
on the heatmap, else 0: such joints stay unlabeled, score 0); person score 1.

Path (``path``). "direct" (the paper's): each source's maps are warped onto B in one step,
ψ = f_B − f_A however far A is. "chained": as the Farneback baseline chains its flows, each
source's pose is carried one frame at a time, A → A ± 1 → ... → B: every step is a direct
propagation from the previous frame (cut with the row's crop), its decoded pose rendered
again as the next step's maps; the last step blends the sources as the direct path does.
A joint's score is then the last step's map maximum times the product of the earlier steps'
maxima (with two sources, their products averaged with the blend's weights). At |δ| = 1 the
two paths are the same. The warping head trains on pairs at most ``support_range`` apart;
the chain asks it for one-frame motions only.

Pair batches (``pair_batches``, cut by ``data.pipeline.pair_map_dataset``): a Grain
``MapDataset`` over the plan's rows, padded to the static ``PipelineConfig.batch_size`` with
``mask`` and read by threads; a batch is::

  image          uint8   [B, 1+S, H, W, 3]  t=0 the target frame B, t=1..S the sources A
  frame_valid    bool    [B, 1+S]           False for a missing second source
  target         float32 [B, S, h, w, J]    Gaussian maps of each source's joints in the crop
  target_weight  float32 [B, S, J]          1 where the joint is labeled and on the heatmap
  source_weight  float32 [B, S]             1/|δ| of each source (0: none)
  mask           bool    [B]                real rows
  video, frame, track_id   int32 [B]        target video, frame B, track
  person         int32   [B]                the row's index in the plan
  image_id       int64   [B];  score float32 [B] (1)
  center, scale  float32 [B, 2]             the crop (scale in units of 200 px)

S = 1 (S = 2 with ``blend``). The batches are sharded over the ``data`` mesh axis and run by
``apps.inference.predict``. Coordinates: image pixels, pixel centres at integers, x right,
y down.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from posewarper_jax.apps.inference import predict
from posewarper_jax.data import pipeline as pipeline_lib
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset

__all__ = [
    "DEFAULT_REACH",
    "PATHS",
    "PropagationPlan",
    "PropagationResult",
    "gather_rows",
    "keep_rows",
    "nearest_deltas",
    "pair_batches",
    "plan_person",
    "plan_propagation",
    "predictions_from_plan",
    "propagate_labels",
    "propagate_plan",
    "propagation_fn",
    "select_videos",
]

DEFAULT_REACH = 3
# How a source's labels reach B: in one warp (the paper's) or frame by frame.
PATHS = ("direct", "chained")
_DEVICE_KEYS = ("image", "frame_valid", "target", "target_weight", "source_weight")


# ----------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class PropagationPlan:
    """The people to predict: one row per (target frame B, person), N rows, S sources each.

    Attributes:
      video_names: names of the labeled data set's videos (``video`` indexes them).
      video: int32 ``[N]`` video index.
      frame: int32 ``[N]`` target frame B.
      person: int32 ``[N]`` the person's index on B in ``boxes``, or on the nearest source
        frame A when the plan was made without boxes.
      track_id: int32 ``[N]``.
      box: float32 ``[N, 4]`` the crop box (x, y, w, h) in B's image pixels.
      source_frame: int32 ``[N, S]`` labeled frames A (nearest first; -1: no source).
      source_person: int32 ``[N, S]`` the person's index in A's ``people`` (-1: none).
      source_keypoints: float32 ``[N, S, J, 3]`` A's ground truth (x, y, v) of that person.
      source_weight: float32 ``[N, S]`` ``1 / |δ|`` with δ = B − A (0: no source).
    """

    video_names: list[str]
    video: np.ndarray
    frame: np.ndarray
    person: np.ndarray
    track_id: np.ndarray
    box: np.ndarray
    source_frame: np.ndarray
    source_person: np.ndarray
    source_keypoints: np.ndarray
    source_weight: np.ndarray

    def __len__(self) -> int:
        return len(self.video)

    @property
    def num_sources(self) -> int:
        return self.source_frame.shape[1]

    @property
    def delta(self) -> np.ndarray:
        """int32 ``[N, S]`` δ = B − A of each source (0 where there is none)."""
        has = self.source_frame >= 0
        return np.where(has, self.frame[:, None] - self.source_frame, 0).astype(np.int32)

    def keys(self) -> list[tuple[str, int, int]]:
        """(video name, frame B, track id) of every row, in row order."""
        return [
            (self.video_names[v], int(f), int(t))
            for v, f, t in zip(self.video, self.frame, self.track_id)
        ]


def nearest_deltas(reach: int) -> tuple[int, ...]:
    """The offsets δ = B − A with ``1 <= |δ| <= reach``."""
    if isinstance(reach, bool) or not isinstance(reach, int | np.integer) or reach < 1:
        raise ValueError(f"reach must be a positive integer, got {reach!r}")
    return tuple(d for k in range(1, int(reach) + 1) for d in (k, -k))


def _ordered_deltas(deltas: Iterable[int]) -> tuple[int, ...]:
    """Validated offsets, nearest first; on equal |δ| the positive one (earlier A) first."""
    out = []
    for d in deltas:
        if isinstance(d, bool) or int(d) != d or d == 0:
            raise ValueError(f"deltas must be non-zero integers, got {d!r} in {tuple(deltas)}")
        out.append(int(d))
    if not out:
        raise ValueError("deltas must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"deltas {tuple(out)} repeat an offset")
    return tuple(sorted(out, key=lambda d: (abs(d), -d)))


def _sources_by_track(video: Video, frame: int) -> dict[int, tuple[int, np.ndarray, np.ndarray]]:
    """Track id → (person index, keypoints, box) of a labeled frame's people with a labeled
    joint; people without a track id (< 0) are left out."""
    out: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
    for pi, person in enumerate(video.frames[frame].people):
        where = f"video {video.name!r} frame {frame} person {pi} ({video.source})"
        kpts, box = pipeline_lib.person_arrays(person, where)
        if person.track_id < 0 or not np.any(kpts[:, 2] > 0):
            continue
        if person.track_id in out:
            raise ValueError(f"{where}: track_id {person.track_id} appears twice in the frame")
        out[person.track_id] = (pi, kpts, box)
    return out


def plan_propagation(
    labeled: VideoDataset,
    *,
    boxes: VideoDataset | None = None,
    reach: int = DEFAULT_REACH,
    deltas: Sequence[int] | None = None,
    blend: bool = False,
) -> PropagationPlan:
    """Which people of which unlabeled frames are predicted, from which labeled frames.

    Args:
      labeled: the videos; frames with ``is_labeled`` are the sources (their people with at
        least one labeled joint), the others are candidate targets.
      boxes: the people of the target frames (matched by video name and frame index; track ids
        required), or None to give B the people of its source frame with their boxes.
      reach: allowed offsets ``1 <= |δ| <= reach`` (δ = B − A); ignored when ``deltas`` is
        given.
      deltas: the allowed offsets δ = B − A explicitly, e.g. ``(1, 2)`` (forward only).
      blend: add the nearest labeled frame on the other side of B as a second source.

    Returns:
      A ``PropagationPlan`` with rows ordered by (video, frame B, person); S = 2 with
      ``blend``, else 1. See the module docstring for the rules.

    Raises:
      ValueError: bad ``reach``/``deltas``; a video of ``boxes`` whose length differs from
        ``labeled``'s; a track id twice in one frame; a malformed keypoint or box array.
    """
    order = _ordered_deltas(nearest_deltas(reach) if deltas is None else deltas)
    by_name: dict[str, Video] = {}
    if boxes is not None:
        if not isinstance(boxes, VideoDataset):
            raise ValueError(f"boxes must be a VideoDataset or None, got {type(boxes).__name__}")
        by_name = {v.name: v for v in boxes.videos}
    rows = _PlanRows(2 if blend else 1)
    for vi, video in enumerate(labeled.videos):
        _check_frame_order(video)
        bvideo = None
        if boxes is not None:
            bvideo = by_name.get(video.name)
            if bvideo is None:
                continue
            if bvideo.nframes != video.nframes:
                raise ValueError(
                    f"boxes: video {video.name!r} ({bvideo.source}) has {bvideo.nframes} frames, "
                    f"the labeled data set {video.nframes}"
                )
        _plan_video(rows, vi, video, bvideo, order, blend)
    return rows.plan([v.name for v in labeled.videos])


class _PlanRows:
    """The rows of a ``PropagationPlan`` as they are found, column by column; ``s`` sources
    per row."""

    def __init__(self, s: int):
        self.s = s
        self.cols: dict[str, list] = collections.defaultdict(list)

    def add(self, vi, b, pi, track, box, srcs) -> None:
        """One target person: video ``vi``, frame ``b``, person ``pi``; ``srcs``: up to ``s``
        (source frame, δ, source person, source keypoints)."""
        s, cols = self.s, self.cols
        cols["video"].append(vi)
        cols["frame"].append(b)
        cols["person"].append(pi)
        cols["track"].append(track)
        cols["box"].append(box)
        sf = np.full(s, -1, np.int32)
        sp = np.full(s, -1, np.int32)
        sk = np.zeros((s, NUM_JOINTS, 3), np.float32)
        sw = np.zeros(s, np.float32)
        for k, (a, d, a_pi, kpts) in enumerate(srcs):
            sf[k], sp[k], sk[k], sw[k] = a, a_pi, kpts, 1.0 / abs(d)
        cols["sf"].append(sf)
        cols["sp"].append(sp)
        cols["sk"].append(sk)
        cols["sw"].append(sw)

    def plan(self, video_names: list[str]) -> PropagationPlan:
        s = self.s

        def arr(key, dtype, shape):
            return np.array(self.cols[key], dtype).reshape(-1, *shape)

        return PropagationPlan(
            video_names=video_names,
            video=arr("video", np.int32, ()),
            frame=arr("frame", np.int32, ()),
            person=arr("person", np.int32, ()),
            track_id=arr("track", np.int32, ()),
            box=arr("box", np.float32, (4,)),
            source_frame=arr("sf", np.int32, (s,)),
            source_person=arr("sp", np.int32, (s,)),
            source_keypoints=arr("sk", np.float32, (s, NUM_JOINTS, 3)),
            source_weight=arr("sw", np.float32, (s,)),
        )


def _check_frame_order(video: Video) -> None:
    """ValueError unless ``video.frames[i].index == i`` for every frame."""
    for i, frame in enumerate(video.frames):
        if frame.index != i:
            raise ValueError(
                f"video {video.name!r} ({video.source}): frame at position {i} has index "
                f"{frame.index}; frames must be complete and in order"
            )


def _plan_video(
    rows: _PlanRows,
    vi: int,
    video: Video,
    bvideo: Video | None,
    order: tuple[int, ...],
    blend: bool,
) -> None:
    """The rows of one video: every unlabeled frame B with a labeled frame A = B - δ (δ in
    ``order``, nearest first) gets A's people (``bvideo`` None) or ``bvideo``'s people of B
    whose track A has; with ``blend`` the nearest labeled frame on B's other side is the
    second source of each person it has."""
    sources = {f.index for f in video.frames if f.is_labeled}
    cache: dict[int, dict] = {}

    def tracks(a):
        if a not in cache:
            cache[a] = _sources_by_track(video, a)
        return cache[a]

    for frame in video.frames:
        b = frame.index
        if frame.is_labeled:
            continue
        cands = [(d, b - d) for d in order if (b - d) in sources]
        if not cands:
            continue
        d0, a0 = cands[0]
        other = None
        if blend:
            other = next(((d, a) for d, a in cands if (d > 0) != (d0 > 0)), None)

        def second(track, other=other):
            if other is None or track < 0:
                return []
            hit = tracks(other[1]).get(track)
            return [] if hit is None else [(other[1], other[0], hit[0], hit[1])]

        if bvideo is None:
            for pi, person in enumerate(video.frames[a0].people):
                where = f"video {video.name!r} frame {a0} person {pi} ({video.source})"
                kpts, box = pipeline_lib.person_arrays(person, where)
                if not np.any(kpts[:, 2] > 0) or box[2] <= 0 or box[3] <= 0:
                    continue
                srcs = [(a0, d0, pi, kpts), *second(person.track_id)]
                rows.add(vi, b, pi, person.track_id, box, srcs)
            continue
        first = tracks(a0)
        seen: set[int] = set()
        for pi, person in enumerate(bvideo.frames[b].people):
            where = f"boxes: video {video.name!r} frame {b} person {pi} ({bvideo.source})"
            _, box = pipeline_lib.person_arrays(person, where)
            track = person.track_id
            if track >= 0 and track in seen:
                raise ValueError(f"{where}: track_id {track} appears twice in the frame")
            seen.add(track)
            hit = first.get(track) if track >= 0 else None
            if hit is None or box[2] <= 0 or box[3] <= 0:
                continue
            rows.add(vi, b, pi, track, box, [(a0, d0, hit[0], hit[1]), *second(track)])


def _check_plan(plan: PropagationPlan, labeled: VideoDataset) -> None:
    names = [v.name for v in labeled.videos]
    if plan.video_names != names:
        raise ValueError("the plan was made for other videos than the labeled data set's")


# ----------------------------------------------------------------------------- output


def predictions_from_plan(
    labeled: VideoDataset,
    plan: PropagationPlan,
    xy: np.ndarray,
    present: np.ndarray,
    scores: np.ndarray,
) -> VideoDataset:
    """Prediction data set shaped like ``labeled``: one person per plan row.

    Args:
      labeled: the data set the plan was made for (its videos, frames, paths, image ids and
        ignore regions are copied; its people are not).
      plan: the rows.
      xy: ``[N, J, 2]`` predicted (x, y) image pixels.
      present: bool ``[N, J]``; absent joints are written as (0, 0, v=0) with score 0.
      scores: ``[N, J]`` joint scores.

    Returns:
      A ``VideoDataset`` (every video and frame of ``labeled``); each row becomes a ``Person``
      with ``keypoints`` (x, y, v), ``bbox`` = the crop box, its ``track_id``, ``score`` 1 and
      ``keypoint_scores``. Frames holding a prediction have ``is_labeled`` True, all others
      False and no people.
    """
    _check_plan(plan, labeled)
    n = len(plan)
    xy = np.asarray(xy, np.float32).reshape(n, NUM_JOINTS, 2)
    present = np.asarray(present, bool).reshape(n, NUM_JOINTS)
    scores = np.asarray(scores, np.float32).reshape(n, NUM_JOINTS)
    videos = []
    for video in labeled.videos:
        frames = [
            Frame(f.path, f.index, f.image_id, False, [], [r.copy() for r in f.ignore_regions])
            for f in video.frames
        ]
        videos.append(Video(video.name, frames, video.source, dict(video.extra)))
    for r in range(n):
        frame = videos[plan.video[r]].frames[plan.frame[r]]
        frame.people.append(plan_person(plan, r, xy[r], present[r], scores[r]))
        frame.is_labeled = True
    return VideoDataset(videos, labeled.fmt, labeled.root, dict(labeled.extra))


def plan_person(
    plan: PropagationPlan, r: int, xy: np.ndarray, present: np.ndarray, scores: np.ndarray
) -> Person:
    """Row ``r`` of ``plan`` as a ``Person``: keypoints ``xy`` (``[J, 2]`` image pixels, v = 1)
    where ``present`` (bool ``[J]``) and (0, 0, 0) elsewhere, the row's box and track id,
    score 1 and the joint ``scores`` (``[J]``; 0 where not present)."""
    kpts = np.zeros((NUM_JOINTS, 3), np.float32)
    kpts[:, :2] = np.where(present[:, None], xy, 0.0)
    kpts[:, 2] = present
    return Person(
        keypoints=kpts,
        bbox=plan.box[r].copy(),
        track_id=int(plan.track_id[r]),
        score=1.0,
        keypoint_scores=np.where(present, scores, 0.0).astype(np.float32),
    )


def select_videos(pred: VideoDataset, like: VideoDataset) -> VideoDataset:
    """``pred``'s videos that ``like`` has, in ``like``'s order (e.g. to score propagated
    predictions against ``held_back``, which holds only the videos that lost labels)."""
    by_name = {v.name: v for v in pred.videos}
    missing = [v.name for v in like.videos if v.name not in by_name]
    if missing:
        raise ValueError(f"no predictions for video(s) {missing[:10]}")
    videos = [by_name[v.name] for v in like.videos]
    return VideoDataset(videos, pred.fmt, pred.root, dict(pred.extra))


# ----------------------------------------------------------------------------- pair batches


def _check_pipe_cfg(pipe_cfg: Any) -> pipeline_lib.PipelineConfig:
    if not isinstance(pipe_cfg, pipeline_lib.PipelineConfig):
        raise ValueError(f"pipe_cfg must be a PipelineConfig, got {type(pipe_cfg).__name__}")
    return pipe_cfg


def pair_batches(
    labeled: VideoDataset,
    plan: PropagationPlan,
    pipe_cfg: pipeline_lib.PipelineConfig,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """This process's pair batches (module docstring) as a ``grain.MapDataset``
    (``pipeline.pair_map_dataset`` of a checked plan and config).

    Element i is the local part (``batch_size / process_count`` rows) of global batch i; the
    last batch is padded (``mask`` False). Crops and targets use ``pipe_cfg``'s
    ``image_size``, ``heatmap_stride``, ``sigma`` and ``box_padding``; no augmentation.
    """
    cfg = _check_pipe_cfg(pipe_cfg)
    _check_plan(plan, labeled)
    return pipeline_lib.pair_map_dataset(
        labeled, plan, cfg, process_index=process_index, process_count=process_count
    )


# ----------------------------------------------------------------------------- running it


@functools.cache
def propagation_fn(model):
    """``fn(variables, batch) -> float32 [B, h, w, J]`` for ``inference.predict``.

    Each source's maps (``batch["target"]`` ``[B, S, h, w, J]``) are warped onto frame B
    (``batch["image"][:, 0]``) by ``model.propagate`` with A = ``batch["image"][:, 1 + s]``
    (ψ = f_B − f_A), then combined per joint with weights ``source_weight × target_weight``
    renormalised over the sources (a joint labeled in no source gives an all-zero map). With
    one source the result is the warped map itself. The same object for the same model.
    """

    def fn(variables, batch):
        image, maps = batch["image"], batch["target"]
        b, t = image.shape[:2]
        s = t - 1
        frames_b = jnp.broadcast_to(image[:, :1], (b, s, *image.shape[2:]))
        pairs = jnp.stack([image[:, 1:], frames_b], axis=2)  # [B, S, 2, H, W, 3]
        warped = model.apply(
            variables,
            pairs.reshape(b * s, 2, *image.shape[2:]),
            maps.reshape(b * s, *maps.shape[2:]),
            False,
            method="propagate",
        ).reshape(b, s, *maps.shape[2:])  # [B, S, h, w, J]
        w = batch["source_weight"][:, :, None] * batch["target_weight"]  # [B, S, J]
        w = w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), jnp.finfo(jnp.float32).tiny)
        return jnp.sum(w[:, :, None, None, :] * warped, axis=1)

    return fn


@dataclasses.dataclass
class PropagationResult:
    """Per plan row: ``xy`` float32 ``[N, J, 2]`` image pixels, ``maxvals`` float32 ``[N, J]``
    (the combined warped map's maximum), ``present`` bool ``[N, J]`` (labeled in a source and
    on the heatmap) and ``done`` bool ``[N]`` (False for rows skipped as bad images)."""

    xy: np.ndarray
    maxvals: np.ndarray
    present: np.ndarray
    done: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        """float32 ``[N, J]`` joint scores: ``maxvals`` where present, else 0."""
        return np.where(self.present, self.maxvals, 0.0).astype(np.float32)


def propagate_plan(
    model,
    variables: Mapping[str, Any],
    labeled: VideoDataset,
    plan: PropagationPlan,
    *,
    pipe_cfg: pipeline_lib.PipelineConfig,
    mesh: Mesh | None = None,
    flip_test: bool = False,
    decoding: str = "quarter",
    path: str = "direct",
) -> PropagationResult:
    """Runs PoseWarper propagation on every row of ``plan`` (sharded over ``mesh``); the
    warped maps are decoded with ``decoding`` (``inference.predict``). ``path``: "direct"
    (one warp from each source A to B, the paper's) or "chained" (frame by frame,
    ``PATHS``; module docstring).

    With several processes each reads its rows of every batch and the results are gathered,
    so every process returns all rows.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "chained":
        return _propagate_chained(
            model, variables, labeled, plan, pipe_cfg=pipe_cfg, mesh=mesh,
            flip_test=flip_test, decoding=decoding,
        )  # fmt: skip
    cfg = _check_pipe_cfg(pipe_cfg)
    n = len(plan)
    xy = np.zeros((n, NUM_JOINTS, 2), np.float32)
    maxvals = np.zeros((n, NUM_JOINTS), np.float32)
    present = np.zeros((n, NUM_JOINTS), bool)
    done = np.zeros(n, bool)

    def tap(batches: Iterable[dict]) -> Iterator[dict]:
        # The presence of each row's joints, read on the host as the batches go by.
        for batch in batches:
            w = batch["source_weight"][:, :, None] * batch["target_weight"]
            for r in np.flatnonzero(batch["mask"]):
                present[batch["person"][r]] = w[r].sum(axis=0) > 0
            yield batch

    if n:
        _check_plan(plan, labeled)
        ds = pipeline_lib.pair_dataset(labeled, plan, cfg)
        rows = predict(
            model,
            variables,
            tap(ds),
            propagation_fn(model),
            mesh=mesh,
            flip_test=flip_test,
            keys=_DEVICE_KEYS,
            decoding=decoding,
            sigma=cfg.sigma,
        )
        for row in rows:
            g = int(row["person"])
            xy[g], maxvals[g], done[g] = row["keypoints"], row["maxvals"], True
    done, xy, maxvals, present = gather_rows(done, xy, maxvals, present)
    present &= done[:, None]
    return PropagationResult(xy=xy, maxvals=maxvals, present=present, done=done)


def _propagate_chained(
    model, variables, labeled: VideoDataset, plan: PropagationPlan, **kwargs
) -> PropagationResult:
    """``propagate_plan(..., path="chained")``: each source's pose is carried one frame at a
    time (a direct propagation per step, the decoded pose rendered again as the next step's
    maps) to the frame next to B on its side; the last step is ``plan``'s own propagation
    from those frames (sources blended as in the direct path). Joint score = the last step's
    map maximum × the earlier steps' maxima multiplied along each source's chain (averaged
    over the sources with the blend's weights)."""
    n, s = len(plan), plan.num_sources
    delta = plan.delta  # [N, S], 0 where no source
    step = np.sign(delta)
    kpts = plan.source_keypoints.copy()  # [N, S, J, 3], carried along
    at = plan.source_frame.copy()  # [N, S] where each source's chain stands
    prior = np.ones((n, s, NUM_JOINTS), np.float32)  # product of the earlier steps' maxima
    done = np.ones(n, bool)
    for hop in range(1, int(np.abs(delta).max(initial=0))):
        for k in range(s):
            rows = np.flatnonzero((plan.source_frame[:, k] >= 0) & (np.abs(delta[:, k]) > hop))
            if not len(rows):
                continue
            nxt = at[rows, k] + step[rows, k]
            mask = np.zeros(n, bool)
            mask[rows] = True  # rows ascend: the sub-plan keeps their order
            sub = dataclasses.replace(
                keep_rows(plan, mask),
                frame=nxt.astype(np.int32),
                source_frame=at[rows, k : k + 1].astype(np.int32),
                source_person=plan.source_person[rows, k : k + 1],
                source_keypoints=kpts[rows, k : k + 1],
                source_weight=np.ones((len(rows), 1), np.float32),
            )
            res = propagate_plan(model, variables, labeled, sub, **kwargs)
            kpts[rows, k, :, :2] = res.xy
            kpts[rows, k, :, 2] = res.present
            prior[rows, k] *= np.where(res.present, res.maxvals, 0.0)
            at[rows, k] = nxt
            done[rows] &= res.done
    last = dataclasses.replace(plan, source_frame=at.astype(np.int32), source_keypoints=kpts)
    res = propagate_plan(model, variables, labeled, last, **kwargs)
    # The last step's sources as propagation_fn blends them: weight x presence, renormalised.
    w = plan.source_weight[:, :, None] * (kpts[:, :, :, 2] > 0)  # [N, S, J]
    w = w / np.maximum(w.sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    maxvals = res.maxvals * np.sum(w * prior, axis=1)
    done &= res.done
    present = res.present & done[:, None]
    return PropagationResult(xy=res.xy, maxvals=maxvals, present=present, done=done)


def gather_rows(done: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Combines per-row results that each process filled for its own rows only.

    Args:
      done: bool ``[N]``, the rows this process filled; arrays: ``[N, ...]`` each.

    Returns:
      ``(done, *arrays)`` with every process's rows (unchanged with one process).
    """
    if jax.process_count() == 1:
        return (done, *arrays)
    from jax.experimental import multihost_utils

    parts = multihost_utils.process_allgather((done, *arrays))  # each [P, N, ...]
    owner = np.argmax(parts[0], axis=0)  # [N]: the process that filled the row
    rows = np.arange(len(done))
    return (np.any(parts[0], axis=0), *(np.asarray(p)[owner, rows] for p in parts[1:]))


def propagate_labels(
    model,
    variables: Mapping[str, Any],
    labeled: VideoDataset,
    *,
    reach: int = DEFAULT_REACH,
    blend: bool = False,
    pipe_cfg: pipeline_lib.PipelineConfig,
    mesh: Mesh | None = None,
    boxes: VideoDataset | None = None,
    flip_test: bool = False,
    plan: PropagationPlan | None = None,
    decoding: str = "quarter",
    path: str = "direct",
) -> VideoDataset:
    """PoseWarper's video pose propagation (module docstring) for every unlabeled frame
    within ``reach`` of a labeled frame.

    Args:
      model: a ``PoseWarper``; variables: its ``{"params", "batch_stats"}``.
      labeled: the videos with their sparse ground truth (``is_labeled`` frames).
      reach: largest |δ| between a target frame and its source.
      blend: also warp the nearest labeled frame on the other side and blend (1/|δ|).
      pipe_cfg: crop size, heatmap stride, σ, box padding and the global batch size (a
        multiple of the mesh's ``data`` axis size).
      mesh: a mesh with a ``data`` axis (default: all devices).
      boxes: the target frames' people (e.g. the full ground truth); None: A's people/boxes.
      flip_test: average with the mirrored pair's result (``inference.flip_batch``).
      plan: a ready plan (``plan_propagation``); ``reach``, ``blend`` and ``boxes`` are then
        not used.
      decoding: "quarter" (HRNet's quarter-pixel step) or "dark" (sub-pixel), the decoding of
        the warped maps (``ops.heatmaps.decode_heatmaps``).
      path: "direct" (one warp A -> B, the paper's) or "chained" (frame by frame; module
        docstring).

    Returns:
      Predictions shaped like ``labeled`` (``predictions_from_plan``): keypoints in B's image
      pixels, joint score = warped heatmap maximum (0 and unlabeled where the source lacks
      the joint), person score 1; write with ``posetrack18.write_posetrack18``, score with
      ``posetrack_map(held_back, select_videos(pred, held_back))``.
    """
    if plan is None:
        plan = plan_propagation(labeled, boxes=boxes, reach=reach, blend=blend)
    res = propagate_plan(
        model, variables, labeled, plan, pipe_cfg=pipe_cfg, mesh=mesh, flip_test=flip_test,
        decoding=decoding, path=path,
    )  # fmt: skip
    return predictions_from_plan(labeled, keep_rows(plan, res.done), *_kept(res))


def _kept(res: PropagationResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return res.xy[res.done], res.present[res.done], res.scores[res.done]


def keep_rows(plan: PropagationPlan, keep: np.ndarray) -> PropagationPlan:
    """The plan's rows where ``keep`` (bool [N]) is True."""
    if np.all(keep):
        return plan
    fields = {
        f.name: getattr(plan, f.name)[keep]
        for f in dataclasses.fields(plan)
        if f.name != "video_names"
    }
    return PropagationPlan(video_names=list(plan.video_names), **fields)

"""Sparsely labeled subsets of a video data set: V labeled videos x N labeled frames each.

The labels left out are returned as a second data set ("held back"), so that pose propagation can
be scored on exactly the frames whose labels the model never saw. Videos that end up with no
labels keep all their frames: they still provide unlabeled supporting frames for training pairs.

A subset is drawn from a seed and written with a manifest (``subset.json``) that records the
parameters and, per video, the labeled frame indices, so a run can be reproduced from the
manifest alone (``subset_from_manifest``) or from the written files (``read_sparse_subset``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from posewarper_jax import storage
from posewarper_jax.data.formats import _output_names, _write_json, read_json
from posewarper_jax.data.posetrack18 import load_posetrack18, write_posetrack18
from posewarper_jax.data.types import Frame, Person, Video, VideoDataset

MANIFEST = "subset.json"
LABELED_DIR = "labeled"
HELD_BACK_DIR = "held_back"
_MANIFEST_KIND = "posewarper_jax sparse-label subset"


def _copy_person(person: Person) -> Person:
    return dataclasses.replace(
        person,
        keypoints=person.keypoints.copy(),
        bbox=person.bbox.copy(),
        head_bbox=None if person.head_bbox is None else person.head_bbox.copy(),
        keypoint_scores=None if person.keypoint_scores is None else person.keypoint_scores.copy(),
    )


def _frame_with(frame: Frame, labeled: bool, people: list[Person]) -> Frame:
    return Frame(
        frame.path,
        frame.index,
        frame.image_id,
        labeled,
        [_copy_person(p) for p in people],
        [r.copy() for r in frame.ignore_regions],
    )


def evenly_spaced(count: int, num: int, offset: int) -> list[int]:
    """``num`` of ``range(count)`` evenly spaced: ``floor((offset + i * count) / num)``.

    ``offset`` in [0, count) sets the phase; consecutive picks differ by floor(count / num) or
    ceil(count / num), all picks lie in [0, count). ``num >= count`` picks everything.
    """
    if num >= count:
        return list(range(count))
    return [(offset + i * count) // num for i in range(num)]


def _split(
    dataset: VideoDataset, keep: dict[int, set[int]], extra: dict
) -> tuple[VideoDataset, VideoDataset]:
    """keep: video position -> labeled frame indices that stay labeled (others: held back)."""
    subset_videos, held_videos = [], []
    for vi, video in enumerate(dataset.videos):
        kept = keep.get(vi, set())
        sub_frames, held_frames, any_held = [], [], False
        for frame in video.frames:
            if not frame.is_labeled:
                # Unlabeled frames (and any people on them) stay as they are.
                sub_frames.append(_frame_with(frame, False, frame.people))
                held_frames.append(_frame_with(frame, False, []))
            elif frame.index in kept:
                sub_frames.append(_frame_with(frame, True, frame.people))
                held_frames.append(_frame_with(frame, False, []))
            else:
                sub_frames.append(_frame_with(frame, False, []))
                held_frames.append(_frame_with(frame, True, frame.people))
                any_held = True
        subset_videos.append(Video(video.name, sub_frames, video.source, dict(video.extra)))
        if any_held:
            held_videos.append(Video(video.name, held_frames, video.source, dict(video.extra)))
    subset = VideoDataset(subset_videos, dataset.fmt, dataset.root, dict(dataset.extra, **extra))
    held_back = VideoDataset(held_videos, dataset.fmt, dataset.root, dict(dataset.extra, **extra))
    return subset, held_back


def _labeled_indices(video: Video) -> list[int]:
    return [f.index for f in video.frames if f.is_labeled]


def make_sparse_subset(
    dataset: VideoDataset,
    *,
    num_videos: int | None = None,
    frames_per_video: int | None = None,
    every_k: int | None = None,
    seed: int = 0,
) -> tuple[VideoDataset, VideoDataset]:
    """Keeps the labels of ``num_videos`` videos x a few labeled frames each.

    Args:
      dataset: the fully labeled data set.
      num_videos: V, how many of the videos with at least one labeled frame keep labels (drawn
        with ``seed``); None keeps all of them.
      frames_per_video: N labeled frames per kept video, evenly spaced among that video's
        labeled frames (``evenly_spaced``) with a phase drawn with ``seed``; all of them when
        the video has N or fewer.
      every_k: instead of N, every k-th labeled frame, from a phase in [0, k) drawn with ``seed``.
      seed: seeds the choice of videos and of each video's phase.

    Returns:
      (subset, held_back): ``subset`` has every video and frame of ``dataset``, labeled only on
      the kept frames (people of other labeled frames removed, ``is_labeled`` False).
      ``held_back`` holds the videos that lost labels, with every frame, labeled exactly on the
      frames whose labels were removed. Both carry the parameters in
      ``extra["sparse_subset"]``. Frames unlabeled in ``dataset`` are unchanged in ``subset``.
    """
    if frames_per_video is not None and every_k is not None:
        raise ValueError("give frames_per_video or every_k, not both")
    for name, value in (
        ("num_videos", num_videos),
        ("frames_per_video", frames_per_video),
        ("every_k", every_k),
    ):
        if value is not None and (not isinstance(value, int | np.integer) or value < 1):
            raise ValueError(f"{name}={value!r}: expected a positive integer or None")
    labeled_videos = [vi for vi, v in enumerate(dataset.videos) if _labeled_indices(v)]
    if num_videos is not None and num_videos > len(labeled_videos):
        raise ValueError(
            f"num_videos={num_videos} is larger than the number of videos with labels "
            f"({len(labeled_videos)})"
        )

    rng = np.random.default_rng(seed)
    if num_videos is None:
        chosen = labeled_videos
    else:
        picks = rng.choice(len(labeled_videos), size=num_videos, replace=False)
        chosen = sorted(labeled_videos[int(i)] for i in picks)

    keep: dict[int, set[int]] = {}
    for vi in chosen:
        labeled = _labeled_indices(dataset.videos[vi])
        count = len(labeled)
        if frames_per_video is not None:
            offset = int(rng.integers(0, count))
            ranks = evenly_spaced(count, frames_per_video, offset)
        elif every_k is not None:
            offset = int(rng.integers(0, min(every_k, count)))
            ranks = list(range(offset, count, every_k))
        else:
            ranks = list(range(count))
        keep[vi] = {labeled[r] for r in ranks}

    params = {
        "seed": int(seed),
        "num_videos": None if num_videos is None else int(num_videos),
        "frames_per_video": None if frames_per_video is None else int(frames_per_video),
        "every_k": None if every_k is None else int(every_k),
    }
    return _split(dataset, keep, {"sparse_subset": params})


def _manifest(subset: VideoDataset, held_back: VideoDataset) -> dict:
    params = subset.extra.get("sparse_subset", {})
    held = {v.name: _labeled_indices(v) for v in held_back.videos}
    files = _output_names(subset)
    return {
        "kind": _MANIFEST_KIND,
        "version": 1,
        "seed": params.get("seed"),
        "num_videos": params.get("num_videos"),
        "frames_per_video": params.get("frames_per_video"),
        "every_k": params.get("every_k"),
        "source_format": subset.fmt,
        "image_root": subset.root,
        "num_labeled_frames": sum(len(_labeled_indices(v)) for v in subset.videos),
        "num_held_back_frames": sum(len(x) for x in held.values()),
        "videos": [
            {
                "name": video.name,
                "file": file,
                "nframes": video.nframes,
                "labeled_frames": _labeled_indices(video),
                "held_back_frames": held.get(video.name, []),
            }
            for video, file in zip(subset.videos, files)
        ],
    }


def write_sparse_subset(subset: VideoDataset, held_back: VideoDataset, out_dir: str) -> str:
    """Writes a subset as PoseTrack18 JSON: ``out_dir/labeled/`` (every video, labels on the
    kept frames), ``out_dir/held_back/`` (videos that lost labels, labeled on the removed
    frames) and the manifest ``out_dir/subset.json``. Returns the manifest path."""
    for directory in (LABELED_DIR, HELD_BACK_DIR):
        storage.makedirs(os.path.join(out_dir, directory))
    write_posetrack18(subset, os.path.join(out_dir, LABELED_DIR))
    write_posetrack18(held_back, os.path.join(out_dir, HELD_BACK_DIR))
    path = os.path.join(out_dir, MANIFEST)
    _write_json(path, _manifest(subset, held_back))
    return path


def _read_manifest(manifest: str | dict) -> dict:
    data = read_json(manifest) if isinstance(manifest, str) else manifest
    where = manifest if isinstance(manifest, str) else "manifest"
    if not isinstance(data, dict) or data.get("kind") != _MANIFEST_KIND:
        raise ValueError(f"{where}: not a sparse-subset manifest (field 'kind')")
    if not isinstance(data.get("videos"), list):
        raise ValueError(f"{where}: missing required field 'videos'")
    return data


def _params(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in ("seed", "num_videos", "frames_per_video", "every_k")}


def subset_from_manifest(
    dataset: VideoDataset, manifest: str | dict
) -> tuple[VideoDataset, VideoDataset]:
    """Rebuilds (subset, held_back) from the full data set and a manifest (path or dict).

    Videos are matched by name; every video named in the manifest must be in ``dataset`` and
    each listed frame must be labeled there.
    """
    data = _read_manifest(manifest)
    where = manifest if isinstance(manifest, str) else "manifest"
    positions = {video.name: vi for vi, video in enumerate(dataset.videos)}
    keep: dict[int, set[int]] = {}
    for k, entry in enumerate(data["videos"]):
        name = entry.get("name")
        if name not in positions:
            raise ValueError(f"{where}: videos[{k}]: video {name!r} is not in the data set")
        video = dataset.videos[positions[name]]
        frames = set(entry.get("labeled_frames", []))
        unlabeled = sorted(
            i for i in frames if not (0 <= i < video.nframes and video.frames[i].is_labeled)
        )
        if unlabeled:
            raise ValueError(
                f"{where}: videos[{k}] ({name}): frames {unlabeled} are not labeled in the data set"
            )
        keep[positions[name]] = frames
    return _split(dataset, keep, {"sparse_subset": _params(data)})


def read_sparse_subset(
    out_dir: str, image_root: str | None = None
) -> tuple[VideoDataset, VideoDataset]:
    """Reads what ``write_sparse_subset`` wrote: (subset, held_back), both fmt "posetrack18".

    ``image_root`` defaults to the one recorded in the manifest. The labeled frames read back are
    checked against the manifest.
    """
    path = os.path.join(out_dir, MANIFEST)
    data = _read_manifest(path)
    root = data.get("image_root") if image_root is None else image_root
    if not root:
        raise ValueError(f"{path}: no 'image_root' recorded; pass image_root")
    extra = {"sparse_subset": _params(data)}
    subset = load_posetrack18(os.path.join(out_dir, LABELED_DIR), root)
    held_dir = os.path.join(out_dir, HELD_BACK_DIR)
    if storage.glob(held_dir, "*.json"):
        held_back = load_posetrack18(held_dir, root)
    else:
        held_back = VideoDataset([], "posetrack18", storage.abspath(root))
    subset.extra.update(extra)
    held_back.extra.update(extra)
    # Files are read in name order; put the videos back in the manifest's order.
    order = {entry["name"]: k for k, entry in enumerate(data["videos"])}
    for dataset in (subset, held_back):
        unknown = [v.name for v in dataset.videos if v.name not in order]
        if unknown:
            raise ValueError(f"{path}: videos {unknown} were read but are not in the manifest")
        dataset.videos.sort(key=lambda v: order[v.name])
    expected = [(e["name"], e.get("labeled_frames", [])) for e in data["videos"]]
    found = [(video.name, _labeled_indices(video)) for video in subset.videos]
    if expected != found:
        raise ValueError(f"{path}: the labeled frames in {LABELED_DIR}/ differ from the manifest")
    return subset, held_back

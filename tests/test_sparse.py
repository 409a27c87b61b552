"""Sparse-label subsets: seeded, evenly spaced, label-preserving, reproducible from the manifest."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from conftest import PT18

from posewarper_jax.data.posetrack18 import load_posetrack18
from posewarper_jax.data.sparse import (
    evenly_spaced,
    make_sparse_subset,
    read_sparse_subset,
    subset_from_manifest,
    write_sparse_subset,
)
from posewarper_jax.data.types import Frame, Person, Video, VideoDataset

# (number of frames, labeled frame indices) per video: a dense stretch, every 4th frame, an
# unlabeled video, a few scattered labels, a fully labeled video, a single label.
LAYOUT = [
    (40, list(range(5, 35))),
    (30, list(range(0, 30, 4))),
    (10, []),
    (12, [2, 5, 9]),
    (50, list(range(50))),
    (20, [7]),
]


def synthetic(root: str = "/data/pt") -> VideoDataset:
    """Videos per LAYOUT; each labeled frame has 1 or 2 people with distinct keypoints; one
    unlabeled frame carries a box-only person (kept as is by the subset)."""
    rng = np.random.default_rng(0)
    videos = []
    for vi, (nframes, labeled) in enumerate(LAYOUT):
        name = f"{vi + 1:06d}_bonn_train"
        frames = []
        for t in range(nframes):
            people = []
            if t in labeled:
                for k in range(1 + t % 2):
                    kp = np.zeros((17, 3), np.float32)
                    kp[:, :2] = rng.random((17, 2)) * 60
                    kp[:, 2] = 1
                    kp[[3, 4]] = 0
                    people.append(
                        Person(kp, np.array([1, 2, 30, 40], np.float32), track_id=k,
                               annotation_id=(vi * 1000 + t) * 10 + k)
                    )  # fmt: skip
            elif vi == 1 and t == 1:
                people.append(
                    Person(np.zeros((17, 3), np.float32), np.ones(4, np.float32), annotation_id=9)
                )
            path = os.path.join(root, "images", "train", name, f"{t:06d}.jpg")
            image_id = 2 * 10**10 + (vi + 1) * 10**4 + t
            frames.append(Frame(path, t, image_id, t in labeled, people))
        source = f"/data/pt/annotations/train/{name}.json"
        videos.append(Video(name, frames, source, {"vid_id": f"{vi + 1:06d}"}))
    return VideoDataset(videos, "posetrack18", root)


def labeled(dataset: VideoDataset) -> dict[str, list[int]]:
    return {v.name: [f.index for f in v.frames if f.is_labeled] for v in dataset.videos}


def canon(dataset, *, with_source: bool = False):
    return [
        (
            v.name,
            v.extra,
            v.source if with_source else None,
            [
                (f.path, f.index, f.image_id, f.is_labeled, [r.tolist() for r in f.ignore_regions],
                 [(p.keypoints.tolist(), p.bbox.tolist(), None if p.head_bbox is None else
                   p.head_bbox.tolist(), p.track_id, p.score, p.annotation_id) for p in f.people])
                for f in v.frames
            ],
        )
        for v in dataset.videos
    ]  # fmt: skip


def test_evenly_spaced_properties():
    for count in range(1, 40):
        for num in range(1, 12):
            firsts = set()
            for offset in range(count):
                picks = evenly_spaced(count, num, offset)
                assert len(picks) == min(count, num) and len(set(picks)) == len(picks)
                assert 0 <= picks[0] and picks[-1] < count
                if num < count:
                    gaps = set(np.diff(picks).tolist())
                    assert gaps <= {count // num, math.ceil(count / num)}
                firsts.add(picks[0])
            # Every phase within the first stride is reachable.
            assert firsts == set(range(math.ceil(count / num))) or num >= count


def test_deterministic_by_seed():
    ds = synthetic()
    a = make_sparse_subset(ds, num_videos=3, frames_per_video=4, seed=7)
    b = make_sparse_subset(ds, num_videos=3, frames_per_video=4, seed=7)
    assert canon(a[0]) == canon(b[0]) and canon(a[1]) == canon(b[1])
    draws = {json.dumps(labeled(make_sparse_subset(ds, num_videos=3, frames_per_video=4,
                                                   seed=s)[0])) for s in range(6)}  # fmt: skip
    assert len(draws) > 1  # The seed changes the draw.


@pytest.mark.parametrize("num_videos", [1, 3, 5])
@pytest.mark.parametrize("frames_per_video", [1, 2, 5])
def test_frames_per_video_counts_and_spacing(num_videos, frames_per_video):
    ds = synthetic()
    subset, held = make_sparse_subset(
        ds, num_videos=num_videos, frames_per_video=frames_per_video, seed=num_videos
    )
    original, kept = labeled(ds), labeled(subset)
    assert sum(bool(v) for v in kept.values()) == num_videos
    for name, frames in kept.items():
        if not frames:
            continue
        ranks = [original[name].index(i) for i in frames]
        count = len(original[name])
        assert len(frames) == min(count, frames_per_video)
        if frames_per_video < count:
            gaps = set(np.diff(ranks).tolist())
            assert gaps <= {count // frames_per_video, math.ceil(count / frames_per_video)}
            assert ranks[0] < math.ceil(count / frames_per_video)
    assert subset.extra["sparse_subset"] == {
        "seed": num_videos,
        "num_videos": num_videos,
        "frames_per_video": frames_per_video,
        "every_k": None,
    }


@pytest.mark.parametrize("every_k", [1, 3, 7])
def test_every_k(every_k):
    ds = synthetic()
    subset, _ = make_sparse_subset(ds, every_k=every_k, seed=2)
    original, kept = labeled(ds), labeled(subset)
    for name, frames in original.items():
        if not frames:
            assert kept[name] == []
            continue
        ranks = [frames.index(i) for i in kept[name]]
        assert ranks[0] < min(every_k, len(frames))
        assert ranks == list(range(ranks[0], len(frames), every_k))


def test_labels_are_split_not_changed():
    ds = synthetic()
    subset, held = make_sparse_subset(ds, num_videos=4, frames_per_video=3, seed=1)
    by_name = {v.name: v for v in held.videos}
    # held_back holds exactly the videos that lost labels.
    assert sorted(by_name) == sorted(
        n for n, f in labeled(ds).items() if len(f) > len(labeled(subset)[n])
    )
    original = canon(ds)
    for (name, _, _, frames), (_, _, _, sub_frames) in zip(original, canon(subset)):
        held_frames = (
            canon(VideoDataset([by_name[name]], "", ""))[0][3] if name in by_name else None
        )
        for k, (orig, sub) in enumerate(zip(frames, sub_frames)):
            assert orig[:3] == sub[:3]  # Path, index, image id.
            hf = held_frames[k] if held_frames else None
            if not orig[3]:
                assert sub == orig  # Unlabeled frames unchanged (box-only person kept).
                assert hf is None or (not hf[3] and hf[5] == [])
            elif sub[3]:
                assert sub[5] == orig[5] and (hf is None or (not hf[3] and hf[5] == []))
            else:
                assert sub[5] == [] and hf is not None and hf[3] and hf[5] == orig[5]
    n_orig = sum(len(v) for v in labeled(ds).values())
    n_sub = sum(len(v) for v in labeled(subset).values())
    n_held = sum(len(v) for v in labeled(held).values())
    chosen = [n for n, f in labeled(subset).items() if f]
    assert n_sub + n_held == n_orig and len(chosen) == 4
    assert n_sub == sum(min(3, len(labeled(ds)[n])) for n in chosen)
    # Arrays are copies: editing the subset leaves the original alone.
    first = next(p for v in subset.videos for f in v.frames for p in f.people)
    first.keypoints[:] = -1
    assert not (ds.videos[0].frames[5].people[0].keypoints == -1).any()


def test_no_limits_keeps_everything():
    ds = synthetic()
    subset, held = make_sparse_subset(ds)
    assert canon(subset) == canon(ds) and held.videos == []
    assert [v.nframes for v in subset.videos] == [n for n, _ in LAYOUT]


def test_bad_arguments():
    ds = synthetic()
    with pytest.raises(
        ValueError, match=r"num_videos=6 is larger than .* videos with labels \(5\)"
    ):
        make_sparse_subset(ds, num_videos=6, frames_per_video=1)
    with pytest.raises(ValueError, match="frames_per_video or every_k, not both"):
        make_sparse_subset(ds, frames_per_video=2, every_k=3)
    with pytest.raises(ValueError, match="frames_per_video=0"):
        make_sparse_subset(ds, frames_per_video=0)
    with pytest.raises(ValueError, match="every_k=-1"):
        make_sparse_subset(ds, every_k=-1)


def test_manifest_round_trip(tmp_path):
    ds = synthetic(str(tmp_path / "data"))
    subset, held = make_sparse_subset(ds, num_videos=3, every_k=3, seed=5)
    manifest_path = write_sparse_subset(subset, held, str(tmp_path / "subset"))
    with open(manifest_path) as f:
        manifest = json.load(f)
    assert (manifest["seed"], manifest["num_videos"], manifest["every_k"]) == (5, 3, 3)
    assert manifest["frames_per_video"] is None
    assert {v["name"]: v["labeled_frames"] for v in manifest["videos"]} == labeled(subset)
    assert {v["name"]: v["held_back_frames"] for v in manifest["videos"] if v["held_back_frames"]} \
        == labeled(held)  # fmt: skip
    assert manifest["num_labeled_frames"] == sum(len(v) for v in labeled(subset).values())
    assert sorted(os.listdir(tmp_path / "subset" / "labeled")) == sorted(
        f"{v.name}.json" for v in ds.videos
    )

    sub2, held2 = read_sparse_subset(str(tmp_path / "subset"))
    assert canon(sub2) == canon(subset) and canon(held2) == canon(held)
    assert sub2.extra == subset.extra and sub2.root == subset.root
    # The manifest alone rebuilds the subset from the full data set.
    sub3, held3 = subset_from_manifest(ds, manifest_path)
    assert canon(sub3, with_source=True) == canon(subset, with_source=True)
    assert canon(held3, with_source=True) == canon(held, with_source=True)
    assert sub3.extra == subset.extra

    # A manifest that disagrees with the files is reported.
    manifest["videos"][0]["labeled_frames"] = [0]
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(ValueError, match="differ from the manifest"):
        read_sparse_subset(str(tmp_path / "subset"))
    with pytest.raises(ValueError, match=r"videos\[0\] \(000001_bonn_train\): frames \[0\]"):
        subset_from_manifest(ds, manifest_path)


def test_fixture_subset_round_trip(tmp_path):
    ds = load_posetrack18(os.path.join(PT18, "annotations", "val"), PT18)
    subset, held = make_sparse_subset(ds, num_videos=1, frames_per_video=2, seed=0)
    assert sorted(len(v) for v in labeled(subset).values()) == [0, 2]
    write_sparse_subset(subset, held, str(tmp_path))
    sub2, held2 = read_sparse_subset(str(tmp_path), PT18)
    assert canon(sub2) == canon(subset) and canon(held2) == canon(held)
    # Ignore regions and head boxes survive; held-back frames are labeled in held_back only.
    assert [len(f.ignore_regions) for f in sub2.videos[0].frames] == [0, 0, 0, 0, 1, 0, 0, 0]
    assert set(labeled(held2)["000001_bonn_test"]) | set(labeled(sub2)["000001_bonn_test"]) == {
        0, 2, 4, 6
    }  # fmt: skip

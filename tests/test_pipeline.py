"""The Grain pipelines on a tiny on-disk video data set built here with cv2.

Each frame is dark with a red tint and one white Gaussian blob whose position depends on the
video and frame, so a crop's content tells which frame it came from and by which transform.
"""

from __future__ import annotations

import os
import warnings

import cv2
import grain
import numpy as np
import pytest

from posewarper_jax.apps import propagation
from posewarper_jax.data import pipeline as pl
from posewarper_jax.data import transforms as T
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset

H0, W0 = 120, 160
N_VIDEOS, N_FRAMES = 2, 8
SIZE = (64, 48)


def blob_pos(v: int, t: int) -> np.ndarray:
    return np.array([70.0 + 2 * t + 5 * v, 55.0 + t])


def _frame_image(v: int, t: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H0, 0:W0]
    x, y = blob_pos(v, t)
    g = 255.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.5**2))
    img = np.repeat(g[:, :, None], 3, axis=2)
    img[..., 2] = np.maximum(img[..., 2], 60)  # BGR: a red background
    return np.round(img).astype(np.uint8)


def _person0_keypoints(v: int) -> np.ndarray:
    c = blob_pos(v, 3.5)
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    kp[:, 0] = c[0] - 15 + 30 * np.linspace(0, 1, NUM_JOINTS)
    kp[:, 1] = c[1] - 25 + 50 * np.linspace(0, 1, NUM_JOINTS) ** 2
    kp[:, 2] = 1
    kp[[3, 4], :] = 0  # ears are never labeled
    return kp


def build_dataset(root, labeled_every: int = 2) -> VideoDataset:
    """2 videos × 8 frames; every 2nd frame labeled with 2 people (+ one with no labeled
    joint on frame 0)."""
    videos = []
    for v in range(N_VIDEOS):
        frames = []
        for t in range(N_FRAMES):
            path = os.path.join(root, f"v{v}", f"{t:06d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            cv2.imwrite(path, _frame_image(v, t), [cv2.IMWRITE_JPEG_QUALITY, 100])
            labeled = t % labeled_every == 0
            people = []
            if labeled:
                c = blob_pos(v, 3.5)
                p0 = Person(_person0_keypoints(v), np.array([c[0] - 20, c[1] - 30, 40, 60]))
                kp1 = np.zeros((NUM_JOINTS, 3), np.float32)
                kp1[5:12] = [[20 + i, 30 + 3 * i, 1] for i in range(7)]
                p1 = Person(kp1, np.array([10, 20, 30, 50], np.float32), track_id=7)
                people = [p0, p1]
                if t == 0:
                    people.append(Person(np.zeros((NUM_JOINTS, 3)), np.array([0, 0, 20, 30])))
            frames.append(Frame(path, t, 1000 * v + t, labeled, people))
        videos.append(Video(f"v{v}", frames, source=f"v{v}.json"))
    return VideoDataset(videos, fmt="posetrack18", root=str(root))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("frames"))


def cfg(**kw) -> pl.PipelineConfig:
    base = dict(image_size=SIZE, batch_size=4, read_threads=0, sigma=1.0)
    base.update(kw)
    return pl.PipelineConfig(**base)


def _centroid(gray: np.ndarray) -> np.ndarray:
    g = np.where(gray > 20, gray.astype(np.float64), 0.0)
    yy, xx = np.mgrid[0 : g.shape[0], 0 : g.shape[1]]
    return np.array([(g * xx).sum() / g.sum(), (g * yy).sum() / g.sum()])


def _batches_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- config


def test_config_validation():
    with pytest.raises(ValueError, match="sigma"):
        pl.PipelineConfig(sigma=-1.0)
    with pytest.raises(ValueError, match="image_size"):
        pl.PipelineConfig(image_size=(130, 96))
    with pytest.raises(ValueError, match="support_range"):
        pl.PipelineConfig(support_range=-1)
    with pytest.raises(ValueError, match="unlabeled_reach"):
        pl.PipelineConfig(unlabeled_reach=-1)
    with pytest.raises(ValueError, match="eval_edge"):
        pl.PipelineConfig(eval_edge="wrap")
    with pytest.raises(ValueError, match="batch_size"):
        pl.PipelineConfig(batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        pl.PipelineConfig(num_workers=-2)
    with pytest.raises(ValueError, match="target_encoding"):
        pl.PipelineConfig(target_encoding="rounded")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="frame_cache_mb"):
            pl.PipelineConfig(frame_cache_mb=bad)
    with pytest.raises(TypeError, match="decoding"):  # an argument of the predict functions
        pl.PipelineConfig(decoding="dark")
    c = pl.PipelineConfig()
    assert c.image_size == (128, 96) and c.heatmap_size == (32, 24) and c.aspect_ratio == 0.75


# ----------------------------------------------------------------------------- frame cache


def test_frame_cache_decodes_each_frame_once_within_its_bytes(tmp_path, monkeypatch):
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], np.full((10, 10, 3), 10 * i, np.uint8))
    reads = []
    real = pl._read_bgr
    monkeypatch.setattr(pl, "_read_bgr", lambda p, r: reads.append(p) or real(p, r))
    cache = pl._FrameCache()
    frame_bytes = 10 * 10 * 3
    for p in paths[:3] + paths[:3]:  # room for exactly three frames
        img = cache.get(p, "test", 3 * frame_bytes)
        assert img[0, 0, 0] == 10 * paths.index(p) and not img.flags.writeable
    assert reads == paths[:3]
    cache.get(paths[3], "test", 3 * frame_bytes)  # evicts the least recently used: paths[0]
    cache.get(paths[1], "test", 3 * frame_bytes)
    cache.get(paths[0], "test", 3 * frame_bytes)
    assert reads == paths[:3] + [paths[3], paths[0]]
    # 0: no cache; a frame larger than the limit is read and not kept.
    reads.clear()
    for limit in (0, 0, frame_bytes - 1, frame_bytes - 1):
        cache.clear()
        cache.get(paths[2], "test", limit)
    assert reads == [paths[2]] * 4
    # A missing frame raises each time, naming it; nothing is kept.
    missing = str(tmp_path / "missing.png")
    for _ in range(2):
        with pytest.raises(pl.BadImageError, match="missing.png"):
            cache.get(missing, "record 7", 3 * frame_bytes)


def test_training_batches_the_same_with_and_without_the_frame_cache(data):
    pl._FRAMES.clear()
    batches = {}
    for mb in (0, 64, 64):  # no cache, a cold cache, a warm one
        it = iter(pl.train_dataset(data, cfg(seed=3, frame_cache_mb=mb)))
        batches.setdefault(mb, []).append([next(it) for _ in range(3)])
    runs = [b for per in batches.values() for b in per]
    for run in runs[1:]:
        assert all(_batches_equal(a, b) for a, b in zip(runs[0], run))


# ----------------------------------------------------------------------------- training


def test_train_batch_layout_and_support_frames(data):
    ds = pl.train_map_dataset(
        data, cfg(aug=T.AugmentConfig(half_body_prob=0.0)), process_index=0, process_count=1
    )
    b = ds[0]
    assert b["image"].shape == (4, 2, *SIZE, 3) and b["image"].dtype == np.uint8
    assert b["target"].shape == (4, 16, 12, NUM_JOINTS) and b["target"].dtype == np.float32
    assert b["target_weight"].shape == (4, NUM_JOINTS) and b["joints"].shape == (4, NUM_JOINTS, 3)
    for k in ("video", "frame_a", "frame_b", "person"):
        assert b[k].shape == (4,) and b[k].dtype == np.int32
    assert b["image_id"].dtype == np.int64 and b["center"].shape == (4, 2)
    assert b["rotation"].dtype == np.float32 and b["flip"].dtype == np.bool_

    # 16 records, 4 per batch: 10 batches = 2.5 epochs.
    batches = [ds[i] for i in range(10)]
    fa = np.concatenate([x["frame_a"] for x in batches])
    fb = np.concatenate([x["frame_b"] for x in batches])
    assert np.all(np.abs(fb - fa) <= 2) and np.all((fb >= 0) & (fb < N_FRAMES))
    assert set((fb - fa).tolist()) == {-2, -1, 0, 1, 2}  # 0 included
    assert np.any((fa == 0) & (fb == 0))  # clipped at the start
    flips = np.concatenate([x["flip"] for x in batches])
    assert 0 < flips.sum() < len(flips)
    # Only people with a labeled joint: the third person of frame 0 never appears.
    assert not np.any(np.concatenate([x["person"] for x in batches]) == 2)

    one = pl.train_map_dataset(data, cfg(), paired=False, process_index=0, process_count=1)[0]
    assert one["image"].shape == (4, 1, *SIZE, 3)
    np.testing.assert_array_equal(one["frame_a"], one["frame_b"])


def _boxed_video(tmp_path) -> VideoDataset:
    """One 9-frame video labeled at frames 2 and 6: track 5 on both, track 9 on frame 2 only,
    an untracked person on frame 6."""
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    kp[0] = [10, 10, 1]
    frames = []
    for t in range(9):
        people = []
        if t == 2:
            people = [
                Person(kp, np.array([10, 20, 30, 40], np.float32), track_id=5),
                Person(kp, np.array([50, 50, 10, 10], np.float32), track_id=9),
            ]
        if t == 6:
            people = [
                Person(kp, np.array([30, 40, 50, 60], np.float32), track_id=5),
                Person(kp, np.array([0, 0, 20, 20], np.float32), track_id=-1),
            ]
        frames.append(Frame(str(tmp_path / f"{t}.jpg"), t, t, t in (2, 6), people))
    return VideoDataset([Video("v", frames, source="v.json")], fmt="posetrack18")


def test_unlabeled_records_carry_the_nearest_labeled_boxes(tmp_path):
    """Hand-computed: each unlabeled frame within reach takes the people of the nearest
    labeled frame (the earlier on a tie), no labeled joint, and the box of a track labeled on
    both sides linearly interpolated in time."""
    rec = pl.unlabeled_records(_boxed_video(tmp_path), reach=2)
    rows = sorted(
        (int(f), int(p), tuple(np.round(b, 4).tolist()))
        for f, p, b in zip(rec.frame, rec.person, rec.box, strict=True)
    )
    assert rows == [
        (0, 0, (10.0, 20.0, 30.0, 40.0)),  # before the first label: carried, not interpolated
        (0, 1, (50.0, 50.0, 10.0, 10.0)),
        (1, 0, (10.0, 20.0, 30.0, 40.0)),
        (1, 1, (50.0, 50.0, 10.0, 10.0)),
        (3, 0, (15.0, 25.0, 35.0, 45.0)),  # 3/4 of frame 2's box + 1/4 of frame 6's
        (3, 1, (50.0, 50.0, 10.0, 10.0)),  # track 9 is not labeled on frame 6
        (4, 0, (20.0, 30.0, 40.0, 50.0)),  # the tie goes to the earlier frame, 2
        (4, 1, (50.0, 50.0, 10.0, 10.0)),
        (5, 0, (25.0, 35.0, 45.0, 55.0)),  # from frame 6, 1/4 of the way back to frame 2
        (5, 1, (0.0, 0.0, 20.0, 20.0)),
        (7, 0, (30.0, 40.0, 50.0, 60.0)),
        (7, 1, (0.0, 0.0, 20.0, 20.0)),
        (8, 0, (30.0, 40.0, 50.0, 60.0)),
        (8, 1, (0.0, 0.0, 20.0, 20.0)),
    ]
    assert not np.any(rec.keypoints[..., 2] > 0)
    assert sorted(set(pl.unlabeled_records(_boxed_video(tmp_path), 1).frame.tolist())) == [
        1, 3, 5, 7,
    ]  # fmt: skip


def test_unlabeled_reach_adds_pairs_and_keeps_the_epoch(data):
    """``unlabeled_reach``: the labeled records plus the unlabeled frames near them, marked by
    ``a_labeled``; an unlabeled A has no target weight; the epoch's steps are unchanged."""
    plain = cfg(batch_size=2)
    dense = cfg(batch_size=2, unlabeled_reach=1)
    assert "a_labeled" not in pl.train_map_dataset(data, plain, process_index=0, process_count=1)[0]
    ds = pl.train_map_dataset(data, dense, process_index=0, process_count=1)
    # 16 labeled records and every odd frame's 2 or 3 people: 4 frames x 2 videos, frame 1
    # carrying frame 0's three people and frame 7 frame 6's two.
    n = 16 + 2 * (3 + 2 + 2 + 2)
    rows = [ds[i] for i in range(n // 2)]  # one epoch
    a_lab = np.concatenate([r["a_labeled"] for r in rows])
    fa = np.concatenate([r["frame_a"] for r in rows])
    weight = np.concatenate([r["target_weight"] for r in rows])
    assert a_lab.sum() == 16 and np.all(fa[a_lab] % 2 == 0) and np.all(fa[~a_lab] % 2 == 1)
    assert np.all(weight[~a_lab] == 0) and np.all(weight[a_lab].sum(1) > 0)
    assert sorted(zip(np.concatenate([r["video"] for r in rows]).tolist(), fa.tolist())) == sorted(
        [(v, t) for v in range(2) for t in range(0, 8, 2) for _ in range(2)]
        + [(v, t) for v in range(2) for t, k in ((1, 3), (3, 2), (5, 2), (7, 2)) for _ in range(k)]
    )
    assert pl.steps_per_epoch(data, dense) == pl.steps_per_epoch(data, plain) == 8
    with pytest.raises(ValueError, match="paired"):
        pl.train_map_dataset(data, dense, paired=False, process_index=0, process_count=1)


def test_a_and_b_share_crop_and_augmentation(data):
    """Find the blob in both crops: each lands where the transform rebuilt from the batch's
    metadata puts frame A's and frame B's blob; joints and targets follow the same map."""
    config = cfg(aug=T.AugmentConfig(half_body_prob=0.0))
    ds = pl.train_map_dataset(data, config, process_index=0, process_count=1)
    checked = 0
    for i in range(8):
        b = ds[i]
        for r in range(4):
            if b["person"][r] != 0:
                continue
            v = int(b["video"][r])
            m = T.crop_transform(
                b["center"][r], b["scale"][r], float(b["rotation"][r]), SIZE,
                flip=bool(b["flip"][r]), image_width=W0,
            )  # fmt: skip
            for t, frame in enumerate((b["frame_a"][r], b["frame_b"][r])):
                crop = b["image"][r, t]
                # JPEG and bilinear resampling: the blob's centroid within 0.5 crop px.
                np.testing.assert_allclose(
                    _centroid(crop[..., 1]), T.affine_points(blob_pos(v, int(frame)), m), atol=0.5
                )
                # RGB order: the red background is in channel 0 where the crop is inside.
                inside = crop[..., 1] < 5
                assert crop[..., 0][inside].mean() > 40 > crop[..., 2][inside].mean()
            if b["frame_a"][r] == b["frame_b"][r]:
                np.testing.assert_array_equal(b["image"][r, 0], b["image"][r, 1])
            kp = _person0_keypoints(v)
            xy = T.affine_points(kp[:, :2], m)
            lab = kp[:, 2] > 0
            if b["flip"][r]:
                xy, lab = T.swap_left_right(xy), T.swap_left_right(lab)
            np.testing.assert_allclose(b["joints"][r, lab, :2], xy[lab], atol=1e-3)
            np.testing.assert_array_equal(b["joints"][r, :, 2], lab)
            ref_t, ref_w = T.gaussian_targets(xy, lab, (16, 12), SIZE, 1.0)
            np.testing.assert_allclose(b["target"][r], ref_t, atol=1e-6)
            np.testing.assert_array_equal(b["target_weight"][r], ref_w)
            checked += 1
    assert checked >= 8


def test_subpixel_targets_follow_the_batch_joints(data):
    """``target_encoding="subpixel"`` renders each target on its joint's exact position."""
    ds = pl.train_map_dataset(
        data, cfg(target_encoding="subpixel"), process_index=0, process_count=1
    )
    b = ds[0]
    for r in range(4):
        joints = b["joints"][r]
        ref_t, ref_w = T.gaussian_targets(
            joints[:, :2], joints[:, 2], (16, 12), SIZE, 1.0, "subpixel"
        )
        np.testing.assert_allclose(b["target"][r], ref_t, atol=1e-6)
        np.testing.assert_array_equal(b["target_weight"][r], ref_w)
    integer = pl.train_map_dataset(data, cfg(), process_index=0, process_count=1)[0]
    np.testing.assert_array_equal(integer["joints"], b["joints"])  # same examples
    assert not np.allclose(integer["target"], b["target"])


def test_determinism_seeds_and_epochs(data):
    def first(config, n=3):
        ds = pl.train_map_dataset(data, config, process_index=0, process_count=1)
        return [ds[i] for i in range(n)]

    a, b = first(cfg(seed=5)), first(cfg(seed=5))
    assert all(_batches_equal(x, y) for x, y in zip(a, b))
    c = first(cfg(seed=6))
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
    # Thread-prefetched iteration gives the same batches as random access.
    it = iter(pl.train_dataset(data, cfg(seed=5, read_threads=3), process_index=0, process_count=1))
    assert all(_batches_equal(next(it), x) for x in a)

    # Each epoch visits every record once, in a new order.
    ds = pl.train_map_dataset(data, cfg(num_epochs=2), process_index=0, process_count=1)
    assert len(ds) == 8 and pl.steps_per_epoch(data, cfg()) == 4
    keys = [
        list(zip(x["video"].tolist(), x["frame_a"].tolist(), x["person"].tolist()))
        for x in (ds[i] for i in range(8))
    ]
    e0, e1 = sum(keys[:4], []), sum(keys[4:], [])
    assert len(set(e0)) == 16 and set(e0) == set(e1) and e0 != e1


def test_process_slices_partition_the_global_batch(data):
    config = cfg(batch_size=8)
    glob = pl.train_map_dataset(data, config, process_index=0, process_count=1)
    ev_glob = pl.eval_map_dataset(data, config, process_index=0, process_count=1)
    for count in (2, 4):
        parts = [
            pl.train_map_dataset(data, config, process_index=p, process_count=count)
            for p in range(count)
        ]
        ev_parts = [
            pl.eval_map_dataset(data, config, process_index=p, process_count=count)
            for p in range(count)
        ]
        assert len(ev_parts[0]) == len(ev_glob)
        for i in (0, 3):
            whole = {k: np.concatenate([p[i][k] for p in parts]) for k in glob[i]}
            assert _batches_equal(whole, glob[i])
        last = len(ev_glob) - 1
        whole = {k: np.concatenate([p[last][k] for p in ev_parts]) for k in ev_glob[last]}
        assert _batches_equal(whole, ev_glob[last])
    with pytest.raises(ValueError, match="divisible"):
        pl.train_map_dataset(data, config, process_index=0, process_count=3)


def test_resume_from_state_and_orbax(data, tmp_path):
    import orbax.checkpoint as ocp

    config = cfg(read_threads=2)
    it = iter(pl.train_dataset(data, config, process_index=0, process_count=1))
    for _ in range(3):
        next(it)
    state = it.get_state()
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = [next(it) for _ in range(3)]

    fresh = iter(pl.train_dataset(data, config, process_index=0, process_count=1))
    fresh.set_state(state)
    assert all(_batches_equal(next(fresh), e) for e in expected)

    fresh = iter(pl.train_dataset(data, config, process_index=0, process_count=1))
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        restored = mngr.restore(
            3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
        )["data"]
    assert all(_batches_equal(next(restored), e) for e in expected)


def test_worker_processes_same_batches_and_exact_resume(data):
    """Two spawned decoding workers: batches equal the in-process ones; resume is exact."""
    ref = pl.train_map_dataset(data, cfg(), process_index=0, process_count=1)
    it = iter(pl.train_dataset(data, cfg(num_workers=2), process_index=0, process_count=1))
    try:
        for i in range(3):
            assert _batches_equal(next(it), ref[i])
        state = it.get_state()
        assert _batches_equal(next(it), ref[3])
        it.set_state(state)  # rewinds the same workers
        for i in (3, 4, 5):
            assert _batches_equal(next(it), ref[i])
    finally:
        it.close()
    fresh = iter(pl.train_dataset(data, cfg(num_workers=2), process_index=0, process_count=1))
    try:
        fresh.set_state(state)  # a restarted job: new workers
        for i in (3, 4):
            assert _batches_equal(next(fresh), ref[i])
    finally:
        fresh.close()


# ----------------------------------------------------------------------------- evaluation


def test_eval_windows_padding_and_mask(data):
    config = cfg(eval_offsets=(-2, -1, 0, 1, 2))
    ds = pl.eval_map_dataset(data, config, process_index=0, process_count=1)
    # 2 videos × (4 labeled frames × 2 people + 1 extra on frame 0) = 18 rows -> 5 batches.
    assert len(ds) == 5
    rows = {k: np.concatenate([ds[i][k] for i in range(5)]) for k in ds[0]}
    assert rows["image"].shape == (20, 5, *SIZE, 3)
    np.testing.assert_array_equal(rows["mask"], [True] * 18 + [False] * 2)
    assert not rows["image"][18:].any() and not rows["frame_valid"][18:].any()
    real = rows["frame"][:18]
    np.testing.assert_array_equal(
        rows["frame_index"][:18], np.clip(real[:, None] + np.arange(-2, 3), 0, N_FRAMES - 1)
    )
    assert rows["frame_valid"][:18].all()
    # Every window frame is cropped with the centre frame's box.
    for r in np.flatnonzero((rows["person"] == 0) & rows["mask"]):
        v = int(rows["video"][r])
        m = T.get_affine_transform(rows["center"][r], rows["scale"][r], 0.0, SIZE)
        for t in range(5):
            np.testing.assert_allclose(
                _centroid(rows["image"][r, t, ..., 1]),
                T.affine_points(blob_pos(v, int(rows["frame_index"][r, t])), m),
                atol=0.5,
            )
    # The person without a labeled joint is evaluated, with zero target weights.
    extra = (rows["person"] == 2) & rows["mask"]
    assert extra.sum() == 2 and not rows["target_weight"][extra].any()

    masked = pl.eval_map_dataset(data, cfg(eval_edge="mask"), process_index=0, process_count=1)
    b = masked[0]
    assert b["frame"][0] == 0  # frames -2, -1 do not exist
    np.testing.assert_array_equal(b["frame_valid"][0], [False, False, True, True, True])
    np.testing.assert_array_equal(b["frame_index"][0], [-1, -1, 0, 1, 2])
    assert not b["image"][0, :2].any() and b["image"][0, 2:].any()


def test_eval_detection_box_sources(data):
    dets = {
        ("v0", 1): [Person(None, np.array([50, 20, 40, 60], np.float32), score=0.7)],
        ("v1", 5): [Person(None, np.array([50, 20, 40, 60], np.float32), score=0.4)] * 2,
    }
    config = cfg()
    by_map = pl.eval_map_dataset(
        data, config, boxes=dets, frames="all", process_index=0, process_count=1
    )
    by_fn = pl.eval_map_dataset(
        data,
        config,
        boxes=lambda name, f: dets.get((name, f), []),
        frames="all",
        process_index=0,
        process_count=1,
    )
    # A data set of detections shaped like the data (what the detection reader returns).
    det_data = VideoDataset(
        [
            Video(v.name, [Frame(f.path, f.index, f.image_id, f.is_labeled,
                                 list(dets.get((v.name, f.index), []))) for f in v.frames], "d")
            for v in data.videos
        ],
        fmt="posetrack18",
    )  # fmt: skip
    by_data = pl.eval_map_dataset(
        data, config, boxes=det_data, frames="all", process_index=0, process_count=1
    )
    assert len(by_map) == 1 and _batches_equal(by_map[0], by_fn[0])
    assert _batches_equal(by_map[0], by_data[0])
    b = by_map[0]
    np.testing.assert_array_equal(b["mask"], [True, True, True, False])
    np.testing.assert_array_equal(b["video"][:3], [0, 1, 1])
    np.testing.assert_array_equal(b["frame"][:3], [1, 5, 5])
    np.testing.assert_allclose(b["score"][:3], [0.7, 0.4, 0.4])
    assert not b["target_weight"].any()
    # Only labeled frames by default: frames 1 and 5 are unlabeled.
    none = pl.eval_map_dataset(data, config, boxes=dets, process_index=0, process_count=1)
    assert len(none) == 0


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def own_data(tmp_path):
    return build_dataset(tmp_path)


def test_missing_and_corrupt_images_name_file_and_record(own_data):
    bad = own_data.videos[0].frames[2].path
    os.remove(bad)
    config = cfg(shuffle=False, augment=False)
    ds = pl.train_map_dataset(own_data, config, paired=False, process_index=0, process_count=1)
    # Records in order: v0 f0 p0, p1, (f0 p2 has no joints), v0 f2 p0 ...
    with pytest.raises(pl.BadImageError, match="missing") as err:
        ds[0]
    msg = str(err.value)
    assert bad in msg and "video 'v0'" in msg and "frame 2" in msg and "person 0" in msg

    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 this is not a JPEG")
    it = iter(pl.train_dataset(own_data, cfg(shuffle=False, read_threads=2, augment=False)))
    with pytest.raises(pl.BadImageError, match="unreadable") as err:
        next(it)
    assert bad in str(err.value) and "video 'v0'" in str(err.value)

    ev = pl.eval_map_dataset(own_data, config, process_index=0, process_count=1)
    with pytest.raises(pl.BadImageError, match="window frame 2"):
        ev[0]

    # Propagation pairs: rows v0 f1 p0-p1 (from f0), v0 f3 p0-p1 (from f2), ...
    pairs = pl.pair_map_dataset(
        own_data, propagation.plan_propagation(own_data, reach=1), config,
        process_index=0, process_count=1,
    )  # fmt: skip
    with pytest.raises(pl.BadImageError, match="unreadable") as err:
        pairs[0]
    msg = str(err.value)
    assert bad in msg and "propagation row 2 (video 'v0', frame 3), source frame 2" in msg


def test_skip_bad_images_counts_and_replaces_deterministically(own_data):
    os.remove(own_data.videos[0].frames[2].path)
    config = cfg(shuffle=False, augment=False, skip_bad_images=True)
    ds = pl.train_map_dataset(own_data, config, paired=False, process_index=0, process_count=1)
    before = pl.bad_image_count()
    with pytest.warns(pl.BadImageWarning, match="000002.jpg"):
        epoch = [ds[i] for i in range(4)]
    # Records 2 and 3 (v0 f2 p0/p1) are bad; both become record 4 (v0 f4 p0): 3 failed reads.
    assert pl.bad_image_count() - before == 3
    rep = np.concatenate([b["replaced"] for b in epoch])
    np.testing.assert_array_equal(np.flatnonzero(rep), [2, 3])
    fa = np.concatenate([b["frame_a"] for b in epoch])
    pe = np.concatenate([b["person"] for b in epoch])
    assert not np.any((fa == 2) & (np.concatenate([b["video"] for b in epoch]) == 0))
    assert fa[2] == fa[3] == fa[4] == 4 and pe[2] == pe[3] == pe[4] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pl.BadImageWarning)
        again = [ds[i] for i in range(4)]
    assert all(_batches_equal(a, b) for a, b in zip(epoch, again))

    # Evaluation: a missing window frame is flagged invalid and its row kept; a missing
    # centre frame masks the row out. Rows: v0 f0 p0-p2, v0 f2 p0-p1, v0 f4 p0 ...
    ev = pl.eval_map_dataset(own_data, config, process_index=0, process_count=1)
    with pytest.warns(pl.BadImageWarning):
        b0, b1 = ev[0], ev[1]
    assert b0["frame"][3] == 2 and not b0["mask"][3] and b0["mask"][:3].all()
    assert b1["frame"][1] == 4 and b1["mask"][1]
    np.testing.assert_array_equal(b1["frame_valid"][1], [False, True, True, True, True])
    assert not b1["image"][1, 0].any() and b1["image"][1, 1].any()

    # Propagation: a row with a bad frame is a padding row (rows 2-3 read v0 f2).
    pairs = pl.pair_map_dataset(
        own_data, propagation.plan_propagation(own_data, reach=1), config,
        process_index=0, process_count=1,
    )  # fmt: skip
    with pytest.warns(pl.BadImageWarning, match="000002.jpg"):
        p0 = pairs[0]
    np.testing.assert_array_equal(p0["mask"], [True, True, False, False])
    assert p0["frame"].tolist() == [1, 1, -1, -1] and p0["frame_valid"][:2].all()


def test_wrong_keypoint_shape_names_the_record(tmp_path):
    data = build_dataset(tmp_path)
    data.videos[1].frames[4].people[1].keypoints = np.zeros((15, 3), np.float32)
    with pytest.raises(ValueError, match=r"video 'v1' frame 4 person 1.*\(15, 3\)"):
        pl.train_map_dataset(data, cfg(), process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"video 'v1' frame 4 person 1"):
        pl.eval_map_dataset(data, cfg(), process_index=0, process_count=1)


# ----------------------------------------------------------------------------- devices


def test_make_global_batch_on_fake_devices(data):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    local = pl.train_map_dataset(data, cfg(batch_size=8), process_index=0, process_count=1)[0]
    glob = pl.make_global_batch(local, mesh)
    assert "image_id" not in glob  # 64-bit ids stay on the host
    for k, arr in glob.items():
        assert arr.shape == local[k].shape
        assert arr.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), arr.ndim)
        np.testing.assert_array_equal(np.asarray(arr), local[k])

"""The shared inference loop on the tiny synthetic data set (8 fake CPU devices).

A heatmap function that returns each row's ground-truth Gaussian targets makes the whole
loop (sharding, decoding, the map back to image pixels, row assembly, prediction data set)
checkable against the annotation; the real backbone checks sharding and the flip test
against an independent NumPy decode.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os

import jax
import numpy as np
import pytest
from references import np_decode

from posewarper_jax import experiment, training
from posewarper_jax.apps import inference
from posewarper_jax.data import pipeline, synthetic
from posewarper_jax.data.types import FLIP_PAIRS, NUM_JOINTS
from posewarper_jax.eval import posetrack_map

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GT_KEYS = ("image", "target")


def target_fn(variables, batch):
    """The rows' own ground-truth Gaussians as 'predicted' heatmaps."""
    del variables
    return batch["target"]


def _config():
    spec = importlib.util.spec_from_file_location("sparse_config", f"{ROOT}/configs/sparse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("runlocal")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(root, "tiny", progress=False)
    train = synthetic.load_split(root, "train")
    # Frames 1 and 3 of every video unlabeled, and one labeled frame without people: they
    # must get no prediction.
    for video in train.videos:
        for f in (1, 3):
            video.frames[f].is_labeled = False
    train.videos[0].frames[2].people = []
    return train, synthetic.load_split(root, "val")


@pytest.fixture(scope="module")
def model_vars(data):
    """The runlocal model at initialisation, its final layer scaled so that heatmaps have unit
    standard deviation (initial HRNet heatmaps are ~1e-11)."""
    c = _config()
    model = experiment.make_model(c)
    variables = training.init_variables(model, c.input.image_size, 0)
    size = tuple(c.input.image_size)
    batch = next(iter(pipeline.eval_dataset(data[1], _cfg(size), offsets=(0,))))
    std = float(np.std(HEATMAPS(model)(variables, batch["image"])))
    final = variables["params"]["backbone"]["final_layer"]
    scaled = jax.tree.map(lambda x: x / std, final)  # a linear layer: heatmaps / std
    variables["params"]["backbone"] = {**variables["params"]["backbone"], "final_layer": scaled}
    return model, variables, size


@functools.cache
def HEATMAPS(model):
    """Jitted backbone heatmaps ``[B, T, h, w, J]`` of ``[B, T, H, W, 3]`` crops."""
    return jax.jit(lambda v, x: model.apply(v, x, False, method="heatmaps"))


def _cfg(image_size=(128, 96), batch_size=8):
    return pipeline.PipelineConfig(
        image_size=image_size, batch_size=batch_size, augment=False, shuffle=False
    )


def _np_to_image(coords, center, scale, hw) -> np.ndarray:
    """Inverse crop map (no rotation): centre ↔ (w/2, h/2), scale_x * 200 px ↔ w."""
    h, w = hw
    return np.asarray(center) + (coords - [w / 2, h / 2]) * (scale[0] * 200.0 / w)


def _host_batches(dataset, cfg, **kw):
    return list(pipeline.eval_dataset(dataset, cfg, **kw))


# ----------------------------------------------------------------------------- ground truth


def test_gt_targets_recover_keypoints_and_score_full_map(data):
    train, _ = data
    cfg = _cfg()
    batches = _host_batches(train, cfg, offsets=(0,))
    rows = inference.predict(None, {}, batches, target_fn, keys=GT_KEYS)

    # Exactly one row per (labeled frame, person with a box); padding rows never appear.
    expected = {
        (vi, f.index, p)
        for vi, v in enumerate(train.videos)
        for f in v.frames
        if f.is_labeled
        for p in range(len(f.people))
    }
    got = [(r["video"], r["frame"], r["person"]) for r in rows]
    assert len(got) == len(set(got)) == len(expected) > 0
    assert not [k for k in got if k[1] in (1, 3)]  # unlabeled frames
    assert not [k for k in got if k[:2] == (0, 2)]  # the labeled frame without people
    assert set(got) == expected
    assert sum(int(np.sum(~b["mask"])) for b in batches) > 0  # the last batch was padded

    weights = {
        (int(b["video"][i]), int(b["frame"][i]), int(b["person"][i])): b["target_weight"][i]
        for b in batches
        for i in np.flatnonzero(b["mask"])
    }
    hm_w = cfg.heatmap_size[1]
    errs = []
    for r in rows:
        person = train.videos[r["video"]].frames[r["frame"]].people[r["person"]]
        assert r["track_id"] == person.track_id and r["score"] == pytest.approx(person.score)
        w = weights[(r["video"], r["frame"], r["person"])] > 0
        # Targets sit at the nearest heatmap pixel: the error is at most half a heatmap pixel
        # per axis (+ float32 rounding), i.e. scale_x * 200 / w / 2 image pixels.
        half_px = r["scale"][0] * 200.0 / hm_w / 2
        err = np.abs(r["keypoints"][w] - person.keypoints[w, :2])
        assert np.all(err <= half_px + 1e-3), (r, err.max(), half_px)
        errs.append(err / (2 * half_px))
        np.testing.assert_allclose(r["maxvals"][w], 1.0, atol=1e-6)
        np.testing.assert_array_equal(r["maxvals"][~w], 0.0)
    errs = np.concatenate(errs)
    # Rounding to the grid leaves a mean error of about a quarter heatmap pixel.
    assert 0.1 < errs.mean() < 0.4

    pred = inference.to_predictions(rows, train)
    assert [v.nframes for v in pred.videos] == [v.nframes for v in train.videos]
    for vg, vp in zip(train.videos, pred.videos):
        for fg, fp in zip(vg.frames, vp.frames):
            assert len(fp.people) == (len(fg.people) if fg.is_labeled else 0)
    # poseval scores every frame with people; the unlabeled ones (people kept above to show
    # they are skipped) are emptied for scoring, as unlabeled frames are in PoseTrack.
    gt = copy.deepcopy(train)
    for video in gt.videos:
        for frame in video.frames:
            if not frame.is_labeled:
                frame.people = []
    table = posetrack_map(gt, pred)
    # 100 on this data; joints whose target falls outside the crop would be the only misses.
    assert table["Total"] > 99.0, table


def test_masked_rows_are_dropped_and_bad_input_named(data):
    train, _ = data
    batches = _host_batches(train, _cfg(), offsets=(0,))[:2]
    batches[0] = dict(batches[0], mask=batches[0]["mask"].copy())
    batches[0]["mask"][[1, 5]] = False
    rows = inference.predict(None, {}, batches, target_fn, keys=GT_KEYS)
    keys = {(r["video"], r["frame"], r["person"]) for r in rows}
    assert len(rows) == 14
    for i in (1, 5):
        b = batches[0]
        assert (int(b["video"][i]), int(b["frame"][i]), int(b["person"][i])) not in keys

    with pytest.raises(ValueError, match="batch_size to a multiple of 8"):
        inference.predict(
            None, {}, _host_batches(train, _cfg(batch_size=4)), target_fn, keys=GT_KEYS
        )
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['target'\]"):
        no_target = [{k: v for k, v in batches[1].items() if k != "target"}]
        inference.predict(None, {}, no_target, target_fn, keys=GT_KEYS)
    with pytest.raises(ValueError, match="must return"):
        inference.predict(None, {}, batches, lambda v, b: b["target"][..., 0], keys=GT_KEYS)
    with pytest.raises(ValueError, match="decoding must be one of"):
        inference.predict(None, {}, batches, target_fn, keys=GT_KEYS, decoding="softargmax")


def test_flip_test_of_flip_consistent_maps_keeps_keypoints(data):
    """``flip_batch`` mirrors the targets with ``flip_back``; flipping the output back undoes
    it exactly except in heatmap column 0, so keypoints are unchanged (to 1e-4 px)."""
    train, _ = data
    batches = _host_batches(train, _cfg(), offsets=(0,))
    plain = inference.predict(None, {}, batches, target_fn, keys=GT_KEYS)
    flipped = inference.predict(None, {}, batches, target_fn, keys=GT_KEYS, flip_test=True)
    assert len(plain) == len(flipped)
    for a, b in zip(plain, flipped):
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-4)
        np.testing.assert_allclose(a["maxvals"], b["maxvals"], atol=1e-6)


# ----------------------------------------------------------------------------- real model


def test_sharded_equals_unsharded_and_flip_test_matches_numpy(data, model_vars):
    _, val = data
    model, variables, size = model_vars
    batches = _host_batches(val, _cfg(size), offsets=(0,))
    fn = inference.single_frame_fn(model)
    eight = inference.predict(model, variables, batches, fn)
    one = inference.predict(
        model, variables, batches, fn, mesh=training.data_mesh(jax.devices()[:1])
    )
    assert jax.device_count() == 8 and len(eight) == len(one) == 8
    for a, b in zip(eight, one):
        assert (a["video"], a["frame"], a["person"]) == (b["video"], b["frame"], b["person"])
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-3)
        np.testing.assert_allclose(a["maxvals"], b["maxvals"], rtol=1e-5, atol=1e-7)

    # Flip test against NumPy: mirror the crop, reverse the map's width, swap the pairs,
    # shift one pixel right (column 0 kept), average, decode with loops, map back.
    flip = inference.predict(model, variables, batches, fn, flip_test=True)
    apply = HEATMAPS(model)
    perm = np.arange(NUM_JOINTS)
    for a, b in FLIP_PAIRS:
        perm[a], perm[b] = b, a
    k = 0
    for batch in batches:
        hm = np.asarray(apply(variables, batch["image"]))[:, 0].astype(np.float64)
        hmf = np.asarray(apply(variables, batch["image"][:, :, :, ::-1]))[:, 0]
        h, w = hm.shape[1:3]
        back = np.empty_like(hm)
        for u in range(w):
            back[:, :, u, :] = hmf[:, :, w - max(u, 1), :][..., perm]
        avg = 0.5 * (hm + back)
        for i in np.flatnonzero(batch["mask"]):
            coords, maxvals = np_decode(avg[i])
            xy = _np_to_image(coords, batch["center"][i], batch["scale"][i], (h, w))
            np.testing.assert_allclose(flip[k]["keypoints"], xy, atol=1e-3)
            np.testing.assert_allclose(flip[k]["maxvals"], maxvals, rtol=1e-4, atol=1e-6)
            k += 1
    assert k == len(flip)
    # The flip test changes something: the mirrored crop's maps are not the plain ones.
    assert any(not np.allclose(a["maxvals"], b["maxvals"]) for a, b in zip(eight, flip))


# ----------------------------------------------------------------------------- assembly


def _row(video, frame, person, score, keypoints, maxval=0.8):
    return {
        "video": video,
        "frame": frame,
        "person": person,
        "track_id": -1,
        "image_id": 0,
        "score": score,
        "center": np.array([50.0, 60.0], np.float32),
        "scale": np.array([0.4, 0.5], np.float32),
        "keypoints": np.asarray(keypoints, np.float32),
        "maxvals": np.full(NUM_JOINTS, maxval, np.float32),
    }


def test_to_predictions_scoring_and_oks_nms(data):
    _, val = data
    kp = np.stack([np.linspace(30, 70, NUM_JOINTS), np.linspace(20, 100, NUM_JOINTS)], 1)
    rows = [
        _row(0, 2, 0, 0.9, kp),
        _row(0, 2, 1, 0.6, kp + 0.5),  # a near duplicate of the first
        _row(0, 2, 2, 0.7, kp + 40.0),  # somebody else
    ]
    pred = inference.to_predictions(rows, val)
    people = pred.videos[0].frames[2].people
    assert len(people) == 3 and sum(len(f.people) for f in pred.videos[0].frames) == 3
    # Official scoring: joint score = heatmap max x box score, person score = box score.
    np.testing.assert_allclose(people[1].keypoint_scores, 0.8 * 0.6, rtol=1e-6)
    assert people[1].score == pytest.approx(0.6)
    np.testing.assert_allclose(people[0].keypoints[:, :2], kp, atol=1e-4)
    # The crop box: centre -+ scale * 100 px.
    np.testing.assert_allclose(people[0].bbox, [10.0, 10.0, 80.0, 100.0], atol=1e-4)

    mm = inference.to_predictions(rows, val, scoring="mmpose").videos[0].frames[2].people
    np.testing.assert_allclose(mm[1].keypoint_scores, 0.8, rtol=1e-6)
    assert mm[1].score == pytest.approx(0.6 * 0.8)

    kept = inference.to_predictions(rows, val, nms=True).videos[0].frames[2].people
    assert [p.score for p in kept] == pytest.approx([0.9, 0.7])

    empty = inference.to_predictions([], val)
    assert [len(f.people) for f in empty.videos[0].frames] == [0] * val.videos[0].nframes


def test_flip_batch_mirrors_images_and_swaps_joint_channels():
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 255, (2, 3, 8, 6, 3), dtype=np.uint8),
        "target": rng.random((2, 4, 3, NUM_JOINTS)).astype(np.float32),
        "target_weight": np.arange(2 * NUM_JOINTS, dtype=np.float32).reshape(2, NUM_JOINTS),
        "frame_valid": np.ones((2, 3), bool),
    }
    out = {k: np.asarray(v) for k, v in inference.flip_batch(batch).items()}
    np.testing.assert_array_equal(out["image"][:, :, :, 0], batch["image"][:, :, :, 5])
    np.testing.assert_array_equal(out["frame_valid"], batch["frame_valid"])
    left, right = FLIP_PAIRS[0]
    np.testing.assert_array_equal(out["target_weight"][:, left], batch["target_weight"][:, right])
    # Reversed width, shifted one pixel right: out[u] = target[w - u] for u >= 1.
    np.testing.assert_array_equal(out["target"][:, :, 1, left], batch["target"][:, :, 2, right])
    np.testing.assert_array_equal(out["target"][:, :, 0, left], batch["target"][:, :, 2, right])
    twice = inference.flip_batch(out)
    np.testing.assert_array_equal(np.asarray(twice["image"]), batch["image"])

"""Single-frame detection and temporal aggregation on the tiny synthetic data set.

At initialisation the warping head is the identity, so aggregation must equal the weighted
sum of the window frames' backbone heatmaps (weights renormalised over the frames inside the
video), decoded; that is recomputed here with ``method="heatmaps"``, NumPy weighting and a
NumPy decode. The causal window is shown to read no future frame.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import shutil

import cv2
import jax
import numpy as np
import pytest
from references import np_decode

from posewarper_jax import experiment, training
from posewarper_jax.apps import detection
from posewarper_jax.data import pipeline, synthetic
from posewarper_jax.data.pipeline import BadImageError
from posewarper_jax.data.types import Person
from posewarper_jax.eval import posetrack_map

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    spec = importlib.util.spec_from_file_location("sparse_config", f"{ROOT}/configs/sparse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("runlocal")


def _cfg(image_size, batch_size=8):
    return pipeline.PipelineConfig(image_size=image_size, batch_size=batch_size)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(root, "tiny", progress=False)
    val = synthetic.load_split(root, "val")  # 1 video, 8 frames, 1 person per frame
    c = _config()
    model = experiment.make_model(c)
    variables = training.init_variables(model, c.input.image_size, 0)
    size = tuple(c.input.image_size)
    heatmaps = jax.jit(lambda v, x: model.apply(v, x, False, method="heatmaps"))
    # Initial HRNet heatmaps are ~1e-11: scale the (linear) final layer to unit std.
    batch = next(iter(pipeline.eval_dataset(val, _cfg(size), offsets=(0,))))
    std = float(np.std(heatmaps(variables, batch["image"])))
    backbone = variables["params"]["backbone"]
    final = jax.tree.map(lambda x: x / std, backbone["final_layer"])
    variables["params"]["backbone"] = {**backbone, "final_layer": final}
    return dict(root=root, val=val, model=model, variables=variables, size=size, hm=heatmaps)


def _reference(s, dataset, window, weights):
    """{(video, frame, person): (keypoints [J, 2], maxvals [J])}: backbone heatmaps of each
    window frame, weighted in NumPy over the valid frames, decoded with loops."""
    cfg = dataclasses.replace(_cfg(s["size"]), eval_edge="mask")
    out, any_invalid = {}, False
    for batch in pipeline.eval_dataset(dataset, cfg, offsets=window):
        hm = np.asarray(s["hm"](s["variables"], batch["image"]), np.float64)  # [B, T, h, w, J]
        valid = batch["frame_valid"].astype(np.float64)
        any_invalid |= bool(np.any(batch["mask"][:, None] & ~batch["frame_valid"]))
        w = np.asarray(weights)[None] * valid
        w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-30)  # padding rows: all zero
        agg = np.einsum("bt,bthwj->bhwj", w, hm)
        h_, w_ = agg.shape[1:3]
        for i in np.flatnonzero(batch["mask"]):
            coords, maxvals = np_decode(agg[i])
            per_px = batch["scale"][i][0] * 200.0 / w_
            xy = batch["center"][i] + (coords - [w_ / 2, h_ / 2]) * per_px
            key = (int(batch["video"][i]), int(batch["frame"][i]), int(batch["person"][i]))
            out[key] = (xy, maxvals)
    return out, any_invalid


def _compare(pred, ref):
    n = 0
    for vi, video in enumerate(pred.videos):
        for frame in video.frames:
            for pi, person in enumerate(frame.people):
                xy, maxvals = ref[(vi, frame.index, pi)]
                np.testing.assert_allclose(person.keypoints[:, :2], xy, atol=1e-3)
                # Official scoring with GT boxes (score 1): joint score = heatmap maximum.
                np.testing.assert_allclose(person.keypoint_scores, maxvals, rtol=1e-4, atol=1e-5)
                n += 1
    assert n == len(ref)


def _per_frame(pred):
    return {
        (vi, f.index): np.stack([p.keypoint_scores for p in f.people])
        for vi, v in enumerate(pred.videos)
        for f in v.frames
        if f.people
    }


# ----------------------------------------------------------------------------- tests


def test_single_frame_equals_backbone_decoded_and_covers_labeled_frames(setup):
    s = setup
    val = copy.deepcopy(s["val"])
    val.videos[0].frames[3].is_labeled = False  # people kept: must still get no prediction
    pred = detection.detect_single_frame(s["model"], s["variables"], val, _cfg(s["size"]))
    ref, _ = _reference(s, val, (0,), (1.0,))
    _compare(pred, ref)
    counts = [len(f.people) for f in pred.videos[0].frames]
    assert counts == [0 if t == 3 else 1 for t in range(8)]
    table = posetrack_map(s["val"], pred)  # scored directly (an untrained model: low)
    assert 0.0 <= table["Total"] < 100.0


@pytest.mark.parametrize(
    "causal, window, weights",
    [
        (False, (-2, -1, 0, 1, 2), (0.1, 0.25, 0.3, 0.25, 0.1)),
        (True, (-2, -1, 0), (0.1, 0.25, 0.3)),
    ],
)
def test_aggregation_at_init_equals_weighted_backbone_heatmaps(setup, causal, window, weights):
    s = setup
    pred = detection.detect_aggregated(
        s["model"], s["variables"], s["val"], _cfg(s["size"]), causal=causal
    )
    ref, any_invalid = _reference(s, s["val"], window, weights)
    # The video's first (and last) frames lack window frames: without renormalising over
    # the valid ones their maxima would be off by the missing weight.
    assert any_invalid
    _compare(pred, ref)


def test_symmetric_and_causal_from_one_pass_equal_the_two_calls(setup):
    """``detect_aggregated_and_causal`` against ``detect_aggregated`` called twice, with the
    flip test (each named map set flipped and averaged) and a warping head moved off the
    identity (so each frame's warp differs); tolerance 1e-3 px and 1e-5 on the joint scores
    (the programs differ in batch size and summation)."""
    flip_test = True
    s = setup
    variables = copy.deepcopy(s["variables"])
    leaves, tree = jax.tree.flatten(variables["params"]["head"])
    rng = np.random.default_rng(1)
    moved = [x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype) for x in leaves]
    variables["params"]["head"] = jax.tree.unflatten(tree, moved)
    args = (s["model"], variables, s["val"], _cfg(s["size"]))
    symmetric, causal = detection.detect_aggregated_and_causal(*args, flip_test=flip_test)
    expected = (
        detection.detect_aggregated(*args, flip_test=flip_test),
        detection.detect_aggregated(*args, flip_test=flip_test, causal=True),
    )
    identity = detection.detect_aggregated(s["model"], s["variables"], s["val"], _cfg(s["size"]))
    for got, want in zip((symmetric, causal), expected):
        n = 0
        for v_got, v_want in zip(got.videos, want.videos):
            for f_got, f_want in zip(v_got.frames, v_want.frames):
                assert len(f_got.people) == len(f_want.people)
                for p_got, p_want in zip(f_got.people, f_want.people):
                    np.testing.assert_allclose(p_got.keypoints, p_want.keypoints, atol=1e-3)
                    np.testing.assert_allclose(
                        p_got.keypoint_scores, p_want.keypoint_scores, rtol=1e-5, atol=1e-6
                    )
                    n += 1
        assert n == 8
    # The moved head changes the predictions, and the two windows differ.
    assert not np.allclose(_stack(symmetric), _stack(identity), atol=1e-2)
    assert not np.allclose(_stack(symmetric), _stack(causal), atol=1e-2)


def _stack(pred):
    return np.stack([p.keypoints for v in pred.videos for f in v.frames for p in f.people])


def _corrupt_after(dataset, root, t_last, mode):
    """A copy of ``dataset`` whose frames after ``t_last`` are noise images ("noise") or
    missing files ("missing")."""
    out = copy.deepcopy(dataset)
    rng = np.random.default_rng(0)
    for video in out.videos:
        for frame in video.frames:
            path = os.path.join(root, video.name, os.path.basename(frame.path))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if frame.index <= t_last:
                shutil.copy(frame.path, path)
            elif mode == "noise":
                shape = cv2.imread(frame.path).shape
                cv2.imwrite(path, rng.integers(0, 256, shape, dtype=np.uint8))
            frame.path = path
    return out


def test_causal_aggregation_reads_no_future_frame(setup, tmp_path):
    s = setup
    model, variables, cfg = s["model"], s["variables"], _cfg(s["size"])
    t_last = 4
    noisy = _corrupt_after(s["val"], str(tmp_path / "noise"), t_last, "noise")

    def run(dataset, causal):
        return _per_frame(
            detection.detect_aggregated(model, variables, dataset, cfg, causal=causal)
        )

    causal_a, causal_b = run(s["val"], True), run(noisy, True)
    sym_a, sym_b = run(s["val"], False), run(noisy, False)
    for t in range(t_last + 1):
        np.testing.assert_array_equal(causal_a[(0, t)], causal_b[(0, t)])
    # The corruption is visible: later causal frames and the symmetric window near t_last move.
    assert not np.allclose(causal_a[(0, t_last + 1)], causal_b[(0, t_last + 1)])
    assert not np.allclose(sym_a[(0, t_last)], sym_b[(0, t_last)])

    # Future frames missing altogether and unlabeled: causal runs, the symmetric window fails.
    missing = _corrupt_after(s["val"], str(tmp_path / "missing"), t_last, "missing")
    for frame in missing.videos[0].frames[t_last + 1 :]:
        frame.is_labeled = False
    got = run(missing, True)
    assert sorted(got) == [(0, t) for t in range(t_last + 1)]
    for t in range(t_last + 1):
        np.testing.assert_array_equal(got[(0, t)], causal_a[(0, t)])
    with pytest.raises(BadImageError):
        run(missing, False)


def test_detected_boxes_get_oks_nms_and_box_scores(setup):
    s = setup
    boxes = {}
    for video in s["val"].videos:
        for frame in video.frames:
            gt = frame.people[0]
            keep = Person(keypoints=None, bbox=gt.bbox, score=0.9)
            dup = Person(keypoints=None, bbox=gt.bbox.copy(), score=0.5)  # a repeated box
            boxes[(video.name, frame.index)] = [keep, dup]
    args = (s["model"], s["variables"], s["val"], _cfg(s["size"]))
    gt = detection.detect_single_frame(*args)  # GT boxes (score 1): joint score = maximum
    raw = detection.detect_single_frame(*args, boxes=boxes, nms=False)
    auto = detection.detect_single_frame(*args, boxes=boxes)
    frames = zip(gt.videos[0].frames, raw.videos[0].frames, auto.videos[0].frames)
    for f_gt, f_raw, f_auto in frames:
        assert [p.score for p in f_raw.people] == pytest.approx([0.9, 0.5])
        assert [p.score for p in f_auto.people] == pytest.approx([0.9])  # duplicate removed
        # Official scoring: joint score = heatmap maximum x box score (same crop as GT's).
        np.testing.assert_allclose(
            f_raw.people[0].keypoint_scores, 0.9 * f_gt.people[0].keypoint_scores, rtol=1e-5
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(window=(-2, -1, 1)), "must contain the offset 0"),
        (dict(window=(-1, 0, 1), causal=True), "no future frame"),
        (dict(window=(-1, 0), weights=(1.0,)), "1 weights for the 2 offsets"),
        (dict(window=(-1, 0)), "give weights"),
        (dict(weights=(0.0,) * 5), "not all zero"),
        (dict(window=(0, 0)), "repeats"),
    ],
)
def test_bad_windows_are_named(setup, kwargs, message):
    s = setup
    with pytest.raises(ValueError, match=message):
        detection.detect_aggregated(s["model"], s["variables"], s["val"], _cfg(s["size"]), **kwargs)

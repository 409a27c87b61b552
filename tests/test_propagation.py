"""Video pose propagation and its baselines on small videos written here with cv2.

Exact known answers: at initialisation the warping head is the identity, so PoseWarper
propagation must return A's keypoints quantised to B's heatmap grid (checked against a NumPy
re-derivation of crop → heatmap pixel → image); the blend of two sources must weigh them
1/|δ|; Farneback flow must follow a known translation; copying labels on a static video must
score 100 mAP.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os

import cv2
import jax
import numpy as np
import pytest
from conftest import curve_person
from conftest import texture as _texture

from posewarper_jax import experiment, training
from posewarper_jax.apps import baselines, propagation
from posewarper_jax.data import pipeline as pl
from posewarper_jax.data import posetrack18, sparse
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset
from posewarper_jax.eval import posetrack_map

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H0, W0 = 96, 128  # frame size
CROP = (64, 64)  # crop (H, W); heatmaps 16 x 16
LABELED = (0, 4, 9)
N_FRAMES = 14
MOTION = 2.0  # px per frame, x
BASE = {1: (30.0, 48.0), 2: (80.0, 45.0), 7: (56.0, 50.0)}  # track -> (cx, cy) at t = 0


def _person(track: int, t: int, motion: float = MOTION) -> Person:
    cx, cy = BASE[track]
    return curve_person(track, cx + motion * t, cy)


def build_video(root: str, name: str = "v0", *, static: bool = False) -> VideoDataset:
    """The full ground truth of one video: tracks 1 and 2 on every frame, moving right; unless
    ``static``, also track 7 from frame 5 on, an untracked person on frame 6 and joint 16 of
    track 2 unlabeled on frame 4. ``static``: every frame the same image and poses."""
    motion = 0.0 if static else MOTION
    frames = []
    os.makedirs(os.path.join(root, name), exist_ok=True)
    image = _texture(0, H0, W0)
    for t in range(N_FRAMES):
        path = os.path.join(root, name, f"{t:06d}.png")
        cv2.imwrite(path, image if static else _texture(t, H0, W0))
        people = [_person(1, t, motion), _person(2, t, motion)]
        if not static and t >= 5:
            people.append(_person(7, t, motion))
        if not static and t == 6:
            people.append(dataclasses.replace(_person(7, t, motion), track_id=-1))
        if not static and t == 4:
            people[1].keypoints[16] = 0
        frames.append(Frame(path, t, 1000 + t, True, people))
    return VideoDataset([Video(name, frames, f"{name}.json")], "posetrack18", root)


def keep_labels(full: VideoDataset, labeled=LABELED) -> VideoDataset:
    """The same videos labeled only on ``labeled`` frames."""
    out = copy.deepcopy(full)
    for video in out.videos:
        for frame in video.frames:
            if frame.index not in labeled:
                frame.is_labeled, frame.people = False, []
    return out


def people_keys(pred: VideoDataset) -> set[tuple[str, int, int]]:
    return {(v.name, f.index, p.track_id) for v in pred.videos for f in v.frames for p in f.people}


def _config_module():
    spec = importlib.util.spec_from_file_location("sparse_config", f"{ROOT}/configs/sparse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model(dilations):
    """The tiny runlocal model at initialisation (the warping head is the identity)."""
    c = _config_module().get_config("runlocal")
    c.model.dilations = dilations
    c.model.head_blocks = 1
    model = experiment.make_model(c)
    return model, training.init_variables(model, CROP, 0)


def full_and_labeled(tmp_path_factory):
    """The test video (every frame labeled) and its copy with labels on ``LABELED`` only."""
    full = build_video(str(tmp_path_factory.mktemp("frames")))
    return full, keep_labels(full)


@pytest.fixture(scope="module")
def model_and_variables():
    return tiny_model((3,))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return full_and_labeled(tmp_path_factory)


PIPE = pl.PipelineConfig(image_size=CROP, sigma=1.0, batch_size=8, augment=False)


# ----------------------------------------------------------------------------- the plan


def _sources(plan) -> dict[int, int]:
    return {int(f): int(a) for f, a in zip(plan.frame, plan.source_frame[:, 0])}


def test_plan_nearest_frame_ties_reach_and_tracks(video):
    full, labeled = video
    plan = propagation.plan_propagation(labeled, boxes=full, reach=3)
    # Frame 2 is 2 from frames 0 and 4: the earlier wins. Frame 13 is 4 from frame 9: skipped.
    assert _sources(plan) == {1: 0, 2: 0, 3: 4, 5: 4, 6: 4, 7: 9, 8: 9, 10: 9, 11: 9, 12: 9}
    np.testing.assert_array_equal(plan.delta[:, 0], plan.frame - plan.source_frame[:, 0])
    np.testing.assert_allclose(plan.source_weight[:, 0], 1.0 / np.abs(plan.delta[:, 0]))
    keys = set(plan.keys())
    # Track 7 appears on frame 5; only targets of frame 9 (which has it) can carry it.
    assert {k for k in keys if k[2] == 7} == {("v0", f, 7) for f in (7, 8, 10, 11, 12)}
    # The untracked person of frame 6 is never predicted.
    assert all(k[2] in (1, 2, 7) for k in keys)
    assert len(keys) == len(plan) == 10 * 2 + 5
    # Boxes are B's own; keypoints are A's of the same track.
    for r in range(len(plan)):
        f, a, tr = int(plan.frame[r]), int(plan.source_frame[r, 0]), int(plan.track_id[r])
        b_person = next(p for p in full.videos[0].frames[f].people if p.track_id == tr)
        a_person = next(p for p in labeled.videos[0].frames[a].people if p.track_id == tr)
        np.testing.assert_array_equal(plan.box[r], b_person.bbox)
        np.testing.assert_array_equal(plan.source_keypoints[r, 0], a_person.keypoints)

    near = propagation.plan_propagation(labeled, boxes=full, reach=1)
    assert set(_sources(near)) == {1, 3, 5, 8, 10}
    forward = propagation.plan_propagation(labeled, boxes=full, deltas=(1, 2))
    assert _sources(forward) == {1: 0, 2: 0, 5: 4, 6: 4, 10: 9, 11: 9}

    # Without boxes, B gets A's people and boxes.
    own = propagation.plan_propagation(labeled, reach=3)
    assert _sources(own) == _sources(plan)
    assert {k for k in own.keys() if k[2] == 7} == {("v0", f, 7) for f in (7, 8, 10, 11, 12)}
    for r in range(len(own)):
        a, pi = int(own.source_frame[r, 0]), int(own.person[r])
        np.testing.assert_array_equal(own.box[r], labeled.videos[0].frames[a].people[pi].bbox)


def test_plan_blend_sources(video):
    full, labeled = video
    plan = propagation.plan_propagation(labeled, boxes=full, reach=3, blend=True)
    assert plan.keys() == propagation.plan_propagation(labeled, boxes=full, reach=3).keys()
    rows = zip(plan.frame.tolist(), plan.track_id.tolist(), plan.source_frame.tolist())
    got = {(f, t): tuple(s) for f, t, s in rows}
    assert got[(1, 1)] == (0, 4)  # δ = 1, then the other side's δ = -3
    assert got[(2, 1)] == (0, 4)
    assert got[(6, 1)] == (4, 9)
    assert got[(6, 2)] == (4, 9)
    assert got[(7, 7)] == (9, -1)  # frame 4 has no track 7
    assert got[(12, 1)] == (9, -1)  # no labeled frame after 12
    assert plan.source_weight[list(got).index((1, 1))].tolist() == [1.0, pytest.approx(1 / 3)]


def test_plan_rejects_bad_input(video):
    full, labeled = video
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="reach"):
            propagation.plan_propagation(labeled, reach=bad)
    with pytest.raises(ValueError, match="non-zero"):
        propagation.plan_propagation(labeled, deltas=(1, 0))
    with pytest.raises(ValueError, match="repeat"):
        propagation.plan_propagation(labeled, deltas=(1, 1))
    short = copy.deepcopy(full)
    short.videos[0].frames = short.videos[0].frames[:5]
    with pytest.raises(ValueError, match="has 5 frames"):
        propagation.plan_propagation(labeled, boxes=short)
    twice = copy.deepcopy(full)
    twice.videos[0].frames[2].people.append(copy.deepcopy(twice.videos[0].frames[2].people[0]))
    with pytest.raises(ValueError, match="track_id 1 appears twice"):
        propagation.plan_propagation(labeled, boxes=twice)


# ----------------------------------------------------------------------------- PoseWarper


def quantised(kpts_xy: np.ndarray, box: np.ndarray, crop=CROP, stride=4) -> np.ndarray:
    """Independent re-derivation: image point → crop pixel of B's box → nearest heatmap pixel
    → back to the image. [J, 2] -> [J, 2]."""
    x, y, w, h = (float(v) for v in box)
    aspect = crop[1] / crop[0]
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    span = 1.25 * w  # image px across the crop's width
    cx, cy = x + 0.5 * (float(box[2])), y + 0.5 * float(box[3])
    hm_h, hm_w = crop[0] // stride, crop[1] // stride
    u = (kpts_xy[:, 0] - cx) * crop[1] / span + crop[1] / 2
    v = (kpts_xy[:, 1] - cy) * crop[1] / span + crop[0] / 2
    mu = np.floor(np.stack([u, v], 1) / stride + 0.5)
    px = span / hm_w  # image px per heatmap px
    return np.stack([cx + (mu[:, 0] - hm_w / 2) * px, cy + (mu[:, 1] - hm_h / 2) * px], 1)


def test_identity_head_returns_quantised_source_keypoints(model_and_variables, video, tmp_path):
    model, variables = model_and_variables
    full, labeled = video
    plan = propagation.plan_propagation(labeled, boxes=full, reach=3)
    pred = propagation.propagate_labels(model, variables, labeled, pipe_cfg=PIPE, boxes=full)
    copied = baselines.copy_nearest(labeled, boxes=full)
    assert people_keys(pred) == set(plan.keys()) == people_keys(copied)
    checked = 0
    for r, (_, f, track) in enumerate(plan.keys()):
        person = next(p for p in pred.videos[0].frames[f].people if p.track_id == track)
        copy_p = next(p for p in copied.videos[0].frames[f].people if p.track_id == track)
        src = plan.source_keypoints[r, 0]
        has = src[:, 2] > 0
        # Unlabeled joints of A (the ears; joint 16 of track 2 on frame 4) stay unlabeled.
        np.testing.assert_array_equal(person.keypoints[:, 2] > 0, has)
        np.testing.assert_array_equal(person.keypoint_scores[~has], 0.0)
        # Identity head: each Gaussian comes back with its peak 1 at its own heatmap pixel.
        np.testing.assert_allclose(person.keypoint_scores[has], 1.0, atol=1e-6)
        want = quantised(src[:, :2], plan.box[r])
        np.testing.assert_allclose(person.keypoints[has, :2], want[has], atol=1e-3)
        # The decoding resolution: at most half a heatmap pixel from copy_nearest per axis.
        half_px = 0.5 * 1.25 * 48.0 / (CROP[1] // 4)  # boxes are 28 x 48 (h decides)
        diff = np.abs(person.keypoints[has, :2] - copy_p.keypoints[has, :2])
        assert diff.max() <= half_px + 1e-4
        b_person = next(p for p in full.videos[0].frames[f].people if p.track_id == track)
        np.testing.assert_array_equal(person.bbox, b_person.bbox)
        checked += 1
    assert checked == 25
    # Frames beyond reach and labeled frames carry nothing; target frames are marked labeled.
    assert not pred.videos[0].frames[13].people and not pred.videos[0].frames[4].people
    assert [f.index for f in pred.videos[0].frames if f.is_labeled] == sorted(
        {k[1] for k in plan.keys()}
    )
    # Flip test: the identity head carries the mirrored maps back where they were, so the
    # average changes nothing (no joint sits on the heatmap's column 0).
    flipped = propagation.propagate_labels(
        model, variables, labeled, pipe_cfg=PIPE, boxes=full, flip_test=True
    )
    for fa, fb in zip(pred.videos[0].frames, flipped.videos[0].frames):
        for pa, pb in zip(fa.people, fb.people):
            np.testing.assert_allclose(pa.keypoints, pb.keypoints, atol=1e-4)
            np.testing.assert_allclose(pa.keypoint_scores, pb.keypoint_scores, atol=1e-6)
    # Writable as PoseTrack18 and read back unchanged.
    posetrack18.write_posetrack18(pred, str(tmp_path / "pred"))
    back = posetrack18.load_posetrack18(str(tmp_path / "pred"), pred.root)
    for fa, fb in zip(pred.videos[0].frames, back.videos[0].frames):
        assert len(fa.people) == len(fb.people)
        for pa, pb in zip(fa.people, fb.people):
            np.testing.assert_allclose(pa.keypoints, pb.keypoints, atol=1e-3)
            np.testing.assert_allclose(pa.keypoint_scores, pb.keypoint_scores, atol=1e-5)


def test_identity_head_with_subpixel_coding_returns_source_keypoints(model_and_variables, video):
    """Sub-pixel targets + "dark" decoding: the identity head carries A's keypoints to B
    exactly up to the decoding (within 0.02 heatmap px, 0.075 image px here), where HRNet's
    coding is off by up to half a heatmap pixel; the flip test, with its exact realignment,
    moves them by less than 0.05 heatmap px."""
    model, variables = model_and_variables
    full, labeled = video
    cfg = dataclasses.replace(PIPE, target_encoding="subpixel")
    pred = propagation.propagate_labels(
        model, variables, labeled, pipe_cfg=cfg, boxes=full, decoding="dark"
    )
    copied = baselines.copy_nearest(labeled, boxes=full)
    px = 1.25 * 48.0 / (CROP[1] // 4)  # image px per heatmap px (boxes are 28 x 48)
    flipped = propagation.propagate_labels(
        model, variables, labeled, pipe_cfg=cfg, boxes=full, flip_test=True, decoding="dark"
    )
    checked = 0
    for fa, fc, ff in zip(pred.videos[0].frames, copied.videos[0].frames, flipped.videos[0].frames):
        for pa, pc, pf in zip(fa.people, fc.people, ff.people):
            has = pc.keypoints[:, 2] > 0
            np.testing.assert_array_equal(pa.keypoints[:, 2] > 0, has)
            diff = np.abs(pa.keypoints[has, :2] - pc.keypoints[has, :2])
            assert diff.max() <= 0.02 * px, diff.max()
            # The score is the map's maximum: its pixel nearest the sub-pixel peak, at most
            # sqrt(2)/2 px away (sigma 1).
            assert np.all(pa.keypoint_scores[has] >= np.exp(-0.25) - 1e-6)
            assert np.all(pa.keypoint_scores[has] <= 1.0 + 1e-6)
            assert np.abs(pf.keypoints[has, :2] - pa.keypoints[has, :2]).max() <= 0.05 * px
            checked += 1
    assert checked == 25


def _two_source_video(root: str) -> tuple[VideoDataset, VideoDataset]:
    """4 frames, labeled 0 and 3; joint 0 far apart in the two, joint 5 only in frame 3."""
    os.makedirs(os.path.join(root, "blend"), exist_ok=True)
    frames = []
    for t in range(4):
        path = os.path.join(root, "blend", f"{t:06d}.png")
        cv2.imwrite(path, _texture(10 + t, H0, W0))
        person = _person(1, 0, 0.0)
        kp = person.keypoints
        kp[:, 2] = 0
        x0, y0 = person.bbox[:2]
        kp[0] = (x0 + 2, y0 + 2, 1) if t == 0 else (x0 + 26, y0 + 44, 1)
        kp[5] = (x0 + 14, y0 + 20, float(t == 3))
        frames.append(Frame(path, t, t, True, [person]))
    full = VideoDataset([Video("blend", frames, "blend.json")], "posetrack18", root)
    return full, keep_labels(full, (0, 3))


def test_blend_weighs_sources_by_inverse_distance(model_and_variables, tmp_path):
    model, variables = model_and_variables
    full, labeled = _two_source_video(str(tmp_path))
    pred = propagation.propagate_labels(
        model, variables, labeled, pipe_cfg=PIPE, boxes=full, blend=True
    )
    box = full.videos[0].frames[0].people[0].bbox
    k0 = full.videos[0].frames[0].people[0].keypoints
    k3 = full.videos[0].frames[3].people[0].keypoints
    for f, near, score in ((1, k0, 1 / 1.5), (2, k3, 1 / 1.5)):
        (person,) = pred.videos[0].frames[f].people
        # Joint 0: both sources, > 3 sigma apart: the nearer one's peak, weighed
        # (1/|δ_near|) / (1/1 + 1/2) = 2/3.
        np.testing.assert_allclose(person.keypoint_scores[0], score, atol=1e-6)
        np.testing.assert_allclose(
            person.keypoints[0, :2], quantised(near[:, :2], box)[0], atol=1e-3
        )
        # Joint 5: frame 3 only: renormalised over the sources that have it, peak 1.
        np.testing.assert_allclose(person.keypoint_scores[5], 1.0, atol=1e-6)
        np.testing.assert_allclose(person.keypoints[5, :2], quantised(k3[:, :2], box)[5], atol=1e-3)
        assert np.flatnonzero(person.keypoints[:, 2]).tolist() == [0, 5]


def test_chained_path_with_the_identity_head_equals_the_direct_one(model_and_variables, tmp_path):
    """``path="chained"``: with the identity head each step re-renders the decoded pose where
    it was (HRNet's coding and decoding: exactly on the pixel), so the chain of the farther
    source (frame 3 -> 2 -> 1) and the blend give the direct path's poses and scores
    (1e-3 px, 1e-6)."""
    model, variables = model_and_variables
    full, labeled = _two_source_video(str(tmp_path))
    plan = propagation.plan_propagation(labeled, boxes=full, blend=True)
    assert sorted(np.abs(plan.delta).ravel().tolist()) == [1, 1, 2, 2]
    kw = dict(pipe_cfg=PIPE)
    direct = propagation.propagate_plan(model, variables, labeled, plan, **kw)
    chained = propagation.propagate_plan(model, variables, labeled, plan, path="chained", **kw)
    assert chained.done.all()
    np.testing.assert_array_equal(chained.present, direct.present)
    np.testing.assert_allclose(chained.xy, direct.xy, atol=1e-3)
    np.testing.assert_allclose(chained.scores, direct.scores, atol=1e-6)
    with pytest.raises(ValueError, match="path"):
        propagation.propagate_plan(model, variables, labeled, plan, path="hops", **kw)


def test_chained_path_is_one_warp_per_frame(model_and_variables, video):
    """A head moved off the identity: each row of the chained path equals its chain of
    one-frame direct propagations, built here row by row (A -> A +- 1 -> ... -> B, the
    decoded pose re-rendered at each step), its score the product of the steps' maxima
    (1e-4 px, rtol 1e-5); the direct path gives other poses at |δ| >= 2 and the same at 1."""
    model, variables = model_and_variables
    variables = copy.deepcopy(variables)
    full, labeled = video
    plan = propagation.plan_propagation(labeled, reach=3)
    # The initial HRNet's heatmaps are ~1e-11 (so ψ ~ 0): its final layer scaled to unit std.
    image = next(iter(pl.pair_dataset(labeled, plan, PIPE)))["image"]
    std = float(np.std(model.apply(variables, image, method="heatmaps")))
    backbone = variables["params"]["backbone"]
    final = jax.tree.map(lambda x: x / std, backbone["final_layer"])
    variables["params"]["backbone"] = {**backbone, "final_layer": final}
    leaves, tree = jax.tree.flatten(variables["params"]["head"])
    rng = np.random.default_rng(3)
    moved = [x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype) for x in leaves]
    variables["params"]["head"] = jax.tree.unflatten(tree, moved)
    kw = dict(pipe_cfg=PIPE, decoding="dark")
    chained = propagation.propagate_plan(model, variables, labeled, plan, path="chained", **kw)
    direct = propagation.propagate_plan(model, variables, labeled, plan, **kw)
    far = np.abs(plan.delta[:, 0]) >= 2
    assert far.sum() >= 8 and (~far).sum() >= 4
    for r in range(len(plan)):
        d = int(plan.delta[r, 0])
        kpts = plan.source_keypoints[r, 0].copy()
        frame, score = int(plan.source_frame[r, 0]), np.ones(NUM_JOINTS)
        for _ in range(abs(d)):
            one = propagation.keep_rows(plan, np.arange(len(plan)) == r)
            one.frame = np.array([frame + np.sign(d)], np.int32)
            one.source_frame = np.array([[frame]], np.int32)
            one.source_keypoints = kpts[None, None]
            res = propagation.propagate_plan(model, variables, labeled, one, **kw)
            kpts = np.concatenate([res.xy[0], res.present[0][:, None]], axis=1)
            score = score * res.scores[0]
            frame += int(np.sign(d))
        has = res.present[0]
        np.testing.assert_array_equal(chained.present[r], has)
        np.testing.assert_allclose(chained.xy[r][has], res.xy[0][has], atol=1e-4)
        np.testing.assert_allclose(chained.scores[r], score, rtol=1e-5, atol=1e-7)
    assert np.abs(chained.xy[far] - direct.xy[far]).max() > 0.1
    np.testing.assert_allclose(chained.xy[~far], direct.xy[~far], atol=1e-4)


def test_pair_batches_layout(video):
    full, labeled = video
    plan = propagation.plan_propagation(labeled, boxes=full, reach=3)
    ds = propagation.pair_batches(labeled, plan, PIPE, process_index=0, process_count=1)
    batches = [ds[i] for i in range(len(ds))]
    assert len(batches) == -(-len(plan) // PIPE.batch_size)
    b = batches[0]
    assert b["image"].shape == (8, 2, *CROP, 3) and b["image"].dtype == np.uint8
    assert b["target"].shape == (8, 1, 16, 16, NUM_JOINTS)
    assert b["target_weight"].shape == (8, 1, NUM_JOINTS)
    assert sum(int(x["mask"].sum()) for x in batches) == len(plan)
    assert batches[-1]["mask"].tolist() == [True] * (len(plan) % 8) + [False] * (8 - len(plan) % 8)
    # Row 0: t=0 is B's crop, t=1 A's, both cut with B's box.
    r = 0
    v, f, a = 0, int(plan.frame[r]), int(plan.source_frame[r, 0])
    from posewarper_jax.data import transforms

    c, s = transforms.box_to_center_scale(plan.box[r], 1.0)
    m = transforms.get_affine_transform(c, s, 0.0, CROP)
    for t, fi in ((0, f), (1, a)):
        bgr = cv2.imread(labeled.videos[v].frames[fi].path)
        want = cv2.cvtColor(cv2.warpAffine(bgr, m, CROP[::-1]), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(b["image"][r, t], want)
    # The target peaks (value 1) at the quantised crop position of each labeled joint of A.
    kp = plan.source_keypoints[r, 0]
    for j in np.flatnonzero(kp[:, 2] > 0):
        u, v_ = transforms.affine_points(kp[j, :2], m) / 4
        peak = np.unravel_index(np.argmax(b["target"][r, 0, :, :, j]), (16, 16))
        assert peak == (int(np.floor(v_ + 0.5)), int(np.floor(u + 0.5)))
    assert b["person"][:8].tolist() == list(range(8))


# ----------------------------------------------------------------------------- baselines


def test_all_methods_predict_the_same_people(model_and_variables, video):
    model, variables = model_and_variables
    full, labeled = video
    want = set(propagation.plan_propagation(labeled, boxes=full).keys())
    hrnet = baselines.hrnet_pseudo(model, variables, labeled, pipe_cfg=PIPE, boxes=full)
    flow = baselines.farneback(labeled, boxes=full)
    blend = propagation.propagate_labels(
        model, variables, labeled, pipe_cfg=PIPE, boxes=full, blend=True
    )
    for pred in (hrnet, flow, blend, baselines.copy_nearest(labeled, boxes=full)):
        assert people_keys(pred) == want
    # HRNet predicts every joint, scored by its heatmap maxima.
    person = hrnet.videos[0].frames[1].people[0]
    assert person.keypoints[:, 2].tolist() == [1.0] * NUM_JOINTS
    assert np.all(np.isfinite(person.keypoint_scores))


def test_sample_flow_matches_bilinear_loop():
    rng = np.random.default_rng(1)
    flow = rng.normal(size=(7, 9, 2)).astype(np.float32)
    pts = np.concatenate([rng.uniform(-1, 10, (40, 2)), [[8.0, 6.0], [0.0, 0.0], [3.5, 2.25]]])
    got = baselines.sample_flow(flow, pts)
    for (x, y), g in zip(pts, got):
        x, y = min(max(x, 0.0), 8.0), min(max(y, 0.0), 6.0)
        want = np.zeros(2)
        for yy in range(7):
            for xx in range(9):
                wgt = max(0.0, 1 - abs(x - xx)) * max(0.0, 1 - abs(y - yy))
                want += wgt * flow[yy, xx].astype(np.float64)
        np.testing.assert_allclose(g, want, atol=1e-9)


def test_carry_points_chains_and_drops_points_leaving_the_image():
    flows = [np.broadcast_to(np.array([2.0, -1.0], np.float32), (20, 30, 2))] * 3
    xy = np.array([[10.0, 10.0], [26.0, 5.0], [5.0, 1.0], [-3.0, 4.0]])
    pos, alive = baselines.carry_points(flows, xy)
    np.testing.assert_allclose(pos[:, 0], [[10, 10], [12, 9], [14, 8], [16, 7]])
    np.testing.assert_allclose(pos[:2, 1], [[26, 5], [28, 4]])
    assert alive[:, 0].tolist() == [True] * 4
    assert alive[:, 1].tolist() == [True, True, False, False]  # x = 30 > W - 0.5 at step 2
    assert alive[:, 2].tolist() == [True, True, False, False]  # y = -1 < -0.5 at step 2
    assert alive[:, 3].tolist() == [False] * 4  # starts outside


def test_farneback_follows_a_translation(tmp_path):
    dx, dy = 2, -1  # px per frame
    big = _texture(5, H0 + 40, W0 + 40)
    frames = []
    for t in range(7):
        ox, oy = 20 - (t - 3) * dx, 20 - (t - 3) * dy  # content moves by +(dx, dy) per frame
        path = str(tmp_path / f"{t:06d}.png")
        cv2.imwrite(path, big[oy : oy + H0, ox : ox + W0])
        people = [_person(1, 0, 0.0), _person(2, 0, 0.0)] if t == 3 else []
        frames.append(Frame(path, t, t, t == 3, people))
    labeled = VideoDataset([Video("shift", frames, "shift.json")], "posetrack18", str(tmp_path))
    pred = baselines.farneback(labeled, reach=3)
    src = {p.track_id: p.keypoints for p in frames[3].people}
    for frame in pred.videos[0].frames:
        if frame.index == 3:
            continue
        assert {p.track_id for p in frame.people} == {1, 2}
        for person in frame.people:
            has = src[person.track_id][:, 2] > 0
            want = src[person.track_id][has, :2] + (frame.index - 3) * np.array([dx, dy])
            # Up to three chained flows (backward for frames 0..2): within 1 px.
            np.testing.assert_allclose(person.keypoints[has, :2], want, atol=1.0)
            assert np.all(person.keypoints[~has, 2] == 0)


# ----------------------------------------------------------------------------- scores


def test_static_video_scores_100(model_and_variables, tmp_path):
    model, variables = model_and_variables
    full = build_video(str(tmp_path), static=True)
    # A second video with a single labeled frame keeps its label: it is not held back.
    other = build_video(str(tmp_path), "v1", static=True).videos[0]
    for frame in other.frames[1:]:
        frame.is_labeled, frame.people = False, []
    full.videos.append(other)
    for seed in range(50):
        subset, held_back = sparse.make_sparse_subset(full, every_k=7, seed=seed)
        if [f.index for f in subset.videos[0].frames if f.is_labeled] == [0, 7]:
            break
    assert [v.name for v in held_back.videos] == ["v0"]
    copied = baselines.copy_nearest(subset, boxes=full)
    with pytest.raises(ValueError, match="not in the ground truth"):
        posetrack_map(held_back, copied)
    # Frames 1..10 are within 3 of frames 0 or 7; 11..13 are not and are missed.
    assert {f for _, f, _ in people_keys(copied)} == set(range(1, 11)) - {7}
    result = posetrack_map(held_back, propagation.select_videos(copied, held_back))
    assert 0 < result["Total"] < 100
    # Keep every 4th frame labeled: every frame is then within reach.
    subset = keep_labels(full, (0, 4, 8, 12))
    held_back = keep_labels(full, tuple(i for i in range(N_FRAMES) if i % 4))
    held_back.videos = held_back.videos[:1]
    for pred in (
        baselines.copy_nearest(subset, boxes=full),
        baselines.farneback(subset, boxes=full),
        propagation.propagate_labels(model, variables, subset, pipe_cfg=PIPE, boxes=full),
    ):
        table = posetrack_map(held_back, propagation.select_videos(pred, held_back))
        assert table == {k: 100.0 for k in table}


def test_propagation_rejects_bad_settings(model_and_variables, video):
    model, variables = model_and_variables
    full, labeled = video
    with pytest.raises(ValueError, match="pipe_cfg must be a PipelineConfig"):
        propagation.propagate_labels(model, variables, labeled, pipe_cfg={"batch_size": 8})
    odd = pl.PipelineConfig(image_size=CROP, batch_size=6)
    with pytest.raises(ValueError, match="multiple of 8"):
        propagation.propagate_labels(model, variables, labeled, pipe_cfg=odd, boxes=full)
    with pytest.raises(ValueError, match="no predictions for video"):
        other = VideoDataset([Video("other", [], "other.json")], "posetrack18")
        propagation.select_videos(baselines.copy_nearest(labeled), other)

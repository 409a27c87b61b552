"""No held-back information in any propagation prediction.

The main job's propagation setting (``apps.propagation_eval.held_out`` and ``methods``) is run
on the test video of ``test_propagation`` (three tracks moving on textured frames) with the
held-back frames' people present, deleted, and with scrambled boxes and track ids: every
method's predictions must be bitwise the same. PoseWarper's warping head gets noise on its
weights so that its output depends on the crops it is given.
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import numpy as np
import pytest
from test_propagation import PIPE, build_video, tiny_model

from posewarper_jax.apps import propagation, propagation_eval

EVERY_K, SEED, REACH = 4, 0, 3


@pytest.fixture(scope="module")
def model_and_variables():
    model, variables = tiny_model((3,))
    variables = jax.device_get(variables)
    rng = np.random.default_rng(0)
    variables["params"]["head"] = jax.tree.map(
        lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype),
        variables["params"]["head"],
    )
    return model, variables


def _held_frames(full):
    setting = propagation_eval.held_out(full, every_k=EVERY_K, seed=SEED, reach=REACH)
    kept = {f.index for f in setting.labeled.videos[0].frames if f.is_labeled}
    return setting, [f for f in range(full.videos[0].nframes) if f not in kept]


def _variants(full):
    """The full ground truth, and copies whose held-back frames lost their people or had
    their boxes moved and track ids changed."""
    _, held = _held_frames(full)
    deleted, scrambled = copy.deepcopy(full), copy.deepcopy(full)
    rng = np.random.default_rng(1)
    for f in held:
        deleted.videos[0].frames[f].people = []
        for p in scrambled.videos[0].frames[f].people:
            p.bbox = (p.bbox + rng.uniform(-20, 20, 4)).astype(np.float32)
            p.bbox[2:] = np.abs(p.bbox[2:]) + 1
            p.track_id = p.track_id + 100 if p.track_id >= 0 else 5
        scrambled.videos[0].frames[f].people.reverse()
    return {"present": full, "deleted": deleted, "scrambled": scrambled}


def _poses(pred):
    return [
        (f.index, p.track_id, p.keypoints, p.keypoint_scores, p.bbox)
        for v in pred.videos
        for f in v.frames
        for p in f.people
    ]


def _assert_same(a, b, what):
    pa, pb = _poses(a), _poses(b)
    assert len(pa) == len(pb) > 0, what
    for x, y in zip(pa, pb):
        assert x[:2] == y[:2], what
        for u, w in zip(x[2:], y[2:]):
            assert np.array_equal(u, w), what  # bitwise


def test_held_back_boxes_and_track_ids_change_no_prediction(model_and_variables, tmp_path):
    model, variables = model_and_variables
    full = build_video(str(tmp_path))
    variants = _variants(full)
    settings = {
        k: propagation_eval.held_out(v, every_k=EVERY_K, seed=SEED, reach=REACH)
        for k, v in variants.items()
    }
    # The methods are also given sparse labels whose unlabeled frames still hold the people.
    base = settings["present"]
    filled = copy.deepcopy(base.labeled)
    for frame, gt in zip(filled.videos[0].frames, full.videos[0].frames):
        if not frame.is_labeled:
            frame.people = copy.deepcopy(gt.people)
    settings["unlabeled_people"] = dataclasses.replace(
        base, labeled=filled, plan=propagation.plan_propagation(filled, reach=REACH)
    )
    for s in settings.values():
        for field in dataclasses.fields(s.plan):
            got, want = getattr(s.plan, field.name), getattr(base.plan, field.name)
            assert np.array_equal(got, want) if field.name != "video_names" else got == want
    # A plan that read the target frames' boxes and track ids would see the scrambling.
    for k in ("deleted", "scrambled"):
        leaky = propagation.plan_propagation(base.labeled, boxes=variants[k], reach=REACH)
        ref = propagation.plan_propagation(base.labeled, boxes=full, reach=REACH)
        assert leaky.box.shape != ref.box.shape or not np.array_equal(leaky.box, ref.box)

    preds = {}
    for name, s in settings.items():
        fns = propagation_eval.methods(
            s, model=model, hrnet=variables, posewarper=variables, pipe_cfg=PIPE
        )
        preds[name] = {method: fn() for method, fn in fns.items()}
        # PoseWarper's chained path reads the frames in between as well: still no held-back
        # box or track id.
        chained = propagation_eval.methods(
            s, model=model, hrnet=variables, posewarper=variables, pipe_cfg=PIPE, path="chained"
        )["posewarper"]
        preds[name]["posewarper_chained"] = chained()
    assert list(preds["present"]) == [*propagation_eval.METHODS, "posewarper_chained"]
    for name in settings:
        for method in preds["present"]:
            _assert_same(preds["present"][method], preds[name][method], (name, method))
    # Each method predicts A's people, with A's track ids, in A's box.
    plan = base.plan
    for method, pred in preds["present"].items():
        rows = sorted((f, t) for f, t, *_ in _poses(pred))
        assert rows == sorted(zip(plan.frame.tolist(), plan.track_id.tolist())), method
    # The baselines' scores: Farneback's consistency in (0, 1], copy's 1 / |δ|.
    for _, _, kp, scores, _ in _poses(preds["present"]["farneback"]):
        has = kp[:, 2] > 0
        assert np.all((scores[has] > 0) & (scores[has] <= 1)) and np.all(scores[~has] == 0)
    delta = {int(f): abs(int(d)) for f, d in zip(plan.frame, plan.delta[:, 0])}
    for f, _, kp, scores, _ in _poses(preds["present"]["copy_nearest"]):
        np.testing.assert_allclose(scores, np.where(kp[:, 2] > 0, 1 / delta[f], 0), rtol=1e-6)

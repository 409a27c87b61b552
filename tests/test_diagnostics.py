"""Propagation diagnostics: the ceiling plan, identity kernels, the split by |δ|.

Known answers come from the construction of the test video (``test_propagation``): people
moving 2 px per frame on textured frames, labels kept on frames 0, 4 and 9.
"""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest
from test_propagation import PIPE, full_and_labeled, keep_labels, tiny_model

from posewarper_jax.apps import baselines, diagnostics, propagation
from posewarper_jax.eval import posetrack_map


@pytest.fixture(scope="module")
def model_and_variables():
    return tiny_model((3, 6))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return full_and_labeled(tmp_path_factory)


def test_ceiling_plan_takes_the_targets_own_ground_truth(video):
    full, labeled = video
    for plan in (
        propagation.plan_propagation(labeled, boxes=full, reach=3),
        propagation.plan_propagation(labeled, reach=3),  # the report's: A's people and boxes
    ):
        ceiling = diagnostics.ceiling_plan(plan, full)
        assert len(ceiling) == len(plan) > 0
        for g in range(len(plan)):
            frame = full.videos[0].frames[int(plan.frame[g])]
            (own,) = [q for q in frame.people if q.track_id == plan.track_id[g]]
            np.testing.assert_array_equal(ceiling.source_keypoints[g, 0], own.keypoints)
        # Everything but the joints is the plan's.
        np.testing.assert_array_equal(ceiling.box, plan.box)
        np.testing.assert_array_equal(ceiling.source_frame, plan.source_frame)
    # A track missing from its target frame gets no joints.
    gone = copy.deepcopy(full)
    gone.videos[0].frames[10].people = [q for q in gone.videos[0].frames[10].people
                                        if q.track_id != 2]  # fmt: skip
    ceiling = diagnostics.ceiling_plan(plan, gone)
    rows = (plan.frame == 10) & (plan.track_id == 2)
    assert rows.sum() == 1 and np.all(ceiling.source_keypoints[rows] == 0)
    assert np.all(ceiling.source_keypoints[~rows, 0, :, 2].sum(axis=1) > 0)


def test_ceiling_decodes_own_joints_and_delta_split_partitions(model_and_variables, video):
    """The untrained head on the ceiling plan returns every person's own joints up to the
    heatmap round trip: targets are centred on the nearest whole cell (HRNet's rule) and a
    centred Gaussian decodes to that cell, so the error is at most half a cell (4-px cells of
    a 64-px crop of a 60-px padded box: 3.75 image px, half 1.875). The real plan leaves A's
    joints 2 px per frame of |δ| behind. The split by |δ| partitions the rows and keeps the
    ground truth of exactly their frames."""
    model, variables = model_and_variables
    full, labeled = video
    plan = propagation.plan_propagation(labeled, boxes=full, reach=3)
    held = _held(full, labeled)

    def predict(p):
        return propagation.propagate_labels(model, variables, labeled, pipe_cfg=PIPE, plan=p)

    def errors(pred):
        """{|δ|: max x error (px)} over the predicted people, against B's ground truth."""
        gt = {(f.index, q.track_id): q for f in full.videos[0].frames for q in f.people}
        rows = zip(plan.frame, plan.track_id, plan.delta[:, 0])
        delta = {(int(f), int(t)): abs(int(d)) for f, t, d in rows}
        out = {}
        for frame in pred.videos[0].frames:
            for q in frame.people:
                g = gt[(frame.index, q.track_id)]
                m = (q.keypoints[:, 2] > 0) & (g.keypoints[:, 2] > 0)
                err = np.abs(q.keypoints[m, :2] - g.keypoints[m, :2]).max()
                d = delta[(frame.index, q.track_id)]
                out[d] = max(out.get(d, 0.0), float(err))
        return out

    ceiling = errors(predict(diagnostics.ceiling_plan(plan, full)))
    assert set(ceiling) == {1, 2, 3}
    half_cell = 0.5 * 4 * 60 / 64
    assert max(ceiling.values()) <= half_cell + 1e-4
    motion_free = errors(predict(plan))
    for d, err in motion_free.items():
        assert abs(err - 2.0 * d) <= half_cell + 1e-4  # 2 px per frame, ± the round trip

    seen = np.zeros(len(plan), bool)
    for delta in (1, 2, 3):
        keep, gt = diagnostics.frames_at_delta(plan, held, delta)
        assert keep.any() and not (seen & keep).any()
        seen |= keep
        assert np.all(np.abs(plan.delta[keep, 0]) == delta)
        kept_frames = {int(f) for f in plan.frame[keep]}
        for frame in gt.videos[0].frames:
            if frame.index in kept_frames:
                assert frame.people is held.videos[0].frames[frame.index].people
            else:
                assert frame.people == [] and not frame.is_labeled
        # Scored on its own frames, the ceiling of that distance matches every person it has.
        sub = propagation.keep_rows(diagnostics.ceiling_plan(plan, full), keep)
        table = posetrack_map(gt, propagation.select_videos(predict(sub), gt))
        assert table["Total"] > 50.0
    assert seen.all()


def _held(full, labeled):
    """``full`` without the labeled frames' people (the frames propagation is scored on)."""
    kept = {f.index for f in labeled.videos[0].frames if f.is_labeled}
    others = tuple(i for i in range(len(full.videos[0].frames)) if i not in kept)
    return keep_labels(full, labeled=others)


def test_identity_kernels_resets_kernels_only(model_and_variables):
    _, variables = model_and_variables
    rng = np.random.default_rng(0)
    noisy = jax.tree_util.tree_map(
        lambda x: x + rng.normal(size=x.shape).astype(x.dtype), variables
    )
    out = diagnostics.identity_kernels(noisy)
    head_in, head_out = noisy["params"]["head"], out["params"]["head"]
    names = [n for n in head_out if n.startswith("deform_conv")]
    assert names
    for name in head_out:
        if name in names:
            k = np.asarray(head_out[name]["kernel"])
            j = k.shape[2]
            expected = np.zeros_like(k)
            expected[1, 1] = np.eye(j)
            np.testing.assert_array_equal(k, expected)
        else:
            jax.tree_util.tree_map(np.testing.assert_array_equal, head_in[name], head_out[name])
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, noisy["params"]["backbone"], out["params"]["backbone"]
    )
    # At initialisation the kernels already are the identity: nothing changes.
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, diagnostics.identity_kernels(variables), variables
    )
    with pytest.raises(ValueError, match="deform_conv"):
        diagnostics.identity_kernels({"params": {"head": {}}})


def test_motion_recovered_known_answers(video):
    """Copying A's labels recovers none of the motion (slope 0, error = the motion); a
    prediction halfway from A to B's ground truth recovers half (slope 0.5); B's own ground
    truth all of it (slope 1, error 0). The test people move 2 px per frame in x."""
    full, labeled = video
    plan = propagation.plan_propagation(labeled, reach=3)  # the report's plan: A's people
    copied = baselines.copy_nearest(labeled, plan=plan)
    half = copy.deepcopy(copied)
    truth = {(f.index, q.track_id): q for f in full.videos[0].frames for q in f.people}
    for frame in half.videos[0].frames:
        for q in frame.people:
            g = truth[(frame.index, q.track_id)]
            q.keypoints[:, :2] = 0.5 * (q.keypoints[:, :2] + g.keypoints[:, :2])
    own = copy.deepcopy(half)
    for frame in own.videos[0].frames:
        for q in frame.people:
            q.keypoints[:, :2] = truth[(frame.index, q.track_id)].keypoints[:, :2]
    r_copy = diagnostics.motion_recovered(copied, plan, full)
    r_half = diagnostics.motion_recovered(half, plan, full)
    r_own = diagnostics.motion_recovered(own, plan, full)
    assert r_copy["joints"] == r_half["joints"] == r_own["joints"] > 0
    assert r_copy["slope"] == pytest.approx(0.0, abs=1e-9)
    assert r_half["slope"] == pytest.approx(0.5, abs=1e-6)
    assert r_own["slope"] == pytest.approx(1.0, abs=1e-9) and r_own["error"] == pytest.approx(0)
    # Head boxes are 30 x 30: head size 0.6 * 30 * sqrt(2); A is |δ| frames of 2 px behind.
    sizes = 2.0 * np.abs(plan.delta[:, 0]) / (0.6 * 30 * np.sqrt(2))
    assert np.min(sizes) - 1e-6 <= r_copy["error"] <= np.max(sizes) + 1e-6
    nothing = diagnostics.motion_recovered(
        copied, propagation.keep_rows(plan, plan.frame < 0), full
    )
    assert nothing["joints"] == 0 and np.isnan(nothing["slope"])

"""PoseWarper modes (shapes, identities at initialisation, direction of psi per mode),
batch-major folding, the frozen backbone (BatchNorm switch, stop-gradient) and the optimizer
masks of ``freeze.py``. Tiny HRNet, 64x32 crops (16x8 heatmaps), J = 5, a 2-block head."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from posewarper_jax.models.freeze import (
    freeze_optimizer,
    trainable_labels,
    trainable_mask,
)
from posewarper_jax.models.hrnet import HRNet, get_hrnet_config
from posewarper_jax.models.posewarper import PoseWarper, default_aggregation_weights
from posewarper_jax.models.warping import WarpingHead, WarpingHeadConfig

J = 5
HR = get_hrnet_config("tiny", num_joints=J)
HEAD = WarpingHeadConfig(num_joints=J, channels=8, num_blocks=2, dilations=(1, 2))
B, H, W = 2, 64, 32
h, w = H // 4, W // 4
MODEL = PoseWarper(HR, HEAD)


def _frames(seed, t):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, 256, size=(B, t, H, W, 3), dtype=np.uint8))


def _randomise(tree, seed, offsets_std=0.05):
    """Random params: He-scaled kernels (offsets convs: small, ~1 px offsets), BN scales near
    1 and biases near 0. Running statistics stay at (0, 1): eval-mode activations keep a sane
    scale."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, v in flatten_dict(tree).items():
        if path[-1] == "kernel":
            is_offsets = any(p.startswith("offsets") for p in path)
            std = offsets_std if is_offsets else math.sqrt(2.0 / math.prod(v.shape[:-1]))
            a = std * rng.normal(size=v.shape)
        else:  # BN scale ~ 1, BN and conv biases ~ 0
            a = float(path[-1] == "scale") + 0.1 * rng.normal(size=v.shape)
        out[path] = jnp.asarray(a, jnp.float32)
    return unflatten_dict(out)


def _backbone_variables(seed):
    """Backbone variables with the structure ``PoseWarper.init`` gives them (checked in
    ``test_variables_structure``) without compiling the backbone's initialisers: random
    He-scaled kernels (at its own init, std 0.001 kernels, the heatmaps would be ~0 and alike
    for every frame), BN running statistics at their initial (0, 1)."""
    shapes = jax.eval_shape(MODEL.init, jax.random.key(0, impl="rbg"), _frames(0, 2))
    params = _randomise(shapes["params"]["backbone"], seed)
    stats = {
        path: jnp.zeros(x.shape) if path[-1] == "mean" else jnp.ones(x.shape)
        for path, x in flatten_dict(shapes["batch_stats"]["backbone"]).items()
    }
    return params, unflatten_dict(stats)


@pytest.fixture(scope="module")
def variables():
    """(head at initialisation, head randomised); the same random backbone in both."""
    bb_params, bb_stats = _backbone_variables(1)
    f = jnp.zeros((B, h, w, J))
    head = jax.jit(WarpingHead(HEAD).init)(jax.random.key(2, impl="rbg"), f, f)
    init = {
        "params": {"backbone": bb_params, "head": head["params"]},
        "batch_stats": {"backbone": bb_stats, "head": head["batch_stats"]},
    }
    rand = {
        "params": {"backbone": bb_params, "head": _randomise(head["params"], 3)},
        "batch_stats": init["batch_stats"],
    }
    return init, rand


def test_variables_structure(variables):
    """``PoseWarper.init`` creates exactly ``backbone`` + ``head`` with these shapes, and
    ``method="heatmaps"`` only the backbone."""
    key = jax.random.key(0, impl="rbg")
    shapes = jax.eval_shape(MODEL.init, key, _frames(0, 2))
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, variables[0])
    bb_only = jax.eval_shape(partial(MODEL.init, method="heatmaps"), key, _frames(0, 2))
    assert set(bb_only["params"]) == {"backbone"}


def _head_vars(v):
    return {"params": v["params"]["head"], "batch_stats": v["batch_stats"]["head"]}


@partial(jax.jit, static_argnames=("center",))
def _all_modes(v, frames2, frames3, maps_a, weights, valid, center=1):
    """Every mode, plus the same results from the backbone and the head called directly."""
    m = MODEL
    out = {
        "hm2": m.apply(v, frames2, method="heatmaps"),
        "hm3": m.apply(v, frames3, method="heatmaps"),
        "pair": m.apply(v, frames2, method="pair"),
        "propagate": m.apply(v, frames2, maps_a, method="propagate"),
        "aggregate": m.apply(v, frames3, weights, valid, center, method="aggregate"),
        "aggregate_default": m.apply(v, frames3, method="aggregate"),
        "cycle": m.apply(v, frames2, method="cycle"),
    }
    head = partial(WarpingHead(HEAD).apply, _head_vars(v))
    f_a, f_b = out["hm2"][:, 0], out["hm2"][:, 1]
    f3 = out["hm3"]
    out["want_pair"] = head(f_a - f_b, f_b)
    out["wrong_pair"] = head(f_b - f_a, f_b)
    out["want_propagate"] = head(f_b - f_a, maps_a)
    out["wrong_propagate"] = head(f_a - f_b, maps_a)
    out["want_cycle"] = head(f_a - f_b, head(f_b - f_a, f_a))
    out["wrong_cycle"] = head(f_b - f_a, head(f_a - f_b, f_a))
    out["warped3"] = jnp.stack([head(f3[:, center] - f3[:, t], f3[:, t]) for t in range(3)], 1)
    out["wrong3"] = jnp.stack([head(f3[:, t] - f3[:, center], f3[:, t]) for t in range(3)], 1)
    bb = {"params": v["params"]["backbone"], **_bb_stats(v)}
    out["folded"] = HRNet(HR).apply(bb, frames3.reshape(B * 3, H, W, 3))
    return out


def _bb_stats(v):
    return {"batch_stats": v["batch_stats"]["backbone"]}


def _weighted(warped, weights, valid):
    """NumPy: sum_t w'_t warped[:, t], w' = w * valid renormalised per sample."""
    wv = np.broadcast_to(np.asarray(weights, np.float64), valid.shape) * valid
    wv = wv / wv.sum(axis=1, keepdims=True)
    return np.einsum("bt,bthwj->bhwj", wv, np.asarray(warped, np.float64))


def _run_modes(v):
    frames2, frames3 = _frames(10, 2), _frames(11, 3)
    rng = np.random.default_rng(12)
    maps_a = jnp.asarray(rng.uniform(size=(B, h, w, J)), jnp.float32)
    weights = np.array([0.2, 0.5, 0.3], np.float32)
    valid = np.array([[1, 1, 1], [0, 1, 1]], np.float32)  # sample 1: window clipped at t-1
    out = jax.device_get(_all_modes(v, frames2, frames3, maps_a, weights, valid))
    return out, np.asarray(maps_a), weights, valid


def test_shapes_and_identities_at_initialisation(variables):
    """Head at init: pair -> f_B, propagate -> maps_A, cycle -> f_A (bitwise: 2 dilations),
    aggregate -> the weighted sum of the frames' heatmaps (1e-6 abs)."""
    out, maps_a, weights, valid = _run_modes(variables[0])
    assert out["hm2"].shape == (B, 2, h, w, J) and out["hm3"].shape == (B, 3, h, w, J)
    for name in ("pair", "propagate", "aggregate", "aggregate_default", "cycle"):
        assert out[name].shape == (B, h, w, J) and out[name].dtype == np.float32, name
    f2, f3 = out["hm2"], out["hm3"]
    assert np.abs(f2[:, 0] - f2[:, 1]).max() > 0.1  # frames differ: the checks below can fail
    np.testing.assert_array_equal(out["pair"], f2[:, 1])
    np.testing.assert_array_equal(out["propagate"], maps_a)
    np.testing.assert_array_equal(out["cycle"], f2[:, 0])
    scale = np.abs(f3).max()
    np.testing.assert_allclose(out["aggregate"], _weighted(f3, weights, valid), atol=1e-6 * scale)
    default = np.broadcast_to(np.array([0.3, 0.4, 0.3]), (B, 3))
    np.testing.assert_allclose(
        out["aggregate_default"], _weighted(f3, default, np.ones((B, 3))), atol=1e-6 * scale
    )


def test_direction_of_psi_per_mode(variables):
    """Random head: each mode equals the head called with the documented psi (1e-5 abs) and
    differs from the head called with the opposite psi."""
    out, _, weights, valid = _run_modes(variables[1])
    for mode in ("pair", "propagate", "cycle"):
        got, want, wrong = out[mode], out[f"want_{mode}"], out[f"wrong_{mode}"]
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=mode)
        assert np.abs(want - wrong).max() > 1e-2, mode
    np.testing.assert_allclose(
        out["aggregate"], _weighted(out["warped3"], weights, valid), atol=1e-5
    )
    assert np.abs(_weighted(out["wrong3"], weights, valid) - out["aggregate"]).max() > 1e-2
    # The clipped sample ignores frame 0 entirely: renormalised weights 0.5/0.8, 0.3/0.8.
    np.testing.assert_allclose(
        out["aggregate"][1],
        (0.5 * out["warped3"][1, 1] + 0.3 * out["warped3"][1, 2]) / 0.8,
        atol=1e-5,
    )


def test_frames_fold_batch_major(variables):
    """heatmaps(frames) is the backbone on ``frames.reshape(B * T, ...)`` (sample b, frame t
    at row b * T + t) reshaped to ``[B, T, ...]`` (1e-5 of the scale)."""
    out, *_ = _run_modes(variables[0])
    want = out["folded"].reshape(B, 3, h, w, J)
    np.testing.assert_allclose(out["hm3"], want, atol=1e-5 * np.abs(want).max())
    time_major = out["folded"].reshape(3, B, h, w, J).transpose(1, 0, 2, 3, 4)
    assert np.abs(out["hm3"] - time_major).max() > 1e-2 * np.abs(want).max()


# ----------------------------------------------------------------------------- freezing


def _stage2_step(model, v, frames, target):
    """Loss gradient of a train-mode pair step, with the outputs and new batch_stats."""

    def loss(params):
        (warped, f_a, f_b), upd = model.apply(
            {"params": params, "batch_stats": v["batch_stats"]},
            frames,
            True,
            True,
            method="pair",
            mutable=["batch_stats"],
        )
        return jnp.mean((warped - target) ** 2), (f_a, f_b, upd["batch_stats"])

    return jax.grad(loss, has_aux=True)(v["params"])


def _conv_count(jaxpr) -> int:
    """Convolutions and matrix products in a jaxpr, sub-jaxprs (pjit, custom_vjp, ...)
    included. Matrix products count too: on CPUs a conv layer's backward pass is two of them
    (``ops.conv``), on other backends two convolutions."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name in ("conv_general_dilated", "dot_general")
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _conv_count(sub)
    return n


def test_frozen_backbone_stage2_step(variables):
    """Default ``backbone_bn="frozen"``, train-mode pair step: the backbone's batch_stats come
    back bitwise unchanged and its heatmaps are the eval-mode ones, the head's stats move;
    backbone gradients are exactly 0, the head's are not. And no backbone gradient is
    computed at all: the gradient's jaxpr holds the backbone's forward convolutions plus
    those of the head's own gradient, and none of the backward ones that an unfrozen
    backbone adds."""
    v = variables[1]
    out, *_ = _run_modes(variables[1])
    frames = _frames(10, 2)  # the frames of _run_modes: out["hm2"] are their eval heatmaps
    target = jnp.asarray(np.random.default_rng(23).uniform(size=(B, h, w, J)), jnp.float32)
    grads, (f_a, f_b, stats) = jax.jit(partial(_stage2_step, MODEL))(v, frames, target)

    jax.tree.map(np.testing.assert_array_equal, stats["backbone"], v["batch_stats"]["backbone"])
    moved = jax.tree.map(lambda a, b: np.any(a != b), stats["head"], v["batch_stats"]["head"])
    assert all(jax.tree.leaves(moved))
    np.testing.assert_array_equal(np.asarray(f_a), out["hm2"][:, 0])
    np.testing.assert_array_equal(np.asarray(f_b), out["hm2"][:, 1])

    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads["backbone"]))
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["head"])) > 0

    bb_fwd = _conv_count(jax.make_jaxpr(partial(MODEL.apply, method="heatmaps"))(v, frames).jaxpr)

    def head_loss(hp, f_a, f_b):
        head_vars = {"params": hp, "batch_stats": v["batch_stats"]["head"]}
        warped, _ = WarpingHead(HEAD).apply(
            head_vars, f_a - f_b, f_b, True, mutable=["batch_stats"]
        )
        return jnp.mean((warped - target) ** 2)

    f = out["hm2"][:, 0]
    head_grad = _conv_count(jax.make_jaxpr(jax.grad(head_loss))(v["params"]["head"], f, f).jaxpr)
    n = {}
    for freeze in (True, False):
        model = PoseWarper(HR, HEAD, freeze_backbone=freeze)
        n[freeze] = _conv_count(
            jax.make_jaxpr(partial(_stage2_step, model))(v, frames, target).jaxpr
        )
    assert n[True] == bb_fwd + head_grad
    # Unfrozen, each backbone conv adds at least one backward op (input or kernel grad).
    assert n[False] - n[True] >= bb_fwd


def test_backbone_bn_batch_uses_batch_statistics(variables):
    """ "batch": the backbone normalises with batch statistics (output = HRNet in train mode on
    the folded frames, 1e-5 of the scale; not the eval output) and its running stats move."""
    v = variables[1]
    out, *_ = _run_modes(v)
    frames = _frames(10, 2)
    model = PoseWarper(HR, HEAD, backbone_bn="batch")

    @jax.jit
    def run(v):
        (_, f_a, f_b), upd = model.apply(
            v, frames, True, True, method="pair", mutable=["batch_stats"]
        )
        bb = {"params": v["params"]["backbone"], **_bb_stats(v)}
        want, bb_upd = HRNet(HR).apply(
            bb, frames.reshape(B * 2, H, W, 3), True, mutable=["batch_stats"]
        )
        return f_a, f_b, upd["batch_stats"], want, bb_upd["batch_stats"]

    f_a, f_b, stats, want, want_stats = jax.device_get(run(v))
    want = want.reshape(B, 2, h, w, J)
    scale = np.abs(want).max()
    np.testing.assert_allclose(f_a, want[:, 0], atol=1e-5 * scale)
    np.testing.assert_allclose(f_b, want[:, 1], atol=1e-5 * scale)
    assert np.abs(out["hm2"][:, 0] - want[:, 0]).max() > 1e-2 * scale
    jax.tree.map(
        partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), stats["backbone"], want_stats
    )
    moved = jax.tree.map(
        lambda a, b: np.any(a != b), stats["backbone"], v["batch_stats"]["backbone"]
    )
    assert all(jax.tree.leaves(moved))


def test_trainable_mask_and_labels(variables):
    params = variables[0]["params"]
    m1, m2 = trainable_mask(params, 1), trainable_mask(params, 2)
    assert jax.tree.structure(m1) == jax.tree.structure(params)
    assert all(jax.tree.leaves(m1["backbone"])) and not any(jax.tree.leaves(m1["head"]))
    assert not any(jax.tree.leaves(m2["backbone"])) and all(jax.tree.leaves(m2["head"]))
    labels = jax.tree.leaves(trainable_labels(params, 2))
    assert set(labels) == {"trainable", "frozen"}
    # Stage 1 without a head (the model initialised with method="heatmaps").
    only_bb = {"backbone": params["backbone"]}
    assert all(jax.tree.leaves(trainable_mask(only_bb, 1)))
    with pytest.raises(ValueError, match="stage"):
        trainable_mask(params, 3)
    with pytest.raises(ValueError, match="no 'head'"):
        trainable_mask(only_bb, 2)
    with pytest.raises(ValueError, match="top-level keys"):
        trainable_mask({"params": params}, 1)


def test_freeze_optimizer_adam_step(variables):
    """Adam through ``freeze_optimizer`` with all-ones gradients, stages 1 and 2: the frozen
    part stays bitwise unchanged, every trained leaf moves, frozen leaves get no Adam
    moments. (The same step through ``optax.masked`` alone moves frozen leaves too: it passes
    their raw gradients through as updates.)"""
    params = variables[0]["params"]
    grads = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    def step(params, grads):
        new = {}
        for stage in (1, 2):
            tx = freeze_optimizer(optax.adam(1e-3), stage)
            updates, _ = tx.update(grads, tx.init(params), params)
            new[stage] = optax.apply_updates(params, updates)
        return new

    new = step(params, grads)
    for stage, frozen, trained in ((1, "head", "backbone"), (2, "backbone", "head")):
        jax.tree.map(np.testing.assert_array_equal, new[stage][frozen], params[frozen])
        moved = jax.tree.map(lambda a, b: np.any(a != b), new[stage][trained], params[trained])
        assert all(jax.tree.leaves(moved)), stage
        state = freeze_optimizer(optax.adam(1e-3), stage).init(params)
        n_trained = sum(x.size for x in jax.tree.leaves(params[trained]))
        assert sum(x.size for x in jax.tree.leaves(state)) == 2 * n_trained + 1  # mu, nu, count

    small = {"backbone": {"k": jnp.zeros(3)}, "head": {"k": jnp.zeros(2)}}
    masked = optax.masked(optax.adam(1e-3), trainable_mask(small, 2))
    updates, _ = masked.update(jax.tree.map(jnp.ones_like, small), masked.init(small), small)
    # The frozen leaf moved by its raw gradient (+1), not by Adam's -lr * sign.
    np.testing.assert_array_equal(optax.apply_updates(small, updates)["backbone"]["k"], 1.0)


# ----------------------------------------------------------------------------- errors


def test_bad_arguments():
    f2 = jax.ShapeDtypeStruct((B, 2, H, W, 3), jnp.uint8)
    f3 = jax.ShapeDtypeStruct((B, 3, H, W, 3), jnp.uint8)
    key = jax.random.key(0, impl="rbg")
    v = jax.eval_shape(MODEL.init, key, f2)

    def shape_of(model, *args, **kw):
        return jax.eval_shape(partial(model.apply, **kw), v, *args)

    with pytest.raises(ValueError, match="backbone_bn"):
        shape_of(PoseWarper(HR, HEAD, backbone_bn="eval"), f2)
    with pytest.raises(ValueError, match="num_joints"):
        jax.eval_shape(PoseWarper(HR, WarpingHeadConfig(num_joints=J + 1)).init, key, f2)
    with pytest.raises(ValueError, match="T=2"):
        shape_of(MODEL, f3, method="pair")
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        shape_of(MODEL, jax.ShapeDtypeStruct((B, H, W, 3), jnp.uint8), method="heatmaps")
    with pytest.raises(ValueError, match="maps_a"):
        shape_of(MODEL, f2, jnp.zeros((B, h, w, J + 1)), method="propagate")
    with pytest.raises(ValueError, match="center"):
        shape_of(MODEL, f3, None, None, 3, method="aggregate")
    with pytest.raises(ValueError, match="weights"):
        shape_of(MODEL, f3, (0.5, 0.5), method="aggregate")
    with pytest.raises(ValueError, match="valid"):
        shape_of(MODEL, f3, None, jnp.ones((B, 2)), method="aggregate")
    assert default_aggregation_weights(5) == (0.1, 0.25, 0.3, 0.25, 0.1)
    assert default_aggregation_weights(4) == (0.25,) * 4

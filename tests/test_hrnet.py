"""HRNet: structure, parameter counts, torch-key mapping, and numerics against a torch port.

The reference is a compact PyTorch re-implementation of the official ``PoseHighResolutionNet``
(``lib/models/pose_hrnet.py``) written from torch primitives, with the stem width, layer1
depth, module and block counts made configurable: ``TorchHRNet`` in
``benchmarks/torch_posewarper.py``. Its ``state_dict`` keys come from torch itself, so they
check the key mapping (``posewarper_jax.convert.hrnet_keys``) too. Without torch (it is
optional) the tests that need the reference are skipped and the others run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posewarper_jax.convert.hrnet_keys import (
    count_torch_parameters,
    expected_torch_state_dict_shapes,
    flax_path_to_torch_key,
    torch_key_to_flax_path,
    variables_from_torch_state_dict,
)
from posewarper_jax.models.hrnet import (
    HRNET_VARIANTS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    HRNet,
    HRNetConfig,
    get_hrnet_config,
)

TINY = get_hrnet_config("tiny")

# ----------------------------------------------------------------------------- helpers


def _torch():
    """PyTorch, in which the reference is written: without it (it is optional, see the
    README) the calling test is skipped; the tests without the reference run."""
    return pytest.importorskip("torch")


def _torch_hrnet(config: HRNetConfig) -> Any:
    """The torch port of HRNet for ``config`` (``TorchHRNet``); needs torch."""
    _torch()
    from benchmarks.torch_posewarper import TorchHRNet

    return TorchHRNet(config)


def _randomize(model: Any, seed: int) -> None:
    """Non-trivial weights and running statistics (convs scaled by 1/sqrt(fan_in))."""
    torch = _torch()
    tnn = torch.nn
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, tnn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(fan_in))
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, tnn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(c, generator=g))
                mod.bias.copy_(0.2 * torch.randn(c, generator=g))
                mod.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))


def _numpy_state_dict(model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _flat_shapes(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat_shapes(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = tuple(v.shape)
    return out


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    "name, size, published",
    [("w32", (256, 192), 28.5e6), ("w48", (384, 288), 63.6e6)],
)
def test_parameter_count_matches_published(name, size, published):
    torch = _torch()
    cfg = get_hrnet_config(name)
    x = jax.ShapeDtypeStruct((1, *size, 3), jnp.uint8)
    shapes = jax.eval_shape(HRNet(cfg).init, jax.random.key(0), x)
    n_flax = sum(math.prod(v.shape) for v in jax.tree.leaves(shapes["params"]))
    n_walk = count_torch_parameters(cfg)
    with torch.device("meta"):
        n_torch = sum(p.numel() for p in _torch_hrnet(cfg).parameters())
    assert n_flax == n_walk == n_torch
    assert abs(n_flax - published) / published < 0.005, n_flax


def _conv_multiply_adds(jaxpr) -> int:
    """Sum over conv_general_dilated equations (nested jaxprs included) of out_size * kh*kw*cin."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            kh, kw, cin, _ = eqn.invars[1].aval.shape  # HWIO
            total += math.prod(eqn.outvars[0].aval.shape) * kh * kw * cin
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                if hasattr(sub, "eqns"):
                    total += _conv_multiply_adds(sub)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    total += _conv_multiply_adds(sub.jaxpr)
    return total


@pytest.mark.parametrize(
    "name, size, published", [("w32", (256, 192), 7.1), ("w48", (384, 288), 32.9)]
)
def test_conv_multiply_adds_match_published(name, size, published):
    # The official "GFLOPs" are conv multiply-adds in units of 2^30 (get_model_summary).
    net = HRNet(get_hrnet_config(name))
    x = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
    shapes = jax.eval_shape(net.init, jax.random.key(0), x)
    macs = _conv_multiply_adds(jax.make_jaxpr(net.apply)(shapes, x).jaxpr)
    assert round(macs / 2**30, 1) == published, macs


@pytest.mark.parametrize("name", ["tiny", "small", "w32"])
def test_expected_state_dict_matches_torch_port(name):
    torch = _torch()
    cfg = get_hrnet_config(name)
    with torch.device("meta"):
        sd = _torch_hrnet(cfg).state_dict()
    got = {k: tuple(v.shape) for k, v in sd.items()}
    assert got == expected_torch_state_dict_shapes(cfg)
    assert list(got) == list(expected_torch_state_dict_shapes(cfg))  # same order too


@pytest.mark.parametrize("name", ["tiny", "w32"])
def test_flax_variables_map_one_to_one_onto_torch_keys(name):
    cfg = get_hrnet_config(name)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(HRNet(cfg).init, jax.random.key(0), x)
    flax_leaves = {
        (col, path): shape
        for col in ("params", "batch_stats")
        for path, shape in _flat_shapes(shapes[col]).items()
    }
    assert set(shapes) == {"params", "batch_stats"}
    mapped = {}
    for key, shape in expected_torch_state_dict_shapes(cfg).items():
        target = torch_key_to_flax_path(key)
        if key.endswith(".num_batches_tracked"):
            assert target is None
            continue
        assert flax_path_to_torch_key(*target) == key
        # Conv weights OIHW -> HWIO; everything else keeps its shape.
        mapped[target] = (*shape[2:], shape[1], shape[0]) if len(shape) == 4 else shape
    assert len(mapped) == len(flax_leaves)
    assert mapped == flax_leaves


def test_torch_key_mapping_examples_and_errors():
    assert torch_key_to_flax_path("layer1.0.conv1.weight") == (
        "params",
        ("layer1", "0", "conv1", "kernel"),
    )
    assert torch_key_to_flax_path("stage2.0.branches.1.3.bn2.weight") == (
        "params",
        ("stage2", "0", "branches", "1", "3", "bn2", "scale"),
    )
    assert torch_key_to_flax_path("stage2.0.fuse_layers.0.1.1.running_var") == (
        "batch_stats",
        ("stage2", "0", "fuse_layers", "0", "1", "1", "var"),
    )
    assert torch_key_to_flax_path("transition1.1.0.0.weight")[1][-1] == "kernel"
    assert torch_key_to_flax_path("final_layer.bias") == ("params", ("final_layer", "bias"))
    assert torch_key_to_flax_path("bn1.num_batches_tracked") is None
    for bad in ("module.fc.weight", "conv1.running_mean", "weight", "bn1.foo"):
        with pytest.raises(ValueError, match="HRNet state_dict key"):
            torch_key_to_flax_path(bad)


def test_variables_from_torch_state_dict_rejects_mismatch():
    sd = {k: np.zeros(s, np.float32) for k, s in expected_torch_state_dict_shapes(TINY).items()}
    variables_from_torch_state_dict(sd, TINY)  # accepted as is
    bad = dict(sd)
    bad["final_layer.weight"] = np.zeros((5, 8, 1, 1), np.float32)
    with pytest.raises(ValueError, match="final_layer.weight"):
        variables_from_torch_state_dict(bad, TINY)
    with pytest.raises(ValueError, match="missing"):
        variables_from_torch_state_dict({f"module.{k}": v for k, v in sd.items()}, TINY)


@pytest.mark.parametrize(
    "size, out", [((64, 64), (16, 16)), ((96, 64), (24, 16)), ((32, 128), (8, 32))]
)
def test_output_shapes(size, out):
    x = jax.ShapeDtypeStruct((3, *size, 3), jnp.uint8)
    y = jax.eval_shape(lambda v, x: HRNet(TINY).apply(v, x), _tiny_shapes(), x)
    assert y.shape == (3, *out, 17) and y.dtype == jnp.float32


def _tiny_shapes():
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    return jax.eval_shape(HRNet(TINY).init, jax.random.key(0), x)


@pytest.mark.parametrize(
    "shape, dtype, match",
    [
        ((1, 64, 48, 3), jnp.uint8, "64x48"),  # 48/4 = 12 is not a multiple of 8
        ((1, 64, 64, 1), jnp.uint8, "RGB"),
        ((64, 64, 3), jnp.uint8, "RGB"),
        ((1, 64, 64, 3), jnp.int32, "dtype"),
    ],
)
def test_bad_input_raises(shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(HRNet(TINY).apply, _tiny_shapes(), jax.ShapeDtypeStruct(shape, dtype))


def test_variants_and_config_errors():
    assert {"w32", "w48", "tiny", "small"} <= set(HRNET_VARIANTS)
    assert get_hrnet_config("w48").width == 48
    assert get_hrnet_config("w32", num_joints=15).num_joints == 15
    with pytest.raises(ValueError, match="'w64'.*known variants"):
        get_hrnet_config("w64")
    with pytest.raises(ValueError, match="widht"):
        get_hrnet_config("w32", widht=16)
    with pytest.raises(ValueError, match="num_modules"):
        HRNetConfig(num_modules=(1, 4))
    with pytest.raises(ValueError, match="final_conv_kernel"):
        HRNetConfig(final_conv_kernel=5)
    with pytest.raises(ValueError, match="width"):
        HRNetConfig(width=0)


def test_init_follows_official_scheme():
    # unsafe_rbg compiles ~3x faster than threefry on CPU; the scheme does not depend on it.
    key = jax.random.key(0, impl="unsafe_rbg")
    v = jax.jit(HRNet(TINY).init)(key, jnp.zeros((1, 64, 64, 3), jnp.uint8))
    params = _flat_shapes(v["params"])
    leaves = {
        tuple(k.key for k in path): np.asarray(x)
        for path, x in jax.tree_util.tree_flatten_with_path(v["params"])[0]
    }
    assert set(leaves) == set(params)
    kernels = np.concatenate([x.ravel() for p, x in leaves.items() if p[-1] == "kernel"])
    assert abs(kernels.std() - 1e-3) < 2e-5 and abs(kernels.mean()) < 2e-5
    for p, x in leaves.items():
        if p[-1] == "scale":
            np.testing.assert_array_equal(x, 1.0)
        elif p[-1] == "bias":  # BN biases and the final conv bias
            np.testing.assert_array_equal(x, 0.0)
    for path, x in jax.tree_util.tree_flatten_with_path(v["batch_stats"])[0]:
        np.testing.assert_array_equal(x, 0.0 if path[-1].key == "mean" else 1.0)


# ----------------------------------------------------------------------------- numerics


@pytest.fixture(scope="module")
def torch_tiny():
    torch = _torch()
    model = _torch_hrnet(TINY)
    _randomize(model, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 96, 64, generator=g)  # non-square: catches H/W swaps
    return model, x


def test_eval_matches_torch(torch_tiny):
    torch = _torch()
    model, x = torch_tiny
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy().transpose(0, 2, 3, 1)
    variables = variables_from_torch_state_dict(_numpy_state_dict(model), TINY)
    y = HRNet(TINY).apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), train=False)
    assert y.shape == ref.shape == (2, 24, 16, 17)
    # float32 throughout; conv algorithms differ by ~1e-6 relative (measured 5e-7).
    assert _rel_err(y, ref) < 2e-5


def test_train_mode_matches_torch_and_updates_stats(torch_tiny):
    torch = _torch()
    model, x = torch_tiny
    before = _numpy_state_dict(model)
    variables = variables_from_torch_state_dict(before, TINY)
    model.train()
    with torch.no_grad():
        ref = model(x).numpy().transpose(0, 2, 3, 1)
    after = _numpy_state_dict(model)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in before.items()})

    y, mutated = HRNet(TINY).apply(
        variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), train=True, mutable=["batch_stats"]
    )
    assert _rel_err(y, ref) < 2e-5
    # Running stats: torch momentum 0.1 with the unbiased variance == flax momentum 0.9 here.
    stats = _flat_shapes(mutated["batch_stats"])
    assert len(stats) > 0
    for key, value in after.items():
        target = torch_key_to_flax_path(key)
        if target is None or target[0] != "batch_stats":
            continue
        got = mutated["batch_stats"]
        for part in target[1]:
            got = got[part]
        assert not np.allclose(value, before[key]), key  # the update did something
        np.testing.assert_allclose(got, value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_batch_stats_momentum_and_eval_is_pure():
    """bn1's update checked against a direct computation: conv1 via lax.conv_general_dilated."""
    model = _torch_hrnet(TINY)
    _randomize(model, seed=3)
    variables = variables_from_torch_state_dict(_numpy_state_dict(model), TINY)
    x = jax.random.normal(jax.random.key(5), (2, 64, 64, 3))
    net = HRNet(TINY)

    _, mutated = net.apply(variables, x, train=True, mutable=["batch_stats"])
    h = jax.lax.conv_general_dilated(
        x,
        variables["params"]["conv1"]["kernel"],
        window_strides=(2, 2),
        padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )
    h = np.asarray(h, np.float64).reshape(-1, h.shape[-1])
    old = variables["batch_stats"]["bn1"]
    new = mutated["batch_stats"]["bn1"]
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * h.mean(0), rtol=1e-4)
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * h.var(0, ddof=1), rtol=1e-4)

    _, unchanged = net.apply(variables, x, train=False, mutable=["batch_stats"])
    for a, b in zip(jax.tree.leaves(unchanged), jax.tree.leaves(variables["batch_stats"])):
        np.testing.assert_array_equal(a, b)


def test_uint8_input_is_normalized_inside():
    model = _torch_hrnet(TINY)
    _randomize(model, seed=4)
    variables = variables_from_torch_state_dict(_numpy_state_dict(model), TINY)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    manual = (pixels / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    net = HRNet(TINY)
    y_uint8 = net.apply(variables, jnp.asarray(pixels))
    y_float = net.apply(variables, jnp.asarray(manual, jnp.float32))
    assert _rel_err(y_uint8, y_float) < 1e-5


def test_bfloat16_compute_close_to_float32():
    model = _torch_hrnet(TINY)
    _randomize(model, seed=6)
    variables = variables_from_torch_state_dict(_numpy_state_dict(model), TINY)
    x = jax.random.normal(jax.random.key(7), (2, 64, 64, 3))
    y32 = HRNet(TINY).apply(variables, x)
    y16 = HRNet(dataclasses.replace(TINY, dtype=jnp.bfloat16)).apply(variables, x)
    assert y16.dtype == jnp.bfloat16
    # bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%); through the ~30 conv layers the
    # relative L2 error measured 0.7%.
    err = float(jnp.linalg.norm(y16.astype(jnp.float32) - y32) / jnp.linalg.norm(y32))
    assert err < 0.03, err

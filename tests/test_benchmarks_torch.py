"""The side-by-side benchmarks: both scripts run (``--quick``) and print comparable rows, and
the PyTorch warping head of ``benchmarks/torch_posewarper.py`` is the JAX head.

The PyTorch parts are skipped without torch; the JAX script's run is not.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from posewarper_jax.convert.head_keys import head_key_map, head_torch_keys
from posewarper_jax.models.warping import WarpingHead, get_head_config

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
requires_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")

SHARED_CASES = ("stage2_train_step", "stage1_train_step", "inference_flip")
JAX_CASES = ("hrnet_forward", "head_forward_backward", *SHARED_CASES)
SHARED_KEYS = {
    "case",
    "framework",
    "device",
    "batch",
    "size",
    "dtype",
    "amp",
    "compile",
    "median_s",
    "items_per_s",
    "peak_mem_bytes",
    "mem_per_item_bytes",
}

# ----------------------------------------------------------------------------- the heads

J, N, H, W = 5, 2, 12, 10


def _inputs(seed):
    rng = np.random.default_rng(seed)
    psi = rng.normal(size=(N, H, W, J)).astype(np.float32)
    maps = rng.normal(size=(N, H, W, J)).astype(np.float32)
    return psi, maps


def _nchw(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@requires_torch
def test_torch_head_keys_are_the_official_ones():
    from benchmarks.torch_posewarper import TorchWarpingHead

    cfg = get_head_config("tiny", num_joints=J, dilations=(3, 6, 12))
    sd = TorchWarpingHead.from_config(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == head_torch_keys(cfg)
    assert list(sd) == list(head_torch_keys(cfg))  # registration order too


@requires_torch
@pytest.mark.parametrize("train", [False, True])
def test_torch_head_at_init_returns_the_maps(train):
    """Zero offsets and identity kernels: f_B comes back (bitwise through torchvision, whose
    integer sample points take weight 1; the grid_sample fallback rounds its normalised
    grid, within 1e-6). Two dilations: their mean of equal values is exact."""
    import torch

    from benchmarks.torch_posewarper import TorchWarpingHead

    torch.manual_seed(0)
    head = TorchWarpingHead(J, channels=16, num_blocks=2, dilations=(3, 6)).train(train)
    psi, maps = (_nchw(a) for a in _inputs(0))
    with torch.no_grad():
        feats = head.offset_feats(psi)
        assert feats.abs().max() > 0  # the offsets convs see non-trivial features
        for i in (1, 2):
            assert torch.count_nonzero(getattr(head, f"offsets{i}")(feats)) == 0
        out = head(psi, maps)
    assert out.shape == maps.shape and out.dtype == torch.float32
    if head.deform_impl == "torchvision":
        assert torch.equal(out, maps)
    else:
        err = float((out - maps).abs().max() / maps.abs().max())
        assert err < 1e-6, err


def _randomized_flax_variables(cfg, psi, maps, seed):
    """Head variables with every leaf random: convs ~ N(0, 1/fan_in), offsets convs larger
    (offsets of a few pixels), deformable kernels identity + noise, BN affine and statistics
    away from 1/0. (Shapes from ``eval_shape``: nothing to compile.)"""
    shapes = jax.eval_shape(WarpingHead(cfg).init, jax.random.key(0), psi, maps)
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        names = [p.key for p in path]
        shape = x.shape
        if names[-1] == "kernel" and names[0].startswith("deform_conv"):
            identity = np.zeros(shape)
            identity[1, 1] = np.eye(shape[-1])
            return identity + 0.2 * rng.normal(size=shape)
        if names[-1] == "kernel":
            scale = 3.0 if names[0].startswith("offsets") else 1.0
            return scale * rng.normal(size=shape) / math.sqrt(math.prod(shape[:-1]))
        if names[-1] in ("scale", "var"):
            return 0.5 + rng.random(shape)
        return 0.2 * rng.normal(size=shape)  # BN bias, running mean

    variables = jax.tree_util.tree_map_with_path(leaf, shapes)
    return jax.tree.map(lambda x: np.asarray(x, np.float32), variables)


def _to_torch_state_dict(cfg, variables, like):
    """The torch ``state_dict`` of the flax head variables, by ``head_key_map``."""
    import torch

    sd = {}
    for key, target in head_key_map(cfg).items():
        if target is None:  # num_batches_tracked
            sd[key] = like[key]
            continue
        collection, path = target
        value = variables[collection]
        for part in path:
            value = value[part]
        value = np.asarray(value)
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        sd[key] = torch.from_numpy(np.array(value))  # a writable copy
    return sd


@requires_torch
@pytest.mark.parametrize("train", [False, True])
def test_torch_head_matches_jax_head(train):
    import torch

    from benchmarks.torch_posewarper import TorchWarpingHead

    cfg = get_head_config("tiny", num_joints=J, dilations=(1, 3, 6))  # 2 blocks x 16 channels
    psi, maps = _inputs(1)
    variables = _randomized_flax_variables(cfg, psi, maps, seed=2)
    apply = functools.partial(WarpingHead(cfg).apply, train=train, return_offsets=True)
    lowered = jax.jit(functools.partial(apply, mutable=["batch_stats"])).lower(variables, psi, maps)
    # Backend optimisation off: a tenth of the compile time, the same float32 arithmetic.
    compiled = lowered.compile({"xla_backend_optimization_level": 0})
    (out, offsets), mutated = compiled(variables, psi, maps)
    out = np.asarray(out)
    # Offsets of a few pixels, in every direction: the warp is far from the identity.
    assert 0.5 < float(np.std(np.concatenate([np.ravel(o) for o in offsets]))) < 20
    assert np.abs(out - maps).max() > 0.1 * np.abs(maps).max()

    head = TorchWarpingHead.from_config(cfg)
    head.load_state_dict(_to_torch_state_dict(cfg, variables, head.state_dict()))
    head.train(train)
    with torch.no_grad():
        ref = head(_nchw(psi), _nchw(maps)).numpy().transpose(0, 2, 3, 1)
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert err < 1e-5, (err, head.deform_impl)

    if train:  # the running statistics moved alike (torch momentum 0.1 = flax 0.9)
        after = _to_torch_state_dict(cfg, dict(variables, **mutated), head.state_dict())
        for key, value in head.state_dict().items():
            if "running_" in key:
                np.testing.assert_allclose(
                    value.numpy(), after[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key
                )


# ----------------------------------------------------------------------------- the scripts

SCRIPTS = {"jax": ["benchmarks/model.py", "--quick"]}
if HAS_TORCH:
    SCRIPTS["torch"] = ["benchmarks/torch_reference.py", "--quick", "--device", "cpu"]
_PROCS: dict[str, subprocess.Popen] = {}


def _start_scripts() -> dict[str, subprocess.Popen]:
    """Both scripts with ``--quick``, side by side, started once (each mostly on one core:
    XLA compiles on one thread, torch runs one here)."""
    if _PROCS:
        return _PROCS
    env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
    # One CPU device, and no backend optimisation: the run checks the scripts, not the speed
    # (the XLA compiles of the train steps dominate its time otherwise).
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for name, cmd in SCRIPTS.items():
        _PROCS[name] = subprocess.Popen(
            [sys.executable, *cmd],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    return _PROCS


@pytest.fixture(scope="module", autouse=True)
def _scripts_in_background():
    """Starts the scripts with this module's first test, so that the head tests run while
    they do (not under pytest-xdist, where every worker would start its own)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        _start_scripts()
    yield
    for proc in _PROCS.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    _PROCS.clear()


@pytest.fixture(scope="module")
def quick_rows():
    """``{"jax": rows, "torch": rows or None}``: the JSON lines the scripts printed."""
    rows = {"torch": None}
    for name, proc in _start_scripts().items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{SCRIPTS[name]} failed:\n{err[-4000:]}"
        rows[name] = [json.loads(line) for line in out.splitlines() if line.strip()]
    return rows


def _check_rows(rows, framework, cases):
    assert [r["case"] for r in rows] == list(cases)
    for r in rows:
        assert SHARED_KEYS <= set(r), sorted(SHARED_KEYS - set(r))
        assert r["framework"] == framework
        assert r["batch"] == 2 and r["size"] == [64, 64]
        assert r["dtype"] == "float32" and r["amp"] is False
        assert math.isfinite(r["items_per_s"]) and r["items_per_s"] > 0
        assert r["median_s"] > 0
        # CPU: no device memory statistics.
        assert r["peak_mem_bytes"] is None and r["mem_per_item_bytes"] is None


def test_jax_benchmark_quick(quick_rows):
    _check_rows(quick_rows["jax"], "jax", JAX_CASES)
    for r in quick_rows["jax"]:
        assert r["compile"] is True
        assert r["xla_mem_bytes"] > 0


@requires_torch
def test_torch_benchmark_quick(quick_rows):
    rows = quick_rows["torch"]
    _check_rows(rows, "torch", SHARED_CASES)
    for r in rows:
        assert r["compile"] is False
    assert rows[0]["deform_impl"] in ("torchvision", "grid_sample")


def _literal(script: str, name: str):
    """The value of a top-level ``NAME = <literal>`` of a script, read without importing it."""
    tree = ast.parse((ROOT / script).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"no {name} in {script}")


def test_scripts_use_the_same_heads_and_quick_sizes():
    for name in ("HEADS", "QUICK"):
        jax_side = _literal("benchmarks/model.py", name)
        assert _literal("benchmarks/torch_reference.py", name) == jax_side
    assert set(jax_side) >= {"backbone", "head", "batch", "size"}

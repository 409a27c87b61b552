"""PyTorch weight import (``posewarper_jax.convert``): layouts, placement, numerics, CLI, errors.

The references are written here, independently of the mapping code: a key -> leaf rule for
the official names, the renaming into mmpose's names, and a float64 functional torch forward
of HRNet and the warping head straight from the state_dict (``torch.nn.functional`` conv2d,
batch_norm, nearest interpolate; the deformable convolution through ``grid_sample``, whose
zero padding with ``align_corners=True`` is the DCNv1 border rule). Flax runs in float32:
outputs are compared with ``rtol=1e-4`` and ``atol=1e-4 * max|reference|``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posewarper_jax import convert
from posewarper_jax.convert.head_keys import head_torch_keys
from posewarper_jax.convert.hrnet_keys import expected_torch_state_dict_shapes
from posewarper_jax.models.hrnet import HRNet, get_hrnet_config
from posewarper_jax.models.posewarper import PoseWarper
from posewarper_jax.models.warping import WarpingHead, get_head_config
from posewarper_jax.ops import deform_conv2d_multi

REPO = Path(__file__).resolve().parents[1]
J = 4
TINY = get_hrnet_config("tiny", num_joints=J)  # width 8, stem 16, one module per stage
HEAD = get_head_config("tiny", num_joints=J)  # 16 channels, 2 blocks, dilations (1, 2)
DIL = ",".join(map(str, HEAD.dilations))
SIZE = 64  # input crops 64 x 64 -> heatmaps 16 x 16


def _assert_close(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


# ----------------------------------------------------------------------------- state dicts


def _random_state_dict(seed: int, with_head: bool = True) -> dict[str, np.ndarray]:
    """Official PoseWarper names (HRNet at top level + head) with random, well-scaled values:
    conv weights N(0, 1/fan_in), BN scale U(0.5, 1.5), running var U(0.5, 2), offsets convs
    scaled to give offsets of a few pixels."""
    rng = np.random.default_rng(seed)
    shapes = dict(expected_torch_state_dict_shapes(TINY))
    if with_head:
        shapes.update(head_torch_keys(HEAD, "official"))
    sd = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            sd[key] = np.array(7, np.int64)
        elif len(shape) == 4:
            gain = 4.0 if key.startswith("offsets") else 1.0
            sd[key] = gain * rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        elif leaf == "running_var":
            sd[key] = rng.uniform(0.5, 2.0, shape)
        elif leaf == "weight":
            sd[key] = rng.uniform(0.5, 1.5, shape)
        else:  # bias, running_mean
            sd[key] = 0.1 * rng.standard_normal(shape)
        sd[key] = sd[key].astype(np.float32) if leaf != "num_batches_tracked" else sd[key]
    return sd


def _to_mmpose(sd: dict, topdown: bool = False) -> dict:
    """Official names -> mmpose's (written from mmpose's module names)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("final_layer."):
            pre = "keypoint_head.final_layer." if topdown else "neck.trans_layer."
            out[pre + k[len("final_layer.") :]] = v
        elif k.startswith("offset_feats."):
            out["neck." + k] = v
        elif m := re.fullmatch(r"offsets(\d+)\.(.+)", k):
            out[f"neck.offset_layers.{int(m[1]) - 1}.{m[2]}"] = v
        elif m := re.fullmatch(r"deform_conv(\d+)\.(.+)", k):
            out[f"neck.deform_conv_layers.{int(m[1]) - 1}.{m[2]}"] = v
        else:
            out["backbone." + k] = v
    return out


def _expected_leaves(sd: dict, posewarper: bool) -> dict[tuple[str, ...], np.ndarray]:
    """Where each official-named tensor must land: (collection, [part,] *modules, leaf)."""
    out = {}
    for key, value in sd.items():
        *mods, leaf = key.split(".")
        if leaf == "num_batches_tracked":
            continue
        head = bool(re.fullmatch(r"offset_feats|offsets\d+|deform_conv\d+", mods[0]))
        if head and not posewarper:
            continue
        if leaf == "weight" and value.ndim == 4:
            where, value = ("params", "kernel"), np.einsum("oihw->hwio", value)
        else:
            where = {
                "weight": ("params", "scale"),
                "bias": ("params", "bias"),
                "running_mean": ("batch_stats", "mean"),
                "running_var": ("batch_stats", "var"),
            }[leaf]
        part = (("head",) if head else ("backbone",)) if posewarper else ()
        out[(where[0], *part, *mods, where[1])] = value
    return out


def _flat(tree) -> dict[tuple[str, ...], object]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(str(p.key) for p in path): leaf for path, leaf in leaves}


def _assert_same_tree(a, b):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def _model_shapes(posewarper: bool, hrnet_cfg=TINY, head_cfg=HEAD, size=SIZE):
    """``{path: shape}`` of the module's own variables (``jax.eval_shape`` of init)."""
    key = jax.random.PRNGKey(0)
    if posewarper:
        frames = jnp.zeros((1, 2, size, size, 3), jnp.float32)
        tree = jax.eval_shape(PoseWarper(hrnet_cfg, head_cfg).init, key, frames)
    else:
        tree = jax.eval_shape(HRNet(hrnet_cfg).init, key, jnp.zeros((1, size, size, 3)))
    return {k: v.shape for k, v in _flat(tree).items()}


@pytest.fixture(scope="module")
def sd():
    return _random_state_dict(0)


@pytest.fixture(scope="module")
def converted(sd):
    return convert.convert_state_dict(sd, dilations=HEAD.dilations)


# ----------------------------------------------------------------------------- torch reference


def _torch_params(sd):
    torch = pytest.importorskip("torch")
    return {
        k: torch.from_numpy(np.asarray(v, np.float64))
        for k, v in sd.items()
        if not k.endswith("num_batches_tracked")
    }


def _t_conv(p, name, x, stride=1, dilation=1):
    import torch.nn.functional as F

    w = p[name + ".weight"]
    pad = dilation * (w.shape[-1] // 2)
    return F.conv2d(x, w, p.get(name + ".bias"), stride, pad, dilation)


def _t_bn(p, name, x):
    import torch.nn.functional as F

    stats = p[name + ".running_mean"], p[name + ".running_var"]
    return F.batch_norm(x, *stats, p[name + ".weight"], p[name + ".bias"], False, 0.0, 1e-5)


def _t_conv_bn(p, name, x, stride=1, relu=True):
    y = _t_bn(p, name + ".1", _t_conv(p, name + ".0", x, stride))
    return y.relu() if relu else y


def _t_block(p, name, x):
    """BasicBlock (conv1, conv2) or Bottleneck (conv1..conv3), by the keys present."""
    n = 3 if name + ".conv3.weight" in p else 2
    y = x
    for k in range(1, n + 1):
        y = _t_bn(p, f"{name}.bn{k}", _t_conv(p, f"{name}.conv{k}", y))
        y = y.relu() if k < n else y
    if name + ".downsample.0.weight" in p:
        x = _t_conv_bn(p, name + ".downsample", x, relu=False)
    return (y + x).relu()


def _t_seq(p, name, x):
    b = 0
    while f"{name}.{b}.conv1.weight" in p:
        x = _t_block(p, f"{name}.{b}", x)
        b += 1
    return x


def _t_hrnet(p, x):
    """Official PoseHighResolutionNet forward, structure read off the keys. x: NCHW."""
    import torch.nn.functional as F

    x = _t_bn(p, "bn1", _t_conv(p, "conv1", x, 2)).relu()
    x = _t_bn(p, "bn2", _t_conv(p, "conv2", x, 2)).relu()
    xs = [_t_seq(p, "layer1", x)]
    for s in (2, 3, 4):
        t, new = f"transition{s - 1}", []
        for i in range(s):
            if f"{t}.{i}.0.weight" in p:
                new.append(_t_conv_bn(p, f"{t}.{i}", xs[i]))
            elif i < len(xs):
                new.append(xs[i])
            else:
                y, k = xs[-1], 0
                while f"{t}.{i}.{k}.0.weight" in p:
                    y, k = _t_conv_bn(p, f"{t}.{i}.{k}", y, 2), k + 1
                new.append(y)
        xs, m = new, 0
        while f"stage{s}.{m}.branches.0.0.conv1.weight" in p:
            pre = f"stage{s}.{m}"
            xs = [_t_seq(p, f"{pre}.branches.{b}", xb) for b, xb in enumerate(xs)]
            rows = sum(any(k.startswith(f"{pre}.fuse_layers.{i}.") for k in p) for i in range(s))
            fused = []
            for i in range(rows):
                y = 0
                for j, xj in enumerate(xs):
                    f = f"{pre}.fuse_layers.{i}.{j}"
                    if j > i:
                        z = _t_conv_bn(p, f, xj, relu=False)
                        y = y + F.interpolate(z, scale_factor=2 ** (j - i), mode="nearest")
                    elif j < i:
                        for k in range(i - j):
                            xj = _t_conv_bn(p, f"{f}.{k}", xj, 2, relu=k < i - j - 1)
                        y = y + xj
                    else:
                        y = y + xj
                fused.append(y.relu())
            xs, m = fused, m + 1
    return _t_conv(p, "final_layer", xs[0])


def _t_deform(x, off, w, d):
    """DCNv1 3x3 (dilation d, padding d, one group per input channel) via grid_sample.
    x [N, C, H, W], off [N, C * 18, H, W] (dy, dx per tap), w [O, C, 3, 3]."""
    import torch
    import torch.nn.functional as F

    n, c, h, wd = x.shape
    off = off.view(n, c, 9, 2, h, wd)
    ys = torch.arange(h, dtype=x.dtype).view(1, 1, h, 1)
    xs = torch.arange(wd, dtype=x.dtype).view(1, 1, 1, wd)
    cols = []
    for k in range(9):
        i, j = divmod(k, 3)
        sy = ys - d + i * d + off[:, :, k, 0]
        sx = xs - d + j * d + off[:, :, k, 1]
        grid = torch.stack([2 * sx / (wd - 1) - 1, 2 * sy / (h - 1) - 1], -1)
        s = F.grid_sample(
            x.reshape(n * c, 1, h, wd),
            grid.reshape(n * c, h, wd, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
        cols.append(s.view(n, c, h, wd))
    return torch.einsum("ock,nckhw->nohw", w.reshape(w.shape[0], c, 9), torch.stack(cols, 2))


def _t_head(p, psi, maps, dilations):
    """Official warping head: offsets from psi, deformable convs of maps, mean."""
    feats = _t_seq(p, "offset_feats", psi)
    offsets = [_t_conv(p, f"offsets{i}", feats, dilation=d) for i, d in enumerate(dilations, 1)]
    warped = [
        _t_deform(maps, off, p[f"deform_conv{i}.weight"], d)
        for i, (off, d) in enumerate(zip(offsets, dilations), 1)
    ]
    return sum(warped) / len(warped), offsets


def _nchw(x):
    import torch

    return torch.from_numpy(np.asarray(x, np.float64).transpose(0, 3, 1, 2))


def _nhwc(t):
    return t.numpy().transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------- placement


@pytest.mark.parametrize(
    "name, target",
    [
        ("official", "posewarper"),
        ("mmpose", "posewarper"),
        ("topdown", "hrnet"),
        ("hrnet", "hrnet"),
    ],
)
def test_every_tensor_lands_transposed_in_place(sd, name, target):
    """Exhaustive: each source tensor is one leaf (OIHW -> HWIO for convs), nothing else is
    there, and the tree is exactly the module's variable tree."""
    src = {
        "official": sd,
        "mmpose": _to_mmpose(sd),
        "topdown": _to_mmpose(_random_state_dict(0, with_head=False), topdown=True),
        "hrnet": _random_state_dict(0, with_head=False),
    }[name]
    dilations = HEAD.dilations if target == "posewarper" else None
    plan = convert.plan_conversion({k: v.shape for k, v in src.items()}, dilations=dilations)
    assert (plan.layout, plan.target, plan.variant) == (
        {"topdown": "mmpose"}.get(name, name),
        target,
        "tiny",
    )
    out = convert.convert_state_dict(src, dilations=dilations)
    posewarper = target == "posewarper"
    expected = _expected_leaves(sd if posewarper else _random_state_dict(0, False), posewarper)
    got = _flat(out)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], v, err_msg=str(k))
    assert {k: v.shape for k, v in got.items()} == _model_shapes(posewarper)
    assert {k: v.shape for k, v in _flat(plan.abstract_variables()).items()} == {
        k: v.shape for k, v in got.items()
    }


def test_w48_official_and_mmpose_key_sets_plan_onto_the_model():
    """Shape level, no weights allocated: the W48 PoseWarper key set (official and mmpose
    names) and the W32 HRNet key set map onto exactly the modules' variable trees."""
    w48, head = get_hrnet_config("w48"), get_head_config("default")
    shapes = {**expected_torch_state_dict_shapes(w48), **head_torch_keys(head, "official")}
    want = _model_shapes(True, w48, head)
    plan = convert.plan_conversion(shapes)
    assert (plan.layout, plan.target, plan.variant) == ("official", "posewarper", "w48")
    assert plan.head_config.dilations == (3, 6, 12, 18, 24) and plan.hrnet_config == w48
    assert {k: v.shape for k, v in _flat(plan.abstract_variables()).items()} == want
    mm = convert.plan_conversion(_to_mmpose(shapes))
    assert mm.layout == "mmpose" and mm.abstract_variables() == plan.abstract_variables()
    assert len(plan.ignored) == sum(k.endswith("num_batches_tracked") for k in shapes)

    w32 = expected_torch_state_dict_shapes(get_hrnet_config("w32"))
    plan32 = convert.plan_conversion(w32)
    assert (plan32.layout, plan32.target, plan32.variant) == ("hrnet", "hrnet", "w32")
    leaves = _flat(plan32.abstract_variables())
    assert len(leaves) == len(plan32.backbone_keys) == len(w32) - len(plan32.ignored)


# ----------------------------------------------------------------------------- numerics


def test_hrnet_stem_and_output_match_torch(sd):
    """Converted HRNet variables: stem conv1 + bn1 + ReLU (captured intermediate) and the
    heatmaps equal a float64 torch forward of the source tensors."""
    torch = pytest.importorskip("torch")
    hr = _random_state_dict(1, with_head=False)
    variables = convert.convert_state_dict(hr)
    p = _torch_params(hr)
    x = np.random.default_rng(2).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    apply = jax.jit(
        lambda v, x: HRNet(TINY).apply(v, x, capture_intermediates=True, mutable=["intermediates"])
    )
    out, state = apply(variables, jnp.asarray(x))
    stem = jax.nn.relu(state["intermediates"]["bn1"]["__call__"][0])
    with torch.no_grad():
        ref_stem = _t_bn(p, "bn1", _t_conv(p, "conv1", _nchw(x), 2)).relu()
        ref = _t_hrnet(p, _nchw(x))
    _assert_close(stem, _nhwc(ref_stem))
    assert out.shape == (2, SIZE // 4, SIZE // 4, J)
    _assert_close(out, _nhwc(ref))


def test_posewarper_pair_matches_torch(sd, converted):
    """Full model, converted official weights: warped = head(f_A - f_B, f_B) vs torch."""
    torch = pytest.importorskip("torch")
    p = _torch_params(sd)
    frames = np.random.default_rng(3).standard_normal((2, 2, SIZE, SIZE, 3)).astype(np.float32)
    pair = jax.jit(
        lambda v, f: PoseWarper(TINY, HEAD).apply(v, f, method="pair", return_heatmaps=True)
    )
    warped, f_a, f_b = pair(converted, jnp.asarray(frames))
    with torch.no_grad():
        t_a, t_b = _t_hrnet(p, _nchw(frames[:, 0])), _t_hrnet(p, _nchw(frames[:, 1]))
        ref, offsets = _t_head(p, t_a - t_b, t_b, HEAD.dilations)
    _assert_close(f_a, _nhwc(t_a))
    _assert_close(f_b, _nhwc(t_b))
    assert max(float(o.abs().max()) for o in offsets) > 1.0  # sampling really moves
    _assert_close(warped, _nhwc(ref))


def test_head_deform_path_zero_and_nonzero_offsets(sd, converted):
    """Head alone. Zero offsets weights: the mean of plain dilated torch convs. Random ones:
    offsets equal torch's, and the warp equals the deformable-conv op fed with torch's
    offsets and the torch kernels transposed by hand, and the grid_sample reference."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(4)
    psi, maps = (rng.standard_normal((2, 12, 10, J)).astype(np.float32) for _ in range(2))
    head = jax.jit(lambda v, psi, maps: WarpingHead(HEAD).apply(v, psi, maps, return_offsets=True))

    def head_vars(v):
        return {"params": v["params"]["head"], "batch_stats": v["batch_stats"]["head"]}

    zero = dict(sd)
    for i in range(1, len(HEAD.dilations) + 1):
        zero[f"offsets{i}.weight"] = np.zeros_like(sd[f"offsets{i}.weight"])
    zero_vars = head_vars(convert.convert_state_dict(zero, dilations=HEAD.dilations))
    out0, off0 = head(zero_vars, psi, maps)
    assert not any(np.any(o) for o in off0)
    p = _torch_params(sd)
    with torch.no_grad():
        ref0 = sum(
            F.conv2d(_nchw(maps), p[f"deform_conv{i}.weight"], None, 1, d, d)
            for i, d in enumerate(HEAD.dilations, 1)
        ) / len(HEAD.dilations)
    _assert_close(out0, _nhwc(ref0))

    out, offsets = head(head_vars(converted), psi, maps)
    with torch.no_grad():
        ref, t_off = _t_head(p, _nchw(psi), _nchw(maps), HEAD.dilations)
    for o, t in zip(offsets, t_off, strict=True):
        _assert_close(o, _nhwc(t))
    kernels = [np.einsum("oihw->hwio", sd[f"deform_conv{i}.weight"]) for i in (1, 2)]
    op = deform_conv2d_multi(
        jnp.asarray(maps),
        [jnp.asarray(_nhwc(t), jnp.float32) for t in t_off],
        kernels,
        dilations=HEAD.dilations,
        deformable_groups=J,
        precision=jax.lax.Precision.HIGHEST,
    )
    _assert_close(out, op)
    _assert_close(out, _nhwc(ref))


# ----------------------------------------------------------------------------- files and CLI


def test_pth_official_wrapped_in_process(sd, converted, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    src, out = tmp_path / "checkpoint.pth", tmp_path / "out"
    wrapped = {"module." + k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
    torch.save({"epoch": 20, "state_dict": wrapped, "perf": 0.8}, src)
    assert convert.main(["--src", str(src), "--out", str(out), "--dilations", DIL]) == 0
    summary = capsys.readouterr().out
    assert "layout official, target posewarper" in summary and "variant tiny" in summary
    variables, meta = convert.load_converted(out)
    _assert_same_tree(variables, converted)
    assert meta["layout"] == "official" and meta["head_source"] == "checkpoint"
    assert meta["hrnet"]["width"] == TINY.width and meta["num_joints"] == J
    assert meta["dilations"] == list(HEAD.dilations)
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["num_ignored"] == sum(k.endswith("num_batches_tracked") for k in sd)
    assert convert.configs_from_metadata(meta) == (TINY, HEAD)
    # API with torch tensors, wrapped and prefixed, gives the same.
    _assert_same_tree(
        convert.convert_state_dict({"state_dict": wrapped}, dilations=HEAD.dilations), converted
    )
    # An existing output is refused.
    assert convert.main(["--src", str(src), "--out", str(out), "--dilations", DIL]) == 2
    assert "exists" in capsys.readouterr().err


def test_pth_mmpose_by_subprocess(sd, converted, tmp_path):
    """mmpose's {'meta', 'state_dict'} with NumPy values in meta (read by the restricted
    loader), converted by ``python -m posewarper_jax.convert``."""
    torch = pytest.importorskip("torch")
    src, out = tmp_path / "mmpose.pth", tmp_path / "out"
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in _to_mmpose(sd).items()}
    meta = {"epoch": 20, "best_score": np.float64(0.79), "hist": np.arange(3)}
    torch.save({"meta": meta, "state_dict": state, "optimizer": {}}, src)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "posewarper_jax.convert", "--src", str(src), "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--dilations", DIL], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "layout mmpose, target posewarper" in proc.stdout
    variables, meta = convert.load_converted(out)
    _assert_same_tree(variables, converted)
    assert meta["layout"] == "mmpose"


def test_npz_targets_and_fresh_head(sd, tmp_path, capsys):
    """.npz input (no torch needed); HRNet -> PoseWarper with a seeded fresh head; PoseWarper
    -> HRNet drops the (checked) head."""
    hr = _random_state_dict(0, with_head=False)
    np.savez(tmp_path / "hrnet.npz", **hr)
    np.savez(tmp_path / "pw.npz", **sd)

    def run(src, out, *args):
        return convert.main(["--src", str(tmp_path / src), "--out", str(tmp_path / out), *args])

    fresh_args = ["--head-variant", "tiny", "--dilations", DIL, "--seed", "3"]
    assert run("hrnet.npz", "a", *fresh_args) == 2  # target hrnet: no head to initialise
    err = capsys.readouterr().err
    assert "applies only to a freshly initialised head" in err and "no warping head" in err
    assert run("hrnet.npz", "b", "--target", "posewarper", *fresh_args) == 0
    v, meta = convert.load_converted(tmp_path / "b")
    assert meta["head_source"] == "initialised" and meta["seed"] == 3
    assert meta["head_variant"] == "tiny" and meta["dilations"] == list(HEAD.dilations)
    # The module's initialisers: zero offsets convs, identity deformable kernels, BN (1, 0),
    # N(0, 0.001^2) convs; the same seed gives the same head, another seed another one.
    head = _flat({c: v[c]["head"] for c in v})
    identity = np.eye(J)[None, None] * (np.arange(9) == 4).reshape(3, 3, 1, 1)
    for k, a in head.items():
        if k[1].startswith("offsets"):
            np.testing.assert_array_equal(a, 0)
        elif k[1].startswith("deform_conv"):
            np.testing.assert_array_equal(a, identity)
        elif k[-1] != "kernel":
            np.testing.assert_array_equal(a, float(k[-1] in ("scale", "var")))
        else:
            assert 0.0005 < a.std() < 0.002, k
    again = dict(target="posewarper", head_variant="tiny", dilations=HEAD.dilations)
    _assert_same_tree(convert.convert_state_dict(hr, seed=3, **again), v)
    other = _flat(convert.convert_state_dict(hr, seed=4, **again))
    key = ("params", "head", "offset_feats", "0", "conv1", "kernel")
    assert not np.array_equal(other[key], head[key[:1] + key[2:]])
    _assert_same_tree({c: v[c]["backbone"] for c in v}, convert.convert_state_dict(hr))
    assert {k: a.shape for k, a in _flat(v).items()} == _model_shapes(True)

    assert run("pw.npz", "c", "--target", "hrnet", "--dilations", DIL) == 0
    v, meta = convert.load_converted(tmp_path / "c")
    _assert_same_tree(v, convert.convert_state_dict(hr))
    dropped = len(_expected_leaves(sd, True)) - len(_expected_leaves(hr, False))
    assert meta["num_dropped"] == dropped > 0
    assert meta["head"] is None and convert.configs_from_metadata(meta) == (TINY, None)
    assert sorted(os.listdir(tmp_path)) == ["b", "c", "hrnet.npz", "pw.npz"]


def test_unsafe_pickle_needs_the_flag(sd, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    import argparse

    src = tmp_path / "odd.pth"
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1e-4)}, src)
    argv = ["--src", str(src), "--out", str(tmp_path / "o"), "--dilations", DIL]
    assert convert.main(argv) == 2
    err = capsys.readouterr().err
    assert "argparse.Namespace" in err and "--unsafe-pickle" in err
    assert not (tmp_path / "o").exists()
    assert convert.main([*argv, "--unsafe-pickle"]) == 0


# ----------------------------------------------------------------------------- errors


def test_bad_keys_are_all_listed_and_nothing_is_written(sd, tmp_path, capsys):
    bad = dict(sd)
    del bad["stage3.0.fuse_layers.2.0.0.0.weight"], bad["offset_feats.1.bn2.running_var"]
    bad["stage2.0.extra.weight"] = np.zeros((3, 3), np.float32)
    bad["classifier.bias"] = np.zeros(5, np.float32)
    bad["conv1.weight"] = np.zeros((16, 3, 5, 5), np.float32)
    bad["offsets2.weight"] = np.zeros((72, 8, 3, 3), np.float32)
    bad["final_layer.bias"] = np.full(J, np.nan, np.float32)
    expected = [
        "missing key 'stage3.0.fuse_layers.2.0.0.0.weight' (expected shape (8, 8, 3, 3))",
        "missing key 'offset_feats.1.bn2.running_var' (expected shape (16,))",
        "unknown key 'stage2.0.extra.weight' (shape (3, 3))",
        "unknown key 'classifier.bias' (shape (5,))",
        "mis-shaped key 'conv1.weight': expected (16, 3, 3, 3), found (16, 3, 5, 5)",
        "mis-shaped key 'offsets2.weight': expected (72, 16, 3, 3), found (72, 8, 3, 3)",
        "key 'final_layer.bias' holds non-finite values (NaN or inf)",
    ]
    with pytest.raises(convert.ConversionError) as info:
        convert.convert_state_dict(bad, dilations=HEAD.dilations)
    assert sorted(info.value.problems) == sorted(expected)

    np.savez(tmp_path / "bad.npz", **bad)
    out = tmp_path / "out"
    assert (
        convert.main(["--src", str(tmp_path / "bad.npz"), "--out", str(out), "--dilations", DIL])
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.npz" in err and "7 problem(s)" in err
    for line in expected:
        assert line in err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["bad.npz"]


def test_configuration_clashes(sd):
    shapes = {k: v.shape for k, v in sd.items()}
    with pytest.raises(convert.ConversionError, match="2 dilation branches; their rates"):
        convert.plan_conversion(shapes)
    with pytest.raises(convert.ConversionError, match=r"gives 3 rates but the head has 2"):
        convert.plan_conversion(shapes, dilations=(1, 2, 3))
    # A given variant that is not the checkpoint's: every clash is listed.
    with pytest.raises(convert.ConversionError) as info:
        convert.plan_conversion(shapes, variant="small", dilations=HEAD.dilations)
    assert "mis-shaped key 'conv1.weight': expected (32, 3, 3, 3), found (16, 3, 3, 3)" in (
        info.value.problems
    )
    # Forcing a layout: an HRNet reading of a PoseWarper file lists the head as unknown.
    with pytest.raises(convert.ConversionError) as info:
        convert.plan_conversion(shapes, layout="hrnet")
    assert "unknown key 'offsets1.weight' (shape (72, 16, 3, 3))" in info.value.problems
    with pytest.raises(convert.ConversionError, match="no warping-head keys"):
        convert.plan_conversion(
            {k: s for k, s in shapes.items() if "offset" not in k and "deform" not in k},
            layout="official",
        )
    plan = convert.plan_conversion(shapes, num_joints=J, dilations=HEAD.dilations)
    assert plan.hrnet_config == TINY
    with pytest.raises(convert.ConversionError, match="final_layer.weight"):
        convert.plan_conversion(shapes, num_joints=5, dilations=HEAD.dilations)
    with pytest.raises(ValueError, match="layout must be"):
        convert.plan_conversion(shapes, layout="caffe")
    with pytest.raises(convert.ConversionError, match="empty"):
        convert.plan_conversion({})
    with pytest.raises(ValueError, match="does not exist"):
        convert.read_checkpoint("/nonexistent/file.pth")


def test_import_does_not_import_torch():
    code = (
        "import sys, posewarper_jax.convert\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_pth_without_torch_says_so(tmp_path, monkeypatch):
    src = tmp_path / "model.pth"
    src.write_bytes(b"\x80\x02not read")  # a pickle's first opcode, as torch's legacy files
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ValueError, match=r"model.pth.*needs PyTorch.*\.npz"):
        convert.read_checkpoint(src)

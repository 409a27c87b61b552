"""Warping head: identity at initialisation, numerics against a manual computation and a
torch re-implementation loaded through the key map, parameter count of the default head."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from posewarper_jax.convert.head_keys import head_key_map, head_param_count, head_torch_keys
from posewarper_jax.models.warping import (
    HEAD_VARIANTS,
    WarpingHead,
    WarpingHeadConfig,
    _OffsetFeatures,
    get_head_config,
)
from posewarper_jax.ops import deform_conv2d

TINY = WarpingHeadConfig(num_joints=4, channels=8, num_blocks=2, dilations=(1, 2))
SHAPE = (2, 8, 6, TINY.num_joints)  # [N, h, w, J]


def _key(seed=0):
    # The "rbg" PRNG compiles far faster than threefry on CPU; any key works for init.
    return jax.random.key(seed, impl="rbg")


def _init(cfg, shape):
    head = WarpingHead(cfg)
    x = jnp.zeros(shape, jnp.float32)
    return head, jax.jit(head.init)(_key(), x, x)


@pytest.fixture(scope="module")
def tiny():
    return _init(TINY, SHAPE)


def _inputs(seed, shape=SHAPE):
    rng = np.random.default_rng(seed)
    psi = rng.normal(size=shape).astype(np.float32)
    maps = rng.uniform(size=shape).astype(np.float32)
    return jnp.asarray(psi), jnp.asarray(maps)


# ----------------------------------------------------------------------------- identity


def test_init_is_identity(tiny):
    """Zero offsets + identity kernels: the maps come back unchanged (bitwise with two
    dilations, where the mean of equal values is exact), the offsets are exactly 0."""
    head, variables = tiny
    psi, maps = _inputs(1)
    out, offsets = jax.jit(partial(head.apply, return_offsets=True))(variables, psi, maps)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(maps))
    assert len(offsets) == len(TINY.dilations)
    for off in offsets:
        assert off.shape == (*SHAPE[:3], 18 * TINY.num_joints) and off.dtype == jnp.float32
        assert not np.any(np.asarray(off))


def test_init_is_identity_five_dilations_within_rounding():
    """With the 5 default dilations the mean of 5 equal float32 values may round: 1e-6 rel."""
    cfg = WarpingHeadConfig(num_joints=3, channels=4, num_blocks=1)
    shape = (1, 8, 6, 3)
    psi, maps = _inputs(2, shape)
    head, variables = _init(cfg, shape)
    out = jax.jit(head.apply)(variables, psi, maps * 10.0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(maps * 10.0), rtol=1e-6, atol=0)


def test_initial_parameters(tiny):
    """Offsets convs are zero, deformable kernels the identity (centre tap, k -> k)."""
    head, variables = tiny
    params = variables["params"]
    j = TINY.num_joints
    eye = np.zeros((3, 3, j, j), np.float32)
    eye[1, 1] = np.eye(j)
    for i in (1, 2):
        assert params[f"offsets{i}"]["kernel"].shape == (3, 3, TINY.channels, 18 * j)
        assert "bias" not in params[f"offsets{i}"]
        assert not np.any(np.asarray(params[f"offsets{i}"]["kernel"]))
        np.testing.assert_array_equal(np.asarray(params[f"deform_conv{i}"]["kernel"]), eye)
    assert "downsample" in params["offset_feats"]["0"]
    assert "downsample" not in params["offset_feats"]["1"]


# ----------------------------------------------------------------------------- numerics


def _randomise(variables, seed, offsets_std=0.05):
    """Random kernels (offsets convs small: offsets of about a pixel), random BN stats."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, v in flatten_dict(variables).items():
        if path[-1] == "kernel":
            fan_in = math.prod(v.shape[:-1])
            std = offsets_std if path[1].startswith("offsets") else 1.0 / math.sqrt(fan_in)
            a = std * rng.normal(size=v.shape)
        elif path[-1] == "var":
            a = rng.uniform(0.5, 2.0, size=v.shape)
        else:  # BN scale/bias, running mean
            a = np.asarray(v) + 0.1 * rng.normal(size=v.shape)
        out[path] = jnp.asarray(a, jnp.float32)
    return unflatten_dict(out)


def test_head_matches_manual_deform_conv(tiny):
    """Head output = mean over dilations of deform_conv2d(maps, conv_d(offset_feats(psi)))
    computed from the head's own submodule and variables; 1e-5 abs."""
    head, variables = tiny
    variables = _randomise(variables, 3)
    psi, maps = _inputs(4)
    out, offsets = jax.jit(partial(head.apply, return_offsets=True))(variables, psi, maps)

    @jax.jit
    def manual(variables, psi, maps):
        p, s = variables["params"], variables["batch_stats"]
        feats = _OffsetFeatures(TINY.channels, TINY.num_blocks, jnp.float32, jnp.float32).apply(
            {"params": p["offset_feats"], "batch_stats": s["offset_feats"]}, psi, False
        )
        offs, mean = [], 0.0
        for i, d in enumerate(TINY.dilations, start=1):
            off = jax.lax.conv_general_dilated(
                feats,
                p[f"offsets{i}"]["kernel"],
                (1, 1),
                ((d, d), (d, d)),
                rhs_dilation=(d, d),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST,
            )
            warped = deform_conv2d(
                maps,
                off,
                p[f"deform_conv{i}"]["kernel"],
                dilation=d,
                deformable_groups=TINY.num_joints,
                precision=jax.lax.Precision.HIGHEST,
            )
            offs.append(off)
            mean = mean + warped / len(TINY.dilations)
        return mean, offs

    expected, expected_offsets = manual(variables, psi, maps)
    for off, want in zip(offsets, expected_offsets):
        np.testing.assert_allclose(np.asarray(off), np.asarray(want), atol=1e-5)
        assert float(jnp.max(jnp.abs(want))) > 0.3  # the offsets really move the samples
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5)
    assert float(jnp.max(jnp.abs(out - maps))) > 1e-2  # not the identity any more


def test_train_mode_updates_batch_stats_only_of_offset_features(tiny):
    head, variables = tiny
    psi, _ = _inputs(5)
    apply = jax.jit(partial(head.apply, train=True, mutable=["batch_stats"]))
    out, updates = apply(variables, psi, psi)
    assert out.shape == SHAPE
    old, new = flatten_dict(variables["batch_stats"]), flatten_dict(updates["batch_stats"])
    assert old.keys() == new.keys() and all(k[0] == "offset_feats" for k in new)
    assert any(not np.array_equal(old[k], new[k]) for k in old)


# ----------------------------------------------------------------------------- torch port


def _torch_head(cfg, layout):
    """The official head from torch primitives with the official (or mmpose) module names,
    and a DCNv1 forward built on ``grid_sample`` (bilinear, zeros outside)."""
    torch = pytest.importorskip("torch")
    tnn, F = torch.nn, torch.nn.functional
    torch.manual_seed(0)
    j, c = cfg.num_joints, cfg.channels

    class Block(tnn.Module):
        def __init__(self, cin, project):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, c, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(c)
            self.conv2 = tnn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(c)
            self.downsample = None
            if project:
                self.downsample = tnn.Sequential(
                    tnn.Conv2d(cin, c, 1, bias=False), tnn.BatchNorm2d(c)
                )

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class DeformConv(tnn.Module):
        def __init__(self, d):
            super().__init__()
            self.d = d
            self.weight = tnn.Parameter(torch.randn(j, j, 3, 3, dtype=torch.float64) * 0.5)

        def forward(self, x, offset):  # x [N, J, H, W], offset [N, 18 J, H, W]
            n, _, h, w = x.shape
            off = offset.view(n, j, 9, 2, h, w)
            ys = torch.arange(h, dtype=x.dtype).view(h, 1)
            xs = torch.arange(w, dtype=x.dtype).view(1, w)
            cols = []
            for k in range(9):
                i, jj = divmod(k, 3)
                py = ys + (i - 1) * self.d + off[:, :, k, 0]  # [N, J, H, W]
                px = xs + (jj - 1) * self.d + off[:, :, k, 1]
                grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)
                v = F.grid_sample(
                    x.reshape(n * j, 1, h, w),
                    grid.reshape(n * j, h, w, 2),
                    mode="bilinear",
                    padding_mode="zeros",
                    align_corners=True,
                )
                cols.append(v.view(n, j, h, w))
            col = torch.stack(cols, dim=2)  # [N, J(in), 9, H, W]
            return torch.einsum("ock,nckhw->nohw", self.weight.view(j, j, 9), col)

    class Head(tnn.Module):
        def __init__(self):
            super().__init__()
            blocks = [Block(j if b == 0 else c, b == 0) for b in range(cfg.num_blocks)]
            self.offset_feats = tnn.Sequential(*blocks)
            offs = [tnn.Conv2d(c, 18 * j, 3, 1, d, dilation=d, bias=False) for d in cfg.dilations]
            defs = [DeformConv(d) for d in cfg.dilations]
            if layout == "official":
                for i, o in enumerate(offs, start=1):
                    setattr(self, f"offsets{i}", o)
                for i, dc in enumerate(defs, start=1):
                    setattr(self, f"deform_conv{i}", dc)
            else:
                self.offset_layers = tnn.ModuleList(offs)
                self.deform_conv_layers = tnn.ModuleList(defs)
            self.pairs = list(zip(offs, defs))

        def forward(self, psi, maps):
            feats = self.offset_feats(psi)
            outs = [(o(feats), dc) for o, dc in self.pairs]
            warped = sum(dc(maps, off) for off, dc in outs) / len(outs)
            return warped, [off for off, _ in outs]

    head = Head()
    if layout == "mmpose":
        holder = tnn.Module()
        holder.neck = head
        return torch, head, holder
    return torch, head, head


@pytest.mark.parametrize("layout", ["official", "mmpose"])
def test_torch_keys_and_numerics(layout, tiny):
    """A torch head with the release's module names: its state_dict keys and shapes equal
    ``head_torch_keys``; loaded through ``head_key_map`` the flax head reproduces its
    offsets and warped maps (torch in float64; 1e-4 abs, values O(1))."""
    torch, thead, holder = _torch_head(TINY, layout)
    with torch.no_grad():
        for m in thead.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        for o, _ in thead.pairs:
            o.weight.normal_(0.0, 0.05)
    holder = holder.double().eval()
    state = holder.state_dict()
    expected = head_torch_keys(TINY, layout)
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected

    shape = SHAPE
    head, init_vars = tiny
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, target in head_key_map(TINY, layout).items():
        if target is None:
            continue
        a = state[key].numpy()
        a = a.transpose(2, 3, 1, 0) if a.ndim == 4 else a
        node = variables[target[0]]
        for part in target[1][:-1]:
            node = node.setdefault(part, {})
        node[target[1][-1]] = jnp.asarray(a, jnp.float32)
    assert jax.tree.structure(variables) == jax.tree.structure(init_vars)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, init_vars)

    rng = np.random.default_rng(0)
    psi = rng.normal(size=shape)
    maps = rng.uniform(size=shape)
    with torch.no_grad():
        t_out, t_offs = thead(
            torch.from_numpy(psi.transpose(0, 3, 1, 2)),
            torch.from_numpy(maps.transpose(0, 3, 1, 2)),
        )
    out, offs = jax.jit(partial(head.apply, return_offsets=True))(
        variables, jnp.asarray(psi, jnp.float32), jnp.asarray(maps, jnp.float32)
    )
    for o, t in zip(offs, t_offs):
        np.testing.assert_allclose(np.asarray(o), t.numpy().transpose(0, 2, 3, 1), atol=1e-4)
    assert max(float(np.abs(t.numpy()).max()) for t in t_offs) > 0.5
    np.testing.assert_allclose(np.asarray(out), t_out.numpy().transpose(0, 2, 3, 1), atol=1e-4)


def test_key_maps_agree_between_layouts():
    """Both layouts name the same tensors: same flax targets, same shapes, index shift."""
    cfg = get_head_config("default")
    off, mm = head_key_map(cfg, "official"), head_key_map(cfg, "mmpose")
    assert len(off) == len(mm)
    assert sorted(map(str, off.values())) == sorted(map(str, mm.values()))
    assert mm["neck.offset_layers.0.weight"] == off["offsets1.weight"]
    assert mm["neck.deform_conv_layers.4.weight"] == off["deform_conv5.weight"]
    assert mm["neck.offset_feats.19.bn2.running_var"] == off["offset_feats.19.bn2.running_var"]
    shapes_off, shapes_mm = head_torch_keys(cfg, "official"), head_torch_keys(cfg, "mmpose")
    assert shapes_off["offsets3.weight"] == shapes_mm["neck.offset_layers.2.weight"]
    assert shapes_off["offsets3.weight"] == (306, 128, 3, 3)
    assert shapes_off["deform_conv1.weight"] == (17, 17, 3, 3)
    with pytest.raises(ValueError, match="layout"):
        head_torch_keys(cfg, "detectron")


# ----------------------------------------------------------------------------- default head


def test_default_head_parameter_count():
    """The method's head (J=17, 20 blocks x 128 ch, 5 dilations), shapes only
    (``jax.eval_shape``): parameter count from the architecture, and every variable's shape
    equals its torch counterpart's (OIHW -> HWIO)."""
    cfg = HEAD_VARIANTS["default"]
    assert (cfg.num_joints, cfg.channels, cfg.num_blocks) == (17, 128, 20)
    assert cfg.dilations == (3, 6, 12, 18, 24)
    head = WarpingHead(cfg)
    x = jax.ShapeDtypeStruct((1, 96, 72, 17), jnp.float32)
    shapes = jax.eval_shape(lambda a: head.init(_key(), a, a), x)

    j, c, n, nd = 17, 128, 20, 5
    blocks = (j * c * 9 + c * c * 9) + (n - 1) * 2 * c * c * 9  # conv1 + conv2 kernels
    bn = 2 * c * (2 * n + 1)  # scale + bias of 2 BNs per block + the projection's BN
    projection = j * c
    offsets = nd * c * (2 * 9 * j) * 9
    deform = nd * j * j * 9
    expected = blocks + bn + projection + offsets + deform
    count = sum(math.prod(v.shape) for v in jax.tree.leaves(shapes["params"]))
    assert count == expected == head_param_count(cfg) == 7_558_605
    stats = sum(math.prod(v.shape) for v in jax.tree.leaves(shapes["batch_stats"]))
    assert stats == 2 * c * (2 * n + 1)

    flat = {(col, *path): v for col in shapes for path, v in flatten_dict(shapes[col]).items()}
    torch_shapes = head_torch_keys(cfg)
    mapped = {}
    for key, target in head_key_map(cfg).items():
        if target is not None:
            s = torch_shapes[key]
            mapped[(target[0], *target[1])] = (s[2], s[3], s[1], s[0]) if len(s) == 4 else s
    assert mapped == {k: v.shape for k, v in flat.items()}


# ----------------------------------------------------------------------------- errors


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="dilations"):
        WarpingHeadConfig(dilations=())
    with pytest.raises(ValueError, match="dilations"):
        WarpingHeadConfig(dilations=(3, 0))
    with pytest.raises(ValueError, match="channels"):
        WarpingHeadConfig(channels=0)
    with pytest.raises(ValueError, match="unknown warping-head variant"):
        get_head_config("huge")
    assert get_head_config("tiny", num_joints=15).num_joints == 15
    head = WarpingHead(TINY)
    good = jax.ShapeDtypeStruct((1, 8, 6, TINY.num_joints), jnp.float32)
    bad = jax.ShapeDtypeStruct((1, 8, 6, 5), jnp.float32)
    with pytest.raises(ValueError, match="psi"):
        jax.eval_shape(lambda a: head.init(_key(), a, a), bad)
    with pytest.raises(ValueError, match="maps shape"):
        jax.eval_shape(lambda a: head.init(_key(), a, a[:, :4]), good)

"""HRNet's torch ``state_dict`` keys and their places in the Flax variables of
``models.hrnet.HRNet``.

The Flax parameter paths mirror the official torch ``PoseHighResolutionNet``'s keys:
``stage2.0.branches.1.3.bn2.weight`` is
``params['stage2']['0']['branches']['1']['3']['bn2']['scale']``. Conv weights are torch OIHW
and Flax HWIO (transpose ``(2, 3, 1, 0)``); BN ``weight``/``bias`` are the ``scale``/``bias``
params, ``running_mean``/``running_var`` the ``mean``/``var`` batch stats, and
``num_batches_tracked`` has no counterpart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posewarper_jax.models.hrnet import NUM_STAGES, HRNetConfig

_STAT_NAMES = {"running_mean": "mean", "running_var": "var"}


def set_leaf(tree: dict, path: Sequence[str], value: Any) -> None:
    """Put ``value`` at ``path`` in the nested dicts ``tree``, creating the dicts on the way."""
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _is_conv_owner(name: str) -> bool | None:
    """True for a conv module name, False for a BN one, None if unknown (HRNet naming)."""
    if name in ("0", "final_layer") or (name.startswith("conv") and name[4:].isdigit()):
        return True
    if name == "1" or (name.startswith("bn") and name[2:].isdigit()):
        return False
    return None


def torch_key_to_flax_path(key: str) -> tuple[str, tuple[str, ...]] | None:
    """Where a torch HRNet ``state_dict`` entry lives in the flax variables.

    ``'a.b.conv1.weight'`` -> ``('params', ('a', 'b', 'conv1', 'kernel'))``; BN ``weight`` ->
    ``scale``, ``bias`` -> ``bias``, ``running_mean``/``running_var`` ->
    ``('batch_stats', (..., 'mean'/'var'))``. ``num_batches_tracked`` has no counterpart:
    None. A module is a conv when named ``conv<k>``, ``final_layer`` or ``0`` (first entry
    of a torch ``Sequential(conv, bn, ...)``), a BN when named ``bn<k>`` or ``1``.

    Raises:
      ValueError: for a key that is not of this form.
    """
    parts = key.split(".")
    if len(parts) < 2:
        raise ValueError(f"not an HRNet state_dict key: {key!r}")
    *mod, leaf = parts
    if leaf == "num_batches_tracked":
        return None
    is_conv = _is_conv_owner(mod[-1])
    if is_conv is None:
        raise ValueError(f"not an HRNet state_dict key (unknown module {mod[-1]!r}): {key!r}")
    if leaf in _STAT_NAMES and not is_conv:
        return "batch_stats", (*mod, _STAT_NAMES[leaf])
    if leaf == "weight":
        return "params", (*mod, "kernel" if is_conv else "scale")
    if leaf == "bias":
        return "params", (*mod, "bias")
    raise ValueError(f"not an HRNet state_dict key (unknown entry {leaf!r}): {key!r}")


def flax_path_to_torch_key(collection: str, path: Sequence[str]) -> str:
    """Inverse of ``torch_key_to_flax_path``: ``('params', ('conv1', 'kernel'))`` ->
    ``'conv1.weight'``."""
    *mod, leaf = path
    if collection == "batch_stats" and leaf in ("mean", "var"):
        name = "running_" + leaf
    elif collection == "params" and leaf in ("kernel", "scale"):
        name = "weight"
    elif collection == "params" and leaf == "bias":
        name = "bias"
    else:
        raise ValueError(f"not an HRNet variable: {collection}/{'/'.join(path)}")
    return ".".join((*mod, name))


def torch_to_flax_array(key: str, value: Any) -> np.ndarray:
    """A torch tensor's value (as an array) in flax layout: conv weights OIHW -> HWIO."""
    a = np.asarray(value)
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def expected_torch_state_dict_shapes(config: HRNetConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the official torch HRNet's ``state_dict`` for ``config``, with its shape,
    in the torch module's registration order; includes BN ``num_batches_tracked`` (shape ()).

    Built by walking the torch network's construction rules (not the flax module), so it
    serves as an independent check of the flax parameter tree.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_(prefix: str, cin: int, cout: int, k: int, bias: bool = False) -> None:
        shapes[f"{prefix}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{prefix}.bias"] = (cout,)

    def bn_(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    def projection_(prefix: str, cin: int, cout: int) -> None:
        if cin != cout:
            conv_(f"{prefix}.downsample.0", cin, cout, 1)
            bn_(f"{prefix}.downsample.1", cout)

    def basic_(prefix: str, cin: int, planes: int) -> None:
        conv_(f"{prefix}.conv1", cin, planes, 3)
        bn_(f"{prefix}.bn1", planes)
        conv_(f"{prefix}.conv2", planes, planes, 3)
        bn_(f"{prefix}.bn2", planes)
        projection_(prefix, cin, planes)

    def bottleneck_(prefix: str, cin: int, planes: int) -> None:
        conv_(f"{prefix}.conv1", cin, planes, 1)
        bn_(f"{prefix}.bn1", planes)
        conv_(f"{prefix}.conv2", planes, planes, 3)
        bn_(f"{prefix}.bn2", planes)
        conv_(f"{prefix}.conv3", planes, planes * 4, 1)
        bn_(f"{prefix}.bn3", planes * 4)
        projection_(prefix, cin, planes * 4)

    s = config.stem_channels
    conv_("conv1", 3, s, 3)
    bn_("bn1", s)
    conv_("conv2", s, s, 3)
    bn_("bn2", s)
    cin = s
    for b in range(config.layer1_blocks):
        bottleneck_(f"layer1.{b}", cin, s)
        cin = 4 * s

    pre = [4 * s]
    for k in range(NUM_STAGES):
        stage = k + 2
        cur = [config.width * 2**b for b in range(stage)]
        t = f"transition{stage - 1}"
        for i, c in enumerate(cur):
            if i < len(pre):
                if c != pre[i]:
                    conv_(f"{t}.{i}.0", pre[i], c, 3)
                    bn_(f"{t}.{i}.1", c)
            else:
                for j in range(i + 1 - len(pre)):
                    cout = c if j == i - len(pre) else pre[-1]
                    conv_(f"{t}.{i}.{j}.0", pre[-1], cout, 3)
                    bn_(f"{t}.{i}.{j}.1", cout)
        n_mod = config.num_modules[k]
        for m in range(n_mod):
            p = f"stage{stage}.{m}"
            for b, c in enumerate(cur):
                for blk in range(config.num_blocks):
                    basic_(f"{p}.branches.{b}.{blk}", c, c)
            multi = stage < 4 or m < n_mod - 1
            for i in range(len(cur) if multi else 1):
                for j in range(len(cur)):
                    f = f"{p}.fuse_layers.{i}.{j}"
                    if j > i:
                        conv_(f"{f}.0", cur[j], cur[i], 1)
                        bn_(f"{f}.1", cur[i])
                    elif j < i:
                        for step in range(i - j):
                            cout = cur[i] if step == i - j - 1 else cur[j]
                            conv_(f"{f}.{step}.0", cur[j], cout, 3)
                            bn_(f"{f}.{step}.1", cout)
        pre = cur

    conv_("final_layer", config.width, config.num_joints, config.final_conv_kernel, bias=True)
    return shapes


def count_torch_parameters(config: HRNetConfig) -> int:
    """Number of trainable parameters (torch ``parameters()``: conv weights and biases, BN
    weights and biases) of the official network for ``config``."""
    shapes = expected_torch_state_dict_shapes(config)
    return sum(
        math.prod(shape) for key, shape in shapes.items() if key.endswith((".weight", ".bias"))
    )


def variables_from_torch_state_dict(
    state_dict: Mapping[str, Any], config: HRNetConfig
) -> dict[str, dict]:
    """Flax variables ``{'params': ..., 'batch_stats': ...}`` (nested dicts of float32
    NumPy arrays) from a torch HRNet ``state_dict`` (values: arrays or CPU tensors).

    The keys must be exactly those of ``expected_torch_state_dict_shapes(config)`` (a missing
    ``num_batches_tracked`` is allowed) with those shapes.

    Raises:
      ValueError: naming missing, unexpected or mis-shaped keys.
    """
    expected = expected_torch_state_dict_shapes(config)
    optional = {k for k in expected if k.endswith(".num_batches_tracked")}
    missing = sorted(set(expected) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"torch state_dict does not match HRNet {config}: "
            f"{len(missing)} missing (e.g. {missing[:5]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})"
        )
    out: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, value in state_dict.items():
        array = np.asarray(value)
        if tuple(array.shape) != expected[key]:
            raise ValueError(
                f"torch state_dict entry {key!r} has shape {tuple(array.shape)}, "
                f"expected {expected[key]}"
            )
        target = torch_key_to_flax_path(key)
        if target is None:
            continue
        collection, path = target
        set_leaf(out[collection], path, torch_to_flax_array(key, array).astype(np.float32))
    return out

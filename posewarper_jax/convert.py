"""Import PyTorch HRNet / PoseWarper weights into this project's variables (an Orbax checkpoint).

Usage::

  python -m posewarper_jax.convert --src pose_hrnet_w48_384x288.pth --out /ckpt/hrnet_w48
  python -m posewarper_jax.convert --src posewarper.pth --out /ckpt/pw [--layout official]

Source layouts (``--layout``, detected by default):

* ``hrnet``: the official HRNet pose models (deep-high-resolution-net.pytorch), a plain
  ``state_dict`` with keys such as ``conv1.weight``, ``layer1.0.conv1.weight``,
  ``stage4.2.fuse_layers.0.1.0.weight``, ``final_layer.weight``.
* ``official``: the official PoseWarper release (facebookresearch/PoseWarper): the HRNet keys
  at top level plus the warping head ``offset_feats.*``, ``offsets{i}.weight``,
  ``deform_conv{i}.weight`` (i = 1..D).
* ``mmpose``: mmpose's port. HRNet keys under ``backbone.`` (mmpose's HRNet names its
  modules as the official one: ``conv1``/``bn1``, ``layer1``, ``transition{k}``,
  ``stage{k}.{m}.branches`` / ``fuse_layers``), the head under ``neck.`` (``offset_feats``,
  ``offset_layers.{i-1}``, ``deform_conv_layers.{i-1}``), and HRNet's heatmap layer as
  ``neck.trans_layer`` (PoseWarper models) or ``keypoint_head.final_layer`` (plain top-down
  HRNet models).

A file may hold the ``state_dict`` itself or a dict with a ``'state_dict'`` entry (training
checkpoints, mmpose's ``{'meta', 'state_dict', ...}``); a ``module.`` prefix on every key
(``nn.DataParallel``) is removed. BatchNorm ``num_batches_tracked`` entries are ignored.
``.npz`` files holding the ``state_dict``'s arrays need no PyTorch; ``.pth`` files are read
with ``torch.load(weights_only=True)`` (numpy scalars and arrays allowed, as mmpose's metadata
holds them), or with full unpickling when asked (``--unsafe-pickle``, trusted files only).

The network is read off the tensor shapes: the HRNet width from ``stage2.0.branches.0.0.conv1``,
module and block counts from the key indices, the number of joints J and the final kernel
from ``final_layer``, the head's width and depth from ``offset_feats`` and its number of
dilations from the offsets convs. Dilation *rates* are not stored in the weights: five offsets
convs are taken as the method's (3, 6, 12, 18, 24); any other count needs ``--dilations``.

Every key must be accounted for: unknown keys, missing keys and shapes that differ from the
network built from the inferred (or given) configuration are all listed in one
``ConversionError`` and nothing is written.

Targets (``--target``): ``hrnet`` gives HRNet variables (``params``/``batch_stats`` of
``models.hrnet.HRNet``); ``posewarper`` gives ``PoseWarper`` variables (``backbone`` and
``head`` subtrees), with a freshly initialised warping head when the source has none (seeded,
``--seed``). By default a source with a head gives ``posewarper``, one without ``hrnet``;
``--target hrnet`` on a PoseWarper source checks the head's keys and leaves them out.

Output: one Orbax ``StandardCheckpointer`` directory holding the pytree
``{'params': ..., 'batch_stats': ...}`` (float32) with the conversion's metadata (layout,
configurations, source file and its SHA-256) as its JSON ``custom_metadata``; read it back with
``load_converted``, and rebuild the module configurations with ``configs_from_metadata``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from posewarper_jax import cli
from posewarper_jax.cli import ExpectedError
from posewarper_jax.models.hrnet import (
    HRNET_VARIANTS,
    HRNetConfig,
    expected_torch_state_dict_shapes,
    get_hrnet_config,
    torch_key_to_flax_path,
    torch_to_flax_array,
    variables_from_torch_state_dict,
)
from posewarper_jax.models.posewarper import BACKBONE, HEAD
from posewarper_jax.models.warping import (
    HEAD_VARIANTS,
    WarpingHead,
    WarpingHeadConfig,
    get_head_config,
    head_key_map,
    head_torch_keys,
)

LAYOUTS = ("hrnet", "official", "mmpose")
TARGETS = ("hrnet", "posewarper")
# The method's dilation rates, in the order of the official offsets1..offsets5.
METHOD_DILATIONS = (3, 6, 12, 18, 24)
FORMAT_VERSION = 1
IGNORED_LEAF = "num_batches_tracked"
MODULE_PREFIX = "module."

_HRNET_FIELDS = (
    "width",
    "stem_channels",
    "layer1_blocks",
    "num_modules",
    "num_blocks",
    "num_joints",
    "final_conv_kernel",
)
_HEAD_FIELDS = ("num_joints", "channels", "num_blocks", "dilations")
_OFFICIAL_HEAD = re.compile(r"^(offset_feats\.|offsets\d+\.|deform_conv\d+\.)")
# mmpose's HRNet heatmap layer, by model type: PoseWarper neck, plain top-down head.
_MMPOSE_TRANS = "neck.trans_layer."
_MMPOSE_TOPDOWN = "keypoint_head.final_layer."


_KEY_KINDS = ("missing", "unknown", "mis-shaped")


class WeightFileError(ValueError, ExpectedError):
    """A weight file that cannot be read (empty, truncated, damaged, not a checkpoint) or an
    output that cannot be written; the message names the file and the reason."""


class ConversionError(ValueError, ExpectedError):
    """A state_dict that does not match the network; ``problems`` lists every offence.

    ``details`` summarises them in a few lines for the command line (``SHOW_ALL`` problems or
    fewer are listed one by one; more are counted by kind with examples).
    """

    SHOW_ALL = 12

    def __init__(
        self, problems: Sequence[str], source: str | None = None, matching: int | None = None
    ):
        self.problems = list(problems)
        self.source = source
        self.matching = matching  # how many of the source's keys the network has, if known
        what = source if source is not None else "the state_dict"
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"cannot convert {what}: {len(self.problems)} problem(s)\n{lines}")

    @property
    def details(self) -> list[str]:
        if len(self.problems) <= self.SHOW_ALL:
            return list(self.problems)
        kinds: dict[str, list[str]] = {}
        for p in self.problems:
            kind = p.split(" key ")[0] + " key" if p.split(" key ")[0] in _KEY_KINDS else "value"
            kinds.setdefault(kind, []).append(p)
        out = []
        if self.matching == 0:
            out.append(
                "none of its keys belongs to an HRNet or PoseWarper state_dict (official, "
                "PoseWarper or mmpose layout): is it a pose model's weights?"
            )
        for kind, items in kinds.items():
            examples = "; ".join(items[:2])
            out.append(f"{len(items)} x {kind}, e.g. {examples}")
        return out + ["(--debug lists every problem)"]


# ----------------------------------------------------------------------------- reading


def _to_numpy(value: Any) -> Any:
    """A torch tensor (duck-typed, torch is not imported here) or array-like -> ndarray."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        t = value.detach().cpu()
        # NumPy has no bfloat16: widen every non-native float (float32 is the target anyway).
        if t.is_floating_point() and str(t.dtype) not in ("torch.float32", "torch.float64"):
            t = t.float()
        return t.numpy()
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value)
    return value  # rejected by _value_problems with its type


def prepare_state_dict(obj: Any, source: str | None = None) -> dict[str, Any]:
    """Unwrap a loaded checkpoint into ``{key: ndarray}``.

    Accepts a ``state_dict`` or a dict holding one under ``'state_dict'``; strips a
    ``module.`` prefix present on every key; torch tensors become NumPy arrays (non-native
    float dtypes such as bfloat16 widened to float32).

    Raises:
      ValueError: for an object that is not a mapping of string keys.
    """
    what = source if source is not None else "the checkpoint"
    if hasattr(obj, "state_dict") and callable(obj.state_dict) and not isinstance(obj, Mapping):
        obj = obj.state_dict()  # a pickled nn.Module (only with full unpickling)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what}: expected a state_dict (a mapping), got {type(obj).__name__}")
    bad = [repr(k) for k in obj if not isinstance(k, str)]
    if bad:
        raise ValueError(f"{what}: state_dict keys must be strings, got {', '.join(bad[:10])}")
    keys = list(obj)
    strip = bool(keys) and all(k.startswith(MODULE_PREFIX) for k in keys)
    return {(k[len(MODULE_PREFIX) :] if strip else k): _to_numpy(v) for k, v in obj.items()}


def _numpy_safe_globals() -> list:
    """NumPy scalar/array reconstruction, allowed in ``torch.load(weights_only=True)``."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray

    allowed: list = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # Files pickled under NumPy 1.x name these functions numpy.core.multiarray.*.
    allowed += [
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
    ]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return allowed


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
_PICKLE_PROTO = 0x80  # the first opcode of a pickle of protocol 2 or later (torch's legacy)


def _zip_problem(path: str, kind: str) -> str | None:
    """Why the zip archive at ``path`` (torch's format or .npz) does not read, or None."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return (
            f"is truncated or damaged: a {kind} zip archive without its central directory "
            "(the file was cut short); fetch or copy it again"
        )
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()  # every member's CRC
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"is damaged ({kind} zip archive: {e}); fetch or copy it again"
    if bad is not None:
        return f"is damaged: member {bad!r} of its zip archive fails its CRC check; fetch it again"
    if kind == "torch" and not any(n.endswith("data.pkl") for n in names):
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        return f"is a zip archive but not a PyTorch checkpoint (no data.pkl; holds {shown})"
    return None


def _first_bytes(head: bytes) -> str:
    return " ".join(f"{b:02x}" for b in head[:8]) or "none"


def _read_npz(path: str, head: bytes) -> dict[str, Any]:
    if head.startswith(_NPY_MAGIC):
        raise WeightFileError(
            f"{path}: is a single .npy array, not an .npz archive of a state_dict (write one "
            "with np.savez(path, **{key: tensor.numpy() for key, tensor in state_dict.items()}))"
        )
    if not head.startswith(_ZIP_MAGIC):
        raise WeightFileError(
            f"{path}: is not an .npz archive (no zip header; first bytes {_first_bytes(head)})"
        )
    problem = _zip_problem(path, ".npz")
    if problem:
        raise WeightFileError(f"{path}: {problem}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickled" in str(e):
            raise WeightFileError(
                f"{path}: holds object arrays (pickled Python objects), not plain numeric "
                "arrays; save the state_dict's tensors as NumPy arrays (tensor.numpy())"
            ) from e
        raise WeightFileError(f"{path}: cannot be read as .npz: {e}") from e
    except (OSError, EOFError) as e:
        raise WeightFileError(f"{path}: is damaged ({e}); fetch or copy it again") from e
    return prepare_state_dict(arrays, path)


def read_checkpoint(path: str | os.PathLike, unsafe_pickle: bool = False) -> dict[str, Any]:
    """Read a ``.pth``/``.pt`` (torch) or ``.npz`` file into ``{key: ndarray}`` (see
    ``prepare_state_dict``). PyTorch is imported here, only for torch files.

    The file is looked at before it is unpickled, so that the error says what is wrong: empty,
    truncated (a zip archive without its central directory, a pickle that ends early),
    damaged (a member failing its CRC check), not a checkpoint at all (neither torch's zip
    format nor a pickle), or a valid pickle holding objects other than tensors, the only case
    where ``--unsafe-pickle`` can help.

    Args:
      path: the file.
      unsafe_pickle: load torch files with full unpickling (``weights_only=False``), which
        can run code from the file: only for trusted files that the restricted loader
        refuses.

    Raises:
      WeightFileError: unreadable file, missing PyTorch, or a file that is not a state_dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"checkpoint file {path!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise WeightFileError(
            f"{path}: is empty (0 bytes); the download or copy did not finish, fetch it again"
        )
    if path.endswith(".npz"):
        return _read_npz(path, head)
    if head.startswith(_ZIP_MAGIC):
        problem = _zip_problem(path, "torch")
        if problem:
            raise WeightFileError(f"{path}: {problem}")
    elif head[0] != _PICKLE_PROTO:
        kind = "an .npy array" if head.startswith(_NPY_MAGIC) else "random or other data"
        raise WeightFileError(
            f"{path}: is not a PyTorch checkpoint (neither torch's zip format nor a pickle; "
            f"first bytes {_first_bytes(head)}: {kind})"
        )
    try:
        import torch
    except ImportError:
        raise WeightFileError(
            f"reading {path!r} needs PyTorch (pip install 'posewarper_jax[convert]'); "
            "without it, save the state_dict's arrays to an .npz file and convert that"
        ) from None
    try:
        if unsafe_pickle:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            # torch < 2.5 has no allow-list: its restricted loader then refuses NumPy values.
            safe = getattr(torch.serialization, "safe_globals", None)
            with safe(_numpy_safe_globals()) if safe else contextlib.nullcontext():
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a broken file; all are reported
        refused = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if refused and not unsafe_pickle:
            raise WeightFileError(
                f"{path!r} holds objects other than tensors, numbers, strings and NumPy "
                f"arrays (refused: {', '.join(refused)}), which the restricted loader does "
                "not unpickle; if you trust the file, convert with --unsafe-pickle "
                "(unsafe_pickle=True)"
            ) from e
        text = " ".join(str(e).split())
        if isinstance(e, EOFError) or "truncated" in text or "EOF" in text:
            raise WeightFileError(
                f"{path}: is truncated (the pickle ends early: {text or type(e).__name__}); "
                "fetch or copy it again"
            ) from e
        raise WeightFileError(
            f"{path}: cannot be read as a PyTorch checkpoint "
            f"({type(e).__name__}: {text[:200] or 'no message'})"
        ) from e
    return prepare_state_dict(obj, path)


# ----------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class ConversionPlan:
    """Where every tensor of a (validated) state_dict goes.

    Attributes:
      layout: the source layout (one of ``LAYOUTS``).
      target: ``"hrnet"`` or ``"posewarper"``.
      variant: the registered HRNet variant matching ``hrnet_config`` (``"custom"`` if none).
      hrnet_config: the backbone's configuration.
      head_config: the output's warping head (None for an HRNet target).
      head_source: ``"checkpoint"``, ``"initialised"`` or None (no head in the output).
      backbone_keys: source key -> official HRNet key, for every HRNet tensor.
      head_keys: source key -> ``(collection, path under the head)`` for the head tensors
        carried into the output.
      ignored: ``num_batches_tracked`` keys.
      dropped: head keys of the source left out (``--target hrnet`` on a PoseWarper source).
    """

    layout: str
    target: str
    variant: str
    hrnet_config: HRNetConfig
    head_config: WarpingHeadConfig | None
    head_source: str | None
    backbone_keys: Mapping[str, str]
    head_keys: Mapping[str, tuple[str, tuple[str, ...]]]
    ignored: tuple[str, ...]
    dropped: tuple[str, ...]

    def abstract_variables(self) -> dict:
        """The output's variables as ``jax.ShapeDtypeStruct`` leaves (float32), no data."""

        def put(tree, collection, path, shape):
            node = tree.setdefault(collection, {})
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = jax.ShapeDtypeStruct(shape, jnp.float32)

        backbone: dict = {}
        for key, shape in expected_torch_state_dict_shapes(self.hrnet_config).items():
            where = torch_key_to_flax_path(key)
            if where is not None:
                put(backbone, *where, _flax_shape(key, shape))
        if self.target == "hrnet":
            return backbone
        if self.head_source == "initialised":
            head = jax.eval_shape(lambda: _init_head(self.head_config, 0))
        else:
            head = {}
            shapes = head_torch_keys(self.head_config, self.layout)
            for key, where in self.head_keys.items():
                put(head, *where, _flax_shape(key, shapes[key]))
        return _join(backbone, head)


def _flax_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape after ``torch_to_flax_array`` (a zero-stride stand-in: no memory)."""
    return torch_to_flax_array(key, np.broadcast_to(np.float32(0), shape)).shape


def _join(backbone: Mapping, head: Mapping) -> dict:
    return {
        c: {BACKBONE: dict(backbone.get(c, {})), HEAD: dict(head.get(c, {}))}
        for c in ("params", "batch_stats")
    }


def detect_layout(keys: Sequence[str]) -> str:
    """``"mmpose"`` if any key starts with ``backbone.``, ``"official"`` if any belongs to
    the official warping head (``offset_feats.``, ``offsets{i}.``, ``deform_conv{i}.``),
    else ``"hrnet"``."""
    if any(k.startswith("backbone.") for k in keys):
        return "mmpose"
    if any(_OFFICIAL_HEAD.match(k) for k in keys):
        return "official"
    return "hrnet"


def _count(keys: Sequence[str], pattern: str, base: int = 0) -> int:
    """``max(index) + 1 - base`` over keys matching ``pattern`` (one group), or 0."""
    rx = re.compile(pattern)
    found = [int(m.group(1)) for k in keys if (m := rx.match(k))]
    return max(found) + 1 - base if found else 0


def _dim(shapes: Mapping[str, tuple[int, ...]], key: str, axis: int) -> int | None:
    shape = shapes.get(key)
    return shape[axis] if shape is not None and len(shape) > axis and shape[axis] > 0 else None


def _first(*values: int | None, default: int) -> int:
    return next((v for v in values if v), default)


def _infer_hrnet(bb: Mapping[str, tuple[int, ...]], head_joints: int | None) -> dict[str, Any]:
    """HRNetConfig fields read off official-named HRNet shapes; a field without evidence
    takes the W32 default, so that the key comparison afterwards lists what is missing."""
    d = HRNET_VARIANTS["w32"]
    keys = list(bb)
    kernel = _dim(bb, "final_layer.weight", 2)
    return dict(
        width=_first(
            _dim(bb, "stage2.0.branches.0.0.conv1.weight", 0),
            _dim(bb, "transition1.0.0.weight", 0),
            _dim(bb, "final_layer.weight", 1),
            default=d.width,
        ),
        stem_channels=_first(
            _dim(bb, "conv1.weight", 0), _dim(bb, "bn1.weight", 0), default=d.stem_channels
        ),
        layer1_blocks=_first(_count(keys, r"layer1\.(\d+)\."), default=d.layer1_blocks),
        num_modules=tuple(
            _first(_count(keys, rf"stage{s}\.(\d+)\.branches\."), default=d.num_modules[s - 2])
            for s in (2, 3, 4)
        ),
        num_blocks=_first(_count(keys, r"stage2\.0\.branches\.0\.(\d+)\."), default=d.num_blocks),
        num_joints=_first(_dim(bb, "final_layer.weight", 0), head_joints, default=d.num_joints),
        final_conv_kernel=kernel if kernel in (1, 3) else d.final_conv_kernel,
    )


def _variant_name(config: HRNetConfig) -> str:
    """The registered variant with the same architecture (joints and final kernel aside)."""
    same = ("width", "stem_channels", "layer1_blocks", "num_modules", "num_blocks")
    for name, v in HRNET_VARIANTS.items():
        if all(getattr(v, f) == getattr(config, f) for f in same):
            return name
    return "custom"


def _head_variant_name(config: WarpingHeadConfig) -> str:
    for name, v in HEAD_VARIANTS.items():
        if (v.channels, v.num_blocks) == (config.channels, config.num_blocks):
            return name
    return "custom"


def _split(shapes: Mapping[str, tuple[int, ...]], layout: str):
    """Sort a state_dict's keys by role for ``layout``.

    Returns ``(src_name, backbone, head_keys, head_prefix, num_dilations)``: ``src_name``
    maps an official HRNet key to its name in the source; ``backbone`` holds the source's
    HRNet shapes under official names; ``head_keys`` the warping-head keys; ``head_prefix``
    their common prefix; ``num_dilations`` the number of dilation branches the keys show.
    """
    if layout == "mmpose":
        has_neck = any(k.startswith("neck.") for k in shapes)
        has_topdown = any(k.startswith(_MMPOSE_TOPDOWN) for k in shapes)
        final = _MMPOSE_TOPDOWN if has_topdown and not has_neck else _MMPOSE_TRANS

        def src_name(canon: str) -> str:
            if canon.startswith("final_layer."):
                return final + canon[len("final_layer.") :]
            return "backbone." + canon

        bb = {k[len("backbone.") :]: s for k, s in shapes.items() if k.startswith("backbone.")}
        bb.update(
            {"final_layer." + k[len(final) :]: s for k, s in shapes.items() if k.startswith(final)}
        )
        head_keys = [k for k in shapes if k.startswith("neck.") and not k.startswith(_MMPOSE_TRANS)]
        n_dil = max(
            _count(head_keys, r"neck\.offset_layers\.(\d+)\."),
            _count(head_keys, r"neck\.deform_conv_layers\.(\d+)\."),
        )
        return src_name, bb, head_keys, "neck.", n_dil

    head_keys = [k for k in shapes if _OFFICIAL_HEAD.match(k)] if layout == "official" else []
    bb = {k: s for k, s in shapes.items() if not (head_keys and _OFFICIAL_HEAD.match(k))}
    n_dil = max(
        _count(head_keys, r"offsets(\d+)\.", base=1),
        _count(head_keys, r"deform_conv(\d+)\.", base=1),
    )
    return (lambda canon: canon), bb, head_keys, "", n_dil


def plan_conversion(
    shapes: Mapping[str, Sequence[int]],
    *,
    layout: str = "auto",
    target: str = "auto",
    variant: str = "auto",
    num_joints: int | None = None,
    dilations: Sequence[int] | None = None,
    head_config: WarpingHeadConfig | None = None,
    head_variant: str | None = None,
    source: str | None = None,
) -> ConversionPlan:
    """Check a state_dict's keys and shapes and decide where each tensor goes.

    Args:
      shapes: ``{key: shape}`` of the (unwrapped, ``module.``-free) state_dict; torch
        layout (conv weights OIHW).
      layout: ``"auto"`` or one of ``LAYOUTS``.
      target: ``"auto"`` (``posewarper`` if the source has a warping head, else ``hrnet``)
        or one of ``TARGETS``.
      variant: ``"auto"`` (read the HRNet architecture off the shapes) or a name of
        ``models.hrnet.HRNET_VARIANTS``; J and the final kernel come from the weights.
      num_joints: J, if given; else read from the heatmap layer.
      dilations: rates of the source head's dilation branches (default the method's five
        when the source has five; required for any other count); also used for a fresh head.
      head_config: the head to initialise for a ``posewarper`` target when the source has
        none; its ``num_joints`` must be J. Default: ``head_variant`` with J joints.
      head_variant: name of ``models.warping.HEAD_VARIANTS`` for a fresh head (default
        ``"default"``, the method's), given J joints and ``dilations`` if set.
      source: a name for messages (the file).

    Returns:
      a ``ConversionPlan``.

    Raises:
      ConversionError: listing every missing, unknown and mis-shaped key (with expected
        and found shapes) and every configuration clash.
      ValueError: for an unknown option value.
    """
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    if target not in ("auto", *TARGETS):
        raise ValueError(f"target must be 'auto' or one of {TARGETS}, got {target!r}")
    if variant != "auto" and variant not in HRNET_VARIANTS:
        raise ValueError(
            f"variant must be 'auto' or one of {sorted(HRNET_VARIANTS)}, got {variant!r}"
        )
    if num_joints is not None and (not isinstance(num_joints, int) or num_joints < 1):
        raise ValueError(f"num_joints must be a positive int, got {num_joints!r}")
    if head_config is not None and head_variant is not None:
        raise ValueError("give head_config or head_variant, not both")
    if head_variant is not None and head_variant not in HEAD_VARIANTS:
        raise ValueError(
            f"head_variant must be one of {sorted(HEAD_VARIANTS)}, got {head_variant!r}"
        )
    if dilations is not None:
        dilations = tuple(dilations)
    shapes = {k: tuple(int(d) for d in s) for k, s in shapes.items()}
    if not shapes:
        raise ConversionError(["the state_dict is empty"], source)
    if layout == "auto":
        layout = detect_layout(list(shapes))
    problems: list[str] = []

    # 1. Split: HRNet tensors under their official names, and the head's keys.
    src_name, bb, head_keys, head_pre, n_dil = _split(shapes, layout)
    has_head = bool(head_keys) or layout == "official"
    if layout == "official" and not head_keys:
        problems.append(
            "layout 'official' but no warping-head keys (offset_feats.*, offsets{i}.weight, "
            "deform_conv{i}.weight); an HRNet checkpoint converts with layout 'hrnet'"
        )
    if target == "auto":
        target = "posewarper" if has_head else "hrnet"

    # 2. Configurations.
    proj = head_pre + "offset_feats.0.downsample.0.weight"
    fields = _infer_hrnet(bb, _dim(shapes, proj, 1))
    if variant == "auto":
        config = HRNetConfig(**fields)
        variant_name = _variant_name(config)
    else:
        config = get_hrnet_config(
            variant, num_joints=fields["num_joints"], final_conv_kernel=fields["final_conv_kernel"]
        )
        variant_name = variant
    if num_joints is not None:
        config = dataclasses.replace(config, num_joints=num_joints)
    j = config.num_joints

    source_head: WarpingHeadConfig | None = None
    if has_head:
        if dilations is None:
            if n_dil in (0, len(METHOD_DILATIONS)):
                dilations_used = METHOD_DILATIONS
            else:
                problems.append(
                    f"the head has {n_dil} dilation branches; their rates are not stored in "
                    "the weights: give them (--dilations / dilations=)"
                )
                dilations_used = METHOD_DILATIONS[:n_dil]
        else:
            if n_dil and len(dilations) != n_dil:
                problems.append(
                    f"dilations {dilations} gives {len(dilations)} rates but the head has "
                    f"{n_dil} dilation branches"
                )
            dilations_used = dilations
        source_head = WarpingHeadConfig(
            num_joints=j,
            channels=_first(
                _dim(shapes, proj, 0),
                _dim(shapes, head_pre + "offset_feats.0.conv1.weight", 0),
                default=WarpingHeadConfig.channels,
            ),
            num_blocks=_first(
                _count(head_keys, re.escape(head_pre) + r"offset_feats\.(\d+)\."),
                default=WarpingHeadConfig.num_blocks,
            ),
            dilations=dilations_used,
        )

    # 3. Every expected key with its shape, under the source's names.
    expected: dict[str, tuple[int, ...]] = {}
    backbone_keys: dict[str, str] = {}
    for canon, shape in expected_torch_state_dict_shapes(config).items():
        expected[src_name(canon)] = shape
        backbone_keys[src_name(canon)] = canon
    head_map: dict[str, tuple[str, tuple[str, ...]] | None] = {}
    if source_head is not None:
        head_layout = "mmpose" if layout == "mmpose" else "official"
        expected.update(head_torch_keys(source_head, head_layout))
        head_map = head_key_map(source_head, head_layout)

    optional = {k for k in expected if k.endswith("." + IGNORED_LEAF)}
    missing = sorted(set(expected) - set(shapes) - optional)
    unknown = sorted(set(shapes) - set(expected))
    misshaped = sorted(
        k for k in set(shapes) & set(expected) - optional if shapes[k] != expected[k]
    )
    problems += [f"missing key {k!r} (expected shape {expected[k]})" for k in missing]
    problems += [f"unknown key {k!r} (shape {shapes[k]})" for k in unknown]
    problems += [
        f"mis-shaped key {k!r}: expected {expected[k]}, found {shapes[k]}" for k in misshaped
    ]

    # 4. The output's head.
    head_source: str | None = None
    out_head: WarpingHeadConfig | None = None
    if target == "posewarper":
        if source_head is not None:
            out_head, head_source = source_head, "checkpoint"
        else:
            out_head = _fresh_head(head_config, head_variant, j, dilations)
            head_source = "initialised"
            if out_head.num_joints != j:
                problems.append(
                    f"head_config.num_joints={out_head.num_joints} differs from the "
                    f"backbone's {j} joints"
                )
    if head_source != "initialised" and (head_config is not None or head_variant is not None):
        problems.append(
            "a head configuration or variant applies only to a freshly initialised head "
            f"(target 'posewarper' from a source without one); here the target is {target!r}"
            + (" and the source has a head" if source_head is not None else "")
        )
    if out_head is None and source_head is None and dilations is not None:
        problems.append(f"dilations {dilations} given, but there is no warping head")
    if problems:
        raise ConversionError(problems, source, matching=len(set(shapes) & set(expected)))

    ignored = tuple(sorted(k for k in shapes if k in optional))
    head_keys_out = {k: w for k, w in head_map.items() if w is not None}
    carry_head = target == "posewarper" and head_source == "checkpoint"
    return ConversionPlan(
        layout=layout,
        target=target,
        variant=variant_name,
        hrnet_config=config,
        head_config=out_head,
        head_source=head_source,
        backbone_keys={k: c for k, c in backbone_keys.items() if k not in optional},
        head_keys=head_keys_out if carry_head else {},
        ignored=ignored,
        dropped=() if carry_head else tuple(sorted(head_keys_out)),
    )


def _fresh_head(
    head_config: WarpingHeadConfig | None,
    head_variant: str | None,
    num_joints: int,
    dilations: tuple[int, ...] | None,
) -> WarpingHeadConfig:
    if head_config is None:
        head_config = get_head_config(head_variant or "default", num_joints=num_joints)
        if head_variant is None and dilations is None:
            dilations = METHOD_DILATIONS
    if dilations is not None:
        head_config = dataclasses.replace(head_config, dilations=dilations)
    return head_config


# ----------------------------------------------------------------------------- converting


@functools.lru_cache(maxsize=8)
def _head_initialiser(config: WarpingHeadConfig):
    """``key -> head variables``, compiled once per configuration (compiling the random
    initialisers dominates; running init op by op is slower still)."""
    # Parameters do not depend on the spatial size: a small map suffices.
    x = jnp.zeros((1, 8, 8, config.num_joints), jnp.float32)
    return jax.jit(lambda key: WarpingHead(config).init(key, x, x))


def _init_head(config: WarpingHeadConfig, seed: int) -> dict:
    """Freshly initialised head variables (the module's own initialisers)."""
    return _head_initialiser(config)(jax.random.PRNGKey(seed))


def _value_problems(state_dict: Mapping[str, Any]) -> list[str]:
    """Non-array values, non-float tensors and non-finite entries."""
    problems = []
    for key, value in state_dict.items():
        if key.endswith("." + IGNORED_LEAF):
            continue
        if not isinstance(value, np.ndarray):
            problems.append(f"key {key!r} holds a {type(value).__name__}, not a tensor")
        elif not np.issubdtype(value.dtype, np.floating):
            problems.append(f"key {key!r} has dtype {value.dtype}, expected a float tensor")
        elif not np.all(np.isfinite(value)):
            problems.append(f"key {key!r} holds non-finite values (NaN or inf)")
    return problems


def _set(tree: dict, path: Sequence[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def apply_plan(plan: ConversionPlan, state_dict: Mapping[str, Any], seed: int = 0) -> dict:
    """The output variables ``{'params', 'batch_stats'}`` (nested dicts of float32 NumPy
    arrays, conv kernels HWIO) from a state_dict that ``plan`` was made for."""
    canon = {c: state_dict[k] for k, c in plan.backbone_keys.items()}
    backbone = variables_from_torch_state_dict(canon, plan.hrnet_config)
    if plan.target == "hrnet":
        return backbone
    if plan.head_source == "initialised":
        head = jax.tree.map(np.asarray, _init_head(plan.head_config, seed))
    else:
        head = {"params": {}, "batch_stats": {}}
        for key, (collection, path) in plan.head_keys.items():
            value = torch_to_flax_array(key, state_dict[key]).astype(np.float32)
            _set(head[collection], path, value)
    return _join(backbone, head)


def convert_state_dict(
    state_dict: Mapping[str, Any],
    *,
    layout: str = "auto",
    target: str = "auto",
    variant: str = "auto",
    num_joints: int | None = None,
    dilations: Sequence[int] | None = None,
    head_config: WarpingHeadConfig | None = None,
    head_variant: str | None = None,
    seed: int = 0,
) -> dict:
    """Convert a torch ``state_dict`` (arrays or tensors; see ``prepare_state_dict`` for
    accepted wrappings) into this project's variables; options as in ``plan_conversion``.

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` of float32 NumPy arrays (HRNet variables, or
      PoseWarper variables with ``backbone`` and ``head`` subtrees).

    Raises:
      ConversionError: listing every problem (keys, shapes, dtypes, non-finite values).
    """
    options = dict(layout=layout, target=target, variant=variant, num_joints=num_joints)
    options.update(dilations=dilations, head_config=head_config, head_variant=head_variant)
    return _convert(state_dict, None, seed=seed, **options)[0]


def _convert(
    state_dict: Mapping[str, Any], source: str | None, *, seed: int, **options: Any
) -> tuple[dict, ConversionPlan]:
    sd = prepare_state_dict(state_dict, source)
    value_problems = _value_problems(sd)
    shapes = {k: np.shape(v) for k, v in sd.items()}
    try:
        plan = plan_conversion(shapes, source=source, **options)
    except ConversionError as e:
        raise ConversionError(value_problems + e.problems, source, e.matching) from None
    if value_problems:
        raise ConversionError(value_problems, source)
    return apply_plan(plan, sd, seed), plan


def _config_dict(config: Any, fields: Sequence[str]) -> dict[str, Any]:
    out = {}
    for f in fields:
        v = getattr(config, f)
        out[f] = list(v) if isinstance(v, tuple) else v
    return out


def _count_leaves(tree: Any) -> tuple[int, int]:
    leaves = jax.tree.leaves(tree)
    return len(leaves), sum(math.prod(np.shape(x)) for x in leaves)


def conversion_metadata(
    plan: ConversionPlan,
    variables: Mapping[str, Any],
    source: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """JSON-serialisable description of a conversion (stored with the checkpoint)."""
    n_params, size_params = _count_leaves(variables["params"])
    n_stats, size_stats = _count_leaves(variables.get("batch_stats", {}))
    head = plan.head_config
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "layout": plan.layout,
        "target": plan.target,
        "variant": plan.variant,
        "num_joints": plan.hrnet_config.num_joints,
        "hrnet": _config_dict(plan.hrnet_config, _HRNET_FIELDS),
        "head": None if head is None else _config_dict(head, _HEAD_FIELDS),
        "head_variant": None if head is None else _head_variant_name(head),
        "head_source": plan.head_source,
        "dilations": None if head is None else list(head.dilations),
        "seed": seed if plan.head_source == "initialised" else None,
        "source": None if source is None else os.path.abspath(source),
        "source_sha256": None,
        "num_source_tensors": len(plan.backbone_keys) + len(plan.head_keys),
        "num_ignored": len(plan.ignored),
        "num_dropped": len(plan.dropped),
        "num_param_arrays": n_params,
        "num_params": size_params,
        "num_batch_stats_arrays": n_stats,
        "num_batch_stats": size_stats,
    }
    if source is not None and os.path.isfile(source):
        digest = hashlib.sha256()
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        meta["source_sha256"] = digest.hexdigest()
    return meta


def configs_from_metadata(
    metadata: Mapping[str, Any],
) -> tuple[HRNetConfig, WarpingHeadConfig | None]:
    """The ``HRNetConfig`` and ``WarpingHeadConfig`` (None for an HRNet target) of a
    converted checkpoint, float32 (replace ``dtype`` fields as needed)."""
    h = dict(metadata["hrnet"])
    h["num_modules"] = tuple(h["num_modules"])
    head = metadata.get("head")
    if head is not None:
        head = WarpingHeadConfig(**{**head, "dilations": tuple(head["dilations"])})
    return HRNetConfig(**h), head


# ----------------------------------------------------------------------------- orbax


def save_converted(
    out: str | os.PathLike,
    variables: Mapping[str, Any],
    metadata: Mapping[str, Any],
    overwrite: bool = False,
) -> None:
    """Write ``variables`` as an Orbax ``StandardCheckpointer`` checkpoint at ``out`` with
    ``metadata`` as its custom metadata. Orbax writes to a temporary directory and renames
    it when complete, so a failed write leaves nothing at ``out``.

    The write is synchronous: a failure raises here at once. (Orbax's asynchronous
    ``StandardCheckpointer`` left threads waiting for the coordination timeout after a
    failed write, so the process hung.)

    Raises:
      WeightFileError: ``out`` exists and ``overwrite`` is False, or its folder cannot be
        written to.
      cli.WriteError: the write failed for lack of space, quota or permission.
    """
    import orbax.checkpoint as ocp

    from posewarper_jax import cli, storage

    out = storage.abspath(out)
    if storage.exists(out) and not overwrite:
        raise WeightFileError(f"output {out!r} exists; choose another path or overwrite")
    try:
        cli.check_writable_dir(storage.dirname(out), "the output's folder")
    except cli.ExpectedError as e:
        raise WeightFileError(str(e)) from e
    try:
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
            ckptr.save(
                storage.epath_of(out),
                dict(variables),
                force=overwrite,
                custom_metadata=dict(metadata),
            )
    except OSError as e:
        if cli.storage_error(e):
            raise cli.write_error(out, e, "the converted checkpoint") from e
        raise WeightFileError(f"{out}: writing the converted checkpoint failed: {e}") from e


def load_converted(path: str | os.PathLike, target: Any = None) -> tuple[dict, dict]:
    """Read a checkpoint written by ``save_converted`` (the ``convert`` command).

    Args:
      path: the checkpoint directory.
      target: optional pytree of ``jax.ShapeDtypeStruct`` (with ``sharding``) or arrays of
        the same structure, to restore straight into sharded device arrays; default NumPy.

    Returns:
      ``(variables, metadata)``: ``{'params', 'batch_stats'}`` float32 arrays and the
      conversion's metadata (see ``conversion_metadata``; ``configs_from_metadata`` turns it
      into module configurations).

    Raises:
      ValueError: if ``path`` is not a converted checkpoint.
    """
    import orbax.checkpoint as ocp

    from posewarper_jax import storage

    path = storage.abspath(path)
    if not storage.isdir(path):
        raise ValueError(f"converted checkpoint {path!r} does not exist")
    ckptr = ocp.StandardCheckpointer()
    where = path
    path = storage.epath_of(where)
    metadata = ckptr.metadata(path).custom_metadata or {}
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{where!r} is not a converted checkpoint (format_version "
            f"{metadata.get('format_version')!r}, expected {FORMAT_VERSION})"
        )
    variables = ckptr.restore(path) if target is None else ckptr.restore(path, target)
    return variables, dict(metadata)


def convert_file(
    src: str | os.PathLike,
    out: str | os.PathLike | None,
    *,
    layout: str = "auto",
    target: str = "auto",
    variant: str = "auto",
    num_joints: int | None = None,
    dilations: Sequence[int] | None = None,
    head_config: WarpingHeadConfig | None = None,
    head_variant: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    unsafe_pickle: bool = False,
) -> tuple[dict, dict]:
    """Read ``src``, convert (options as in ``plan_conversion``) and, unless ``out`` is
    None, write the Orbax checkpoint. Nothing is written if any check fails.

    Returns:
      ``(variables, metadata)``.
    """
    src = os.fspath(src)
    from posewarper_jax import storage

    if out is not None and storage.exists(out) and not overwrite:
        raise WeightFileError(f"output {os.fspath(out)!r} exists; choose another path or overwrite")
    if out is not None:  # before the work: an output that cannot be written fails at once
        from posewarper_jax import cli

        try:
            cli.check_writable_dir(storage.dirname(storage.abspath(out)), "the output's folder")
        except cli.ExpectedError as e:
            raise WeightFileError(f"--out {os.fspath(out)}: {e}") from e
    state_dict = read_checkpoint(src, unsafe_pickle=unsafe_pickle)
    options = dict(layout=layout, target=target, variant=variant, num_joints=num_joints)
    options.update(dilations=dilations, head_config=head_config, head_variant=head_variant)
    variables, plan = _convert(state_dict, src, seed=seed, **options)
    metadata = conversion_metadata(plan, variables, src, seed)
    if out is not None:
        save_converted(out, variables, metadata, overwrite=overwrite)
    return variables, metadata


# ----------------------------------------------------------------------------- command line


def _parse_dilations(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"dilations must be ints like 3,6,12, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"dilations must be positive ints, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m posewarper_jax.convert",
        description="Convert a PyTorch HRNet/PoseWarper checkpoint (.pth or .npz state_dict) "
        "into an Orbax checkpoint of posewarper_jax variables.",
    )
    p.add_argument("--src", required=True, help="source .pth/.pt (torch) or .npz file")
    p.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    p.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS))
    p.add_argument("--target", default="auto", choices=("auto", *TARGETS))
    p.add_argument("--variant", default="auto", choices=("auto", *sorted(HRNET_VARIANTS)))
    p.add_argument("--num-joints", "--num_joints", dest="num_joints", type=int, default=None)
    p.add_argument(
        "--dilations",
        type=_parse_dilations,
        default=None,
        help="comma-separated dilation rates of the head (default 3,6,12,18,24 for 5 branches)",
    )
    p.add_argument(
        "--head-variant",
        "--head_variant",
        dest="head_variant",
        default=None,
        choices=sorted(HEAD_VARIANTS),
        help="head to initialise when the source has none (default: 'default')",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of a freshly initialised head")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--unsafe-pickle",
        "--unsafe_pickle",
        dest="unsafe_pickle",
        action="store_true",
        help="load .pth files with full unpickling (runs code from the file: trusted files only)",
    )
    cli.add_debug_flag(p)
    return p


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 2 on bad input: one
    line ``error: ...`` naming the file and the reason; ``--debug`` shows the traceback)."""
    args = _parser().parse_args(argv)
    # The module reports bad input as ValueError throughout (option values too).
    return cli.guarded(lambda: _run(args), debug=args.debug, expected=(ValueError,))


def _run(args: argparse.Namespace) -> int:
    _, meta = convert_file(
        args.src,
        args.out,
        layout=args.layout,
        target=args.target,
        variant=args.variant,
        num_joints=args.num_joints,
        dilations=args.dilations,
        head_variant=args.head_variant,
        seed=args.seed,
        overwrite=args.overwrite,
        unsafe_pickle=args.unsafe_pickle,
    )
    h = meta["hrnet"]
    lines = [
        f"converted {args.src} -> {os.path.abspath(args.out)}",
        f"  layout {meta['layout']}, target {meta['target']}",
        f"  HRNet variant {meta['variant']}: width {h['width']}, {h['num_joints']} joints, "
        f"final kernel {h['final_conv_kernel']}x{h['final_conv_kernel']}",
    ]
    if meta["head"] is not None:
        hd = meta["head"]
        lines.append(
            f"  warping head ({meta['head_source']}): {hd['channels']} channels, "
            f"{hd['num_blocks']} blocks, dilations {tuple(hd['dilations'])}"
        )
    lines.append(
        f"  source tensors: {meta['num_source_tensors']} converted, {meta['num_ignored']} "
        f"ignored (num_batches_tracked), {meta['num_dropped']} head tensors left out"
    )
    lines.append(
        f"  written: {meta['num_param_arrays']} param arrays ({_millions(meta['num_params'])} "
        f"values), {meta['num_batch_stats_arrays']} batch_stats arrays "
        f"({_millions(meta['num_batch_stats'])} values)"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

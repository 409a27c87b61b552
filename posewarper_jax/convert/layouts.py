"""Recognising a state_dict's layout and reading the network off its tensor shapes.

Layouts (see the package docstring): ``hrnet`` (the official HRNet pose models), ``official``
(the official PoseWarper release: HRNet keys plus the warping head at top level) and
``mmpose`` (HRNet under ``backbone.``, the head under ``neck.``, HRNet's heatmap layer as
``neck.trans_layer`` or ``keypoint_head.final_layer``). The helpers here serve
``plan.plan_conversion``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from posewarper_jax.models.hrnet import HRNET_VARIANTS, HRNetConfig

LAYOUTS = ("hrnet", "official", "mmpose")
_OFFICIAL_HEAD = re.compile(r"^(offset_feats\.|offsets\d+\.|deform_conv\d+\.)")
# mmpose's HRNet heatmap layer, by model type: PoseWarper neck, plain top-down head.
_MMPOSE_TRANS = "neck.trans_layer."
_MMPOSE_TOPDOWN = "keypoint_head.final_layer."


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

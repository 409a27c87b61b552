"""Planning a conversion: check a state_dict's keys and shapes against the network read off
them (or given) and decide where every tensor goes (``plan_conversion`` -> ``ConversionPlan``).

Every key must be accounted for: unknown keys, missing keys and shapes that differ from the
network built from the inferred (or given) configuration are all listed in one
``ConversionError``. A ``posewarper`` target from a source without a warping head gets a
freshly initialised one (``init_head``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from posewarper_jax.convert.errors import ConversionError
from posewarper_jax.convert.head_keys import head_key_map, head_torch_keys
from posewarper_jax.convert.hrnet_keys import (
    expected_torch_state_dict_shapes,
    set_leaf,
    torch_key_to_flax_path,
    torch_to_flax_array,
)
from posewarper_jax.convert.layouts import (
    LAYOUTS,
    _count,
    _dim,
    _first,
    _infer_hrnet,
    _split,
    _variant_name,
    detect_layout,
)
from posewarper_jax.models.hrnet import HRNET_VARIANTS, HRNetConfig, get_hrnet_config
from posewarper_jax.models.posewarper import BACKBONE, HEAD
from posewarper_jax.models.warping import (
    HEAD_VARIANTS,
    WarpingHead,
    WarpingHeadConfig,
    get_head_config,
)

TARGETS = ("hrnet", "posewarper")
# The method's dilation rates, in the order of the official offsets1..offsets5.
METHOD_DILATIONS = (3, 6, 12, 18, 24)
IGNORED_LEAF = "num_batches_tracked"


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
            set_leaf(tree, (collection, *path), jax.ShapeDtypeStruct(shape, jnp.float32))

        backbone: dict = {}
        for key, shape in expected_torch_state_dict_shapes(self.hrnet_config).items():
            where = torch_key_to_flax_path(key)
            if where is not None:
                put(backbone, *where, _flax_shape(key, shape))
        if self.target == "hrnet":
            return backbone
        if self.head_source == "initialised":
            head = jax.eval_shape(lambda: init_head(self.head_config, 0))
        else:
            head = {}
            shapes = head_torch_keys(self.head_config, self.layout)
            for key, where in self.head_keys.items():
                put(head, *where, _flax_shape(key, shapes[key]))
        return join_variables(backbone, head)


def _flax_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape after ``torch_to_flax_array`` (a zero-stride stand-in: no memory)."""
    return torch_to_flax_array(key, np.broadcast_to(np.float32(0), shape)).shape


def join_variables(backbone: Mapping, head: Mapping) -> dict:
    """PoseWarper variables from HRNet variables and head variables: each collection holds
    ``backbone`` and ``head`` subtrees."""
    return {
        c: {BACKBONE: dict(backbone.get(c, {})), HEAD: dict(head.get(c, {}))}
        for c in ("params", "batch_stats")
    }


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


# ----------------------------------------------------------------------------- a fresh head


def _fresh_head(
    head_config: WarpingHeadConfig | None,
    head_variant: str | None,
    num_joints: int,
    dilations: tuple[int, ...] | None,
) -> WarpingHeadConfig:
    """The configuration of a freshly initialised head: ``head_config``, else ``head_variant``
    (default ``"default"``) with J joints; ``dilations`` replace its rates (the method's
    when nothing is given)."""
    if head_config is None:
        head_config = get_head_config(head_variant or "default", num_joints=num_joints)
        if head_variant is None and dilations is None:
            dilations = METHOD_DILATIONS
    if dilations is not None:
        head_config = dataclasses.replace(head_config, dilations=dilations)
    return head_config


@functools.lru_cache(maxsize=8)
def _head_initialiser(config: WarpingHeadConfig):
    """``key -> head variables``, compiled once per configuration (compiling the random
    initialisers dominates; running init op by op is slower still)."""
    # Parameters do not depend on the spatial size: a small map suffices.
    x = jnp.zeros((1, 8, 8, config.num_joints), jnp.float32)
    return jax.jit(lambda key: WarpingHead(config).init(key, x, x))


def init_head(config: WarpingHeadConfig, seed: int) -> dict:
    """Freshly initialised head variables (the module's own initialisers)."""
    return _head_initialiser(config)(jax.random.PRNGKey(seed))

"""Converting: a state_dict (or a weight file) and its plan -> this project's variables
(nested dicts of float32 NumPy arrays, conv kernels HWIO), checked tensor by tensor."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from posewarper_jax.convert.checkpoint import conversion_metadata, save_converted
from posewarper_jax.convert.errors import ConversionError, WeightFileError
from posewarper_jax.convert.files import prepare_state_dict, read_checkpoint
from posewarper_jax.convert.hrnet_keys import (
    set_leaf,
    torch_to_flax_array,
    variables_from_torch_state_dict,
)
from posewarper_jax.convert.plan import (
    IGNORED_LEAF,
    ConversionPlan,
    init_head,
    join_variables,
    plan_conversion,
)


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


def apply_plan(plan: ConversionPlan, state_dict: Mapping[str, Any], seed: int = 0) -> dict:
    """The output variables ``{'params', 'batch_stats'}`` (nested dicts of float32 NumPy
    arrays, conv kernels HWIO) from a state_dict that ``plan`` was made for."""
    canon = {c: state_dict[k] for k, c in plan.backbone_keys.items()}
    backbone = variables_from_torch_state_dict(canon, plan.hrnet_config)
    if plan.target == "hrnet":
        return backbone
    if plan.head_source == "initialised":
        head = jax.tree.map(np.asarray, init_head(plan.head_config, seed))
    else:
        head = {"params": {}, "batch_stats": {}}
        for key, (collection, path) in plan.head_keys.items():
            value = torch_to_flax_array(key, state_dict[key]).astype(np.float32)
            set_leaf(head[collection], path, value)
    return join_variables(backbone, head)


def convert_state_dict(state_dict: Mapping[str, Any], *, seed: int = 0, **options: Any) -> dict:
    """Convert a torch ``state_dict`` (arrays or tensors; see ``prepare_state_dict`` for
    accepted wrappings) into this project's variables.

    Args:
      state_dict: the source tensors.
      seed: seed of a freshly initialised head.
      **options: ``layout``, ``target``, ``variant``, ``num_joints``, ``dilations``,
        ``head_config``, ``head_variant``, as in ``plan_conversion``.

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` of float32 NumPy arrays (HRNet variables, or
      PoseWarper variables with ``backbone`` and ``head`` subtrees).

    Raises:
      ConversionError: listing every problem (keys, shapes, dtypes, non-finite values).
    """
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


def convert_file(
    src: str | os.PathLike,
    out: str | os.PathLike | None,
    *,
    seed: int = 0,
    overwrite: bool = False,
    unsafe_pickle: bool = False,
    **options: Any,
) -> tuple[dict, dict]:
    """Read ``src``, convert and, unless ``out`` is None, write the Orbax checkpoint. Nothing
    is written if any check fails.

    Args:
      src: the weight file (see ``read_checkpoint``).
      out: the output checkpoint directory, or None to write nothing.
      seed: seed of a freshly initialised head.
      overwrite: replace an existing ``out``.
      unsafe_pickle: load torch files with full unpickling (see ``read_checkpoint``).
      **options: ``layout``, ``target``, ``variant``, ``num_joints``, ``dilations``,
        ``head_config``, ``head_variant``, as in ``plan_conversion``.

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
    variables, plan = _convert(state_dict, src, seed=seed, **options)
    metadata = conversion_metadata(plan, variables, src, seed)
    if out is not None:
        save_converted(out, variables, metadata, overwrite=overwrite)
    return variables, metadata

"""The converted checkpoint: one Orbax ``StandardCheckpointer`` directory holding the pytree
``{'params': ..., 'batch_stats': ...}`` (float32) with the conversion's metadata (layout,
configurations, source file and its SHA-256) as its JSON ``custom_metadata``.

``save_converted`` writes it, ``load_converted`` reads it back, ``configs_from_metadata``
rebuilds the module configurations.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from posewarper_jax.convert.errors import WeightFileError
from posewarper_jax.convert.plan import ConversionPlan
from posewarper_jax.models.hrnet import HRNetConfig
from posewarper_jax.models.warping import HEAD_VARIANTS, WarpingHeadConfig

FORMAT_VERSION = 1

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


def _head_variant_name(config: WarpingHeadConfig) -> str:
    for name, v in HEAD_VARIANTS.items():
        if (v.channels, v.num_blocks) == (config.channels, config.num_blocks):
            return name
    return "custom"


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
        from posewarper_jax import fileio

        meta["source_sha256"] = fileio.sha256_file(source)
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

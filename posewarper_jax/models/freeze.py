"""Which parameters train in which stage, as optimizer masks.

Stage 1 trains the backbone alone (the head is absent or left untouched); stage 2 trains
the warping head with the backbone frozen. Freezing is a property of the optimizer, not of
the module: ``trainable_mask`` gives a bool pytree, ``trainable_labels`` the labels for
``optax.multi_transform`` and ``freeze_optimizer`` wraps an optimizer so frozen leaves get
exactly zero updates and no optimizer state.

Note that ``optax.masked(tx, mask)`` alone does not freeze: it passes the *incoming
updates* (the raw gradients) through unchanged for masked-out leaves. Pair it with zeroed
updates, as ``freeze_optimizer`` does.

The BatchNorm side of freezing (running statistics used and kept, or batch statistics)
is ``PoseWarper.backbone_bn``; the gradient side is ``PoseWarper.freeze_backbone``
(``jax.lax.stop_gradient`` on the backbone heatmaps in the warping modes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

from posewarper_jax.models.posewarper import BACKBONE, HEAD

STAGES = (1, 2)
TRAINABLE = "trainable"
FROZEN = "frozen"


def _trainable_parts(params: Mapping[str, Any], stage: int) -> dict[str, bool]:
    if stage not in STAGES:
        raise ValueError(f"stage must be 1 (backbone) or 2 (warping head), got {stage!r}")
    if not isinstance(params, Mapping):
        raise ValueError(
            f"params must be the PoseWarper 'params' mapping, got {type(params).__name__}"
        )
    unknown = sorted(set(params) - {BACKBONE, HEAD})
    if unknown:
        raise ValueError(
            f"params must hold only {BACKBONE!r} and {HEAD!r} (PoseWarper's 'params' "
            f"collection, not the whole variables dict), got top-level keys {unknown}"
        )
    if stage == 1 and BACKBONE not in params:
        raise ValueError(f"stage 1 trains the backbone but params have no {BACKBONE!r}")
    if stage == 2 and HEAD not in params:
        raise ValueError(f"stage 2 trains the warping head but params have no {HEAD!r}")
    return {BACKBONE: stage == 1, HEAD: stage == 2}


def trainable_mask(params: Mapping[str, Any], stage: int) -> dict[str, Any]:
    """Bool pytree shaped like ``params``: True where the leaf trains in ``stage``.

    Args:
      params: PoseWarper's ``params`` collection (top-level keys ``backbone`` and/or
        ``head``).
      stage: 1 (backbone only; a head, if present, is frozen) or 2 (head only).

    Raises:
      ValueError: for another stage, other top-level keys, or a missing trained part.
    """
    parts = _trainable_parts(params, stage)
    return {k: jax.tree.map(lambda _, v=parts[k]: v, sub) for k, sub in params.items()}


def trainable_labels(params: Mapping[str, Any], stage: int) -> dict[str, Any]:
    """Like ``trainable_mask`` with labels ``"trainable"``/``"frozen"`` for
    ``optax.multi_transform``."""
    mask = trainable_mask(params, stage)
    return jax.tree.map(lambda m: TRAINABLE if m else FROZEN, mask)


def freeze_optimizer(tx: optax.GradientTransformation, stage: int) -> optax.GradientTransformation:
    """``tx`` on the leaves that train in ``stage``; zero updates (and no state) elsewhere.

    Frozen leaves stay bitwise unchanged under ``optax.apply_updates`` whatever their
    gradients, and the optimizer keeps no moments for them (for a frozen HRNet-W48 that is
    2 x 63.6M floats saved with Adam).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be 1 (backbone) or 2 (warping head), got {stage!r}")
    return optax.multi_transform(
        {TRAINABLE: tx, FROZEN: optax.set_to_zero()},
        lambda params: trainable_labels(params, stage),
    )

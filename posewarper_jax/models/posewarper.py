"""PoseWarper: an HRNet backbone plus the warping head, over video crops.

Video tensors are ``[B, T, H, W, 3]`` (time second). Frames are folded batch-major,
``[B * T, H, W, 3]``, for the backbone, so a batch sharded over its first axis keeps each
clip's frames on one device.

Modes (methods, usable as ``model.apply(variables, ..., method="pair")``):

* ``heatmaps(frames, train)``: backbone heatmaps ``[B, T, h, w, J]`` (stage 1 and
  single-frame inference; the backbone trains normally here).
* ``pair(frames, train)``: training. t=0 is the labeled frame A, t=1 the supporting frame
  B; psi = f_A - f_B, f_B is warped; the result is compared with A's ground truth.
* ``propagate(frames, maps_A)``: psi = f_B - f_A; the given maps of A (e.g. its ground-truth
  Gaussians) are warped onto B.
* ``aggregate(frames, weights, valid, center)``: for each frame t+delta of a window
  (delta = 0 included) psi = f_t - f_{t+delta}, f_{t+delta} is warped onto t; weighted sum.
* ``cycle(frames)``: f_A warped onto B (psi = f_B - f_A), then the result warped back onto A
  (psi = f_A - f_B): cycled maps for A, for a cycle-consistency loss.
* ``__call__`` is ``pair``; ``model.init(rng, frames_[B,2,H,W,3])`` creates every variable
  (``method="heatmaps"`` creates only the backbone's).

The warping modes treat the backbone as frozen by default (``freeze_backbone=True``, stage
2): its heatmaps pass through ``jax.lax.stop_gradient``, so no backbone gradient is computed,
and ``backbone_bn`` picks how its BatchNorm behaves when ``train=True``:

* ``"frozen"`` (default): the backbone runs with ``train=False``: running statistics
  normalise and are never updated. The backbone computes exactly what stage 1 evaluated.
* ``"batch"``: the backbone runs with ``train=True`` as in the original release: each batch
  is normalised with its own statistics, and the running statistics in the returned
  ``batch_stats['backbone']`` move with every step (a model evaluated afterwards with
  ``train=False`` sees drifted statistics unless the caller discards those updates).

Variables: ``params``/``batch_stats`` hold ``backbone`` (see ``hrnet.py``) and ``head`` (see
``warping.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from posewarper_jax.models.hrnet import HRNet, HRNetConfig
from posewarper_jax.models.warping import WarpingHead, WarpingHeadConfig

BACKBONE = "backbone"
HEAD = "head"
BACKBONE_BN_MODES = ("frozen", "batch")

# Default aggregation weights by window length, in time order (centre frame in the middle).
# T = 5 is the paper's; T = 3 and 7 are those of mmpose's port. Other T: uniform.
AGGREGATION_WEIGHTS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    3: (0.3, 0.4, 0.3),
    5: (0.1, 0.25, 0.3, 0.25, 0.1),
    7: (0.05, 0.1, 0.2, 0.3, 0.2, 0.1, 0.05),
}


def default_aggregation_weights(num_frames: int) -> tuple[float, ...]:
    """Window weights in time order for a window centred on its middle frame."""
    if num_frames < 1:
        raise ValueError(f"aggregation window needs at least one frame, got {num_frames}")
    return AGGREGATION_WEIGHTS.get(num_frames, (1.0 / num_frames,) * num_frames)


def window_weights(
    weights: Sequence[float] | jnp.ndarray | None, valid: jnp.ndarray | None, b: int, t: int
) -> jnp.ndarray:
    """Aggregation weights ``[B, T]`` float32: ``w_t valid_t / sum_s w_s valid_s`` (the
    weights renormalised over the frames that exist; all zero if none does).

    Args:
      weights: ``[T]`` or ``[B, T]`` non-negative weights in time order; None:
        ``default_aggregation_weights(T)``.
      valid: ``[B, T]`` bool/float, False for frames that do not exist; None: all valid.
      b, t: the batch size and the window length.
    """
    if weights is None:
        weights = default_aggregation_weights(t)
    w = jnp.asarray(weights, jnp.float32)
    if w.shape not in ((t,), (b, t)):
        raise ValueError(
            f"aggregate: weights must have shape ({t},) or ({b}, {t}), got {tuple(w.shape)}"
        )
    w = jnp.broadcast_to(w, (b, t))
    if valid is not None:
        valid = jnp.asarray(valid)
        if valid.shape != (b, t):
            raise ValueError(
                f"aggregate: valid must have shape ({b}, {t}), got {tuple(valid.shape)}"
            )
        w = w * valid.astype(jnp.float32)
    return w / jnp.maximum(jnp.sum(w, axis=1, keepdims=True), jnp.finfo(jnp.float32).tiny)


class PoseWarper(nn.Module):
    """HRNet + warping head over ``[B, T, H, W, 3]`` crops (see the module docstring).

    Attributes:
      hrnet_config: the backbone's ``HRNetConfig``.
      head_config: the warping head's ``WarpingHeadConfig``; its ``num_joints`` must equal
        the backbone's.
      freeze_backbone: warping modes stop gradients at the backbone heatmaps (stage 2).
        False trains both jointly (the BatchNorm then follows ``train``).
      backbone_bn: ``"frozen"`` or ``"batch"``, the frozen backbone's BatchNorm behaviour in
        the warping modes with ``train=True``.
    """

    hrnet_config: HRNetConfig
    head_config: WarpingHeadConfig = WarpingHeadConfig()
    freeze_backbone: bool = True
    backbone_bn: str = "frozen"

    def setup(self):
        if self.backbone_bn not in BACKBONE_BN_MODES:
            raise ValueError(
                f"PoseWarper.backbone_bn must be one of {BACKBONE_BN_MODES}, "
                f"got {self.backbone_bn!r}"
            )
        if self.head_config.num_joints != self.hrnet_config.num_joints:
            raise ValueError(
                f"PoseWarper: head_config.num_joints={self.head_config.num_joints} differs "
                f"from hrnet_config.num_joints={self.hrnet_config.num_joints}"
            )
        self.backbone = HRNet(self.hrnet_config)
        self.head = WarpingHead(self.head_config)

    # ------------------------------------------------------------------ backbone

    def heatmaps(self, frames: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Backbone heatmaps of every frame.

        Args:
          frames: ``[B, T, H, W, 3]`` RGB crops, uint8 (normalised inside) or float
            (already normalised).
          train: BatchNorm with batch statistics, updating ``batch_stats`` (mutable).

        Returns:
          ``[B, T, H/4, W/4, J]`` in the backbone's dtype; gradients flow.
        """
        _check_frames(frames, "heatmaps")
        b, t = frames.shape[:2]
        hm = self.backbone(frames.reshape(b * t, *frames.shape[2:]), train)
        return hm.reshape(b, t, *hm.shape[1:])

    def _warp_inputs(self, frames: jnp.ndarray, train: bool) -> jnp.ndarray:
        """Backbone heatmaps ``[B, T, h, w, J]`` float32 as the warping modes see them."""
        if self.freeze_backbone:
            hm = self.heatmaps(frames, train and self.backbone_bn == "batch")
            return jax.lax.stop_gradient(hm.astype(jnp.float32))
        return self.heatmaps(frames, train).astype(jnp.float32)

    # ------------------------------------------------------------------ modes

    def __call__(self, frames: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """``pair(frames, train)``."""
        return self.pair(frames, train)

    def pair(
        self, frames: jnp.ndarray, train: bool = False, return_heatmaps: bool = False
    ) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Training mode: predict A's heatmaps from B's.

        Args:
          frames: ``[B, 2, H, W, 3]``; t=0 the labeled frame A, t=1 the supporting frame B.
          train: BatchNorm mode of the head (the backbone's: see ``backbone_bn``).
          return_heatmaps: also return f_A and f_B.

        Returns:
          warped ``[B, h, w, J]`` float32 = head(psi = f_A - f_B, warp f_B); with
          ``return_heatmaps`` the tuple ``(warped, f_A, f_B)``.
        """
        _check_frames(frames, "pair", num_frames=2)
        f = self._warp_inputs(frames, train)
        f_a, f_b = f[:, 0], f[:, 1]
        warped = self.head(f_a - f_b, f_b, train)
        return (warped, f_a, f_b) if return_heatmaps else warped

    def propagate(
        self, frames: jnp.ndarray, maps_a: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray:
        """Propagation: carry maps of frame A (e.g. ground-truth heatmaps) onto frame B.

        Args:
          frames: ``[B, 2, H, W, 3]``; t=0 frame A (labeled), t=1 frame B (to label).
          maps_a: ``[B, h, w, J]`` float, maps on A's heatmap grid.
          train: BatchNorm mode of the head.

        Returns:
          ``[B, h, w, J]`` float32 = head(psi = f_B - f_A, warp maps_a).
        """
        _check_frames(frames, "propagate", num_frames=2)
        f = self._warp_inputs(frames, train)
        f_a, f_b = f[:, 0], f[:, 1]
        if maps_a.shape != f_a.shape:
            raise ValueError(
                f"propagate: maps_a must be [B, h, w, J] = {tuple(f_a.shape)}, "
                f"got {tuple(maps_a.shape)}"
            )
        return self.head(f_b - f_a, maps_a.astype(jnp.float32), train)

    def aggregate(
        self,
        frames: jnp.ndarray,
        weights: Sequence[float] | jnp.ndarray | None = None,
        valid: jnp.ndarray | None = None,
        center: int | None = None,
        train: bool = False,
    ) -> jnp.ndarray:
        """Temporal aggregation: warp every frame of a window onto its centre frame, sum.

        Args:
          frames: ``[B, T, H, W, 3]``, a window of T frames around frame ``center``.
          weights: ``[T]`` or ``[B, T]`` non-negative weights in time order; default
            ``default_aggregation_weights(T)`` (T=5: 0.1, 0.25, 0.3, 0.25, 0.1).
          valid: ``[B, T]`` bool/float, False for frames that do not exist (a window
            clipped at a video end, filled with any image); default all valid.
          center: index of the frame t in the window; default ``T // 2``.
          train: BatchNorm mode of the head.

        Returns:
          ``[B, h, w, J]`` float32 = sum_t w'_t head(psi = f_c - f_t, warp f_t), where
          ``w'_t = w_t valid_t / sum_s w_s valid_s`` (weights renormalised over the valid
          frames; all zero if no frame is valid).
        """
        _check_frames(frames, "aggregate")
        b, t = frames.shape[:2]
        center = _check_center(center, t)
        w = window_weights(weights, valid, b, t)
        warped = self.warp_window(frames, center, train)
        return jnp.sum(w[:, :, None, None, None] * warped, axis=1)

    def warp_window(
        self, frames: jnp.ndarray, center: int | None = None, train: bool = False
    ) -> jnp.ndarray:
        """Every frame of a window warped onto its centre frame, before any weighting: what
        ``aggregate`` sums, for several weightings of one window from one pass.

        Args:
          frames: ``[B, T, H, W, 3]``, a window of T frames around frame ``center``.
          center: index of the frame t in the window; default ``T // 2``.
          train: BatchNorm mode of the head.

        Returns:
          ``[B, T, h, w, J]`` float32: frame s's entry is head(psi = f_c - f_s, warp f_s).
        """
        _check_frames(frames, "warp_window")
        center = _check_center(center, frames.shape[1])
        f = self._warp_inputs(frames, train)  # [B, T, h, w, J]
        psi = f[:, center : center + 1] - f
        return self.head(_fold(psi), _fold(f), train).reshape(f.shape)

    def cycle(self, frames: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """Cycle consistency: A -> B -> A.

        Args:
          frames: ``[B, 2, H, W, 3]``; t=0 frame A, t=1 frame B.
          train: BatchNorm mode of the head (called twice: with ``train=True`` its running
            statistics take two update steps).

        Returns:
          ``[B, h, w, J]`` float32: f_A warped onto B with psi = f_B - f_A, then that result
          warped back with psi = f_A - f_B. At initialisation it equals f_A.
        """
        _check_frames(frames, "cycle", num_frames=2)
        f = self._warp_inputs(frames, train)
        f_a, f_b = f[:, 0], f[:, 1]
        a_on_b = self.head(f_b - f_a, f_a, train)
        return self.head(f_a - f_b, a_on_b, train)


def _fold(x: jnp.ndarray) -> jnp.ndarray:
    """``[B, T, ...] -> [B * T, ...]`` (batch-major)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _check_center(center: Any, t: int) -> int:
    """The window's centre index: ``T // 2`` for None, else an int in ``[0, T)``."""
    center = t // 2 if center is None else center
    if not isinstance(center, int) or not 0 <= center < t:
        raise ValueError(f"aggregate: center must be an int in [0, {t}), got {center!r}")
    return center


def _check_frames(frames: Any, mode: str, num_frames: int | None = None) -> None:
    shape = tuple(getattr(frames, "shape", ()))
    if len(shape) != 5 or shape[-1] != 3:
        raise ValueError(f"PoseWarper.{mode}: frames must be [B, T, H, W, 3], got shape {shape}")
    if num_frames is not None and shape[1] != num_frames:
        raise ValueError(
            f"PoseWarper.{mode}: frames must hold T={num_frames} frames (A, B), got T={shape[1]}"
        )

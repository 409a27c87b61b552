"""The propagation experiment as the main job and the diagnostics run it.

The validation videos keep their labels on every k-th labeled frame (``held_out``: the
sparse labels and the held-back ground truth of ``data.sparse.make_sparse_subset``). Every
method predicts from the sparse labels and the frames alone; the held-back ground truth is
only scored against:

* Crops. Each held-back frame B is cut with the box of the person in its nearest labeled
  frame A (``propagation.plan_propagation`` without ``boxes``): the crop stage 2 trains the
  warping head on (both frames of a pair cut with A's box), and the original release's
  propagation crop. The same plan serves every method, the baselines included (HRNet's
  pseudo labels are also cut with A's box).
* People. B is predicted for the people labeled in A, with A's track ids; held-back boxes and
  track ids are not read. Someone who leaves between A and B is still predicted (a false
  positive), someone who enters is not (a miss); at scoring time poseval's own assignment
  pairs predictions with the ground truth (``eval.posetrack_map``), so a track id never has
  to agree.

``methods`` gives the four methods of the report on that plan, ``views`` the three scores of
each (``eval.score_views.propagation_views``: mAP, mAP with constant scores, PCKh@0.5, overall
and by |δ|).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from posewarper_jax.apps import baselines, propagation
from posewarper_jax.data import sparse
from posewarper_jax.data.types import VideoDataset
from posewarper_jax.eval import score_views

__all__ = ["METHODS", "HeldOut", "held_out", "methods", "views"]

METHODS: tuple[str, ...] = ("posewarper", "copy_nearest", "farneback", "hrnet_pseudo")


@dataclasses.dataclass
class HeldOut:
    """The setting: ``labeled`` (sparse labels: the methods' only labels), ``held_back`` (the
    ground truth of the frames that lost their labels: scoring only), the ``plan`` every
    method predicts, and the ``reach`` it was made with."""

    labeled: VideoDataset
    held_back: VideoDataset
    plan: propagation.PropagationPlan
    reach: int


def held_out(videos: VideoDataset, *, every_k: int, seed: int, reach: int) -> HeldOut:
    """Labels kept on every ``every_k``-th labeled frame (phase drawn with ``seed``), and the
    plan of every frame within ``reach`` of a kept one (module docstring)."""
    labeled, held_back = sparse.make_sparse_subset(videos, every_k=int(every_k), seed=int(seed))
    plan = propagation.plan_propagation(labeled, reach=int(reach))
    return HeldOut(labeled=labeled, held_back=held_back, plan=plan, reach=int(reach))


def methods(
    setting: HeldOut,
    *,
    model,
    hrnet: Mapping[str, Any],
    posewarper: Mapping[str, Any],
    pipe_cfg,
    mesh=None,
    flip_test: bool = False,
    bad_image_log: str = "",
    decoding: str = "quarter",
    path: str = "direct",
) -> dict[str, Callable[[], VideoDataset]]:
    """Name -> a function computing that method's predictions on ``setting.plan``, reduced to
    the videos of ``setting.held_back`` (``propagation.select_videos``).

    Args:
      model: the ``PoseWarper``; hrnet: its stage-1 variables (single-frame pseudo labels);
        posewarper: its stage-2 variables (propagation).
      pipe_cfg, mesh, flip_test: the evaluation's crops, mesh and flip test.
      bad_image_log: ``data.skip_bad_images``' log ("" : a bad image is an error).
      decoding: the heatmap decoding of the two networks' methods ("quarter" or "dark").
      path: PoseWarper's propagation path, "direct" or "chained" (``propagation.PATHS``).
    """
    s = setting
    fns: dict[str, Callable[[], VideoDataset]] = {
        "posewarper": lambda: propagation.propagate_labels(
            model, posewarper, s.labeled, pipe_cfg=pipe_cfg, mesh=mesh, plan=s.plan,
            flip_test=flip_test, decoding=decoding, path=path,
        ),
        "copy_nearest": lambda: baselines.copy_nearest(s.labeled, plan=s.plan),
        "farneback": lambda: baselines.farneback(
            s.labeled, plan=s.plan, skip_bad_images=bool(bad_image_log),
            bad_image_log=bad_image_log,
        ),
        "hrnet_pseudo": lambda: baselines.hrnet_pseudo(
            model, hrnet, s.labeled, pipe_cfg=pipe_cfg, mesh=mesh, plan=s.plan,
            flip_test=flip_test, decoding=decoding,
        ),
    }  # fmt: skip
    return {
        name: (lambda f=fn: propagation.select_videos(f(), s.held_back)) for name, fn in fns.items()
    }


def views(setting: HeldOut, pred: VideoDataset) -> dict[str, Any]:
    """``eval.score_views.propagation_views`` of one method's predictions in ``setting``."""
    return score_views.propagation_views(
        setting.held_back, pred, setting.labeled, reach=setting.reach
    )

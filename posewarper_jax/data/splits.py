"""A fixed split of the validation videos into ``dev`` and ``test``.

Settings are chosen on one part of the validation videos and reported on the other, so that
the reported figures were never looked at while choosing. The rule depends on the video names
alone (no seed, no scores, no order of the files):

  Sort the validation videos by the SHA-256 of their name (UTF-8); the first ``n // 2`` are
  ``dev``, the other ``n - n // 2`` are ``test``.

Every set of two or more videos gets both splits, within one video of half each; a single
video is ``test``. The same names always give the same split, whatever the data set:
PoseTrack17 and PoseTrack18 (the published validation videos), the synthetic set (whose video
names, ``010003_synth_val``, do not depend on its seed, so every draw of the data splits the
same video positions), one's own videos. Adding k videos to a set moves at most k of the old
ones across the boundary.

Which split a run scores is ``config.eval.split`` (``experiment.eval_split``): ``test`` (the
main job's report, the default), ``dev`` (choosing settings, ablations, diagnostics) or
``all`` (every validation video: the protocol before the split, and a config written before
the field existed).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

from posewarper_jax.data.types import VideoDataset

__all__ = ["RULE", "SPLITS", "assign", "select", "split_key", "videos_of"]

SPLITS: tuple[str, ...] = ("dev", "test", "all")
RULE = (
    "validation videos sorted by the SHA-256 of their name; the first n // 2 are dev, "
    "the other n - n // 2 test"
)


def split_key(name: str) -> str:
    """The sort key of one video: the hex SHA-256 of its name (ties, impossible in practice,
    fall back to the name)."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def assign(names: Iterable[str]) -> dict[str, str]:
    """Video name -> ``"dev"`` or ``"test"`` by the rule of the module docstring.

    Raises:
      ValueError: a name given twice.
    """
    names = list(names)
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"splits: video name(s) given twice: {twice}")
    ranked = sorted(names, key=lambda n: (split_key(n), n))
    num_dev = len(ranked) // 2
    return {n: ("dev" if i < num_dev else "test") for i, n in enumerate(ranked)}


def videos_of(names: Iterable[str], split: str) -> list[str]:
    """The names of ``split`` (``dev``, ``test`` or ``all``), in their given order."""
    if split not in SPLITS:
        raise ValueError(f"splits: unknown split {split!r}; choose from {SPLITS}")
    names = list(names)
    if split == "all":
        return names
    of = assign(names)
    return [n for n in names if of[n] == split]


def select(dataset: VideoDataset, split: str) -> VideoDataset:
    """``dataset`` reduced to the videos of ``split`` (the others dropped, order kept); its
    ``extra["split"]`` records the split, the rule and how many videos the full set had."""
    names = [v.name for v in dataset.videos]
    keep = set(videos_of(names, split))
    extra = dict(dataset.extra)
    extra["split"] = {"split": split, "rule": RULE, "of_videos": len(names)}
    return dataclasses.replace(
        dataset, videos=[v for v in dataset.videos if v.name in keep], extra=extra
    )

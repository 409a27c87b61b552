"""Weights shipped with the package, so that a run can start from a trained network on a
machine that cannot download one.

``hrnet_small_stills``: HRNet ``small`` pose-pre-trained on the synthetic ``stills`` set (the
stand-in for the paper's COCO initialisation), a converted checkpoint (``convert``'s format)
that ``model.pretrained`` takes. ``configs/sparse.py:packaged`` starts from it instead of
pre-training in the job. Its ``.json`` beside it records how it was made (the command that
remakes it), its files' SHA-256 and what it scored on the default's ``dev`` videos.
"""

from __future__ import annotations

import json
import os

__all__ = ["NAMES", "file_digests", "path", "provenance"]

_HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("hrnet_small_stills",)


def _check(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"no packaged weights named {name!r}; packaged: {list(NAMES)}")


def path(name: str) -> str:
    """The absolute path of the packaged checkpoint ``name`` (for ``model.pretrained``)."""
    _check(name)
    return os.path.join(_HERE, name)


def provenance(name: str) -> dict:
    """How the checkpoint ``name`` was made: ``{"variant", "steps", "command", "sha256":
    {relative file: digest}, ...}``."""
    _check(name)
    with open(os.path.join(_HERE, f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


def file_digests(directory: str) -> dict[str, str]:
    """SHA-256 of every file under ``directory``, keyed by its path relative to it ('/')."""
    from posewarper_jax import fileio

    out = {}
    for root, _, files in os.walk(directory):
        for fname in files:
            full = os.path.join(root, fname)
            rel = os.path.relpath(full, directory).replace(os.sep, "/")
            out[rel] = fileio.sha256_file(full)
    return dict(sorted(out.items()))

"""Annotation files in any supported format: telling the format and reading them.

``load_dataset`` reads a file or directory with the reader of its format (``posetrack18``,
``posetrack17`` or ``coco``), told from the first file when not given, and guesses the image
root when none is given.
"""

from __future__ import annotations

import os

from posewarper_jax import storage
from posewarper_jax.data.coco import load_coco_keypoints
from posewarper_jax.data.formats import (
    FORMATS,
    AnnotationError,
    _annotation_files,
    _as_list,
    _unwrap,
    read_json,
)
from posewarper_jax.data.posetrack17 import load_posetrack17
from posewarper_jax.data.posetrack18 import load_posetrack18
from posewarper_jax.data.types import VideoDataset


def _format_of(data, path: str) -> str:
    if isinstance(data, list):
        raise AnnotationError(
            f"{path}: a JSON list is not an annotation file (a detection or results file?)"
        )
    if isinstance(data, dict) and "annolist" in data:
        return "posetrack17"
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        fields = ("vid_id", "nframes", "frame_id")
        if any(isinstance(im, dict) and any(k in im for k in fields) for im in data["images"]):
            return "posetrack18"
        return "coco"
    raise AnnotationError(
        f"{path}: cannot tell the format: expected 'annolist' (PoseTrack17) or 'images' "
        "(PoseTrack18, COCO)"
    )


def _first_image_name(data, fmt: str) -> str | None:
    try:
        if fmt == "posetrack17":
            return _unwrap(_as_list(_as_list(data["annolist"])[0]["image"])[0]["name"])
        return data["images"][0]["file_name"]
    except (KeyError, IndexError, TypeError):
        return None


def _guess_image_root(path: str, first_file: str, data, fmt: str) -> str:
    """The nearest ancestor of the annotation path under which the first image exists; else the
    parent of an ``annotations`` folder on the path; else the annotation file's folder."""
    start = storage.abspath(path if storage.isdir(path) else storage.dirname(path))
    name = _first_image_name(data, fmt)
    stem_token = os.path.splitext(os.path.basename(first_file))[0].split("_")[-1]
    candidates = []
    directory = start
    while True:
        candidates.append(directory)
        if fmt == "coco":
            candidates.append(os.path.join(directory, stem_token))
        parent = storage.dirname(directory)
        if parent == directory:
            break
        directory = parent
    if isinstance(name, str):
        for candidate in candidates:
            if storage.isfile(os.path.join(candidate, name)):
                return candidate
    directory = start
    while storage.dirname(directory) != directory:
        if os.path.basename(directory) == "annotations":
            return storage.dirname(directory)
        directory = storage.dirname(directory)
    return start


def detect_format(path: str) -> str:
    """ "posetrack18", "posetrack17" or "coco", from the first JSON file at ``path``."""
    first = _annotation_files(path)[0]
    return _format_of(read_json(first), first)


def load_dataset(
    path: str, image_root: str | None = None, fmt: str = "auto", *, check_images: bool = False
) -> VideoDataset:
    """Reads an annotation file or directory in any supported format.

    Args:
      path: a JSON file, or a directory of per-video JSON files.
      image_root: the directory image names are relative to; None guesses it (see
        ``_guess_image_root``: the nearest ancestor under which the first image exists).
      fmt: "auto" (from the first file: ``annolist`` -> posetrack17; ``images`` with
        ``vid_id``/``nframes``/``frame_id`` -> posetrack18; other ``images`` -> coco), or one of
        "posetrack18", "posetrack17", "coco".
      check_images: also check that every image file exists.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: expected 'auto' or one of {', '.join(FORMATS)}")
    first = _annotation_files(path)[0]
    data = read_json(first)
    if fmt == "auto":
        fmt = _format_of(data, first)
    if image_root is None:
        image_root = _guess_image_root(path, first, data, fmt)
    cache = {first: data}
    if fmt == "coco":
        if storage.isdir(path):
            raise AnnotationError(f"{path}: COCO annotations are read from a single JSON file")
        return load_coco_keypoints(path, image_root, check_images=check_images, _cache=cache)
    loader = load_posetrack18 if fmt == "posetrack18" else load_posetrack17
    return loader(path, image_root, check_images=check_images, _cache=cache)

"""The frames of one video: a video file (read with OpenCV) or a directory of frame images.

A *frame source* is what the video commands (``label``, ``propagate``, ``track``) take as
``--video``:

* a video file (``VIDEO_SUFFIXES``: .mp4, .avi, .mov, .mkv, ...), decoded with OpenCV's
  ``VideoCapture``; the frame count is the number of frames that decode (the container's
  count is not trusted), and frame i is the i-th decoded frame (0-based);
* a directory of images (``IMAGE_SUFFIXES``), e.g. ``data/synthetic/images/val/<video>/``:
  frame i is the i-th file in the order of the last number in the file name (then the name).

The network reads frames from image files, so a video file is extracted (``extract``) to
numbered PNG files, losslessly; a directory's files are read in place. Frame sizes must all
be the same. Errors are ``VideoError`` (a ``ValueError``) naming the path and the fault.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np

# FFmpeg's own messages (e.g. "moov atom not found" for a broken file) would precede the
# one-line error the commands print; keep them quiet unless the user asks for them.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402

from posewarper_jax.cli import ExpectedError  # noqa: E402

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "FrameSource",
    "VideoError",
    "extract",
    "frame_number",
    "iter_frames",
    "open_frames",
    "read_frame",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class VideoError(ExpectedError, ValueError):
    """A video or frame directory that cannot be used; the message names the path."""


@dataclasses.dataclass(frozen=True)
class FrameSource:
    """One video's frames.

    Attributes:
      path: the video file or frame directory as given.
      kind: "file" or "frames".
      name: the video's name: the file name without suffix, or the directory's name.
      nframes: number of frames.
      width, height: frame size in pixels.
      fps: frames per second (the container's; 25 for a directory).
      files: the frame image paths (``kind == "frames"``), else empty.
    """

    path: str
    kind: str
    name: str
    nframes: int
    width: int
    height: int
    fps: float
    files: tuple[str, ...] = ()


def frame_number(name: str) -> int | None:
    """The last number in a file name's stem (``frame_000014.jpg`` -> 14), or None."""
    stem = os.path.splitext(os.path.basename(name))[0]
    match = _LAST_NUMBER.search(stem)
    return int(match.group(1)) if match else None


def _sorted_images(directory: str) -> list[str]:
    names = [n for n in os.listdir(directory) if n.lower().endswith(IMAGE_SUFFIXES)]

    def key(n):
        number = frame_number(n)
        return (number is None, number if number is not None else 0, n)

    return [os.path.join(directory, n) for n in sorted(names, key=key)]


def open_frames(path: str) -> FrameSource:
    """Opens a video file or frame directory and checks that its frames can be read.

    Raises:
      VideoError: the path does not exist, has an unsupported type, cannot be decoded, has no
        frames, or its frames differ in size.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = _sorted_images(path)
        if not files:
            raise VideoError(
                f"{path}: no frame images in this directory (expected {', '.join(IMAGE_SUFFIXES)})"
            )
        first = cv2.imread(files[0], cv2.IMREAD_COLOR)
        if first is None:
            raise VideoError(f"{files[0]}: cannot be read as an image")
        h, w = first.shape[:2]
        name = os.path.basename(os.path.normpath(path))
        return FrameSource(path, "frames", name, len(files), w, h, 25.0, tuple(files))
    if not os.path.exists(path):
        raise VideoError(f"{path}: no such video file or frame directory")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in VIDEO_SUFFIXES:
        raise VideoError(
            f"{path}: unsupported video type {suffix or '(no suffix)'!r}; give a video file "
            f"({', '.join(VIDEO_SUFFIXES)}) or a directory of frame images"
        )
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoError(f"{path}: cannot be read as a video (OpenCV cannot open it)")
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
        count, size = 0, None
        while True:
            ok = cap.grab()
            if not ok:
                break
            if size is None:
                ok, frame = cap.retrieve()
                if not ok or frame is None:
                    break
                size = frame.shape[:2]
            count += 1
    finally:
        cap.release()
    if count == 0 or size is None:
        raise VideoError(f"{path}: cannot be read as a video (no frame decodes)")
    name = os.path.splitext(os.path.basename(path))[0]
    return FrameSource(path, "file", name, count, int(size[1]), int(size[0]), fps)


def iter_frames(source: FrameSource) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(index, BGR uint8 [H, W, 3])`` for every frame, in order.

    Raises:
      VideoError: a frame cannot be read or differs in size from the first.
    """
    if source.kind == "frames":
        for i, f in enumerate(source.files):
            yield i, _check_size(source, f, cv2.imread(f, cv2.IMREAD_COLOR), i)
        return
    cap = cv2.VideoCapture(source.path)
    try:
        for i in range(source.nframes):
            ok, frame = cap.read()
            if not ok or frame is None:
                raise VideoError(
                    f"{source.path}: frame {i} does not decode (the video has {source.nframes})"
                )
            yield i, _check_size(source, source.path, frame, i)
    finally:
        cap.release()


def _check_size(source: FrameSource, where: str, image, index: int) -> np.ndarray:
    if image is None:
        raise VideoError(f"{where}: cannot be read as an image (frame {index})")
    if image.shape[:2] != (source.height, source.width):
        raise VideoError(
            f"{where}: frame {index} is {image.shape[1]}x{image.shape[0]}, the video's first "
            f"frame {source.width}x{source.height}"
        )
    return image


def read_frame(source: FrameSource, index: int) -> np.ndarray:
    """Frame ``index`` as BGR uint8 ``[H, W, 3]`` (a video file is decoded up to it)."""
    if not 0 <= index < source.nframes:
        raise VideoError(f"{source.path}: frame {index} is outside 0..{source.nframes - 1}")
    if source.kind == "frames":
        return _check_size(
            source, source.files[index], cv2.imread(source.files[index], cv2.IMREAD_COLOR), index
        )
    for i, frame in iter_frames(source):
        if i == index:
            return frame
    raise VideoError(f"{source.path}: frame {index} does not decode")  # pragma: no cover


def extract(
    source: FrameSource,
    out_dir: str,
    indices: Sequence[int] | None = None,
    *,
    suffix: str = ".png",
) -> list[str]:
    """Writes frames as ``out_dir/%06d<suffix>`` (0-based index) and returns their paths.

    Args:
      source: the frames.
      out_dir: created if needed.
      indices: which frames (default all), written in index order.
      suffix: ``.png`` (lossless) or ``.jpg``.

    Raises:
      VideoError: an index outside the video, or a frame that cannot be read or written.
    """
    wanted = set(range(source.nframes)) if indices is None else {int(i) for i in indices}
    bad = sorted(i for i in wanted if not 0 <= i < source.nframes)
    if bad:
        raise VideoError(f"{source.path}: frame(s) {bad[:10]} outside 0..{source.nframes - 1}")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, frame in iter_frames(source):
        if i not in wanted:
            continue
        path = os.path.join(out_dir, f"{i:06d}{suffix}")
        if not cv2.imwrite(path, frame):
            raise VideoError(f"{path}: cannot write the frame image")
        paths.append(path)
        if len(paths) == len(wanted):
            break
    return paths

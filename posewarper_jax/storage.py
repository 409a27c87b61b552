"""Paths on local disk and on object stores (``gs://``, ``s3://``), through ``etils.epath``.

Every path the project reads or writes (workdir, checkpoints, result files, metrics, data
roots, annotation and detection files, images, converted weights) goes through this module
or through Orbax, which takes the same paths. A local path behaves as ``os`` and ``open``
do; a URL (``gs://bucket/dir``, ``s3://bucket/dir``) goes through ``etils.epath`` and its
fsspec backend, which needs ``gcsfs`` (``pip install "posewarper_jax[gcs]"``) or ``s3fs``
(``[s3]``).

Object stores differ from a disk in three ways that the callers rely on:

* there are no directories: ``makedirs`` does nothing on a URL (a "folder" exists once an
  object lies under it), so a misspelt bucket is never created;
* an object is written whole or not at all (an upload is visible only once complete), and a
  rename is a copy then a delete (``fileio.atomic_write`` writes ``NAME.tmp`` and copies it
  once onto ``NAME``);
* an object cannot be appended to (``training_log.MetricWriter`` rewrites its files whole).

A failure of the store itself (no credentials, a missing bucket, no network, the fsspec
package of the scheme not installed) raises ``StorageError``: one line naming the path.
A missing object keeps raising ``FileNotFoundError``, as on a disk.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import shutil
from collections.abc import Iterator
from typing import Any

from posewarper_jax import cli

# Schemes and the pip extra that brings their fsspec implementation.
EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3"}
# Errors of the store that mean what they mean on a disk: kept as they are.
_PLAIN_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


class StorageError(cli.ExpectedError):
    """The object store refused or cannot be reached; the message names the path."""


def scheme(path: Any) -> str:
    """``gs`` of ``gs://bucket/x``; "" for a local path."""
    text = os.fspath(path) if not isinstance(path, str) else path
    head, sep, _ = text.partition("://")
    return head if sep and len(head) > 1 and head.isalnum() else ""


def is_remote(path: Any) -> bool:
    """Whether ``path`` is a URL of an object store (``gs://``, ``s3://``, ...)."""
    return bool(scheme(path))


def to_str(path: Any) -> str:
    return path if isinstance(path, str) else os.fspath(path)


def epath_of(path: Any):
    """``path`` as an ``etils.epath.Path``."""
    from etils import epath

    return epath.Path(to_str(path))


def _advice(path: str, err: BaseException) -> str:
    name = scheme(path)
    if isinstance(err, ImportError):
        extra = EXTRAS.get(name)
        how = f'pip install "posewarper_jax[{extra}]"' if extra else "install its fsspec package"
        return f"{name}:// paths need a package that is not installed ({err}); {how}"
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > 200:
        text = text[:200] + "..."
    return (
        f"the {name}:// store refused or cannot be reached ({type(err).__name__}: {text}); "
        "check the bucket's name, that it exists, and the credentials of this host"
    )


@contextlib.contextmanager
def guard(path: Any) -> Iterator[None]:
    """Turns a failure of the object store under ``path`` into a one-line ``StorageError``
    (a local path's errors, and a missing object's, pass unchanged)."""
    text = to_str(path)
    if not is_remote(text):
        yield
        return
    try:
        yield
    except (*_PLAIN_ERRORS, cli.ExpectedError):
        raise
    except Exception as err:  # noqa: BLE001 (every backend has its own errors)
        raise StorageError(f"{text}: {_advice(text, err)}") from err


# ----------------------------------------------------------------------------- names


def join(*parts: Any) -> str:
    return os.path.join(*(to_str(p) for p in parts))


def abspath(path: Any) -> str:
    """``os.path.abspath`` of a local path; a URL as it is (without a trailing slash)."""
    text = to_str(path)
    return text.rstrip("/") if is_remote(text) else os.path.abspath(text)


def normpath(path: Any) -> str:
    """``os.path.normpath``; a URL keeps its ``scheme://``."""
    text = to_str(path)
    name = scheme(text)
    if not name:
        return os.path.normpath(text)
    rest = text[len(name) + 3 :]
    return f"{name}://" + os.path.normpath(rest).lstrip("/") if rest else text


def dirname(path: Any) -> str:
    text = to_str(path)
    if is_remote(text):
        text = text.rstrip("/")
        head = text.rsplit("/", 1)[0]
        return head if "://" in head and not head.endswith(":/") else text
    return os.path.dirname(text)


# ----------------------------------------------------------------------------- queries


def exists(path: Any) -> bool:
    text = to_str(path)
    if not is_remote(text):
        return os.path.exists(text)
    with guard(text):
        return epath_of(text).exists()


def isdir(path: Any) -> bool:
    text = to_str(path)
    if not is_remote(text):
        return os.path.isdir(text)
    with guard(text):
        return epath_of(text).is_dir()


def isfile(path: Any) -> bool:
    text = to_str(path)
    if not is_remote(text):
        return os.path.isfile(text)
    with guard(text):
        p = epath_of(text)
        return p.exists() and not p.is_dir()


def listdir(path: Any) -> list[str]:
    """The names in folder ``path`` (FileNotFoundError if there is none)."""
    text = to_str(path)
    if not is_remote(text):
        return os.listdir(text)
    with guard(text):
        p = epath_of(text)
        if not p.is_dir():
            raise FileNotFoundError(f"no folder {text}")
        return [c.name for c in p.iterdir()]


def glob(folder: Any, pattern: str) -> list[str]:
    """Sorted paths of the entries of ``folder`` whose names match ``pattern`` (one level,
    ``*`` and ``?``; no recursion)."""
    text = to_str(folder)
    if not is_remote(text):
        import glob as glob_lib

        return sorted(glob_lib.glob(os.path.join(glob_lib.escape(text), pattern)))
    try:
        names = listdir(text)
    except FileNotFoundError:
        return []
    return sorted(join(text, n) for n in names if fnmatch.fnmatchcase(n, pattern))


# ----------------------------------------------------------------------------- reading


def open_file(path: Any, mode: str = "r", encoding: str | None = "utf-8"):
    """``open(path, mode)``; on a URL a file object of the store (whole-object writes)."""
    text = to_str(path)
    if not is_remote(text):
        if "b" in mode:
            return open(text, mode)  # noqa: SIM115
        return open(text, mode, encoding=encoding)  # noqa: SIM115
    with guard(text):
        f = epath_of(text).open("rb" if "r" in mode else "wb")
    if "b" in mode:
        return f
    return io.TextIOWrapper(f, encoding=encoding or "utf-8")


def read_bytes(path: Any) -> bytes:
    text = to_str(path)
    if not is_remote(text):
        with open(text, "rb") as f:
            return f.read()
    with guard(text):
        return epath_of(text).read_bytes()


def read_text(path: Any, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def read_image(path: Any, flags: int):
    """``cv2.imread(path, flags)``: None when the file is missing or not an image. A URL's
    bytes are read whole and decoded in memory; nothing is cached."""
    import cv2

    text = to_str(path)
    if not is_remote(text):
        return cv2.imread(text, flags)
    try:
        data = read_bytes(text)
    except FileNotFoundError:
        return None
    import numpy as np

    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


# ----------------------------------------------------------------------------- writing


def makedirs(path: Any) -> None:
    """``os.makedirs(path, exist_ok=True)``; nothing on a URL (object stores have no
    folders, and a folder at a bucket's top would create the bucket)."""
    text = to_str(path)
    if not is_remote(text):
        os.makedirs(text, exist_ok=True)


def write_bytes(path: Any, data: bytes) -> None:
    """Writes ``data`` to ``path`` (not atomically on a disk: see ``fileio.atomic_write``)."""
    text = to_str(path)
    if not is_remote(text):
        with open(text, "wb") as f:
            f.write(data)
        return
    with guard(text):
        epath_of(text).write_bytes(data)


def remove(path: Any, missing_ok: bool = True) -> None:
    text = to_str(path)
    try:
        if not is_remote(text):
            os.remove(text)
            return
        with guard(text):
            if not epath_of(text).exists():
                raise FileNotFoundError(text)
            epath_of(text).unlink()
    except FileNotFoundError:
        if not missing_ok:
            raise


def rmtree(path: Any) -> None:
    """Removes folder ``path`` and everything in it, if it exists."""
    text = to_str(path)
    if not is_remote(text):
        shutil.rmtree(text, ignore_errors=True)
        return
    with guard(text):
        p = epath_of(text)
        if p.exists():
            p.rmtree()


def replace(src: Any, dst: Any) -> None:
    """``os.replace(src, dst)`` of a file; on a store one copy of the object, then a
    delete of ``src``."""
    s, d = to_str(src), to_str(dst)
    if not is_remote(s) and not is_remote(d):
        os.replace(s, d)
        return
    with guard(d):
        epath_of(s).replace(epath_of(d))


def move(src: Any, dst: Any) -> None:
    """``shutil.move`` of a file or folder; on a store a copy of every object, then a
    delete."""
    s, d = to_str(src), to_str(dst)
    if not is_remote(s) and not is_remote(d):
        shutil.move(s, d)
        return
    with guard(d):
        epath_of(s).rename(epath_of(d))


def upload_tree(local_dir: str, dst: Any, *, last: tuple[str, ...] = ()) -> None:
    """Copies the files under ``local_dir`` to ``dst`` (a URL or a local folder); the
    relative paths in ``last`` go after every other file (a marker that says complete)."""
    d = to_str(dst)
    files = []
    for top, _, names in os.walk(local_dir):
        for name in names:
            files.append(os.path.relpath(os.path.join(top, name), local_dir))
    files.sort(key=lambda rel: (rel in last, rel))
    for rel in files:
        target = join(d, rel.replace(os.sep, "/"))
        makedirs(dirname(target))
        with open(os.path.join(local_dir, rel), "rb") as f:
            write_bytes(target, f.read())


def listdir_or_empty(path: Any) -> list[str]:
    """``listdir``, or [] when there is no folder ``path``."""
    try:
        return listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


# Where Orbax can write checkpoint arrays: TensorStore's file driver (local paths) and its
# GCS driver (gs://). Any other URL is handed to the file driver and fails at the first save.
CHECKPOINT_SCHEMES = ("", "gs")


def check_checkpoint_dir(path: Any, what: str) -> None:
    """Raises a one-line ``StorageError`` when Orbax cannot write checkpoints under ``path``
    (an ``s3://`` workdir: its data root and every other file may be on S3)."""
    text = to_str(path)
    if scheme(text) not in CHECKPOINT_SCHEMES:
        raise StorageError(
            f"{what} {text}: Orbax writes checkpoint arrays (through TensorStore) only to "
            f"local paths and gs://, not {scheme(text)}://; use a gs:// bucket or a mounted "
            "file system for it (data roots, annotation and image files may stay on "
            f"{scheme(text)}://)"
        )

"""Result files written whole or not at all.

``atomic_write`` writes ``PATH.tmp`` and renames it over ``PATH``: a process killed at any
moment leaves either the old file or the new one, never a part. A write that fails for lack
of space, quota or permission raises ``cli.WriteError`` naming the file (the temporary file
is removed, the old ``PATH`` is untouched); a resumed job then finds every result finished
before. The rename is not followed by ``fsync``: a killed process loses nothing, a power cut
may lose the last files written (and the job then writes them again).

On an object store (``gs://``, ``s3://``; see ``storage``) an upload is visible only once
complete, so an object is never seen in part either: ``PATH.tmp`` is uploaded whole, then
copied once onto ``PATH`` and deleted. A kill between the two leaves the old ``PATH`` (or
none) and a ``PATH.tmp`` that the next write replaces. A failure of the store raises
``storage.StorageError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from posewarper_jax import cli, storage


def _write(f, data: str | bytes) -> None:
    """The one place result bytes reach a file (tests replace it to simulate a full disk)."""
    f.write(data)


def atomic_write(path: str, data: str | bytes, *, what: str = "") -> None:
    """Writes ``data`` to ``path`` atomically (see the module docstring).

    Raises:
      cli.WriteError: the storage refused (no space, quota, read-only, permission).
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    if storage.is_remote(path):
        _remote_write(path, tmp, data)
        return
    try:
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        binary = isinstance(data, bytes)
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            _write(f, data)
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if cli.storage_error(err):
            raise cli.write_error(path, err, what) from err
        raise


def _remote_write(path: str, tmp: str, data: str | bytes) -> None:
    try:
        with storage.guard(path):
            with storage.epath_of(tmp).open("wb") as f:
                _write(f, data if isinstance(data, bytes) else data.encode("utf-8"))
            storage.replace(tmp, path)
    except BaseException:
        try:
            storage.remove(tmp)
        except Exception:  # noqa: BLE001 (the first error is the one to report)
            pass
        raise


def write_json(
    path: str,
    data: Any,
    *,
    indent: int | None = 2,
    allow_nan: bool = True,
    newline: bool = False,
    what: str = "",
) -> None:
    """``data`` as JSON at ``path``, atomically (``atomic_write``): ``json.dumps`` with
    ``indent`` and ``allow_nan`` (False: a NaN or infinity raises ValueError before anything
    is written), and a final ``"\\n"`` with ``newline``."""
    text = json.dumps(data, indent=indent, allow_nan=allow_nan)
    atomic_write(path, text + "\n" if newline else text, what=what)


def sha256_file(path: str) -> str:
    """The SHA-256 hex digest of the local file ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

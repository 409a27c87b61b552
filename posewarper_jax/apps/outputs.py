"""Writing command outputs whole or not at all, and the commands' one-line errors.

* ``staged(out_dir)``: a context manager giving a fresh temporary directory beside
  ``out_dir``; when the block ends without an exception, everything in it is moved into
  ``out_dir`` (created if needed; files and folders of the same name replaced), otherwise
  the temporary directory is removed. A command that fails therefore leaves ``out_dir`` as it
  was.
* ``staged_file(path)``: the same for one file: a temporary name beside ``path`` (same
  suffix, so that writers that pick a format by suffix, such as OpenCV's ``VideoWriter``,
  still do), renamed to ``path`` on success, removed on failure.
* ``run_command(fn, args)``: runs a command body in the project's error style
  (``cli.guarded``): expected failures (bad input: a ``ValueError``, a missing file, an
  ``OSError``) print ``error: <message>`` on one line to stderr and give exit status 2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["EXPECTED_ERRORS", "run_command", "staged", "staged_file"]

EXPECTED_ERRORS = (ValueError, FileNotFoundError, OSError, KeyError)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged(out_dir: str) -> Iterator[str]:
    """A temporary directory whose contents land in ``out_dir`` when the block succeeds."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would stay on a renamed directory
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if not os.path.exists(out_dir):
            os.rename(tmp, out_dir)
            return
        for name in sorted(os.listdir(tmp)):
            src, dst = os.path.join(tmp, name), os.path.join(out_dir, name)
            if os.path.isdir(dst) and not os.path.islink(dst):
                old = dst + ".old.tmp"
                os.rename(dst, old)
                os.rename(src, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path: str) -> Iterator[str]:
    """A temporary file name beside ``path`` (same suffix), renamed to ``path`` on success."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    stem, suffix = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would stay on the renamed file
    try:
        yield tmp
        if not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
            raise OSError(f"{path}: nothing was written")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run_command(fn: Callable[[Any], Any], args: Any) -> int:
    """``fn(args)`` in the project's error style (``cli.guarded``): 0 on success; bad input
    (the project's ``cli.ExpectedError``\\ s, a ``ValueError``, a missing file, an
    ``OSError``) prints ``error: <message>`` on one line to stderr and gives exit status 2;
    ``args.debug`` (``--debug``) shows the traceback instead."""
    from posewarper_jax import cli

    def body() -> None:
        fn(args)

    return cli.guarded(body, debug=bool(getattr(args, "debug", False)), expected=EXPECTED_ERRORS)

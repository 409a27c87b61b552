"""One workdir, one job: a lock file naming the process that uses the workdir.

``WORKDIR/job.lock`` holds the process id, the host, the process's start time and the
command. A second job on the same workdir stops at once with ``WorkdirBusyError`` naming
the other process. A lock whose process is gone (same host, the process id no longer runs or
now belongs to another process) is stale: the next job takes it over with a warning, so a
job killed with SIGKILL or by a power cut needs nothing done by hand. A lock from another
host cannot be checked from here and counts as held; delete the file if that job is gone.

Only the first process of a multi-process job takes the lock (the others share its
workdir). The check and the write happen under an ``flock`` on ``job.lock.guard``, so two
jobs started at the same moment cannot both take the lock.

On an object store (``--workdir gs://bucket/run``) there is no ``flock``: the lock is the
object ``job.lock``, read, then written whole. It stops a second job started while the
first runs, but two jobs started within the same second or two may both take it. A lock
written from another host counts as held, as on a disk: a job rescheduled onto other hosts
(a pod or SLURM allocation recreated after a failure) stops naming the old one; delete the
object (``gcloud storage rm gs://bucket/run/job.lock``) if that job is gone.

``WORKDIR/launch.json`` records the directory the job ran in (``write_launch``), so that the
commands reading a finished workdir find its relative data paths from anywhere
(``launch_dir``, used by ``apps.trained.read_config``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
import warnings

from posewarper_jax import storage
from posewarper_jax.cli import ExpectedError

LOCK_NAME = "job.lock"
LAUNCH_NAME = "launch.json"


def write_launch(workdir: str) -> None:
    """Records in ``workdir/launch.json`` the directory this process runs in."""
    from posewarper_jax import fileio

    fileio.atomic_write(storage.join(workdir, LAUNCH_NAME), json.dumps({"cwd": os.getcwd()}))


def launch_dir(workdir: str) -> str:
    """The directory ``write_launch`` recorded; "" without a (readable) record."""
    path = storage.join(workdir, LAUNCH_NAME)
    try:
        cwd = json.loads(storage.read_text(path))["cwd"] if storage.isfile(path) else ""
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return ""
    return cwd if isinstance(cwd, str) else ""


class WorkdirBusyError(ExpectedError):
    """The workdir is in use by another job; the message names it."""


class StaleLockWarning(UserWarning):
    """A lock left by a job that no longer runs was taken over."""


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, Linux), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces but ends with the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if start_ticks is not None:
        now = _start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the id was reused by a later process
    return True


def _describe(info: dict) -> str:
    since = info.get("started", "?")
    cmd = info.get("command", "")
    text = f"process {info.get('pid', '?')} on host {info.get('host', '?')} (since {since})"
    return text + (f": {cmd}" if cmd else "")


class WorkdirLock:
    """The lock of one workdir, held by this process until ``release``."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = storage.join(workdir, LOCK_NAME)
        self.remote = storage.is_remote(workdir)
        self.held = False

    @contextlib.contextmanager
    def _guard(self):
        if self.remote:  # no flock on an object store (see the module docstring)
            yield
            return
        with open(self.path + ".guard", "a") as g:
            fcntl.flock(g, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(g, fcntl.LOCK_UN)

    def _read(self) -> dict | None:
        try:
            return json.loads(storage.read_text(self.path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: written by a process killed mid-write

    def acquire(self) -> WorkdirLock:
        """Takes the lock, or raises ``WorkdirBusyError`` naming the process holding it."""
        host = socket.gethostname()
        with self._guard():
            info = self._read()
            if info is not None:
                pid = info.get("pid")
                mine = pid == os.getpid() and info.get("host") == host
                if info and info.get("host") == host and isinstance(pid, int):
                    if mine or not _alive(pid, info.get("start_ticks")):
                        warnings.warn(
                            f"{self.path}: taking over the lock of {_describe(info)}, which no "
                            "longer runs",
                            StaleLockWarning,
                            stacklevel=3,
                        )
                        info = None
                elif not info:
                    warnings.warn(
                        f"{self.path}: taking over an unreadable lock file",
                        StaleLockWarning,
                        stacklevel=3,
                    )
                    info = None
                if info is not None:
                    raise WorkdirBusyError(
                        f"workdir {self.workdir} is in use by {_describe(info)} (lock file "
                        f"{self.path}); wait for that job to finish or choose another "
                        "--workdir (if that job is gone, delete the lock file)"
                    )
            record = {
                "pid": os.getpid(),
                "host": host,
                "start_ticks": _start_ticks(os.getpid()),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv),
            }
            from posewarper_jax import fileio

            fileio.write_json(self.path, record, indent=None, what="the workdir lock")
        self.held = True
        return self

    def release(self) -> None:
        """Removes the lock file if this process still holds it."""
        if not self.held:
            return
        self.held = False
        try:
            with self._guard():
                info = self._read()
                mine = info and info.get("host") in (None, socket.gethostname())
                if mine and info.get("pid") == os.getpid():
                    storage.remove(self.path)
        except (OSError, storage.StorageError):
            pass  # the workdir went away; nothing to release

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock(workdir: str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """``with lock(workdir):`` holds the workdir's lock (a no-op when not ``enabled``, e.g.
    on processes other than the first)."""
    return WorkdirLock(workdir) if enabled else contextlib.nullcontext()

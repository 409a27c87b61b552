"""Training progress: a console line, TensorBoard event files and JSON lines in the workdir.

Only process 0 writes; the others keep quiet.

On an object store (``--workdir gs://...``, ``s3://...``), where an object cannot be
appended to, both files are kept in memory and uploaded whole (``metrics.jsonl`` through
``fileio.atomic_write``, each TensorBoard event file as one object through ``storage``) at
most every ``REMOTE_FLUSH_S`` seconds and when the writer closes: a kill loses at most that
many seconds of records. A resumed run reads ``metrics.jsonl`` back and adds to it, and
starts a new event file, as TensorBoard expects.
"""

from __future__ import annotations

import json
import os
import sys
import time
import weakref
from typing import Any

import jax

from posewarper_jax import storage

REMOTE_FLUSH_S = 30.0


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _drop_partial_line(path: str) -> None:
    """Cuts a last line without its newline (a run killed while writing it), so that the
    next run's records start on a line of their own."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            start = max(0, size - (1 << 16))
            f.seek(start)
            tail = f.read()
            cut = tail.rfind(b"\n")
            f.truncate(start + cut + 1 if cut >= 0 else start)
    except FileNotFoundError:
        pass


class _RemoteEventFile:
    """A TensorBoard event file on an object store, uploaded whole at each ``flush``.

    tensorboardX's own ``gs://``/``s3://`` writers need google-cloud-storage or boto3 and
    their own credentials; this one goes through ``storage`` like every other file.
    """

    def __init__(self, path: str):
        self.path = path
        self._buf = bytearray()
        self._last = 0.0
        self._dirty = False

    def write(self, data: bytes) -> None:
        self._buf += data
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._dirty and (force or now - self._last >= REMOTE_FLUSH_S):
            storage.write_bytes(self.path, bytes(self._buf))
            self._last, self._dirty = now, False

    def close(self) -> None:
        self.flush(force=True)


class _RemoteEventFactory:
    def open(self, path: str) -> _RemoteEventFile:
        return _RemoteEventFile(path)

    def directory_check(self, path: str) -> None:
        pass  # object stores have no folders


def _register_tensorboard_scheme(name: str) -> None:
    """TensorBoard event files under ``name://`` go through ``storage``."""
    from tensorboardX import record_writer

    record_writer.register_writer_factory(name, _RemoteEventFactory())


class _RemoteLines:
    """``metrics.jsonl`` on an object store: the lines so far, uploaded whole."""

    def __init__(self, path: str):
        from posewarper_jax import fileio

        self._fileio = fileio
        self.path = path
        try:
            text = storage.read_text(path)
        except FileNotFoundError:
            text = ""
        if text and not text.endswith("\n"):  # a last line cut by a kill
            text = text[: text.rfind("\n") + 1]
        self._text = [text]
        self._last = time.monotonic()
        self._dirty = False

    def write(self, line: str) -> None:
        self._text.append(line)
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._dirty and (force or now - self._last >= REMOTE_FLUSH_S):
            self._text = ["".join(self._text)]
            self._fileio.atomic_write(self.path, self._text[0], what="the metrics log")
            self._last, self._dirty = now, False

    def close(self) -> None:
        self.flush(force=True)


_OPEN_WRITERS: weakref.WeakSet = weakref.WeakSet()


def close_metric_writers() -> None:
    """Closes every ``MetricWriter`` still open (a job that stops on an error)."""
    for writer in list(_OPEN_WRITERS):
        writer.close()


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard``.

    Each JSON line is ``{"stage": str, "step": int, "time": unix seconds, <name>: value}``.
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        self._remote = storage.is_remote(workdir)
        _OPEN_WRITERS.add(self)
        if self.enabled:
            path = storage.join(workdir, "metrics.jsonl")
            if self._remote:
                self._jsonl = _RemoteLines(path)
            else:
                os.makedirs(workdir, exist_ok=True)
                _drop_partial_line(path)
                self._jsonl = open(path, "a")  # noqa: SIM115
            try:
                from tensorboardX import SummaryWriter

                if self._remote:
                    _register_tensorboard_scheme(storage.scheme(workdir))
                self._tb = SummaryWriter(storage.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard files are optional; JSON lines always exist.
                self._tb = None

    def write(self, stage: str, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        record = {"stage": stage, "step": int(step), "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{stage}/{k}", v, int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """Console progress of one stage: step, loss, steps/s and ETA."""

    def __init__(self, stage: str, first_step: int, total_steps: int, *, enabled=None):
        self.stage = stage
        self.total = total_steps
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._t0 = time.perf_counter()
        self._s0 = first_step
        self._last_t = self._t0
        self._last_s = first_step

    def update(self, step: int, scalars: dict[str, float]) -> float:
        """Prints one line; returns the steps/s since the previous update."""
        now = time.perf_counter()
        rate = (step - self._last_s) / max(now - self._last_t, 1e-9)
        overall = (step - self._s0) / max(now - self._t0, 1e-9)
        self._last_t, self._last_s = now, step
        if self.enabled:
            eta = (self.total - step) / overall if overall > 0 else float("nan")
            parts = " ".join(f"{k} {v:.5g}" for k, v in scalars.items())
            print(
                f"[{self.stage}] step {step}/{self.total} {parts} "
                f"{rate:.2f} steps/s ETA {_fmt_duration(eta)}",
                file=sys.stdout,
                flush=True,
            )
        return rate

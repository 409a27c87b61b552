"""Training progress: a console line, TensorBoard event files and JSON lines in the workdir.

Only process 0 writes; the others keep quiet.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax


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


class MetricWriter:
    """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard``.

    Each JSON line is ``{"stage": str, "step": int, "time": unix seconds, <name>: value}``.
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, "metrics.jsonl")
            _drop_partial_line(path)
            self._jsonl = open(path, "a")  # noqa: SIM115
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
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

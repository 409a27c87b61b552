"""The project's progress lines: one line on stdout, flushed at once, from process 0.

``log`` is what the job, the training loop and the command lines print their progress with:
on a multi-host run every process runs the same code, and only the first one speaks (the
others keep quiet, as for the training logs of ``training_log``).
"""

from __future__ import annotations

__all__ = ["log"]


def log(msg: str) -> None:
    """Prints ``msg`` (flushed) on process 0; other processes print nothing."""
    import jax

    if jax.process_index() == 0:
        print(msg, flush=True)

"""The errors of weight import: a file that cannot be read or written, a state_dict that does
not match the network."""

from __future__ import annotations

from collections.abc import Sequence

from posewarper_jax.cli import ExpectedError

_KEY_KINDS = ("missing", "unknown", "mis-shaped")


class WeightFileError(ValueError, ExpectedError):
    """A weight file that cannot be read (empty, truncated, damaged, not a checkpoint) or an
    output that cannot be written; the message names the file and the reason."""


class ConversionError(ValueError, ExpectedError):
    """A state_dict that does not match the network; ``problems`` lists every offence.

    ``details`` summarises them in a few lines for the command line (``SHOW_ALL`` problems or
    fewer are listed one by one; more are counted by kind with examples).
    """

    SHOW_ALL = 12

    def __init__(
        self, problems: Sequence[str], source: str | None = None, matching: int | None = None
    ):
        self.problems = list(problems)
        self.source = source
        self.matching = matching  # how many of the source's keys the network has, if known
        what = source if source is not None else "the state_dict"
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"cannot convert {what}: {len(self.problems)} problem(s)\n{lines}")

    @property
    def details(self) -> list[str]:
        if len(self.problems) <= self.SHOW_ALL:
            return list(self.problems)
        kinds: dict[str, list[str]] = {}
        for p in self.problems:
            kind = p.split(" key ")[0] + " key" if p.split(" key ")[0] in _KEY_KINDS else "value"
            kinds.setdefault(kind, []).append(p)
        out = []
        if self.matching == 0:
            out.append(
                "none of its keys belongs to an HRNet or PoseWarper state_dict (official, "
                "PoseWarper or mmpose layout): is it a pose model's weights?"
            )
        for kind, items in kinds.items():
            examples = "; ".join(items[:2])
            out.append(f"{len(items)} x {kind}, e.g. {examples}")
        return out + ["(--debug lists every problem)"]

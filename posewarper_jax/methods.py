"""The methods the experiment compares: one entry per method, in the report's order.

Each ``Method`` says how the method is presented: its section (``"propagation"``: poses of
the unlabeled frames of labeled videos, scored with ground-truth boxes; ``"detection"``:
poses of the validation frames), its row title in ``report.md`` (``apps.report``), its short
label in the seeds summary (``apps.seeds_summary``), how it predicts and what its joint
scores mean (poseval's mAP ranks the joints by them). How each method is run lives in the
main job (``job``), which evaluates the methods named here.

``PROPAGATION`` and ``DETECTION`` are the methods of ``report.json``'s two tables, in their
order. A method with ``table=False`` (the causal aggregation) is measured by the job too but
reported under ``extra`` (``report.json``'s ``"extra"["detection"]``); the seeds summary
shows it with its section (``PROPAGATION_ALL``, ``DETECTION_ALL``). A new baseline is one more
entry here (and its prediction in the job).
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "DETECTION",
    "DETECTION_ALL",
    "METHODS",
    "PROPAGATION",
    "PROPAGATION_ALL",
    "SECTIONS",
    "SECTION_TITLES",
    "Method",
    "by_name",
    "labels",
    "titles",
]


@dataclasses.dataclass(frozen=True)
class Method:
    """One compared method.

    name: the key in ``report.json``, the job's predictions and score files.
    section: ``"propagation"`` or ``"detection"``.
    title: the row of ``report.md``'s tables.
    label: the shorter row label of the seeds summary.
    predicts: how the method predicts a frame's poses.
    scores: what its per-joint scores are (the ranking poseval's mAP uses).
    table: one of the section's ``report.json`` table rows (False: reported under ``extra``).
    """

    name: str
    section: str
    title: str
    label: str
    predicts: str
    scores: str
    table: bool = True


SECTION_TITLES: dict[str, str] = {
    "propagation": "Video pose propagation (unlabeled frames, ground-truth boxes)",
    "detection": "Pose detection (frames of the validation videos)",
}

METHODS: tuple[Method, ...] = (
    Method(
        "posewarper",
        "propagation",
        title="PoseWarper (propagated labels)",
        label="PoseWarper",
        predicts="warps the nearest labeled frame's pose heatmaps to the frame with the "
        "learned offsets of the warping head",
        scores="heatmap maxima",
    ),
    Method(
        "copy_nearest",
        "propagation",
        title="Copy of the nearest labeled pose",
        label="copy nearest label",
        predicts="copies the pose of the nearest labeled frame",
        scores="1/|δ|",
    ),
    Method(
        "farneback",
        "propagation",
        title="Farneback optical flow",
        label="Farneback flow",
        predicts="moves the nearest labeled pose along Farneback's dense optical flow",
        scores="the forward-backward consistency of its flow",
    ),
    Method(
        "hrnet_pseudo",
        "propagation",
        title="HRNet on every frame (pseudo-labeling)",
        label="HRNet pseudo labels",
        predicts="HRNet (stage 1) on the frame alone, in the ground-truth boxes",
        scores="heatmap maxima",
    ),
    Method(
        "hrnet",
        "detection",
        title="HRNet, sparse labels",
        label="HRNet (sparse labels)",
        predicts="HRNet trained on the sparse labels, on each frame alone",
        scores="heatmap maxima",
    ),
    Method(
        "posewarper_aggregation",
        "detection",
        title="PoseWarper temporal aggregation",
        label="PoseWarper aggregation",
        predicts="HRNet's heatmaps of the neighbouring frames warped to the frame and "
        "averaged with weights",
        scores="heatmap maxima",
    ),
    Method(
        "posewarper_aggregation_causal",
        "detection",
        title="PoseWarper temporal aggregation, causal (t−2..t)",
        label="PoseWarper aggregation, causal (t−2..t)",
        predicts="the aggregation over the frame and the two before it (no future frame)",
        scores="heatmap maxima",
        table=False,
    ),
    Method(
        "hrnet_pseudo_augmented",
        "detection",
        title="HRNet, sparse + propagated pseudo labels",
        label="HRNet (sparse + pseudo labels)",
        predicts="HRNet retrained on the sparse labels and PoseWarper's propagated pseudo "
        "labels, on each frame alone",
        scores="heatmap maxima",
    ),
)


def _names(section: str, *, table_only: bool) -> tuple[str, ...]:
    return tuple(m.name for m in METHODS if m.section == section and (m.table or not table_only))


PROPAGATION: tuple[str, ...] = _names("propagation", table_only=True)
DETECTION: tuple[str, ...] = _names("detection", table_only=True)
PROPAGATION_ALL: tuple[str, ...] = _names("propagation", table_only=False)
DETECTION_ALL: tuple[str, ...] = _names("detection", table_only=False)
SECTIONS: dict[str, tuple[str, ...]] = {"propagation": PROPAGATION, "detection": DETECTION}


def by_name(name: str) -> Method:
    """The method called ``name``; KeyError listing the known names otherwise."""
    for m in METHODS:
        if m.name == name:
            return m
    raise KeyError(f"unknown method {name!r}; known: {[m.name for m in METHODS]}")


def titles(*, table_only: bool = True) -> dict[str, str]:
    """name -> ``report.md`` title, in the report's order."""
    return {m.name: m.title for m in METHODS if m.table or not table_only}


def labels() -> dict[str, str]:
    """name -> seeds summary label, for every method."""
    return {m.name: m.label for m in METHODS}

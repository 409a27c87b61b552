"""The report's propagation scores by condition (``report.json``'s
``"propagation_by_condition"``, a section of ``report.md``), for data that records the
conditions it was rendered under (the synthetic data set; ``eval.conditions``).

``report.json`` holds, when the data has condition records::

  "propagation_by_condition": {
    "split": "test",
    "speed_bins": [0.05, 0.15, 0.4],
    "occlusion_window": 3,
    "methods": {
      "<method>": {"<subset>": {"map": T or null, "pckh": T, "frames": n, "gt_joints": n},
                   ...},
      ...}}

with the subsets of ``eval.conditions.SUBSETS`` that have ground truth (blurred / sharp and
defocused / in-focus frames with mAP and PCKh@0.5; speed bins, visible joints near an
occlusion or clear of one, and hidden joints with PCKh@0.5 only), T a table of
``eval.posetrack_map.COLUMNS`` in percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from posewarper_jax.apps.report_scoring import section_methods
from posewarper_jax.data.types import VideoDataset
from posewarper_jax.eval import conditions as conditions_lib
from posewarper_jax.eval.posetrack_map import COLUMNS

__all__ = ["KEY", "SUBSET_LABELS", "measure", "render_conditions", "validate_conditions"]

KEY = "propagation_by_condition"
SUBSET_LABELS: dict[str, str] = {
    "sharp": "sharp frames",
    "blurred": "motion-blurred frames (long exposure)",
    "in_focus": "frames in focus",
    "defocused": "defocused frames",
    **{n: f"joints at {n} head sizes/frame" for n in conditions_lib.speed_bin_names()},
    "visible_clear": "visible joints, no occlusion nearby",
    "visible_near_occlusion": "visible joints occluded within ±3 frames",
    "hidden_by_person": "joints hidden by another person (amodal)",
    "hidden_by_object": "joints hidden by an object (amodal)",
}


def measure(
    root: str, data_split: str, gt: VideoDataset, predictions: Mapping[str, VideoDataset],
    *, split: str = "",
) -> dict[str, Any] | None:  # fmt: skip
    """The section (module docstring) for each method's predictions on ``gt`` (e.g. the
    held-back ground truth), or None when ``root``'s split ``data_split`` has no condition
    records for ``gt``'s videos. ``split`` names the evaluated videos in the report."""
    records = conditions_lib.load_conditions(root, data_split, gt)
    if not records or not gt.videos:
        return None
    return {
        "split": split or data_split,
        "speed_bins": list(conditions_lib.SPEED_BINS),
        "occlusion_window": conditions_lib.OCCLUSION_WINDOW,
        "methods": {
            name: conditions_lib.condition_views(gt, pred, records)
            for name, pred in predictions.items()
        },
    }


def _table(row: Any, where: str, number: Callable[[Any, str], float]) -> dict[str, float]:
    if not isinstance(row, Mapping) or set(row) != set(COLUMNS):
        raise ValueError(f"report: {where} must be a table with exactly {list(COLUMNS)}")
    return {c: number(row[c], f"{where}[{c!r}]") for c in COLUMNS}


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"report: {where} must be a count, got {value!r}")
    return int(value)


def validate_conditions(
    section: Any, methods: tuple[str, ...], number: Callable[[Any, str], float]
) -> dict[str, Any]:
    """Checks ``results["propagation_by_condition"]`` (module docstring); returns it with
    plain floats (NaN kept) and the methods in ``methods``' order.

    Raises:
      ValueError naming the method, subset or column at fault.
    """
    keys = {"split", "speed_bins", "occlusion_window", "methods"}
    given = section_methods(section, KEY, keys, methods)
    bins = section.get("speed_bins", list(conditions_lib.SPEED_BINS))
    if not isinstance(bins, list | tuple) or not all(
        isinstance(b, int | float) and not isinstance(b, bool) for b in bins
    ):
        raise ValueError(f"report: results[{KEY!r}]['speed_bins'] must be a list of numbers")
    out: dict[str, Any] = {
        "split": str(section.get("split", "")),
        "speed_bins": [float(b) for b in bins],
        "occlusion_window": _count(
            section.get("occlusion_window", conditions_lib.OCCLUSION_WINDOW),
            f"results[{KEY!r}]['occlusion_window']",
        ),
        "methods": {},
    }
    for method in (m for m in methods if m in given):
        where = f"results[{KEY!r}]['methods'][{method!r}]"
        subsets = given[method]
        if not isinstance(subsets, Mapping):
            raise ValueError(f"report: {where} must be a mapping subset -> scores")
        odd = sorted(set(subsets) - set(conditions_lib.SUBSETS))
        if odd:
            raise ValueError(f"report: {where} has unknown subset(s) {odd}")
        entry = {}
        for name in (s for s in conditions_lib.SUBSETS if s in subsets):
            w = f"{where}[{name!r}]"
            e = subsets[name]
            if not isinstance(e, Mapping) or "pckh" not in e:
                raise ValueError(f"report: {w} must be a mapping with 'pckh'")
            mAP = e.get("map")
            entry[name] = {
                "map": None if mAP is None else _table(mAP, f"{w}['map']", number),
                "pckh": _table(e["pckh"], f"{w}['pckh']", number),
                "frames": _count(e.get("frames", 0), f"{w}['frames']"),
                "gt_joints": _count(e.get("gt_joints", 0), f"{w}['gt_joints']"),
            }
        out["methods"][method] = entry
    return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _rows(methods: Mapping[str, Any], view: str) -> list[str]:
    """One table row per subset with ``view`` ("map" or "pckh"): counts, then each method's
    Total, the best of the row in bold."""
    out = []
    for name in conditions_lib.SUBSETS:
        cells = []
        counts = None
        for entry in methods.values():
            e = entry.get(name)
            table = None if e is None else e.get(view)
            cells.append(None if table is None else table["Total"])
            if e is not None and counts is None:
                counts = (e["frames"], e["gt_joints"])
        if counts is None or all(c is None for c in cells):
            continue
        shown = [round(float(c), 1) for c in cells if _fmt(c) != "n/a"]
        best = max(shown) if len(shown) > 1 else None
        text = []
        for c in cells:
            t = _fmt(c)
            if best is not None and t != "n/a" and round(float(c), 1) == best:
                t = f"**{t}**"
            text.append(t)
        label = SUBSET_LABELS.get(name, name)
        out.append(f"| {label} | {counts[0]} | {counts[1]} | " + " | ".join(text) + " |")
    return out


def render_conditions(section: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """``report.md`` lines of the section (``section`` as ``validate_conditions`` returns it
    or read back from ``report.json``); empty when there are no methods."""
    methods = section.get("methods") or {}
    if not methods:
        return []
    split = section.get("split") or "the evaluated split"
    bins = ", ".join(f"{b:g}" for b in section.get("speed_bins", conditions_lib.SPEED_BINS))
    head = (
        "| Condition | frames | GT joints | " + " | ".join(labels.get(m, m) for m in methods) + " |"
    )
    rule = "|---|---:|---:|" + "---:|" * len(methods)
    out = [
        f"## Propagation by condition ({split})",
        "",
        "The synthetic data records what each frame and joint was rendered under. Frame "
        "subsets keep the ground truth of those frames only; joint subsets keep every frame's "
        "pairing of predictions with people and count hits over the subset's ground-truth "
        f"joints only. Speed: the joint's image motion in head sizes per frame (bin edges "
        f"{bins}). Hidden joints are not in the ground truth: they are scored against the "
        "position the renderer knows, over the prediction paired with their person. Best per "
        "row in bold.",
        "",
        "PCKh@0.5 (Total, %):",
        "",
        head,
        rule,
        *_rows(methods, "pckh"),
        "",
    ]
    map_rows = _rows(methods, "map")
    if map_rows:
        out += ["mAP (Total, %), frame subsets:", "", head, rule, *map_rows, ""]
    return out

"""The report's propagation section scored three ways (``report.json``'s
``"propagation_scoring"``, a section of ``report.md``).

``report.json`` holds, when the job measured them::

  "propagation_scoring": {
    "split": "test",
    "methods": {
      "<method>": {"map": T, "map_constant_scores": T, "pckh": T,
                   "frames": n, "people": n, "frames_beyond_reach": n,
                   "by_delta": {"1": {"map": T, "map_constant_scores": T, "pckh": T,
                                      "frames": n, "people": n}, "2": ..., ...}},
      ...}}

with T a table of ``eval.posetrack_map.COLUMNS`` in percent (NaN written as ``null``), the
views of ``eval.score_views.propagation_views``: ``map`` is the same figure as the
``"propagation"`` table (poseval's mAP with the method's own joint scores),
``map_constant_scores`` poseval's mAP with every predicted joint scored 1, ``pckh`` PCKh@0.5
(no scores); ``frames``/``people`` count the ground truth scored, ``by_delta`` repeats the
views on the held-back frames whose nearest labeled frame is |δ| away; ``split`` is the
validation split scored (``data.splits``: ``test`` in the main job).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from posewarper_jax.eval.posetrack_map import COLUMNS
from posewarper_jax.eval.score_views import VIEWS

__all__ = ["KEY", "VIEW_LABELS", "render_scoring", "validate_scoring"]

KEY = "propagation_scoring"
VIEW_LABELS: dict[str, str] = {
    "map": "mAP",
    "map_constant_scores": "mAP, constant scores",
    "pckh": "PCKh@0.5",
}
_COUNTS = ("frames", "people", "frames_beyond_reach")


def _table(row: Any, where: str, number: Callable[[Any, str], float]) -> dict[str, float]:
    if not isinstance(row, Mapping):
        raise ValueError(f"report: {where} must be a mapping of column -> percent")
    missing = [c for c in COLUMNS if c not in row]
    extra = sorted(set(row) - set(COLUMNS))
    if missing or extra:
        raise ValueError(
            f"report: {where} has columns {sorted(row)}; expected exactly {list(COLUMNS)}"
        )
    return {c: number(row[c], f"{where}[{c!r}]") for c in COLUMNS}


def _views(entry: Any, where: str, number, counts: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise ValueError(f"report: {where} must be a mapping")
    missing = [v for v in VIEWS if v not in entry]
    if missing:
        raise ValueError(f"report: {where} is missing view(s) {missing}")
    out: dict[str, Any] = {v: _table(entry[v], f"{where}[{v!r}]", number) for v in VIEWS}
    for key in counts:
        if key in entry:
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"report: {where}[{key!r}] must be a count, got {value!r}")
            out[key] = int(value)
    return out


def section_methods(
    section: Any, key: str, keys: set[str], methods: tuple[str, ...], *, name_known: bool = False
) -> Mapping[str, Any]:
    """``section["methods"]`` of the report section ``results[key]`` after the checks both
    per-method sections share: a mapping, no key beyond ``keys``, no method beyond
    ``methods`` (``name_known``: the message lists them). ValueError naming what is wrong."""
    if not isinstance(section, Mapping):
        raise ValueError(f"report: results[{key!r}] must be a mapping")
    unknown = sorted(set(section) - keys)
    if unknown:
        raise ValueError(f"report: results[{key!r}] has unknown key(s) {unknown}")
    given = section.get("methods", {})
    if not isinstance(given, Mapping):
        raise ValueError(f"report: results[{key!r}]['methods'] must be a mapping")
    bad = sorted(set(given) - set(methods))
    if bad:
        known = f" (known: {list(methods)})" if name_known else ""
        where = f"report: results[{key!r}]['methods']"
        raise ValueError(f"{where} has unexpected method(s) {bad}{known}")
    return given


def validate_scoring(
    scoring: Any, methods: tuple[str, ...], number: Callable[[Any, str], float]
) -> dict[str, Any]:
    """Checks ``results["propagation_scoring"]`` (module docstring) and returns it with plain
    floats (NaN kept). ``methods``: the propagation methods allowed (a subset may be given,
    kept in that order); ``number``: the report's check of one percent value.

    Raises:
      ValueError naming the method, |δ|, view or column at fault.
    """
    given = section_methods(scoring, KEY, {"split", "methods"}, methods, name_known=True)
    split = scoring.get("split", "")
    if not isinstance(split, str):
        raise ValueError(f"report: results[{KEY!r}]['split'] must be a string, got {split!r}")
    out: dict[str, Any] = {"split": split, "methods": {}}
    for method in (m for m in methods if m in given):
        where = f"results[{KEY!r}]['methods'][{method!r}]"
        entry = _views(given[method], where, number, _COUNTS)
        by_delta = given[method].get("by_delta", {})
        if not isinstance(by_delta, Mapping):
            raise ValueError(f"report: {where}['by_delta'] must be a mapping |δ| -> views")
        entry["by_delta"] = {}
        for delta in sorted(by_delta, key=lambda d: int(d) if str(d).isdigit() else -1):
            if not str(delta).isdigit() or int(delta) < 1:
                raise ValueError(f"report: {where}['by_delta'] key {delta!r} is not a |δ| >= 1")
            entry["by_delta"][str(int(delta))] = _views(
                by_delta[delta], f"{where}['by_delta'][{delta!r}]", number, _COUNTS[:2]
            )
        out["methods"][method] = entry
    return out


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _bold_best(rows: list[list[Any]], columns: range) -> list[list[str]]:
    """Cells as text, the best value of each of ``columns`` (at one decimal) in bold."""
    out = [[c if isinstance(c, str) else _fmt(c) for c in row] for row in rows]
    if len(rows) < 2:
        return out
    for c in columns:
        shown = [round(float(r[c]), 1) for r in rows if _fmt(r[c]) != "n/a"]
        if not shown:
            continue
        best = max(shown)
        for r, row in zip(out, rows):
            if _fmt(row[c]) != "n/a" and round(float(row[c]), 1) == best:
                r[c] = f"**{r[c]}**"
    return out


def render_scoring(
    scoring: Mapping[str, Any],
    labels: Mapping[str, str],
    table: Callable[[Mapping[str, Mapping[str, float]], Mapping[str, str]], str],
) -> list[str]:
    """``report.md`` lines of the section (``scoring`` as ``validate_scoring`` returns it, or
    read back from ``report.json``); ``table`` renders a per-joint-group table. Empty when
    there are no methods."""
    methods = scoring.get("methods") or {}
    if not methods:
        return []
    split = scoring.get("split") or "the evaluated split"
    views = list(VIEWS)
    head = "| Method | " + " | ".join(VIEW_LABELS[v] for v in views) + " |"
    rule = "|---|" + "---:|" * len(views)
    out = [
        f"## Propagation scored three ways ({split})",
        "",
        "Total (%) of each view: **mAP** is poseval's, each method ranking its joints by its "
        "own scores (PoseWarper and HRNet: heatmap maxima; Farneback: the forward-backward "
        "consistency of its flow; copy: 1/|δ|); **mAP, constant scores** is poseval's with every "
        "predicted joint scored 1; **PCKh@0.5** uses no scores: the share of ground-truth "
        "joints within half a head size of the prediction paired with their person by "
        "poseval's assignment (unpaired people are misses). Best per column in bold.",
        "",
        head,
        rule,
    ]
    rows = [[labels.get(m, m), *(e[v]["Total"] for v in views)] for m, e in methods.items()]
    out += ["| " + " | ".join(r) + " |" for r in _bold_best(rows, range(1, 1 + len(views)))]
    first = next(iter(methods.values()))
    if "frames" in first:
        beyond = first.get("frames_beyond_reach", 0)
        out += [
            "",
            f"{first['frames']} held-back frames, {first.get('people', 0)} ground-truth people"
            + (f"; {beyond} frames beyond reach (scored as misses)" if beyond else "")
            + ".",
        ]
    out += ["", "PCKh@0.5 (%) per joint group:", ""]
    out += [table({m: e["pckh"] for m, e in methods.items()}, labels), ""]
    deltas = sorted({d for e in methods.values() for d in e.get("by_delta", {})}, key=int)
    if deltas:
        out += [
            "By the distance |δ| to the nearest labeled frame (Total, %):",
            "",
            "| \\|δ\\| | frames | people | Method | "
            + " | ".join(VIEW_LABELS[v] for v in views)
            + " |",
            "|---:|---:|---:|---|" + "---:|" * len(views),
        ]
        for d in deltas:
            rows = []
            counts = ("", "")
            for m, e in methods.items():
                entry = e.get("by_delta", {}).get(d)
                if entry is None:
                    continue
                counts = (str(entry.get("frames", "")), str(entry.get("people", "")))
                rows.append([labels.get(m, m), *(entry[v]["Total"] for v in views)])
            for i, r in enumerate(_bold_best(rows, range(1, 1 + len(views)))):
                lead = [d, *counts] if i == 0 else ["", "", ""]
                out.append("| " + " | ".join([*lead, *r]) + " |")
        out += [""]
    return out

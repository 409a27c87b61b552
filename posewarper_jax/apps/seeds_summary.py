"""The ``seeds`` sweep's summary: every report row as mean ± std over draws of the data.

``summarize({seed: report})`` takes the ``report.json`` of each draw (``apps.report``; the
same config but ``data.synthetic_seed``) and returns ``summary.json``'s content::

  {"split": "test", "seeds": [0, 1, 2], "std": "...",
   "draws": {"0": {"videos": [...], "of_videos": n, "data_root": ...}, ...},
   "rows": {KEY: {"section": ..., "label": ..., "headline": bool,
                  "columns": {COLUMN: {"mean": m, "std": s, "n": n, "values": [v0, v1, ...]},
                              ...}}, ...},
   "differences": {KEY: {"label": ..., "a": ROW, "b": ROW, "column": "Total",
                         "mean": m, "std": s, "n": n, "values": [...], "a_better": k}}}

Rows (``KEY``, ``label``): ``propagation/<method>/<view>`` for each propagation method and
score view of ``propagation_scoring`` (``map``: poseval's mAP, the report's propagation table;
``map_constant_scores``; ``pckh``), and ``.../delta=<d>`` for each |δ|;
``detection/<method>`` for the single-frame HRNet, PoseWarper's aggregation (and its causal
variant from ``extra``) and HRNet retrained on real + pseudo labels (augmentation);
``tracking/<tracker>`` (MOTA, MOTP, precision, recall). Columns are the report's: the mAP
table's ``COLUMNS`` (Head ... Total) and the tracking metrics.

Arithmetic: ``values`` holds each draw's figure in the order of ``seeds`` (``None`` where a
draw has none or NaN: poseval's AP of a joint group without ground truth); ``mean`` is over
the draws with a figure and ``std`` their sample standard deviation (n − 1 in the
denominator; ``None`` with fewer than two). ``differences`` are paired: a − b in each draw
(the same videos), then mean ± std of those differences, and ``a_better`` counts the draws
where a scored higher. Every report must score the same split (``report["evaluation"]``)
with the same config apart from ``data.synthetic_seed`` and the data roots
(``SEED_FIELDS``), or ``summarize`` raises ValueError naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from posewarper_jax import methods

__all__ = [
    "DIFFERENCES",
    "SEED_FIELDS",
    "render_summary",
    "summarize",
]

COLUMNS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total")
TRACKING_COLUMNS = ("MOTA", "MOTP", "Prec", "Rec")
VIEWS = ("map", "map_constant_scores", "pckh")
VIEW_LABELS = {"map": "mAP", "map_constant_scores": "mAP, constant scores", "pckh": "PCKh@0.5"}
# Every method the job measures (``methods``): the report's rows and those under ``extra``.
PROPAGATION = methods.PROPAGATION_ALL
DETECTION = methods.DETECTION_ALL
LABELS = methods.labels()
TRACKER_LABELS = {"posewarper": "PoseWarper motion model", "iou": "box IoU"}
# Config fields that differ between the draws of one sweep.
SEED_FIELDS = ("data.synthetic_seed", "data.root", "pretrain.root")
# Paired differences of Total (a − b): the comparisons the paper's tables make.
DIFFERENCES = (
    ("propagation/posewarper/map", "propagation/farneback/map"),
    ("propagation/posewarper/map", "propagation/copy_nearest/map"),
    ("propagation/posewarper/map", "propagation/hrnet_pseudo/map"),
    ("propagation/posewarper/pckh", "propagation/farneback/pckh"),
    ("detection/posewarper_aggregation", "detection/hrnet"),
    ("detection/hrnet_pseudo_augmented", "detection/hrnet"),
)
STD = "sample standard deviation over the draws (n - 1 in the denominator)"


def _value(v: Any) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return None
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else v


def _stats(values: list[float | None]) -> dict[str, Any]:
    got = [v for v in values if v is not None]
    n = len(got)
    mean = sum(got) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in got) / (n - 1)) if n >= 2 else None
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, Mapping):
        return {prefix: config}
    out: dict[str, Any] = {}
    for k, v in config.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _tables(report: Mapping[str, Any]) -> dict[str, tuple[str, str, dict]]:
    """KEY -> (section, label, {column: value}) of one report."""
    out: dict[str, tuple[str, str, dict]] = {}
    scoring = (report.get("propagation_scoring") or {}).get("methods") or {}
    for m in PROPAGATION:
        entry = scoring.get(m)
        if entry is None:  # a report without the score views: its mAP table alone
            if m in report.get("propagation", {}):
                out[f"propagation/{m}/map"] = (
                    "propagation", f"{LABELS[m]}, mAP", report["propagation"][m]
                )  # fmt: skip
            continue
        for view in VIEWS:
            out[f"propagation/{m}/{view}"] = (
                "propagation", f"{LABELS[m]}, {VIEW_LABELS[view]}", entry[view]
            )  # fmt: skip
        for d, sub in (entry.get("by_delta") or {}).items():
            for view in VIEWS:
                out[f"propagation/{m}/{view}/delta={d}"] = (
                    "propagation_by_delta",
                    f"{LABELS[m]}, {VIEW_LABELS[view]}, |δ| = {d}",
                    sub[view],
                )
    extra = report.get("extra") or {}
    detection = {**report.get("detection", {}), **(extra.get("detection") or {})}
    for m in DETECTION:
        if m in detection:
            out[f"detection/{m}"] = ("detection", LABELS[m], detection[m])
    for t, row in (extra.get("tracking") or {}).items():
        out[f"tracking/{t}"] = ("tracking", TRACKER_LABELS.get(t, t), row)
    return out


HEADLINE = (
    "propagation/posewarper/map",
    "propagation/copy_nearest/map",
    "propagation/farneback/map",
    "propagation/hrnet_pseudo/map",
    "detection/hrnet",
    "detection/posewarper_aggregation",
    "detection/hrnet_pseudo_augmented",
)


def summarize(
    reports: Mapping[int, Mapping[str, Any]], *, draws: Mapping[int, Mapping] | None = None
) -> dict[str, Any]:
    """``summary.json``'s content (module docstring) from ``{seed: report.json dict}``.

    Args:
      reports: one finished report per draw (``apps.report.load_report`` of its workdir).
      draws: extra facts per seed recorded under ``draws`` (workdir, data root).

    Raises:
      ValueError: no report, reports of different splits, or configs that differ in a field
        other than ``SEED_FIELDS`` (named).
    """
    if not reports:
        raise ValueError("seeds: no finished draw to summarize")
    seeds = sorted(int(s) for s in reports)
    by_seed = {int(s): r for s, r in reports.items()}
    splits = {}
    for s in seeds:
        ev = by_seed[s].get("evaluation")
        if not isinstance(ev, Mapping) or "split" not in ev:
            raise ValueError(
                f"seeds: the report of seed {s} names no evaluation split (written before "
                "eval.split existed); run that draw again in a new workdir"
            )
        splits[s] = ev["split"]
    if len(set(splits.values())) > 1:
        raise ValueError(f"seeds: the draws scored different splits: {splits}")
    first = _flat(by_seed[seeds[0]].get("config") or {})
    for s in seeds[1:]:
        other = _flat(by_seed[s].get("config") or {})
        for key in sorted(set(first) | set(other)):
            if key in SEED_FIELDS:
                continue
            if first.get(key) != other.get(key):
                raise ValueError(
                    f"seeds: config.{key} differs between seed {seeds[0]} "
                    f"({first.get(key)!r}) and seed {s} ({other.get(key)!r}); a seeds sweep "
                    "changes only the data draw"
                )

    tables = {s: _tables(by_seed[s]) for s in seeds}
    keys: list[str] = []
    for s in seeds:
        keys += [k for k in tables[s] if k not in keys]
    rows: dict[str, Any] = {}
    for key in keys:
        section, label, _ = next(tables[s][key] for s in seeds if key in tables[s])
        columns = TRACKING_COLUMNS if section == "tracking" else COLUMNS
        rows[key] = {
            "section": section,
            "label": label,
            "headline": key in HEADLINE,
            "columns": {
                c: _stats(
                    [_value(tables[s][key][2].get(c)) if key in tables[s] else None for s in seeds]
                )
                for c in columns
            },
        }
    differences: dict[str, Any] = {}
    for a, b in DIFFERENCES:
        if a not in rows or b not in rows:
            continue
        va, vb = rows[a]["columns"]["Total"]["values"], rows[b]["columns"]["Total"]["values"]
        diff = [x - y if x is not None and y is not None else None for x, y in zip(va, vb)]
        entry = _stats(diff)
        entry.update(
            label=f"{rows[a]['label']} − {rows[b]['label']}",
            a=a,
            b=b,
            column="Total",
            a_better=sum(1 for d in diff if d is not None and d > 0),
        )
        differences[f"{a} - {b}"] = entry
    draw_info = {}
    for s in seeds:
        ev = by_seed[s]["evaluation"]
        cfg = _flat(by_seed[s].get("config") or {})
        draw_info[str(s)] = {
            "videos": list(ev.get("videos", [])),
            "of_videos": ev.get("of_videos"),
            "data_root": cfg.get("data.root"),
            **dict((draws or {}).get(s, {})),
        }
    return {
        "split": splits[seeds[0]],
        "seeds": seeds,
        "std": STD,
        "draws": draw_info,
        "rows": rows,
        "differences": differences,
    }


def _pm(stats: Mapping[str, Any]) -> str:
    if stats["mean"] is None:
        return "n/a"
    if stats["std"] is None:
        return f"{stats['mean']:.1f}"
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}"


def _cell(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _table(rows: Mapping[str, Any], keys: list[str], column: str, seeds: list[int]) -> list[str]:
    head = f"| row | {column}, mean ± std | " + " | ".join(f"seed {s}" for s in seeds) + " |"
    out = [head, "|---|---:|" + "---:|" * len(seeds)]
    for key in keys:
        st = rows[key]["columns"][column]
        cells = " | ".join(_cell(v) for v in st["values"])
        out.append(f"| {rows[key]['label']} | {_pm(st)} | {cells} |")
    return out


def render_summary(summary: Mapping[str, Any]) -> str:
    """``summary.md``: the headline table (propagation mAP per method, detection, aggregation
    and augmentation: Total mean ± std and each draw's figure), then every other row, the
    paired differences and the videos of each draw."""
    seeds = list(summary["seeds"])
    rows = summary["rows"]
    n = len(seeds)
    out = [
        f"# PoseWarper from sparse labels: {n} draw{'s' if n != 1 else ''} of the data",
        "",
        f"Every draw is the whole experiment on another draw of the synthetic videos "
        f"(`data.synthetic_seed` = {', '.join(str(s) for s in seeds)}), everything else the "
        f"same, scored on the `{summary['split']}` split of its validation videos. "
        f"Mean ± {summary['std']}; then each draw's figure (%).",
        "",
        "## Headline (Total)",
        "",
    ]
    headline = [k for k in HEADLINE if k in rows]
    out += _table(rows, headline, "Total", seeds) + [""]
    sections = (
        ("propagation", "Propagation, three score views (Total)", "Total"),
        ("propagation_by_delta", "Propagation by |δ| to the nearest label (Total)", "Total"),
        ("detection", "Detection, aggregation and augmentation (Total)", "Total"),
        ("tracking", "Tracking (MOTA)", "MOTA"),
    )
    for section, title, column in sections:
        keys = [k for k, r in rows.items() if r["section"] == section]
        if keys:
            out += [f"## {title}", ""] + _table(rows, keys, column, seeds) + [""]
    diffs = summary.get("differences") or {}
    if diffs:
        out += [
            "## Paired differences (Total, a − b in each draw)",
            "",
            "| a − b | mean ± std | draws a > b | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|---:|---:|" + "---:|" * n,
        ]
        for d in diffs.values():
            cells = " | ".join(_cell(v) for v in d["values"])
            out.append(f"| {d['label']} | {_pm(d)} | {d['a_better']} of {d['n']} | {cells} |")
        out += [""]
    out += ["## Videos scored", ""]
    for s in seeds:
        info = summary["draws"][str(s)]
        videos = ", ".join(f"`{v}`" for v in info.get("videos", []))
        of = info.get("of_videos")
        out.append(
            f"- seed {s}: {len(info.get('videos', []))}"
            + (f" of {of}" if of is not None else "")
            + f" videos: {videos}"
        )
    return "\n".join(out).rstrip() + "\n"

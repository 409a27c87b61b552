"""The report of the sparse-label experiment: ``report.json``, ``report.md`` and pictures.

``report.json`` has exactly this shape::

  {"propagation": {"posewarper": T, "copy_nearest": T, "farneback": T, "hrnet_pseudo": T},
   "detection":   {"hrnet": T, "posewarper_aggregation": T, "hrnet_pseudo_augmented": T},
   "config": {...}, "timing_s": {...}, "extra": {...}}

where each T is ``{"Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total"}``
in percent, as ``eval.posetrack_map`` returns it. ``"evaluation"`` (when the caller gives
it) names the validation videos every table scores: ``{"split": "test", "rule": ...,
"videos": [names], "of_videos": n}`` (``data.splits``: a fixed rule halves the validation
videos into ``dev`` and ``test``; the main job reports ``test``). When the caller measured them,
``"propagation_scoring"`` follows the tables: per propagation method the mAP, the mAP with
constant scores and PCKh@0.5, overall and by |δ| (``apps.report_scoring``), and on data that
records its conditions ``"propagation_by_condition"``: the scores on blurred, defocused, fast
and occluded subsets (``apps.report_conditions``); each a section of
``report.md``). ``"extra"`` is written only when there is
something to put in it: the caller's ``results["extra"]`` (counts, COCO AP, other tables...),
the prediction paths (``"predictions"``), the pictures (``"figures"``) and the device.

NaN: poseval gives a joint with predictions but no ground truth the AP NaN, and so the
column holding it (Total is NaN only when every joint is). NaN is accepted in any column and
written as JSON ``null`` (JSON has no NaN); ``load_report`` turns it back into NaN, and the
Markdown tables show it as ``n/a``. Infinite or non-numeric values and values outside
[0, 100] are errors.

Pictures (in ``workdir/report/``): ``map_bars.png`` (``plot_map_bars``),
``samples_<section>.png`` (``draw.pose_comparison``) and ``motion_fields.png``
(``draw.draw_motion_fields``), all made by ``write_figures``. Typical use, at the end of the
main job::

  figures = write_figures(workdir, results, gt=val, predictions={"propagation": {...}},
                          motion=MotionSample(crop, offsets, dilations))
  write_report(workdir, results, config, timing, figures=figures)
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posewarper_jax import methods as methods_lib
from posewarper_jax.apps import draw, report_conditions, report_scoring
from posewarper_jax.data.types import VideoDataset
from posewarper_jax.eval.posetrack_map import COLUMNS

__all__ = [
    "COLUMNS",
    "DETECTION_METHODS",
    "METHOD_LABELS",
    "PROPAGATION_METHODS",
    "SECTIONS",
    "MotionSample",
    "build_report",
    "load_report",
    "markdown_table",
    "plot_map_bars",
    "render_markdown",
    "validate_tables",
    "write_figures",
    "write_report",
]

PROPAGATION_METHODS: tuple[str, ...] = methods_lib.PROPAGATION
DETECTION_METHODS: tuple[str, ...] = methods_lib.DETECTION
SECTIONS: dict[str, tuple[str, ...]] = dict(methods_lib.SECTIONS)
SECTION_TITLES: dict[str, str] = dict(methods_lib.SECTION_TITLES)
# The tables' row titles; ``_EXTRA_LABELS`` adds the methods reported under ``extra``.
METHOD_LABELS: dict[str, str] = methods_lib.titles()
_EXTRA_LABELS: dict[str, str] = methods_lib.titles(table_only=False)
RESULT_KEYS = (
    "propagation",
    "detection",
    "evaluation",
    "propagation_scoring",
    report_conditions.KEY,
    "predictions",
    "extra",
)
REPORT_DIR = "report"
_RESERVED_EXTRA = ("predictions", "figures", "device")
_TOLERANCE = 1e-6  # AP sums can land a rounding error above 100


# ----------------------------------------------------------------------------- validation


def _number(value: Any, where: str) -> float:
    """A column value as float: a real number in [0, 100] or NaN (None counts as NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"report: {where} must be a number (percent), got {value!r}")
    v = float(value)
    if math.isinf(v):
        raise ValueError(f"report: {where} must be finite or NaN, got {v}")
    if not math.isnan(v) and not -_TOLERANCE <= v <= 100 + _TOLERANCE:
        raise ValueError(f"report: {where} = {v} is outside [0, 100] (percent expected)")
    return v


def validate_tables(results: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Checks the two mAP tables of ``results`` and returns them as plain floats (NaN kept).

    Args:
      results: ``{"propagation": {method: T}, "detection": {method: T}}`` plus optionally
        ``"predictions"`` (name -> path) and ``"extra"`` (JSON-able mapping); the methods are
        exactly ``SECTIONS[section]`` and each T has exactly the ``COLUMNS``.

    Raises:
      ValueError naming the section, method or column that is missing, unexpected or not a
      number in percent.
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"report: results must be a mapping, got {type(results).__name__}")
    unknown = sorted(set(results) - set(RESULT_KEYS))
    if unknown:
        raise ValueError(f"report: unknown results key(s) {unknown}; known: {list(RESULT_KEYS)}")
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for section, methods in SECTIONS.items():
        if section not in results:
            raise ValueError(f"report: results has no {section!r} table")
        given = results[section]
        if not isinstance(given, Mapping):
            raise ValueError(f"report: results[{section!r}] must be a mapping of method -> table")
        missing = [m for m in methods if m not in given]
        if missing:
            raise ValueError(
                f"report: results[{section!r}] is missing method(s) {missing} "
                f"(expected exactly {list(methods)})"
            )
        extra = sorted(set(given) - set(methods))
        if extra:
            raise ValueError(
                f"report: results[{section!r}] has unexpected method(s) {extra} "
                f"(expected exactly {list(methods)}; put other tables in results['extra'])"
            )
        tables[section] = {}
        for method in methods:
            row = given[method]
            where = f"results[{section!r}][{method!r}]"
            if not isinstance(row, Mapping):
                raise ValueError(f"report: {where} must be a mapping of column -> mAP")
            missing = [c for c in COLUMNS if c not in row]
            if missing:
                raise ValueError(f"report: {where} is missing column(s) {missing}")
            extra = sorted(set(row) - set(COLUMNS))
            if extra:
                raise ValueError(
                    f"report: {where} has unexpected column(s) {extra}; expected {list(COLUMNS)}"
                )
            tables[section][method] = {c: _number(row[c], f"{where}[{c!r}]") for c in COLUMNS}
    return tables


def _jsonable(value: Any, where: str, strict: bool) -> Any:
    """``value`` as JSON-ready Python: mappings -> dicts with str keys, sequences and arrays
    -> lists, NumPy scalars -> Python, NaN -> None. Other objects: their ``str`` when not
    ``strict`` (configs may hold dtypes and the like), else ValueError naming ``where``."""
    if hasattr(value, "to_dict") and callable(value.to_dict):  # ml_collections.ConfigDict
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}[{k!r}]", strict) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]", strict) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            if strict:
                raise ValueError(f"report: {where} is infinite, which JSON cannot hold")
            return str(value)
        return value
    if strict:
        raise ValueError(f"report: {where} ({type(value).__name__}) cannot be written as JSON")
    return str(value)


def _timing(timing: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(timing, Mapping):
        raise ValueError(f"report: timing must be a mapping name -> seconds, got {timing!r}")
    out = {}
    for k, v in timing.items():
        if isinstance(v, bool) or not isinstance(v, int | float | np.number):
            raise ValueError(f"report: timing[{k!r}] must be a number of seconds, got {v!r}")
        if not math.isfinite(float(v)) or float(v) < 0:
            raise ValueError(f"report: timing[{k!r}] must be finite and >= 0, got {v}")
        out[str(k)] = float(v)
    return out


def build_report(
    results: Mapping[str, Any],
    config: Any,
    timing: Mapping[str, Any],
    *,
    figures: Mapping[str, str] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """The ``report.json`` content (see the module docstring), validated; NaN -> None.

    Args:
      results: as for ``validate_tables``.
      config: the run's configuration (mapping or ``ConfigDict``).
      timing: name -> seconds.
      figures: caption -> picture path, recorded under ``extra["figures"]``.
      device: a description of the accelerator(s), recorded under ``extra["device"]``.
    """
    tables = validate_tables(results)
    report: dict[str, Any] = {
        section: _jsonable(tables[section], section, strict=True) for section in SECTIONS
    }
    if results.get("evaluation"):
        report["evaluation"] = _evaluation(results["evaluation"])
    if results.get(report_scoring.KEY):
        scoring = report_scoring.validate_scoring(
            results[report_scoring.KEY], PROPAGATION_METHODS, _number
        )
        report[report_scoring.KEY] = _jsonable(scoring, report_scoring.KEY, strict=True)
    if results.get(report_conditions.KEY):
        by_condition = report_conditions.validate_conditions(
            results[report_conditions.KEY], PROPAGATION_METHODS, _number
        )
        report[report_conditions.KEY] = _jsonable(by_condition, report_conditions.KEY, strict=True)
    report["config"] = _jsonable(config, "config", strict=False)
    if not isinstance(report["config"], dict):
        raise ValueError(f"report: config must be a mapping, got {type(config).__name__}")
    report["timing_s"] = _timing(timing)
    extra = _jsonable(results.get("extra") or {}, "results['extra']", strict=True)
    if not isinstance(extra, dict):
        raise ValueError("report: results['extra'] must be a mapping")
    clash = sorted(set(extra) & set(_RESERVED_EXTRA))
    if clash:
        raise ValueError(f"report: results['extra'] may not use the reserved key(s) {clash}")
    if results.get("predictions"):
        extra["predictions"] = _jsonable(results["predictions"], "predictions", strict=True)
    if figures:
        extra["figures"] = {str(k): os.fspath(v) for k, v in figures.items()}
    if device:
        extra["device"] = str(device)
    if extra:
        report["extra"] = extra
    return report


def _evaluation(value: Any) -> dict[str, Any]:
    """``results["evaluation"]``: the validation split scored (``data.splits``), checked."""
    if not isinstance(value, Mapping):
        raise ValueError("report: results['evaluation'] must be a mapping")
    split, videos = value.get("split"), value.get("videos")
    if not isinstance(split, str) or not split:
        raise ValueError(f"report: results['evaluation']['split'] must be a name, got {split!r}")
    if not isinstance(videos, list | tuple) or not all(isinstance(v, str) for v in videos):
        raise ValueError("report: results['evaluation']['videos'] must be a list of video names")
    return _jsonable(value, "results['evaluation']", strict=True)


def load_report(path: str) -> dict[str, Any]:
    """Reads ``report.json``; the tables' ``null`` cells come back as NaN."""
    from posewarper_jax import storage

    report = json.loads(storage.read_text(path))
    for section in SECTIONS:
        for row in report.get(section, {}).values():
            for c, v in row.items():
                row[c] = math.nan if v is None else v
    _nan_tables(report.get(report_scoring.KEY, {}))
    _nan_tables(report.get(report_conditions.KEY, {}))
    return report


def _nan_tables(node: Any) -> None:
    """The ``null`` cells of every table under ``node`` back to NaN, in place."""
    if not isinstance(node, dict):
        return
    for value in node.values():
        if _is_table(value):
            for c, v in value.items():
                value[c] = math.nan if v is None else v
        else:
            _nan_tables(value)


# ----------------------------------------------------------------------------- Markdown


def _fmt(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.1f}"


def markdown_table(
    table: Mapping[str, Mapping[str, float]], labels: Mapping[str, str] | None = None
) -> str:
    """A Markdown table: one row per method, the ``COLUMNS`` with one decimal, the best of
    each column in bold (every value that shows the best figure at one decimal: ties are all
    bold; NaN shows as ``n/a`` and is never best; a single row has nothing to beat)."""
    labels = labels or {}
    best = {}
    for c in COLUMNS:
        shown = [round(float(r[c]), 1) for r in table.values() if not _isnan(r[c])]
        best[c] = max(shown) if shown and len(table) > 1 else None
    lines = [
        "| Method | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for method, row in table.items():
        cells = []
        for c in COLUMNS:
            text = _fmt(None if _isnan(row[c]) else float(row[c]))
            if best[c] is not None and not _isnan(row[c]) and round(float(row[c]), 1) == best[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {labels.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _get(config: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def _run_lines(config: Mapping, device: str | None) -> list[str]:
    """'What was run' bullets, from whichever config fields are present."""
    lines = []
    kind, root = _get(config, "data.kind"), _get(config, "data.root")
    if kind is not None:
        preset = _get(config, "data.synthetic_preset")
        detail = f" (preset `{preset}`)" if kind == "synthetic" and preset else ""
        where = f" at `{root}`" if root else ""
        lines.append(f"- Data set: `{kind}`{detail}{where}")
    every_k = _get(config, "sparse.every_k")
    if every_k:
        lines.append(f"- Sparse labels: every {every_k}th labeled frame of each training video")
    elif every_k is not None:
        v, n = _get(config, "sparse.num_videos"), _get(config, "sparse.frames_per_video")
        lines.append(f"- Sparse labels: V = {v or 'all'} videos x N = {n} labeled frames")
    if _get(config, "model.backbone") is not None:
        dil = _get(config, "model.dilations")
        dil = ", ".join(str(d) for d in dil) if isinstance(dil, list | tuple) else dil
        lines.append(
            f"- Model: HRNet backbone `{_get(config, 'model.backbone')}`, warping head "
            f"{_get(config, 'model.head_blocks')} blocks x {_get(config, 'model.head_channels')} "
            f"channels, dilations ({dil}); compute dtype {_get(config, 'model.dtype', 'float32')}"
        )
    size = _get(config, "input.image_size")
    if size is not None:
        lines.append(f"- Input crops: {size[0]} x {size[1]} (H x W)")
    encoding, decoding = _get(config, "input.target_encoding"), _get(config, "eval.decoding")
    if encoding is not None or decoding is not None:
        lines.append(
            f"- Heatmaps: σ = {_get(config, 'input.sigma')}, `{encoding or 'integer'}` targets, "
            f"`{decoding or 'quarter'}` decoding"
        )
    pretrained = _get(config, "model.pretrained")
    pretrain = _get(config, "pretrain.data")
    if pretrained:
        lines.append(f"- HRNet initialised from `{pretrained}`")
    elif pretrain and pretrain != "none":
        lines.append(f"- HRNet pre-trained on `{pretrain}` data before stage 1")
    for stage in ("pretrain", "stage1", "stage2"):
        s = _get(config, stage)
        if stage == "pretrain" and (pretrained or pretrain in (None, "none")):
            continue
        if isinstance(s, Mapping):
            cap = f", capped at {s['max_steps']} steps" if s.get("max_steps") else ""
            length = (
                f"{s.get('epochs')} epochs{cap}" if s.get("epochs") else f"{s['max_steps']} steps"
            )
            lines.append(
                f"- {stage}: {length}, batch {s.get('batch_size')}, "
                f"lr {s.get('lr')} ({s.get('schedule', 'step')})"
            )
    if device:
        lines.append(f"- Device: {device}")
    return lines


def _evaluation_lines(evaluation: Mapping[str, Any]) -> list[str]:
    """'What was run' bullet of the validation split scored."""
    if not evaluation:
        return []
    videos = list(evaluation.get("videos", []))
    of = evaluation.get("of_videos")
    count = f"{len(videos)} of {of}" if of is not None else str(len(videos))
    rule = f" ({evaluation['rule']})" if evaluation.get("rule") else ""
    names = ", ".join(f"`{v}`" for v in videos)
    return [
        f"- Scored on the `{evaluation.get('split')}` split of the validation videos{rule}: "
        f"{count} videos: {names}"
    ]


def _rel(path: str, workdir: str) -> str:
    """``path`` relative to ``workdir`` when inside it (POSIX separators, for Markdown links)."""
    path = os.fspath(path)
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(workdir))
    if rel.startswith(".."):
        return path
    return rel.replace(os.sep, "/")


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) == set(COLUMNS)


def render_markdown(report: Mapping[str, Any], workdir: str = ".") -> str:
    """``report.md`` from a ``build_report`` dict: what was run, the two tables (paper's
    column layout), other results and measurements (tables), timings, pictures and
    prediction paths (links relative to ``workdir``)."""
    config = report.get("config", {})
    extra = dict(report.get("extra", {}))
    out = ["# PoseWarper from sparse labels: results", ""]
    out += ["## What was run", "", *_run_lines(config, extra.pop("device", None))]
    out += [*_evaluation_lines(report.get("evaluation") or {}), ""]
    for section in SECTIONS:
        out += [f"## {SECTION_TITLES[section]}", ""]
        out += ["mAP (%), poseval's PCKh@0.5 per joint group; best per column in bold.", ""]
        out += [markdown_table(report[section], METHOD_LABELS), ""]
    out += report_scoring.render_scoring(
        report.get(report_scoring.KEY) or {}, METHOD_LABELS, markdown_table
    )
    out += report_conditions.render_conditions(
        report.get(report_conditions.KEY) or {}, METHOD_LABELS
    )
    predictions = extra.pop("predictions", None)
    figures = extra.pop("figures", None)
    tracking = extra.pop("tracking", None)
    if tracking:
        from posewarper_jax.eval.tracking import TRACKING_TITLE, markdown_tracking_table

        out += [f"## {TRACKING_TITLE}", "", markdown_tracking_table(tracking), ""]
    tables = {k: v for k, v in extra.items() if _is_table(v)}
    if tables:
        out += ["## Other results (mAP, %)", "", markdown_table(tables), ""]
    others = {k: v for k, v in extra.items() if k not in tables}
    if others:
        out += ["## Other measurements", "", *_measurement_lines(others)]
    timing = report.get("timing_s", {})
    if timing:
        out += ["## Timing", "", "| Phase | Seconds |", "|---|---:|"]
        out += [f"| {k} | {v:.1f} |" for k, v in timing.items()]
        out += [""]
    if figures:
        out += ["## Pictures", ""]
        for caption, path in figures.items():
            out += [f"### {caption}", "", f"![{caption}]({_rel(path, workdir)})", ""]
    if predictions:
        out += ["## Predictions written", ""]
        out += _path_lines(predictions, workdir, indent="")
        out += [""]
    return "\n".join(out).rstrip() + "\n"


def _cell(value: Any) -> str:
    """One value in a Markdown table cell: numbers and text as they are (``|`` escaped), NaN
    (``null``) as ``n/a``, a list or mapping as compact JSON in code."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | float):
        text = str(value)
    else:
        text = f"`{json.dumps(value, sort_keys=True)}`"
    return text.replace("|", "\\|")


def _rows_of(value: Mapping[str, Any]) -> list[str] | None:
    """The columns of a mapping of rows (name -> flat mapping), or None for another shape."""
    if not value or not all(isinstance(r, Mapping) and r for r in value.values()):
        return None
    columns: list[str] = []
    for row in value.values():
        if any(isinstance(v, Mapping) for v in row.values()):
            return None
        columns += [c for c in row if c not in columns]
    return columns


def _flat_items(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, leaf value) of nested mappings; an empty mapping is one leaf."""
    if not isinstance(value, Mapping) or not value:
        return [(prefix, value)]
    out = []
    for k, v in value.items():
        out += _flat_items(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def _measurement_lines(others: Mapping[str, Any]) -> list[str]:
    """``report.md``'s "Other measurements" (``extra`` entries that are not mAP tables), as
    tables: single values in one table, then one table per mapping (a mapping of mAP tables
    as the methods' table, a mapping of flat rows with a column per key, any other mapping
    by dotted key)."""
    out: list[str] = []
    single = {k: v for k, v in others.items() if not isinstance(v, Mapping) or not v}
    if single:
        out += ["| Measurement | Value |", "|---|---:|"]
        out += [f"| {_cell(str(k))} | {_cell(v)} |" for k, v in single.items()]
        out += [""]
    for key, value in others.items():
        if key in single:
            continue
        out += [f"### {key}", ""]
        columns = _rows_of(value)
        if columns is not None and all(_is_table(r) for r in value.values()):
            out += [markdown_table(value, _EXTRA_LABELS), ""]
        elif columns is not None:
            out += [
                "| Name | " + " | ".join(_cell(c) for c in columns) + " |",
                "|---|" + "---:|" * len(columns),
            ]
            for name, row in value.items():
                cells = [_cell(row[c]) if c in row else "" for c in columns]
                out.append(f"| {_cell(str(name))} | " + " | ".join(cells) + " |")
            out += [""]
        else:
            out += ["| Measurement | Value |", "|---|---:|"]
            out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in _flat_items(value)]
            out += [""]
    return out


def _path_lines(paths: Any, workdir: str, indent: str) -> list[str]:
    if isinstance(paths, Mapping):
        lines = []
        for k, v in paths.items():
            if isinstance(v, Mapping):
                lines.append(f"{indent}- {k}:")
                lines += _path_lines(v, workdir, indent + "  ")
            else:
                lines.append(f"{indent}- {k}: `{_rel(str(v), workdir)}`")
        return lines
    return [f"{indent}- `{_rel(str(paths), workdir)}`"]


def _describe_device() -> str:
    import jax

    devices = jax.devices()
    return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})"


def write_report(
    workdir: str,
    results: Mapping[str, Any],
    config: Any,
    timing: Mapping[str, Any],
    *,
    figures: Mapping[str, str] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Writes ``workdir/report.json`` and ``workdir/report.md``; returns the JSON dict.

    Args:
      workdir: the run's folder (created if needed).
      results: ``{"propagation": {...}, "detection": {...}}`` mAP tables (``validate_tables``)
        plus optional ``"predictions"`` (name -> path, possibly nested) and ``"extra"``.
      config: the run's configuration (mapping or ``ConfigDict``).
      timing: phase -> seconds.
      figures: caption -> PNG path (``write_figures``), linked from the Markdown.
      device: accelerator description; default: ``jax.devices()`` of this process.

    Raises:
      ValueError (before anything is written) naming a missing or bad method, column, timing
      or extra entry.
    """
    if device is None:
        device = _describe_device()
    report = build_report(results, config, timing, figures=figures, device=device)
    _makedirs(workdir)
    # allow_nan=False: a NaN that slipped through would make invalid JSON; fail instead.
    _write_json(_join(workdir, "report.json"), report)
    _atomic_write(_join(workdir, "report.md"), render_markdown(report, workdir))
    return report


def _atomic_write(path: str, text: str | bytes) -> None:
    from posewarper_jax import fileio

    fileio.atomic_write(path, text)


def _write_json(path: str, data: Any) -> None:
    from posewarper_jax import fileio

    fileio.write_json(path, data, indent=2, allow_nan=False, newline=True)


def _makedirs(folder: str) -> None:
    from posewarper_jax import storage

    storage.makedirs(folder)


def _join(*parts: str) -> str:
    from posewarper_jax import storage

    return storage.join(*parts)


# ----------------------------------------------------------------------------- pictures


def plot_map_bars(
    tables: Mapping[str, Mapping[str, Mapping[str, float]]], path: str, *, dpi: int = 110
) -> str:
    """Grouped bar chart of mAP per joint group: one panel per section (propagation, then
    detection), one group of bars per column (``COLUMNS``), one bar per method. NaN cells get
    no bar. ``tables`` as ``validate_tables`` returns them. Writes a PNG; returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sections = [s for s in SECTIONS if s in tables] or list(tables)
    fig = Figure(figsize=(12, 3.4 * len(sections)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(sections), 1, squeeze=False)[:, 0]
    x = np.arange(len(COLUMNS), dtype=np.float64)
    for ax, section in zip(axes, sections):
        methods = list(tables[section])
        width = 0.8 / max(1, len(methods))
        for i, method in enumerate(methods):
            values = np.asarray([tables[section][method][c] for c in COLUMNS], np.float64)
            ok = ~np.isnan(values)
            pos = x - 0.4 + (i + 0.5) * width
            ax.bar(
                pos[ok], values[ok], width, label=METHOD_LABELS.get(method, method), color=f"C{i}"
            )
            for p in pos[~ok]:  # say so rather than leave a gap that reads as 0
                ax.text(p, 1, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, COLUMNS)
        ax.set_ylim(0, 100)
        ax.set_ylabel("mAP (%)")
        ax.set_title(SECTION_TITLES.get(section, section), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    fig.tight_layout()
    buffer = io.BytesIO()  # written whole (a local file or an object of a bucket)
    fig.savefig(buffer, dpi=dpi, format=os.path.splitext(os.fspath(path))[1][1:] or "png")
    _atomic_write(os.fspath(path), buffer.getvalue())
    return os.fspath(path)


@dataclasses.dataclass
class MotionSample:
    """One frame's learned offsets for ``motion_fields.png``.

    image: uint8 ``[H, W, 3]`` RGB crop; offsets: one float ``[h, w, J * 18]`` per dilation
    (the warping head's ``return_offsets`` output, one row); dilations: one per tensor;
    joints: which joints to draw (columns); tap, arrow_scale: see ``draw.draw_motion_fields``.
    """

    image: np.ndarray
    offsets: Sequence[np.ndarray]
    dilations: Sequence[int]
    joints: Sequence[int] = (0, 9, 15)  # nose, left wrist, left ankle
    tap: str | int = "mean"
    arrow_scale: float = 1.0


def write_figures(
    workdir: str,
    results: Mapping[str, Any],
    *,
    gt: VideoDataset | None = None,
    predictions: Mapping[str, Mapping[str, VideoDataset]] | None = None,
    samples: Sequence[tuple[int, int]] | None = None,
    num_samples: int = 3,
    threshold: float = draw.DEFAULT_THRESHOLD,
    motion: MotionSample | None = None,
    reader=draw.read_image,
) -> dict[str, str]:
    """Writes the pictures into ``workdir/report/`` and returns caption -> path.

    Args:
      results: the mAP tables (validated as by ``validate_tables``) -> ``map_bars.png``.
      gt: ground truth of the evaluated videos, with ``predictions`` (section name, e.g.
        ``"propagation"`` -> method -> predicted ``VideoDataset``) -> one
        ``samples_<section>.png`` per section: GT, then each method, on the same crops.
      samples: (video index, frame index) pairs; default ``draw.pick_samples`` per section.
      threshold: per-joint score below which predicted joints are not drawn.
      motion: one frame's offsets -> ``motion_fields.png``.
      reader: path -> uint8 ``[H, W, 3]`` RGB image, for the pose samples.
    """
    tables = validate_tables(results)
    folder = _join(workdir, REPORT_DIR)
    _makedirs(folder)
    figures = {"mAP per joint group": plot_map_bars(tables, _join(folder, "map_bars.png"))}
    if predictions:
        if gt is None:
            raise ValueError("report: pose samples need the ground truth (gt)")
        for section, methods in predictions.items():
            picks = list(samples) if samples is not None else None
            if picks is None:
                picks = draw.pick_samples(gt, num_samples, methods)
            if not picks:
                continue  # nothing labeled to show
            grid = draw.pose_comparison(gt, methods, picks, threshold=threshold, reader=reader)
            path = draw.write_image(os.path.join(folder, f"samples_{section}.png"), grid)
            figures[f"Sample poses, {section}"] = path
    if motion is not None:
        path = os.path.join(folder, "motion_fields.png")
        draw.draw_motion_fields(
            motion.image,
            list(motion.offsets),
            dilations=motion.dilations,
            joints=motion.joints,
            tap=motion.tap,
            arrow_scale=motion.arrow_scale,
            path=path,
        )
        figures["Learned offsets (arrows: where each pixel's taps read)"] = path
    return figures

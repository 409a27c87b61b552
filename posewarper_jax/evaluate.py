"""Scores a directory of PoseTrack predictions against the ground truth (poseval's mAP).

  python -m posewarper_jax.evaluate --gt GT_DIR --pred PRED_DIR \\
      [--format auto|posetrack17|posetrack18] [--neck head_bottom|shoulder_midpoint] \\
      [--missing-scores error|min_score] [--coco] [--track] [--out results.json]

Both directories hold one JSON file per sequence, as the official evaluation (poseval) wants
them: every ground-truth file needs a prediction file of the same name with the same frames
(paired by position). PoseTrack17 (``annolist``) and PoseTrack18 (COCO-style) files are read,
and the two sides may differ in format. Prints poseval's table (Head, Shoulder, Elbow, Wrist,
Hip, Knee, Ankle, Total in percent), with ``--coco`` COCO's OKS AP/AR and with ``--track``
poseval's tracking table (MOTA, MOTP, precision, recall: ``eval.tracking``); ``--out`` writes
everything as JSON. Exit status 0 on success, 2 on bad input (one line ``error: ...`` naming
the file; ``--debug`` shows the traceback). ``--out`` is checked before any scoring.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from posewarper_jax import cli, fileio, storage
from posewarper_jax.data.annotations import detect_format, load_dataset
from posewarper_jax.data.formats import AnnotationError
from posewarper_jax.data.types import Video, VideoDataset
from posewarper_jax.eval.posetrack_map import (
    MISSING_SCORE_MODES,
    NECK_MODES,
    format_table,
    posetrack_joint_metrics,
    summarize,
)

FORMATS = ("auto", "posetrack17", "posetrack18")


def _json_files(directory: str, what: str) -> dict[str, str]:
    if not storage.isdir(directory):
        raise AnnotationError(f"{what} directory not found: {directory}")
    files = {os.path.basename(p): p for p in storage.glob(directory, "*.json")}
    if not files:
        raise AnnotationError(f"{directory}: no .json files in the {what} directory")
    return files


def _load_file(path: str, fmt: str) -> tuple[list[Video], str]:
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in ("posetrack17", "posetrack18"):
        raise AnnotationError(f"{path}: a {fmt} file, expected PoseTrack17 or PoseTrack18")
    # Image names are only compared, never opened: the file's own folder serves as root.
    dataset = load_dataset(path, image_root=storage.dirname(storage.abspath(path)), fmt=fmt)
    return dataset.videos, fmt


def _frame_names(video: Video) -> list[str]:
    return [os.path.basename(f.path) for f in video.frames]


def load_pairs(gt_dir: str, pred_dir: str, fmt: str = "auto") -> tuple[VideoDataset, VideoDataset]:
    """Reads both directories and pairs them file by file, as poseval does.

    Raises ``AnnotationError`` naming the file when a ground-truth file has no prediction file,
    a prediction file matches no ground-truth file, the numbers of videos or frames differ, or
    a file cannot be read. Prediction videos take the name of their ground-truth video.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    gt_files = _json_files(gt_dir, "ground-truth")
    pred_files = _json_files(pred_dir, "prediction")
    missing = sorted(set(gt_files) - set(pred_files))
    if missing:
        raise AnnotationError(
            f"{pred_dir}: no prediction file for ground-truth sequence(s) "
            + ", ".join(os.path.join(gt_dir, m) for m in missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    extra = sorted(set(pred_files) - set(gt_files))
    if extra:
        raise AnnotationError(
            f"prediction file(s) for unknown sequence(s) (no ground-truth file of that name in "
            f"{gt_dir}): " + ", ".join(pred_files[e] for e in extra[:10])
        )
    gt_videos, pred_videos, formats = [], [], []
    for name in sorted(gt_files):
        (gvs, gfmt), (pvs, pfmt) = (
            _load_file(gt_files[name], fmt),
            _load_file(pred_files[name], fmt),
        )
        formats.extend([gfmt, pfmt])
        if len(gvs) != len(pvs):
            raise AnnotationError(
                f"{pred_files[name]}: holds {len(pvs)} video(s), the ground truth "
                f"{gt_files[name]} {len(gvs)}"
            )
        for gv, pv in zip(gvs, pvs):
            if pv.nframes != gv.nframes:
                lacking = [n for n in _frame_names(gv) if n not in set(_frame_names(pv))]
                detail = f"; frames missing: {lacking[:10]}" if lacking else ""
                raise AnnotationError(
                    f"{pred_files[name]}: video {pv.name!r} has {pv.nframes} frames, the ground "
                    f"truth {gt_files[name]} has {gv.nframes}{detail}"
                )
            gt_videos.append(gv)
            pred_videos.append(Video(gv.name, pv.frames, pv.source, dict(pv.extra)))
    names = [v.name for v in gt_videos]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise AnnotationError(f"{gt_dir}: video(s) {dup} appear in more than one file")
    return (
        VideoDataset(gt_videos, formats[0], storage.abspath(gt_dir)),
        VideoDataset(pred_videos, formats[1], storage.abspath(pred_dir)),
    )


def _clean(value):
    """NaN -> None, so that the JSON output is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run(args: argparse.Namespace) -> dict:
    """Evaluates and prints; returns the results written by ``--out``."""
    if args.out:
        cli.check_output_file(args.out, "--out")
    gt, pred = load_pairs(args.gt, args.pred, args.format)
    metrics = posetrack_joint_metrics(gt, pred, neck=args.neck, missing_scores=args.missing_scores)
    table = summarize(metrics["ap"], metrics["total_ap"])
    print(f"# sequences: {len(gt.videos)}   # frames scored: {metrics['num_frames']}")
    print(format_table(table))
    results = {
        "posetrack_map": table,
        "per_joint": metrics,
        "pckh": summarize(metrics["recall"], metrics["total_recall"]),
        "settings": {"neck": args.neck, "missing_scores": args.missing_scores},
    }
    if args.coco:
        from posewarper_jax.eval.coco import coco_keypoint_ap

        stats = coco_keypoint_ap(gt, pred)
        print("COCO keypoint OKS metrics:")
        print("  ".join(f"{k} {v:.4f}" for k, v in stats.items()))
        results["coco"] = stats
    if getattr(args, "track", False):
        from posewarper_jax.eval.tracking import format_mot_table, posetrack_tracking

        mot = posetrack_tracking(gt, pred)
        print(format_mot_table(mot))
        results["tracking"] = mot
    if args.out:
        fileio.write_json(args.out, _clean(results), what="the results")
        print(f"results written to {args.out}")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m posewarper_jax.evaluate",
        description="PoseTrack mAP (poseval's rules) of a prediction directory.",
    )
    parser.add_argument("--gt", required=True, help="directory of ground-truth JSON files")
    parser.add_argument("--pred", required=True, help="directory of prediction JSON files")
    parser.add_argument("--format", default="auto", choices=FORMATS)
    parser.add_argument(
        "--neck",
        default="head_bottom",
        choices=NECK_MODES,
        help="shoulder_midpoint: score the shoulders' midpoint as the neck (original release)",
    )
    parser.add_argument(
        "--missing-scores",
        default="error",
        choices=MISSING_SCORE_MODES,
        help="min_score: give unscored predicted joints poseval's fallback score -9999",
    )
    parser.add_argument("--coco", action="store_true", help="also report COCO OKS AP")
    parser.add_argument(
        "--track",
        action="store_true",
        help="also report poseval's tracking metrics (MOTA, MOTP, precision, recall; the "
        "predictions need track ids)",
    )
    parser.add_argument("--out", default="", help="write the results to this JSON file")
    cli.add_debug_flag(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Bad input reaches here as AnnotationError, ValueError (the scorer's checks) or a
    # missing file: each one line.
    expected = (AnnotationError, ValueError, FileNotFoundError)
    return cli.guarded(lambda: run(args), debug=args.debug, expected=expected)


if __name__ == "__main__":
    sys.exit(main())

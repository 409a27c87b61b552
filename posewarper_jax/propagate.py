"""Step 2 with one's own video: sparse labels in, dense labels out.

  python -m posewarper_jax.propagate --video clip.mp4 --labels labels.json \\
      --checkpoint runs/sparse --out job/dense/ [--overlay job/overlay.mp4] [--html job/view.html]

Reads the video (a file or a frame directory, ``data.video_frames``), the labels of some of
its frames (COCO keypoints, PoseTrack18 or CVAT's COCO Keypoints 1.0 export, as
``python -m posewarper_jax.label`` prepares them; ``data.user_labels``) and the trained model
of a main-job workdir (stage 2, ``apps.trained``), and propagates the labels to every frame
within ``--reach`` of a labeled frame, from both sides blended (``--no-blend``: the nearest
side only), frame by frame or in one warp (``--path``, default the run's
``eval.propagation_path``), with the main job's propagation
(``apps.dense_labels.propagate_video``, which calls ``apps.propagation``). Each person's
crop box travels with the pose (``--boxes carry``, the default: no detector, no ground
truth), stays the labeled box (``source``), or comes from a file of people boxes with track
ids (``--boxes FILE``, e.g. the full ground truth: the main job's setting). Track ids are
the labels'.

Writes into ``--out`` (staged, then moved in: a failed run leaves it as it was):

  posetrack18/<video>.json  every frame: the labels on labeled frames, the propagated poses
                            elsewhere, per-joint confidences (``scores``) and track ids
                            (scorable by ``python -m posewarper_jax.evaluate``)
  coco.json                 the same as one COCO keypoints file (``scores`` per joint)
  relabel.json              the settings, the confidence of every frame and the frames worth
                            labeling next (not reached, a track lost, confidence below
                            ``--relabel-threshold``), lowest confidence first

``--overlay FILE.mp4`` draws the skeletons over the video (colour per track, opacity =
joint confidence, labeled frames framed in white); ``--html FILE.html`` writes a one-page
offline viewer (frames embedded; ``--html-refer``: written beside the page) with a slider
and the per-frame confidence plot. Bad input (a video that cannot be read, labels of frames
the video does not have, joints that are not the 17 named ones, labels without people, a
checkpoint that does not fit) prints one ``error:`` line naming the file, exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

from posewarper_jax import cli, fileio
from posewarper_jax.apps.outputs import run_command, staged
from posewarper_jax.data import user_labels, video_frames

__all__ = ["main", "parse_args", "run"]

POSETRACK_DIR = "posetrack18"
COCO_FILE = "coco.json"
RELABEL_FILE = "relabel.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m posewarper_jax.propagate",
        description="Propagate sparse pose labels of a video to every frame within reach "
        "with a trained PoseWarper (a main-job workdir).",
    )
    parser.add_argument("--video", required=True, help="video file or directory of frames")
    parser.add_argument("--labels", required=True, help="labels (COCO, PoseTrack18, CVAT)")
    parser.add_argument("--checkpoint", required=True, help="the main job's workdir")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--reach", type=int, default=None, help="largest distance to a labeled frame (the "
        "run's eval.propagation_reach, 3 by default)"
    )  # fmt: skip
    parser.add_argument("--no-blend", action="store_true", help="nearest labeled frame only")
    parser.add_argument(
        "--path", default=None, choices=("chained", "direct"), help="chained: frame by frame, "
        "direct: one warp from the labeled frame (default: the run's eval.propagation_path)"
    )  # fmt: skip
    parser.add_argument(
        "--boxes", default="carry", help="carry (the box follows the propagated pose), "
        "source (the labeled box) or a COCO/PoseTrack18 file of boxes with track ids"
    )  # fmt: skip
    flip = parser.add_mutually_exclusive_group()
    flip.add_argument("--flip-test", dest="flip_test", action="store_true", default=None)
    flip.add_argument("--no-flip-test", dest="flip_test", action="store_false")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    parser.add_argument(
        "--joint-order", default="names", choices=user_labels.JOINT_ORDERS,
        help="posetrack18: take the labels' 17 joints in PoseTrack18 order (unnamed joints)"
    )  # fmt: skip
    parser.add_argument("--relabel-threshold", type=float, default=0.5)
    parser.add_argument("--overlay", default="", help="write an overlay video (.mp4) here")
    parser.add_argument("--html", default="", help="write an offline viewer page here")
    parser.add_argument("--html-refer", action="store_true", help="frames beside the page")
    cli.add_debug_flag(parser)
    return parser.parse_args(argv)


def _check_args(args: argparse.Namespace) -> None:
    if args.reach is not None and args.reach < 1:
        raise ValueError(f"--reach: must be a positive integer, got {args.reach}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size: must be a positive integer, got {args.batch_size}")
    if args.overlay and not args.overlay.lower().endswith((".mp4", ".m4v", ".mov", ".avi")):
        raise ValueError(f"--overlay {args.overlay}: give a video file name ending in .mp4")
    if args.html and not args.html.lower().endswith((".html", ".htm")):
        raise ValueError(f"--html {args.html}: give a file name ending in .html")


def frames_on_disk(source: video_frames.FrameSource, scratch: str) -> tuple[list[str], str]:
    """(frame image paths, data set root): a directory's own files, or a video's frames
    extracted (lossless PNG) to ``scratch/<video name>/``."""
    if source.kind == "frames":
        folder = os.path.dirname(os.path.abspath(source.files[0]))
        return list(source.files), os.path.dirname(folder)
    paths = video_frames.extract(source, os.path.join(scratch, source.name))
    return paths, scratch


def run(args: argparse.Namespace) -> dict:
    """The command (module docstring); returns a summary."""
    from posewarper_jax import experiment
    from posewarper_jax.apps import dense_labels, overlay, trained
    from posewarper_jax.data import coco, posetrack18
    from posewarper_jax.data.types import VideoDataset

    _check_args(args)
    source = video_frames.open_frames(args.video)
    # Everything the user gave is checked before the model is loaded or anything written.
    user_labels.load_labels(args.labels, source, joint_order=args.joint_order)
    boxes_file = args.boxes not in dense_labels.BOX_MODES
    if boxes_file:
        user_labels.load_labels(args.boxes, source, boxes_only=True)
    model = trained.load_trained(args.checkpoint)
    config = model.config
    reach = int(args.reach or config.eval.get("propagation_reach", 3))
    flip = bool(config.eval.get("flip_test", False) if args.flip_test is None else args.flip_test)
    overrides = {} if args.batch_size is None else {"batch_size": int(args.batch_size)}
    pipe_cfg = model.pipeline_config(**overrides)
    decoding = experiment.heatmap_coding(config)[1]
    path = args.path or str(config.eval.get("propagation_path", "direct"))

    with tempfile.TemporaryDirectory(prefix="posewarper_frames_") as scratch:
        paths, root = frames_on_disk(source, scratch)
        labeled = user_labels.load_labels(
            args.labels, source, frame_paths=paths, root=root, joint_order=args.joint_order
        )
        boxes = args.boxes
        if boxes_file:
            boxes = user_labels.load_labels(
                args.boxes, source, frame_paths=paths, root=root, boxes_only=True
            )
        predicted = dense_labels.propagate_video(
            model.model,
            model.variables,
            labeled,
            pipe_cfg=pipe_cfg,
            reach=reach,
            blend=not args.no_blend,
            boxes=boxes,
            flip_test=flip,
            decoding=decoding,
            path=path,
        )
        dense = dense_labels.dense_dataset(labeled, predicted)
        video, lvideo = dense.videos[0], labeled.videos[0]
        video.source = f"{video.name}.json"  # the output file's name
        confidence = dense_labels.frame_confidence(video)
        candidates = dense_labels.relabel_candidates(lvideo, video, reach, args.relabel_threshold)
        flags = [f.is_labeled for f in lvideo.frames]
        settings = {
            "video": os.path.abspath(args.video),
            "labels": os.path.abspath(args.labels),
            "checkpoint": os.path.abspath(args.checkpoint),
            "reach": reach,
            "blend": not args.no_blend,
            "path": path,
            "boxes": os.path.abspath(args.boxes) if boxes_file else args.boxes,
            "flip_test": flip,
            "relabel_threshold": args.relabel_threshold,
        }
        with staged(args.out) as tmp:
            posetrack18.write_posetrack18(
                VideoDataset([video], "posetrack18", dense.root), os.path.join(tmp, POSETRACK_DIR)
            )
            fileio.write_json(
                os.path.join(tmp, COCO_FILE), coco.coco_keypoints_json(dense, labeled), indent=None
            )
            relabel = {
                "settings": settings,
                "labeled_frames": [i for i, v in enumerate(flags) if v],
                "confidence": [None if math.isnan(c) else round(c, 4) for c in confidence],
                "relabel": candidates,
            }
            fileio.write_json(os.path.join(tmp, RELABEL_FILE), relabel, indent=1)
        overlay.write_views(args, source, video, flags, confidence)
    reached = sum(1 for f in video.frames if f.people and not flags[f.index])
    summary = {
        "frames": source.nframes,
        "labeled": sum(flags),
        "propagated": reached,
        "relabel": len(candidates),
        "out": os.path.abspath(args.out),
    }
    print(
        f"{source.path}: {source.nframes} frames, {summary['labeled']} labeled, "
        f"{reached} propagated (reach {reach}, {'blended' if not args.no_blend else 'nearest'}"
        f", boxes {settings['boxes']}); {len(candidates)} frame(s) to re-label"
    )
    print(f"written: {os.path.join(summary['out'], POSETRACK_DIR, video.source)}")
    print(f"written: {os.path.join(summary['out'], COCO_FILE)}")
    print(f"written: {os.path.join(summary['out'], RELABEL_FILE)}")
    for path in (args.overlay, args.html):
        if path:
            print(f"written: {os.path.abspath(path)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

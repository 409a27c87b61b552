"""Detect and track on one's own video: person boxes in, poses with track ids out.

  python -m posewarper_jax.track --video clip.mp4 --boxes boxes.json --checkpoint runs/sparse \\
      --out job/track/ [--poses aggregation|hrnet] [--tracker posewarper|iou] \\
      [--overlay job/track.mp4] [--html job/track.html]

No labels: ``--boxes`` is a COCO results file of person boxes (a JSON list of
``{"image_id", "bbox": [x, y, w, h], "score", "category_id": 1}``; ``image_id`` = frame index
+ 1, as in the files ``label`` writes, or ``image_name``/``file_name`` = the frame's file name
relative to the frame directory's parent), boxes scoring below ``--box-threshold`` dropped.
Every box gets a pose from the trained model of a main-job workdir (``--poses``: PoseWarper's
temporal aggregation over t−2..t+2, or the single-frame HRNet), and the people get track ids
(``--tracker``: ``posewarper``, OKS matching against each person of the previous frame moved
to this frame by the warping head; ``iou``, box IoU with the previous frame;
``apps.detect_track``). Joints scoring below ``--min-score`` (0.4) are left out of the
output (poseval counts every written joint; a joint that is off is a false positive).

Writes into ``--out`` (staged: a failed run leaves it as it was) ``posetrack18/<video>.json``
(poses, per-joint scores, track ids; ``python -m posewarper_jax.evaluate --track`` scores it
against a ground truth) and ``coco.json``; ``--overlay``/``--html`` as ``propagate``'s. Bad
input prints one ``error:`` line naming the file (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from posewarper_jax import cli, fileio
from posewarper_jax.apps.outputs import run_command, staged
from posewarper_jax.data import video_frames

__all__ = ["main", "parse_args", "run"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from posewarper_jax.apps.detect_track import POSE_METHODS, TRACKERS

    parser = argparse.ArgumentParser(
        prog="python -m posewarper_jax.track",
        description="Poses from person boxes on every frame of a video, and track ids.",
    )
    parser.add_argument("--video", required=True, help="video file or directory of frames")
    parser.add_argument("--boxes", required=True, help="COCO results file of person boxes")
    parser.add_argument("--checkpoint", required=True, help="the main job's workdir")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--poses", default="aggregation", choices=POSE_METHODS)
    parser.add_argument("--tracker", default="posewarper", choices=TRACKERS)
    parser.add_argument("--box-threshold", type=float, default=0.0)
    parser.add_argument(
        "--min-score", type=float, default=0.4, help="joints scoring less are not written (0.4)"
    )
    flip = parser.add_mutually_exclusive_group()
    flip.add_argument("--flip-test", dest="flip_test", action="store_true", default=None)
    flip.add_argument("--no-flip-test", dest="flip_test", action="store_false")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's")
    parser.add_argument("--overlay", default="", help="write an overlay video (.mp4) here")
    parser.add_argument("--html", default="", help="write an offline viewer page here")
    parser.add_argument("--html-refer", action="store_true", help="frames beside the page")
    cli.add_debug_flag(parser)
    return parser.parse_args(argv)


def video_dataset(source: video_frames.FrameSource, paths, root: str):
    """The video as a data set: every frame ``is_labeled`` (to be predicted), no people,
    ``image_id`` = frame index + 1."""
    from posewarper_jax.data.types import Frame, Video, VideoDataset

    frames = [Frame(os.path.abspath(p), i, i + 1, True, []) for i, p in enumerate(paths)]
    video = Video(source.name, frames, f"{source.name}.json", {"vid_id": source.name})
    return VideoDataset([video], "posetrack18", os.path.abspath(root))


def run(args: argparse.Namespace) -> dict:
    from posewarper_jax import experiment
    from posewarper_jax.apps import dense_labels, detect_track, overlay, trained
    from posewarper_jax.data import coco, detections, posetrack18

    if args.overlay and not args.overlay.lower().endswith((".mp4", ".m4v", ".mov", ".avi")):
        raise ValueError(f"--overlay {args.overlay}: give a video file name ending in .mp4")
    if args.html and not args.html.lower().endswith((".html", ".htm")):
        raise ValueError(f"--html {args.html}: give a file name ending in .html")
    from posewarper_jax.propagate import frames_on_disk

    source = video_frames.open_frames(args.video)
    if source.kind == "frames":
        paths = list(source.files)
        root = os.path.dirname(os.path.dirname(os.path.abspath(paths[0])))
    else:  # where frames_on_disk puts them, relative to its root
        root = os.path.dirname(os.path.abspath(source.path))
        paths = [os.path.join(root, source.name, f"{i:06d}.png") for i in range(source.nframes)]
    # The boxes are checked against the frames before the model is loaded.
    detections.load_detections(args.boxes, video_dataset(source, paths, root))
    model = trained.load_trained(args.checkpoint)
    flip = bool(
        model.config.eval.get("flip_test", False) if args.flip_test is None else args.flip_test
    )
    overrides = {} if args.batch_size is None else {"batch_size": int(args.batch_size)}
    pipe_cfg = model.pipeline_config(**overrides)
    decoding = experiment.heatmap_coding(model.config)[1]
    with tempfile.TemporaryDirectory(prefix="posewarper_frames_") as scratch:
        if source.kind == "file":
            paths, root = frames_on_disk(source, scratch)
        dataset = video_dataset(source, paths, root)
        boxes = detections.load_detections(args.boxes, dataset, float(args.box_threshold))
        pred = detect_track.detect_poses(
            model.model, model.variables, dataset, pipe_cfg, boxes=boxes, poses=args.poses,
            flip_test=flip, decoding=decoding,
        )  # fmt: skip
        warped = None
        if args.tracker == "posewarper":
            warped = detect_track.warp_previous_poses(
                model.model, model.variables, pred, pipe_cfg, flip_test=flip, decoding=decoding
            )
        tracked = detect_track.track(pred, args.tracker, warped=warped)
        tracked = detect_track.keep_confident_joints(tracked, args.min_score)
        video = tracked.videos[0]
        with staged(args.out) as tmp:
            posetrack18.write_posetrack18(tracked, os.path.join(tmp, "posetrack18"))
            fileio.write_json(
                os.path.join(tmp, "coco.json"), coco.coco_keypoints_json(tracked), indent=None
            )
        flags = [False] * video.nframes
        overlay.write_views(args, source, video, flags, dense_labels.frame_confidence(video))
    people = sum(len(f.people) for f in video.frames)
    tracks = len({p.track_id for f in video.frames for p in f.people})
    print(
        f"{source.path}: {source.nframes} frames, {people} people, {tracks} tracks "
        f"({args.poses} poses, {args.tracker} tracker)"
    )
    print(f"written: {os.path.join(os.path.abspath(args.out), 'posetrack18', video.source)}")
    for path in (args.overlay, args.html):
        if path:
            print(f"written: {os.path.abspath(path)}")
    return {"people": people, "tracks": tracks}


def main(argv: list[str] | None = None) -> int:
    return run_command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

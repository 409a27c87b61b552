"""Step 1 with one's own video: the frames to label, and empty annotation files to fill.

  python -m posewarper_jax.label --video clip.mp4 --every 7 --out job/

``--video`` is a video file or a directory of frame images (``data.video_frames``). Every
``--every``-th frame (from ``--first``) is extracted to ``OUT/frames/<index>.jpg`` (0-based
frame index, six digits), and two empty annotation files list those frames with the 17-joint
skeleton and the PoseTrack18 joint names (``data.user_labels.label_templates``):

  OUT/labels_coco.json         COCO keypoints: for CVAT ("COCO Keypoints 1.0" import, with
                               the images of OUT/frames), Label Studio or a text editor
  OUT/labels_posetrack18.json  PoseTrack18: every frame listed, is_labeled on those to label

Fill either one (a person: ``keypoints`` as 17 x (x, y, v), v = 0 for a joint not labeled,
a ``track_id`` per person that stays the same across frames, ``bbox`` optional) and give it
to ``python -m posewarper_jax.propagate --labels``, which also reads CVAT's COCO Keypoints
1.0 export. Nothing is written when the video cannot be read; a failed run leaves ``OUT`` as
it was. Exit status 2 with a one-line ``error:`` on bad input.
"""

from __future__ import annotations

import argparse
import os
import sys

from posewarper_jax import cli, fileio
from posewarper_jax.apps.outputs import run_command, staged
from posewarper_jax.data import user_labels, video_frames

__all__ = ["main", "make_label_job", "parse_args"]

COCO_FILE = "labels_coco.json"
POSETRACK_FILE = "labels_posetrack18.json"
FRAMES_DIR = "frames"


def make_label_job(video: str, out: str, every: int, first: int = 0) -> dict:
    """Extracts the frames to label and writes the annotation templates into ``out``.

    Returns ``{"video", "nframes", "frames": [...], "files": {...}}`` (also printed).
    """
    source = video_frames.open_frames(video)
    frames = user_labels.frames_to_label(source.nframes, every, first)
    coco, posetrack = user_labels.label_templates(source, frames)
    with staged(out) as tmp:
        video_frames.extract(source, os.path.join(tmp, FRAMES_DIR), frames, suffix=".jpg")
        for name, data in ((COCO_FILE, coco), (POSETRACK_FILE, posetrack)):
            fileio.write_json(os.path.join(tmp, name), data, indent=1)
    out = os.path.abspath(out)
    return {
        "video": source.path,
        "nframes": source.nframes,
        "frames": frames,
        "files": {
            "frames": os.path.join(out, FRAMES_DIR),
            "coco": os.path.join(out, COCO_FILE),
            "posetrack18": os.path.join(out, POSETRACK_FILE),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m posewarper_jax.label",
        description="Extract every k-th frame of a video for labeling and write empty COCO "
        "keypoints and PoseTrack18 annotation files (17 joints, PoseTrack18 names).",
    )
    parser.add_argument("--video", required=True, help="video file or directory of frames")
    parser.add_argument("--every", type=int, default=7, help="label every k-th frame (7)")
    parser.add_argument("--first", type=int, default=0, help="first frame to label (0)")
    parser.add_argument("--out", required=True, help="output directory")
    cli.add_debug_flag(parser)
    return parser.parse_args(argv)


def _run(args: argparse.Namespace) -> None:
    job = make_label_job(args.video, args.out, args.every, args.first)
    n = len(job["frames"])
    print(f"{job['video']}: {job['nframes']} frames; {n} to label: {job['frames']}")
    print(f"frames: {job['files']['frames']}")
    print(f"fill one of: {job['files']['coco']}")
    print(f"             {job['files']['posetrack18']}")


def main(argv: list[str] | None = None) -> int:
    return run_command(_run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

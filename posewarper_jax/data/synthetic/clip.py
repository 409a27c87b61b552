"""A video to try the video commands on: one synthetic clip as an .mp4, with its ground truth.

  python -m posewarper_jax.data.synthetic.clip make --out demo/clip.mp4 --gt demo/gt \\
      [--boxes demo/boxes.json] [--seed 3] [--frames 40]
  python -m posewarper_jax.data.synthetic.clip fill --template demo/job/labels_coco.json \\
      --gt demo/gt/clip.json --out demo/job/labels.json

``make`` renders one video of the embedded synthetic data set (``data.synthetic``: the
default preset's people, scenes and camera, seed ``--seed``, ``--frames`` frames at 25 fps,
320x240) and writes it as an mp4v video, with:

  GT/<clip>.json   its ground truth in PoseTrack18 (every frame labeled, track ids, head
                   boxes; frames named ``<clip>/%06d.png`` as ``propagate`` and ``track`` name
                   them): the ``--gt`` directory of ``python -m posewarper_jax.evaluate``
  BOXES            (default ``<clip>_boxes.json`` beside the video) the ground-truth person
                   boxes as a COCO results file (``image_id`` = frame index + 1): a stand-in
                   for a person detector, for ``track --boxes``

``fill`` plays the annotator: it fills an empty annotation file written by ``label`` (COCO
keypoints) with the ground truth of its frames, as someone labeling them would.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

import cv2
import numpy as np

from posewarper_jax import cli, fileio
from posewarper_jax.apps.outputs import run_command, staged, staged_file
from posewarper_jax.data import formats, posetrack18
from posewarper_jax.data.synthetic.config import get_config
from posewarper_jax.data.synthetic.dataset import render_video, to_video
from posewarper_jax.data.types import Frame, Video, VideoDataset

__all__ = ["fill_labels", "main", "make_clip"]


def make_clip(
    out: str, gt_dir: str, boxes_file: str = "", *, seed: int = 3, frames: int = 40
) -> VideoDataset:
    """Renders the clip to ``out`` (mp4v) and its ground truth to ``gt_dir`` (module
    docstring); returns the ground truth."""
    if not out.lower().endswith(".mp4"):
        raise ValueError(f"--out {out}: give a file name ending in .mp4")
    if frames < 2:
        raise ValueError(f"--frames must be at least 2, got {frames}")
    name = os.path.splitext(os.path.basename(out))[0]
    cfg = get_config("default", seed=seed, min_frames=frames, max_frames=frames)
    with tempfile.TemporaryDirectory(prefix="posewarper_clip_") as scratch:
        record = render_video(cfg, "val", 0, scratch)
        video = to_video(record, cfg, scratch)
        with staged_file(out) as tmp:
            writer = cv2.VideoWriter(
                tmp, cv2.VideoWriter_fourcc(*"mp4v"), cfg.fps, (cfg.width, cfg.height)
            )
            if not writer.isOpened():
                raise OSError(f"{out}: OpenCV cannot write an mp4v video here")
            for path in record.image_paths:
                writer.write(cv2.imread(path, cv2.IMREAD_COLOR))
            writer.release()
    root = os.path.abspath(gt_dir)
    gt_frames = [
        Frame(os.path.join(root, name, f"{f.index:06d}.png"), f.index, f.index + 1, True, f.people)
        for f in video.frames
    ]
    gt = VideoDataset(
        [Video(name, gt_frames, f"{name}.json", {"vid_id": name})], "posetrack18", root
    )
    boxes = [
        {
            "image_id": f.index + 1,
            "category_id": 1,
            "bbox": [round(float(v), 2) for v in p.bbox],
            "score": 1.0,
        }
        for f in gt_frames
        for p in f.people
    ]
    with staged(gt_dir) as tmp:
        posetrack18.write_posetrack18(dataclasses.replace(gt, root=root), tmp)
    with staged_file(boxes_file or default_boxes_file(out)) as tmp:
        fileio.write_json(tmp, boxes, indent=None)
    return gt


def default_boxes_file(out: str) -> str:
    return os.path.splitext(out)[0] + "_boxes.json"


def fill_labels(template: str, gt_file: str, out: str) -> int:
    """Writes ``template`` (a COCO keypoints file from ``label``) filled with the people of
    ``gt_file`` (PoseTrack18) on its frames to ``out``; returns the number of people."""
    data = formats.read_json(template)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise formats.AnnotationError(f"{template}: not a COCO keypoints file from label")
    gt = posetrack18.load_posetrack18(gt_file, os.path.dirname(os.path.abspath(gt_file)))
    if len(gt.videos) != 1:
        raise formats.AnnotationError(f"{gt_file}: expected one video, found {len(gt.videos)}")
    video = gt.videos[0]
    annotations = []
    for i, image in enumerate(data["images"]):
        number = image.get("id", 0) - 1
        if not 0 <= number < video.nframes:
            raise formats.AnnotationError(
                f"{template}: images[{i}] is frame {number}; {gt_file} has {video.nframes}"
            )
        for p in video.frames[number].people:
            kp = np.asarray(p.keypoints, np.float64).copy()
            kp[:, 2] = np.where(kp[:, 2] > 0, 2, 0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": 1,
                    "track_id": int(p.track_id),
                    "keypoints": [round(float(v), 2) for v in kp.reshape(-1)],
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                    "bbox": [round(float(v), 2) for v in p.bbox],
                }
            )
    data["annotations"] = annotations
    with staged_file(out) as tmp:
        fileio.write_json(tmp, data, indent=1)
    return len(annotations)


def _run(args: argparse.Namespace) -> None:
    if args.command == "make":
        gt = make_clip(args.out, args.gt, args.boxes, seed=args.seed, frames=args.frames)
        video = gt.videos[0]
        people = len({p.track_id for f in video.frames for p in f.people})
        print(f"{args.out}: {video.nframes} frames, {people} people (seed {args.seed})")
        print(f"ground truth: {os.path.join(args.gt, video.name + '.json')}")
        print(f"person boxes: {args.boxes or default_boxes_file(args.out)}")
    else:
        n = fill_labels(args.template, args.gt, args.out)
        print(f"{args.out}: {n} people labeled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m posewarper_jax.data.synthetic.clip",
        description="A synthetic clip (.mp4) with its ground truth, and labels for it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="render a clip and its ground truth")
    make.add_argument("--out", required=True, help="the video file (.mp4)")
    make.add_argument("--gt", required=True, help="directory for the ground truth")
    make.add_argument("--boxes", default="", help="person boxes file (<clip>_boxes.json)")
    make.add_argument("--seed", type=int, default=3)
    make.add_argument("--frames", type=int, default=40)
    fill = sub.add_parser("fill", help="fill label's annotation file with the ground truth")
    fill.add_argument("--template", required=True, help="labels_coco.json written by label")
    fill.add_argument("--gt", required=True, help="the clip's ground truth (<clip>.json)")
    fill.add_argument("--out", required=True, help="the filled labels file")
    for command in (make, fill):
        cli.add_debug_flag(command)
    return run_command(_run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

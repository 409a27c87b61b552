"""Input-pipeline throughput: training frame pairs per second.

  python benchmarks/pipeline.py [--batches 20] [--batch-size 16] [--workers 0,1,2] [--repeats 1]

Writes a small data set of 640×360 JPEGs (textured backgrounds, moving people-sized shapes,
sensor noise, quality 90) into a temporary directory, then times ``train_dataset`` (pairs,
full augmentation) at 384×288 (σ = 3) and at the default 128×96 (σ = 1) for each worker
count. Each process prepares batches with one thread (``read_threads=1``), so "per worker"
is the rate of one decoding process; with 0 workers everything runs in this process.
The first two batches (worker start-up) are not timed; ``--repeats`` keeps the best run, which
helps on a shared machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

import cv2
import numpy as np

try:
    import posewarper_jax  # noqa: F401
except ImportError:  # run from a checkout: python benchmarks/pipeline.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posewarper_jax.data import pipeline as pl
from posewarper_jax.data.types import NUM_JOINTS, Frame, Person, Video, VideoDataset

FRAME_H, FRAME_W = 360, 640


def write_dataset(root: str, videos: int = 3, frames: int = 24, people: int = 3) -> VideoDataset:
    """Generated videos: a panning textured background with ``people`` moving figures."""
    rng = np.random.default_rng(0)
    out = []
    for v in range(videos):
        field = rng.random((FRAME_H // 16 + 8, FRAME_W // 16 + 8, 3)).astype(np.float32)
        big = cv2.resize(field, None, fx=16, fy=16, interpolation=cv2.INTER_CUBIC)
        big = (big * 180 + 40).clip(0, 255).astype(np.uint8)
        starts = rng.uniform([60, 80], [FRAME_W - 60, FRAME_H - 100], size=(people, 2))
        speeds = rng.uniform(-4, 4, size=(people, 2))
        frame_list = []
        for t in range(frames):
            pan = t * 2
            img = big[:FRAME_H, pan : pan + FRAME_W].copy()
            persons = []
            for p in range(people):
                cx, cy = starts[p] + speeds[p] * t
                w, h = 60.0, 150.0
                color = tuple(int(c) for c in rng.integers(0, 255, 3))
                cv2.ellipse(img, (int(cx), int(cy)), (int(w / 2), int(h / 2)), 0, 0, 360, color, -1)
                cv2.circle(img, (int(cx), int(cy - h / 2)), 14, (200, 170, 150), -1)
                kp = np.zeros((NUM_JOINTS, 3), np.float32)
                kp[:, 0] = cx + rng.uniform(-w / 2, w / 2, NUM_JOINTS)
                kp[:, 1] = cy + np.linspace(-h / 2, h / 2, NUM_JOINTS)
                kp[:, 2] = 1
                kp[[3, 4], 2] = 0
                box = np.array([cx - w / 2, cy - h / 2 - 14, w, h + 14], np.float32)
                persons.append(Person(kp, box, track_id=p))
            noise = rng.normal(0, 6, img.shape)
            img = np.clip(img + noise, 0, 255).astype(np.uint8)
            path = os.path.join(root, f"v{v}", f"{t:06d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 90])
            frame_list.append(Frame(path, t, 10000 * v + t, True, persons))
        out.append(Video(f"v{v}", frame_list, source="generated"))
    return VideoDataset(out, fmt="posetrack18", root=root)


def pairs_per_second(data, config: pl.PipelineConfig, batches: int) -> float:
    it = iter(pl.train_dataset(data, config, process_index=0, process_count=1))
    try:
        for _ in range(2):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(it)
        elapsed = time.perf_counter() - start
        assert batch["image"].shape[0] == config.batch_size
    finally:
        it.close()
        del it
        gc.collect()  # stop prefetch threads before the next configuration starts
    return batches * config.batch_size / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=1, help="report the best of this many runs")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as root:
        data = write_dataset(root)
        kb = np.mean([os.path.getsize(f.path) for v in data.videos for f in v.frames]) / 1024
        n_frames = sum(v.nframes for v in data.videos)
        print(
            f"data: {n_frames} frames of {FRAME_W}x{FRAME_H} JPEG, mean {kb:.0f} KiB; "
            f"{os.cpu_count()} CPUs; batch {args.batch_size}, {args.batches} timed batches"
        )
        print(f"{'crop HxW':>10} {'workers':>8} {'pairs/s':>10} {'pairs/s/worker':>15}")
        for size, sigma in (((384, 288), 3.0), ((128, 96), 1.0)):
            for workers in (int(w) for w in args.workers.split(",")):
                config = pl.PipelineConfig(
                    image_size=size,
                    sigma=sigma,
                    batch_size=args.batch_size,
                    num_workers=workers,
                    read_threads=1,
                    prefetch_batches=2,
                )
                rate = max(
                    pairs_per_second(data, config, args.batches) for _ in range(args.repeats)
                )
                size_s = f"{size[0]}x{size[1]}"
                print(f"{size_s:>10} {workers:>8} {rate:>10.1f} {rate / max(workers, 1):>15.1f}")


if __name__ == "__main__":
    main()

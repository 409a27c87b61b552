"""Input-pipeline throughput: training frame pairs per second, against the JPEG-decode floor.

  python benchmarks/pipeline.py [--batches 20] [--batch-size 16] [--workers 0,1,2] [--repeats 1]
                                [--crops 384x288,128x96] [--target-pairs-per-s 120] [--quick]

Writes a small data set of 640×360 JPEGs (textured backgrounds, moving people-sized shapes,
sensor noise, quality 90) into a temporary directory, then times ``train_dataset`` (pairs,
full augmentation) at 384×288 (σ = 3) and at the default 128×96 (σ = 1) for each worker
count (``--crops`` picks the crops; another crop H×W gets σ = H / 128, HRNet's rule). Each
process prepares batches with one thread (``read_threads=1``), so "per worker" is the rate of
one decoding process; with 0 workers everything runs in this process. The pipeline's
decoded-frame cache is off unless ``--frame-cache-mb`` is given, so that every pair decodes
its frames, as with a data set larger than the cache.
The first two batches (worker start-up) are not timed; ``--repeats`` keeps the best run, which
helps on a shared machine.

Threads: every process of the run computes on one thread. This script sets
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` to 1 before NumPy is
imported (the spawned Grain workers inherit the environment) and ``cv2.setNumThreads(1)`` in
this process; the pipeline's worker initialiser does the same for OpenCV in each worker. So
N workers use about N cores (a little more: Grain's own threads in a worker hand a batch over
while the next one is made); the ``cores_used`` figures show it: CPU time of this process
and of its child processes over the timed window / wall time, from /proc (null elsewhere).
``pairs_per_cpu_s`` divides the pairs by those CPU seconds: on a machine that other work
keeps busy it moves less than the wall-clock rates (which are the ones that size workers).

Output: one JSON line per figure on stdout; the human-readable table goes to stderr.

  case "jpeg_decode_floor"  one process, one thread, only reading + decoding the two frames
      of a pair (``cv2.imread`` with the pipeline's flags, the call the pipeline makes) on the
      same files, cycling over consecutive-frame pairs: ``pairs_per_s`` and ``frames_per_s``.
  case "pipeline"  per crop and worker count: ``pairs_per_s``, ``pairs_per_s_per_worker``
      (0 workers counts as one process), ``vs_decode_floor`` (per-worker rate / floor),
      ``frames_decoded_per_pair`` (expected; below 2 because B = A when the drawn offset is 0
      or clipped at a video's end, and then one image serves both) and ``decode_share``
      (the part of one process's time spent decoding, if decoding runs at the floor's rate).
  case "workers_needed"  with ``--target-pairs-per-s``: ceil(target / per-worker rate at
      384×288, or the largest timed crop without it). The per-worker rate is that of the
      largest timed worker count that leaves a core to the main process (workers < CPUs),
      else of the smallest; ``workers_needed_at_decode_floor`` is the bound if a worker did
      nothing but decode.

Every line has ``cpu_count``, ``cpus_usable`` (affinity) and ``loadavg_1m`` (read after the
figure). ``--quick`` is a short run for tests: 3 batches, 0 and 1 workers, 24 frames; most of
its time is start-up (imports, and each worker process's imports).
"""

from __future__ import annotations

import os

# Before NumPy/OpenCV load, here and (inherited) in the spawned workers: one thread each.
os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")

import argparse
import gc
import json
import math
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
DEFAULT_CROPS = "384x288,128x96"
SIZING_CROP = (384, 288)  # the paper's crop: the one that sizes a GPU's worker count


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


# ----------------------------------------------------------------------------- CPU time


def _proc_cpu_s(pid: int | str) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children() -> list[int]:
    me, kids = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            kids.append(int(name))
    return kids


def _cpu_snapshot() -> tuple[float, float] | None:
    """(CPU seconds of this process, of its live child processes), or None without /proc."""
    try:
        own = _proc_cpu_s("self")
    except OSError:
        return None
    kids = 0.0
    for pid in _children():
        try:
            kids += _proc_cpu_s(pid)
        except OSError:  # exited meanwhile
            pass
    return own, kids


# ----------------------------------------------------------------------------- timing


def pairs_per_second(data, config: pl.PipelineConfig, batches: int) -> tuple[float, dict]:
    """Pairs/s over ``batches`` batches after two untimed ones, and the cores used meanwhile."""
    it = iter(pl.train_dataset(data, config, process_index=0, process_count=1))
    try:
        for _ in range(2):
            next(it)
        cpu0, start = _cpu_snapshot(), time.perf_counter()
        for _ in range(batches):
            batch = next(it)
        elapsed = time.perf_counter() - start
        cpu1 = _cpu_snapshot()
        assert batch["image"].shape[0] == config.batch_size
    finally:
        it.close()
        del it
        gc.collect()  # stop prefetch threads before the next configuration starts
    pairs = batches * config.batch_size
    cores = dict.fromkeys(("cores_used", "main_cores_used", "worker_cores_used", "pairs_per_cpu_s"))
    if cpu0 is not None and cpu1 is not None:
        own, kids = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        cores["cores_used"] = round((own + kids) / elapsed, 2)
        cores["pairs_per_cpu_s"] = round(pairs / max(own + kids, 1e-9), 2)
        cores["main_cores_used"] = round(own / elapsed, 2)
        if config.num_workers:
            cores["worker_cores_used"] = round(kids / elapsed / config.num_workers, 2)
    return pairs / elapsed, cores


def decode_floor(data: VideoDataset, pairs: int, repeats: int) -> tuple[float, float]:
    """Pairs/s of only reading + decoding both frames of consecutive-frame pairs in this
    process (one OpenCV thread), best of ``repeats``; and the cores used by the best run."""
    pair_paths = [
        (v.frames[t].path, v.frames[t + 1].path) for v in data.videos for t in range(v.nframes - 1)
    ]
    for a, _ in pair_paths:  # warm-up: page cache, decoder start-up
        pl._read_bgr(a, "decode floor")
    best, best_cores = 0.0, 0.0
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(pairs):
            a, b = pair_paths[i % len(pair_paths)]
            pl._read_bgr(a, "decode floor")
            pl._read_bgr(b, "decode floor")
        elapsed = time.perf_counter() - t0
        if pairs / elapsed > best:
            best, best_cores = pairs / elapsed, (time.process_time() - c0) / elapsed
    return best, best_cores


def frames_decoded_per_pair(data: VideoDataset, support_range: int) -> float:
    """Expected decodes per training pair: 2, less the chance that B = A (one decode)."""
    records = pl.train_records(data)
    nframes = np.array([v.nframes for v in data.videos])[records.video]
    deltas = np.arange(-support_range, support_range + 1)
    fb = np.clip(records.frame[:, None] + deltas, 0, nframes[:, None] - 1)
    return float(2.0 - np.mean(fb == records.frame[:, None]))


def parse_crops(text: str) -> list[tuple[int, int]]:
    crops = []
    for item in text.split(","):
        try:
            h, w = (int(s) for s in item.strip().lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"crop {item!r} is not HxW (e.g. 384x288)") from None
        if h <= 0 or w <= 0 or h % 4 or w % 4:
            raise argparse.ArgumentTypeError(f"crop {item!r}: H and W must be positive, /4")
        crops.append((h, w))
    return crops


def parse_workers(text: str) -> list[int]:
    try:
        workers = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers {text!r}: integers, e.g. 0,1,2") from None
    if any(w < 0 for w in workers):
        raise argparse.ArgumentTypeError(f"--workers {text!r}: counts must be >= 0")
    return workers


def sizing_rate(rows: list[dict], cpus: int) -> dict:
    """The pipeline row whose per-worker rate sizes a worker count (see the docstring)."""
    crops = {tuple(r["crop"]) for r in rows}
    crop = SIZING_CROP if SIZING_CROP in crops else max(crops, key=lambda c: c[0] * c[1])
    rows = [r for r in rows if tuple(r["crop"]) == crop]
    with_workers = [r for r in rows if r["workers"] > 0]
    free = [r for r in with_workers if r["workers"] < cpus]
    if free:
        return max(free, key=lambda r: r["workers"])
    if with_workers:
        return min(with_workers, key=lambda r: r["workers"])
    return rows[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=None, help="timed batches (20; quick: 3)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--workers", type=parse_workers, default=None, help="worker counts (0,1,2; quick: 0,1)"
    )
    ap.add_argument("--repeats", type=int, default=1, help="report the best of this many runs")
    ap.add_argument(
        "--crops", type=parse_crops, default=parse_crops(DEFAULT_CROPS),
        help=f"crops HxW to time, comma-separated (default {DEFAULT_CROPS})",
    )  # fmt: skip
    ap.add_argument(
        "--target-pairs-per-s", type=float, default=None, metavar="FLOAT",
        help="a GPU's training rate (pairs/s): print the worker count that feeds it",
    )  # fmt: skip
    ap.add_argument(
        "--frame-cache-mb", type=int, default=0, metavar="MB",
        help="the pipeline's decoded-frame cache (input.frame_cache_mb; default 0: every "
        "pair decodes its frames, the case of a data set larger than the cache)",
    )  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="seconds: 3 batches, 0 and 1 workers")
    args = ap.parse_args()
    if args.batches is None:
        args.batches = 3 if args.quick else 20
    if args.workers is None:
        args.workers = [0, 1] if args.quick else [0, 1, 2]
    if args.batches <= 0 or args.batch_size <= 0 or args.repeats <= 0:
        ap.error("--batches, --batch-size and --repeats must be positive")
    if args.target_pairs_per_s is not None and not args.target_pairs_per_s > 0:
        ap.error("--target-pairs-per-s must be > 0")

    cv2.setNumThreads(1)  # this process too: 0 workers means one thread, like one worker
    cpu_count = os.cpu_count()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpu_count

    def emit(record: dict) -> None:
        record.update(cpu_count=cpu_count, cpus_usable=cpus)
        record["loadavg_1m"] = round(os.getloadavg()[0], 2)
        print(json.dumps(record), flush=True)

    def table(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as root:
        data = write_dataset(root, videos=2, frames=12) if args.quick else write_dataset(root)
        kb = np.mean([os.path.getsize(f.path) for v in data.videos for f in v.frames]) / 1024
        n_frames = sum(v.nframes for v in data.videos)
        table(
            f"data: {n_frames} frames of {FRAME_W}x{FRAME_H} JPEG, mean {kb:.0f} KiB; "
            f"{cpu_count} CPUs ({cpus} usable); batch {args.batch_size}, "
            f"{args.batches} timed batches"
        )

        floor_pairs = max(args.batches * args.batch_size, 64)
        floor, floor_cores = decode_floor(data, floor_pairs, args.repeats)
        emit({
            "case": "jpeg_decode_floor", "crop": None, "workers": 0,
            "pairs_per_s": round(floor, 2), "pairs_per_s_per_worker": round(floor, 2),
            "frames_per_s": round(2 * floor, 2), "pairs": floor_pairs,
            "frame_size": [FRAME_H, FRAME_W], "mean_kib": round(float(kb), 1),
            "decoder": "cv2.imread", "cores_used": round(floor_cores, 2),
            "pairs_per_cpu_s": round(floor / max(floor_cores, 1e-9), 2),
        })  # fmt: skip
        table(f"JPEG decode floor (1 process, 1 thread): {floor:.1f} pairs/s")
        table(
            f"{'crop HxW':>10} {'workers':>8} {'pairs/s':>10} {'pairs/s/worker':>15} "
            f"{'vs floor':>9}"
        )

        rows = []
        for size in args.crops:
            sigma = size[0] / 128  # HRNet: σ ≈ heatmap height / 32, heatmaps at stride 4
            for workers in args.workers:
                config = pl.PipelineConfig(
                    image_size=size,
                    sigma=sigma,
                    batch_size=args.batch_size,
                    num_workers=workers,
                    read_threads=1,
                    prefetch_batches=2,
                    frame_cache_mb=args.frame_cache_mb,
                )
                rate, cores = max(
                    (pairs_per_second(data, config, args.batches) for _ in range(args.repeats)),
                    key=lambda rc: rc[0],
                )
                decodes = frames_decoded_per_pair(data, config.support_range)
                per_worker = round(rate / max(workers, 1), 2)
                row = {
                    "case": "pipeline", "crop": list(size), "sigma": sigma, "workers": workers,
                    "frame_cache_mb": args.frame_cache_mb,
                    "pairs_per_s": round(rate, 2), "pairs_per_s_per_worker": per_worker,
                    "vs_decode_floor": round(per_worker / floor, 3),
                    "frames_decoded_per_pair": round(decodes, 3),
                    "decode_share": round(per_worker * decodes / (2 * floor), 3),
                    "batch_size": args.batch_size, "batches": args.batches,
                    "repeats": args.repeats, "read_threads": config.read_threads, **cores,
                }  # fmt: skip
                emit(row)
                rows.append(row)
                size_s = f"{size[0]}x{size[1]}"
                table(
                    f"{size_s:>10} {workers:>8} {row['pairs_per_s']:>10.1f} {per_worker:>15.1f} "
                    f"{row['vs_decode_floor']:>9.2f}"
                )

        if args.target_pairs_per_s is not None:
            src = sizing_rate(rows, cpus)
            target = args.target_pairs_per_s
            needed = math.ceil(target / src["pairs_per_s_per_worker"])
            emit({
                "case": "workers_needed", "crop": src["crop"], "workers": needed,
                "workers_needed": needed, "target_pairs_per_s": target,
                "pairs_per_s_per_worker": src["pairs_per_s_per_worker"],
                "per_worker_from_workers": src["workers"],
                "pairs_per_s": src["pairs_per_s"],
                "workers_needed_at_decode_floor": math.ceil(target / round(floor, 2)),
                "decode_floor_pairs_per_s": round(floor, 2),
            })  # fmt: skip
            table(
                f"workers needed for {target:g} pairs/s at {src['crop'][0]}x{src['crop'][1]}: "
                f"{needed} (ceil({target:g} / {src['pairs_per_s_per_worker']:.2f} pairs/s per "
                f"worker, measured with {src['workers']} workers)); at the decode floor: "
                f"{math.ceil(target / round(floor, 2))}"
            )


if __name__ == "__main__":
    main()

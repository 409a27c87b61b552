"""Heatmap decoding cost: HRNet's quarter-pixel step against DARK's sub-pixel decoding.

  python benchmarks/decode.py --batch 64
  python benchmarks/decode.py --batch 256 --size 96 72  # the paper's heatmaps

Prints one JSON line per case (same heatmaps, side by side in one process): median ms per
jitted call and the ratio to the quarter-pixel decoding, plus the decoding error of each on
Gaussian maps centred at random sub-pixel positions (heatmap pixels, mean over joints).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from posewarper_jax.data.transforms import gaussian_targets
from posewarper_jax.ops.heatmaps import DECODINGS, decode_heatmaps


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, nargs=2, default=(32, 24), metavar=("H", "W"))
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--joints", type=int, default=17)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    h, w = args.size
    rng = np.random.default_rng(0)
    xy = np.stack(
        [rng.uniform(3, 4 * w - 12, (args.batch, args.joints)),
         rng.uniform(3, 4 * h - 12, (args.batch, args.joints))], axis=-1
    )  # fmt: skip
    maps = np.stack(
        [
            gaussian_targets(xy[b], np.ones(args.joints), (h, w), (4 * h, 4 * w), args.sigma,
                             "subpixel")[0]
            for b in range(args.batch)
        ]
    )  # fmt: skip
    maps = jnp.asarray(maps + 0.01 * rng.normal(size=maps.shape).astype(np.float32))
    base = None
    for method in DECODINGS:
        fn = jax.jit(lambda m, method=method: decode_heatmaps(m, method=method, sigma=args.sigma))
        coords, _ = jax.block_until_ready(fn(maps))
        times = []
        for _ in range(args.iters):
            t = time.perf_counter()
            jax.block_until_ready(fn(maps))
            times.append(time.perf_counter() - t)
        ms = 1e3 * statistics.median(times)
        base = ms if base is None else base
        err = np.linalg.norm(np.asarray(coords) - xy / 4, axis=-1).mean()
        print(json.dumps({
            "decoding": method, "heatmaps": [args.batch, h, w, args.joints],
            "ms": round(ms, 3), "ratio_to_quarter": round(ms / base, 2),
            "mean_error_px": round(float(err), 4), "device": jax.devices()[0].platform,
        }))  # fmt: skip


if __name__ == "__main__":
    main()

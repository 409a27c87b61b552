"""Test set-up: 8 fake CPU devices so sharding code paths run without accelerators, and one
persistent XLA compilation cache for the whole test run.

XLA reads the flag when the backend starts, so it is set before anything imports jax.

The cache: many tests run the tiny ``runlocal`` job (in this process or as a subprocess),
and most of its time is compiling the same programs. The controlling pytest process makes
one fresh cache folder per test run and passes it on through the environment to the xdist
workers and to every job a test starts, so each program is compiled once per test run. A
cached executable is the one the compiler would have produced (JAX keys the cache on the
program, the compiler's version and options), so no result changes. ``JAX_COMPILATION_CACHE_DIR``
set beforehand is used as it is.

Helpers several test files share (``from conftest import ...``; pytest puts ``tests/`` on
``sys.path``): the fixture data sets' paths, and the pieces of the small test videos written
with OpenCV (a textured frame, a person on a curve moving right).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="posewarper-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
PT18 = os.path.join(FIXTURES, "posetrack18")
PT17 = os.path.join(FIXTURES, "posetrack17")
COCO = os.path.join(FIXTURES, "coco")
COCO_FILE = os.path.join(COCO, "annotations", "person_keypoints_val.json")


def texture(seed: int, h: int, w: int):
    """Smoothed grey noise stretched to the full range (contrast for optical flow), as a
    uint8 ``[h, w, 3]`` BGR image."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    grey = cv2.GaussianBlur(rng.integers(0, 256, (h, w)).astype(np.uint8), (0, 0), 2.0)
    grey = cv2.normalize(grey, None, 0, 255, cv2.NORM_MINMAX)
    return np.repeat(grey[:, :, None], 3, axis=2)


def curve_person(track: int, cx: float, cy: float):
    """Person ``track`` centred near (``cx``, ``cy``): 15 labeled joints on a curve (the ears
    never labeled), its box and head box."""
    import numpy as np

    from posewarper_jax.data.types import NUM_JOINTS, Person

    lin = np.linspace(0.0, 1.0, NUM_JOINTS)
    kp = np.zeros((NUM_JOINTS, 3), np.float32)
    kp[:, 0] = cx - 10 + 20 * lin
    kp[:, 1] = cy - 20 + 40 * lin**2
    kp[:, 2] = 1
    kp[[3, 4]] = 0  # ears are never labeled
    return Person(
        keypoints=kp,
        bbox=np.array([cx - 14, cy - 24, 28, 48], np.float32),
        head_bbox=np.array([cx - 15, cy - 30, 30, 30], np.float32),
        track_id=track,
    )

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
"""

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

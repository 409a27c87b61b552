"""Multi-process start-up: ``jax.distributed.initialize`` when launched as several processes.

Recognised launches:
* ``POSEWARPER_COORDINATOR=host:port POSEWARPER_NUM_PROCESSES=N POSEWARPER_PROCESS_ID=i``
  (``launch/local.sh`` sets these; works on CPU through gloo collectives);
* SLURM (``SLURM_NTASKS`` > 1), Open MPI and Cloud TPU pods, which JAX detects by itself.
A single process does nothing.
"""

from __future__ import annotations

import os

import jax

ENV_COORDINATOR = "POSEWARPER_COORDINATOR"
ENV_NUM_PROCESSES = "POSEWARPER_NUM_PROCESSES"
ENV_PROCESS_ID = "POSEWARPER_PROCESS_ID"


def initialize() -> None:
    """Joins the other processes of this job, if any (call before any other JAX call)."""
    if os.environ.get(ENV_COORDINATOR):
        try:
            num = int(os.environ[ENV_NUM_PROCESSES])
            pid = int(os.environ[ENV_PROCESS_ID])
        except (KeyError, ValueError) as e:
            raise ValueError(
                f"{ENV_COORDINATOR} is set, so {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must "
                f"be integers too: {e}"
            ) from None
        # Collectives between CPU devices of different processes (GPUs/TPUs use their own).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(os.environ[ENV_COORDINATOR], num, pid)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "OMPI_COMM_WORLD_SIZE" in os.environ:
        jax.distributed.initialize()
    elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()

#!/usr/bin/env bash
# Runs the main job on every host of a Cloud TPU pod slice, e.g.:
#   launch/tpu_pod.sh my-tpu us-central2-b --config configs/sparse.py:paper --workdir gs://bucket/pw
# Every host runs the same command; JAX finds the other hosts by itself on TPU. The code and
# data must already be on each host (or on a shared bucket / file system).
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE [main.py flags...]}
ZONE=${2:?usage: launch/tpu_pod.sh TPU_NAME ZONE [main.py flags...]}
shift 2
ARGS=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
  --command "cd ~/posewarper_jax && python -m posewarper_jax.main $ARGS"

#!/usr/bin/env bash
# Runs the main job on every host of a Cloud TPU pod slice, e.g.:
#   launch/tpu_pod.sh my-tpu us-central2-b --config configs/sparse.py:paper --workdir gs://bucket/pw
# Every host runs the same command; JAX finds the other hosts by itself on TPU. The code must
# be installed on each host with its bucket extra (pip install -e ".[gcs]"); the workdir and
# the data root (--config.data.root=gs://bucket/data) may be on the bucket, which every host
# reads and only the first process writes.
set -euo pipefail
TPU=${1:?usage: launch/tpu_pod.sh TPU_NAME ZONE [main.py flags...]}
ZONE=${2:?usage: launch/tpu_pod.sh TPU_NAME ZONE [main.py flags...]}
shift 2
ARGS=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
  --command "cd ~/posewarper_jax && python -m posewarper_jax.main $ARGS"

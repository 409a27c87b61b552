#!/usr/bin/env bash
# Runs the main job as N processes on this machine (one per GPU, or CPU processes that talk
# through gloo), e.g.:
#   launch/local.sh 2 --config configs/sparse.py --workdir runs/mp
# Each process sees its own slice of the devices and reads its own slice of every batch.
set -euo pipefail
N=${1:?usage: launch/local.sh NUM_PROCESSES [main.py flags...]}
shift
PORT=${PORT:-$((20000 + RANDOM % 10000))}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l || true)
pids=()
for ((i = 0; i < N; i++)); do
  if [[ "${NGPU:-0}" -ge "$N" ]]; then
    export CUDA_VISIBLE_DEVICES=$i
  fi
  POSEWARPER_COORDINATOR="localhost:$PORT" POSEWARPER_NUM_PROCESSES=$N POSEWARPER_PROCESS_ID=$i \
    python -m posewarper_jax.main "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status

#!/usr/bin/env bash
# The performance suite: P1 (the deformable operator), P2 (training steps and inference, JAX
# beside the PyTorch reference), P4 (input pipeline) and the `gpu` variant's smoke steps.
#
#   benchmarks/gpu_suite.sh [PART ...]      PART: p1 p2 p4 gpu (default: all four)
#
# Every line on stdout is one JSON object: a figure from a benchmark, or a "suite" line per
# part (its exit status and seconds). Logs go to stderr. On a GPU it runs the paper's shapes
# (batch 32, 384x288, HRNet-W48, the 20-block head; about 8 minutes on one H200); on a CPU it
# runs small shapes in a few minutes, so that CI checks the script. Installs nothing: it needs
# the project's requirements, and PyTorch/torchvision where present for the reference rows.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU in one process for P1: JAX takes half of it, not 75%.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}"
PY="${PYTHON:-python}"

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(p1 p2 p4 gpu)
backend=$("$PY" -c "import jax; print(jax.default_backend())" 2>/dev/null || echo none)
if [ "$backend" = "none" ]; then
  echo '{"suite": "setup", "error": "jax is not importable"}'
  exit 2
fi
gpu=0
[ "$backend" = "gpu" ] && gpu=1
has_torch=0
"$PY" -c "import torch" 2>/dev/null && has_torch=1
workdir=$(mktemp -d "${TMPDIR:-/tmp}/pw_suite.XXXXXX")
trap 'rm -rf "$workdir"' EXIT

# Runs one benchmark (at most SUITE_TIMEOUT seconds, so one slow compile cannot eat the
# whole run); passes its JSON lines through, everything else to stderr.
# SUITE_DRY_RUN=1 prints each command as a "suite" line instead of running it.
run() {
  local part=$1
  shift
  local t0=$SECONDS rc
  if [ -n "${SUITE_DRY_RUN:-}" ]; then
    printf '{"suite": "%s", "cmd": "%s", "rc": 0, "dry_run": true}\n' "$part" "${*//\"/}"
    return 0
  fi
  timeout "${SUITE_TIMEOUT:-300}" "$@" 2> >(sed "s/^/[$part] /" >&2) |
    awk -v p="[$part] " '/^\{/ {print; fflush(); next} {print p $0 > "/dev/stderr"}'
  rc=${PIPESTATUS[0]}
  printf '{"suite": "%s", "cmd": "%s", "rc": %d, "seconds": %d}\n' \
    "$part" "${*//\"/}" "$rc" $((SECONDS - t0))
  return 0
}

for part in "${parts[@]}"; do
  case "$part" in
  p1)
    if [ $gpu = 1 ]; then
      run p1 "$PY" benchmarks/deform_conv.py --batch 32 --iters 30 \
        --cases lax_conv,deform_multi,deform_multi_pallas --pallas-tiles 32x4,64x8,128x8
    else
      run p1 "$PY" benchmarks/deform_conv.py --quick --cases lax_conv,deform_multi \
        --dtype float32
    fi
    ;;
  p2)
    if [ $gpu = 1 ]; then
      size=(--backbone w48 --head default --batch 32 --size 384 288 --iters 10)
      isolate=(--isolate)  # one process per case: peak memory per case
    else
      size=(--quick)
      isolate=()
    fi
    dtypes=(float32)
    [ $gpu = 1 ] && dtypes+=(bfloat16)
    for dt in "${dtypes[@]}"; do
      run p2 "$PY" benchmarks/model.py "${size[@]}" "${isolate[@]}" --dtype "$dt"
    done
    if [ $has_torch = 1 ]; then
      run p2 "$PY" benchmarks/torch_reference.py "${size[@]}"
      if [ $gpu = 1 ]; then
        run p2 "$PY" benchmarks/torch_reference.py "${size[@]}" --amp
        run p2 "$PY" benchmarks/torch_reference.py "${size[@]}" --amp --compile
      fi
    fi
    ;;
  p4)
    if [ $gpu = 1 ]; then
      run p4 "$PY" benchmarks/pipeline.py --crops 384x288 --workers 0,1,4,8 --batch-size 32 \
        --target-pairs-per-s "${TARGET_PAIRS_PER_S:-200}"
    else
      run p4 "$PY" benchmarks/pipeline.py --quick --crops 384x288 --target-pairs-per-s 50
    fi
    ;;
  gpu)
    # The `gpu` variant's first steps of every stage, on its own small data root.
    if [ $gpu = 1 ]; then variant="gpu,smoke"; else variant="runlocal"; fi
    run gpu "$PY" -m posewarper_jax.main --config "configs/sparse.py:$variant" \
      --workdir "$workdir/run" --config.data.root="$workdir/data"
    ;;
  *)
    printf '{"suite": "%s", "rc": 2, "error": "unknown part; known: p1 p2 p4 gpu"}\n' "$part"
    ;;
  esac
done

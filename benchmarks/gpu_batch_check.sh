#!/usr/bin/env bash
# GPU batch scoring check: `clsloc score` with onnxruntime's CUDA provider required, against the GPU's
# network-only images/s (decoding stays on the CPU cores, so it may bound the job: the ceiling is the
# slower of the two). Runs benchmarks/batch.py --gpu on the shared photos (or synthetic ones).
#
#   benchmarks/gpu_batch_check.sh [MODEL_DIR] [--json]
#
# Without MODEL_DIR it exports a quick model itself (the default network, 1 epoch).
# Exit status: 0 = numbers printed, or no GPU here (a notice says so); non-zero = the check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export BENTOML_DO_NOT_TRACK=true CLSLOC_REQUIRE_GPU=1

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_batch_check: no NVIDIA GPU visible (nvidia-smi) - nothing to check on this machine" >&2
  exit 0
fi
nvidia-smi -L

ARGS=()
if [[ $# -gt 0 && "$1" != --* ]]; then ARGS+=(--model "$1"); shift; fi
# Ray on a GPU host: one actor per GPU (--gpu makes each actor ask for one).
exec "$PY" benchmarks/batch.py --gpu --no-rss "${ARGS[@]}" "$@"

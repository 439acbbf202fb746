#!/usr/bin/env bash
# GPU serving check: wherever a GPU is available, the engine must really run on the
# CUDA provider (onnxruntime falls back to CPU silently), and we report its throughput.
#
#   benchmarks/gpu_serving_check.sh [MODEL_DIR]
#
# Without MODEL_DIR it exports a small model itself (synthetic data, 1 epoch).
# Exit status: 0 = CUDA provider in use and numbers printed; 1 = no GPU / CUDA not used.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export BENTOML_DO_NOT_TRACK=true CLSLOC_REQUIRE_GPU=1

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_serving_check: no NVIDIA GPU visible (nvidia-smi) - nothing to check here" >&2
  exit 1
fi
nvidia-smi -L

MODEL_DIR=${1:-}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [[ -z "$MODEL_DIR" ]]; then
  "$PY" -m clsloc.cli data synth "$WORK/synth" --images 60 --classes 3
  "$PY" -m clsloc.cli train "$WORK/synth" --out "$WORK/run" --epochs 1 --finetune-epochs 0 --quiet
  "$PY" -m clsloc.cli export "$WORK/run" --out "$WORK/model"
  MODEL_DIR="$WORK/model"
fi

"$PY" - "$MODEL_DIR" <<'EOF'
import io, sys, time
import numpy as np
from PIL import Image
from clsloc.serving.engine import CUDA, Engine

engine = Engine(sys.argv[1])  # CLSLOC_REQUIRE_GPU=1: refuses to start unless CUDA really loaded
print(f"providers in use: {engine.providers}")
assert engine.providers[0] == CUDA, f"CUDA provider not in use: {engine.providers}"

rng = np.random.default_rng(0)
photos = []
for _ in range(64):
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=85)
    photos.append(buffer.getvalue())
h, w = engine.preprocessing.size
for batch in (1, 8, 32):
    x = np.random.rand(batch, 3, h, w).astype(np.float32)
    for _ in range(10):
        engine.run(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 5:
        engine.run(x)
        n += batch
    print(f"onnxruntime CUDA, batch {batch:>2}: {n / (time.perf_counter() - start):8.1f} img/s (network only)")
n, start = 0, time.perf_counter()
while time.perf_counter() - start < 5:
    engine.predict_many(photos[:32], batch_size=32)
    n += 32
print(f"end to end (decode + preprocess + CUDA), batch 32: {n / (time.perf_counter() - start):8.1f} img/s")
EOF

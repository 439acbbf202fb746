"""Run directories: checkpoints in, models and splits out.

``RUN_DIR/best.pt`` and ``RUN_DIR/last.pt`` hold only tensors and plain
Python values, so they load with ``torch.load(..., weights_only=True)``.
``last.pt`` carries everything ``--resume`` needs to continue exactly where a
killed run stopped (model, optimizer, scheduler, early-stopping state,
history, RNG state); ``best.pt`` is the model to export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# The torch-free part of a run directory lives in the core (clsloc evaluate reads splits without torch).
from clsloc.runs import SPLIT_FILE, RunError, load_split  # noqa: F401  (load_split re-exported for training)

CONFIG_FILE = "config.json"
RECIPE_FILE = "config.yaml"  # the training options alone: clsloc train --config RUN_DIR/config.yaml repeats the run
METRICS_FILE = "metrics.json"
HISTORY_FILE = "metrics.jsonl"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write atomically: a run killed mid-save keeps its previous checkpoint."""
    path = Path(path)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{path}: missing — is {run_dir} a training run directory (written by 'clsloc train --out')?")
    return json.loads(path.read_text())


def model_from_config(config: dict):
    """Rebuild the network a run trained (random weights; load a state dict into it)."""
    from clsloc.models import build_model

    return build_model(
        config["backbone"],
        len(config["classes"]),
        attach=config["head"]["attach"],
        per_class=config["head"]["per_class"],
        pretrained=False,
        dropout=config.get("dropout", 0.0),
        input_size=int(config["preprocessing"]["size"][0]),
        box_bins=config.get("box_bins", 0),
        flip_tta=config.get("tta", False),
        refine_context=config.get("refine_context", 0.0),
    )


def load_run(run_dir: str | Path, which: str = "best"):
    """-> (model in eval mode, resolved config dict) of a training run."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    config = read_config(run_dir)
    model = model_from_config(config)
    state = load_checkpoint(Path(run_dir) / f"{which}.pt")
    model.load_state_dict(state["model"])
    return model.eval(), config


def write_split(run_dir: str | Path, train_records, val_records, config: dict) -> None:
    from clsloc.training.config import write_json

    write_json(
        Path(run_dir) / SPLIT_FILE,
        {
            "datasets": config["datasets"],
            "val_datasets": config["val"],
            "policy": config["policy"],
            "train": [str(r.image) for r in train_records],
            "val": [str(r.image) for r in val_records],
        },
    )

"""Training run directories, the torch-free part: which images a run validated on.

``clsloc train --out RUN_DIR`` writes ``RUN_DIR/split.json`` (the datasets,
the target policy, and the training and validation image paths). Reading it
back needs no torch, so ``clsloc evaluate --val-of RUN_DIR`` can score an
exported model on exactly the images its export was checked on
(``clsloc.training.checkpoint`` re-exports these names for training).
"""

from __future__ import annotations

import json
from pathlib import Path

SPLIT_FILE = "split.json"


class RunError(ValueError):
    """A run directory that cannot be used (missing or inconsistent files)."""


def read_split_file(run_dir: str | Path) -> dict:
    """``RUN_DIR/split.json`` as written by training; RunError when it is not there or not JSON."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise RunError(f"{path}: missing — is {run_dir} a training run directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None


def load_split(run_dir: str | Path):
    """-> (train_records, val_records) of a run, re-read from its datasets, in the order training wrote them."""
    from clsloc.datasets import load_dataset

    path = Path(run_dir) / SPLIT_FILE
    split = read_split_file(run_dir)
    paths = list(split["datasets"]) + list(split.get("val_datasets") or [])
    records = load_dataset(paths, policy=split.get("policy", "largest")).records
    by_path = {str(Path(r.image).resolve()): r for r in records}

    def pick(names: list[str], role: str):
        missing = [n for n in names if str(Path(n).resolve()) not in by_path]
        if missing:
            raise RunError(f"{path}: {len(missing)} {role} image(s) no longer in the datasets, e.g. {missing[0]}")
        return [by_path[str(Path(n).resolve())] for n in names]

    return pick(split["train"], "training"), pick(split["val"], "validation")

"""Logs that read well in a file: without a terminal, no progress bar, one line per epoch or fold."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import TINY_FLAGS

# The tiny model's flags, but progress bars left on: the output's not being a terminal must be what hides them.
FLAGS = [f for f in TINY_FLAGS if f != "--quiet"]


def run_to_file(tmp_path, *argv) -> str:
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "clsloc.cli", *map(str, argv), *FLAGS],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600,
        )  # fmt: skip
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    return text


def test_train_writes_one_line_per_epoch_to_a_file(synth, tmp_path):
    text = run_to_file(tmp_path, "train", synth, "--out", tmp_path / "run", "--epochs", "3", "--finetune-epochs", "2")
    assert "\r" not in text
    epoch_lines = [line for line in text.splitlines() if line.startswith("stage ")]
    assert [line.split()[:3] for line in epoch_lines] == [
        ["stage", "1", "epoch"], ["stage", "1", "epoch"], ["stage", "1", "epoch"],
        ["stage", "2", "epoch"], ["stage", "2", "epoch"],
    ]  # fmt: skip
    assert len(text.splitlines()) < 40, text


def test_cv_writes_one_line_per_fold_to_a_file(synth, tmp_path):
    text = run_to_file(tmp_path, "cv", synth, "--folds", "2", "--epochs", "2", "--finetune-epochs", "1")
    assert "\r" not in text
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("fold ")] == ["fold 1/2", "fold 2/2"]
    assert len(text.splitlines()) < 30, text

"""Shared fixtures: a small synthetic dataset and the flags of a tiny, fast model.

The tiny model is torchvision's resnet18 with random weights (its features keep
varying between images, unlike mobilenet's at random init) at
64 px: the code paths are the real ones (two stages, cached features, heads
on the map), only the network is small, so each training run takes seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
torch.set_num_threads(1)  # 2 shared cores: one thread each avoids OpenMP spin-waits

# The same tiny model as TrainConfig fields (tests that call fit() directly).
TINY_CONFIG = dict(
    backbone="resnet18",
    pretrained=False,
    image_size=64,
    epochs=3,
    finetune_epochs=2,
    batch_size=8,
    patience=0,
    threads=1,
)
TINY_FLAGS = ["--backbone", "resnet18", "--no-pretrained", "--image-size", "64", "--threads", "1", "--quiet"]


@pytest.fixture
def tiny() -> list[str]:
    """Command-line flags selecting the tiny model."""
    return list(TINY_FLAGS)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    from clsloc.synth import write_synthetic_voc

    return write_synthetic_voc(tmp_path_factory.mktemp("synth") / "voc", images=40, classes=2, seed=0)


@pytest.fixture(scope="session")
def synth3(tmp_path_factory) -> Path:
    from clsloc.synth import write_synthetic_voc

    return write_synthetic_voc(tmp_path_factory.mktemp("synth3") / "voc", images=36, classes=3, seed=1)


@pytest.fixture
def tiny_config():
    """-> make(datasets, **overrides): a TrainConfig for the tiny model."""
    from clsloc.training.config import TrainConfig

    def make(datasets, **overrides):
        base = dict(TINY_CONFIG, datasets=[str(d) for d in datasets], finetune_epochs=1)
        base.update(overrides)
        return TrainConfig(**base)

    return make


@pytest.fixture
def cli():
    """-> run(*argv): the clsloc command in-process, returning its exit code."""
    from clsloc.cli import main

    return lambda *argv: main([str(a) for a in argv])

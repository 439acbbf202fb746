"""Training loads checkpoints with weights_only=True: a checkpoint carrying a pickled payload is refused."""

from __future__ import annotations

import pickle

import pytest
import torch

from clsloc.training.checkpoint import load_checkpoint


def test_checkpoints_load_weights_only_so_a_pickled_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "best.pt"
    torch.save({"model": {}, "payload": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    assert not marker.exists()

"""The lecture's babysitting checks as commands: --sanity and --overfit."""

from __future__ import annotations

import math

import pytest
import torch


def test_sanity_command_passes_and_reports_ln_c(tiny, synth3, cli, capsys):
    assert cli("train", synth3, "--sanity", *tiny) == 0
    out = capsys.readouterr().out
    assert f"expected ln(3) = {math.log(3):.4f}" in out
    assert "went up, good" in out and "sanity check passed" in out


def test_sanity_numbers(synth3, tiny_config):
    from clsloc.training.data import prepare_splits
    from clsloc.training.sanity import sanity_check

    config = tiny_config([synth3])
    splits = prepare_splits(config.datasets, [], config.val_split, config.seed, config.policy)
    report = sanity_check(config, splits, verbose=False)
    assert report.passed, report.failures
    assert report.ce == pytest.approx(math.log(3), rel=0.25)
    assert report.loss == pytest.approx(report.ce + config.box_weight * report.box, rel=1e-5)
    assert report.loss_cranked > report.loss  # more regularization, higher loss


@pytest.mark.slow
def test_sanity_passes_with_the_default_configuration_on_photo_like_data(tmp_path, cli, capsys):
    """``clsloc train DATA --sanity`` with every default (pretrained Lite0, 256 px, the binned box head)
    on objects as large as the shared photos': the untrained box head starts near the uninformed box."""
    import numpy as np

    from clsloc.datasets import load_dataset
    from clsloc.synth import PHOTO_SCALE, write_synthetic_voc
    from clsloc.training.sanity import BOX_TOLERANCE

    data = write_synthetic_voc(tmp_path / "voc", images=24, classes=2, seed=3, object_scale=PHOTO_SCALE)
    # The data can tell: a head starting at a box of no size in the centre (every corner 0.5, the
    # binned head's uniform start) would be far over the check's limit on these boxes.
    targets = np.stack([r.box_normalized for r in load_dataset([str(data)]).records])
    centred = np.array([0.25, 0.25, 0.75, 0.75])
    assert ((targets - 0.5) ** 2).mean() > BOX_TOLERANCE * ((targets - centred) ** 2).mean()

    assert cli("train", data, "--sanity", "--quiet") == 0
    out = capsys.readouterr().out
    assert "sanity check passed" in out and "SANITY CHECK FAILED" not in out


def test_sanity_fails_loudly_when_the_initial_loss_is_off(synth3, tiny_config, cli, tiny, capsys, monkeypatch):
    """A classifier that is confident before training (a badly initialized head) must fail the check."""
    import clsloc.models as models
    from clsloc.models import network

    real_build = network.build_model

    def overconfident(*args, **kwargs):
        model = real_build(*args, **kwargs)
        with torch.no_grad():
            model.cls_head.fc.bias.copy_(torch.tensor([8.0, 0.0, 0.0]))
        return model

    monkeypatch.setattr(models, "build_model", overconfident)
    assert cli("train", synth3, "--sanity", *tiny) == 1
    out = capsys.readouterr().out
    assert "SANITY CHECK FAILED" in out and "ln(3)" in out


def test_overfit_command_memorizes_20_examples(tiny, synth, cli, capsys):
    assert cli("train", synth, "--overfit", "20", "--lr", "3e-3", *tiny) == 0
    out = capsys.readouterr().out
    assert "overfit OK" in out and "on 20 examples" in out


def test_overfit_says_clearly_when_it_cannot(synth, tiny_config):
    from clsloc.training.data import prepare_splits
    from clsloc.training.overfit import overfit

    config = tiny_config([synth], lr=1e-7)  # far too low a learning rate to get anywhere
    splits = prepare_splits(config.datasets, [], config.val_split, config.seed, config.policy)
    report = overfit(config, splits, 20, progress=False, max_epochs=5, verbose=False)
    assert not report.passed and report.n == 20 and report.epochs == 5

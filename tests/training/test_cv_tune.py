"""`clsloc cv` and `clsloc tune` on synthetic data with the tiny model."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest


def test_cv_reports_each_fold_and_mean_std_as_json(tiny, synth, cli, capsys):
    code = cli("cv", synth, "--folds", "3", "--json", "--epochs", "2", "--finetune-epochs", "0", *tiny)
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["k"] == 3 and len(result["folds"]) == 3
    assert sum(f["n_val"] for f in result["folds"]) == 40  # every image held out exactly once
    for key in ("accuracy", "mean_iou", "loc_accuracy"):
        values = [f[key] for f in result["folds"]]
        assert all(0 <= v <= 1 for v in values)
        assert result["mean"][key] == pytest.approx(np.mean(values))
        assert result["std"][key] == pytest.approx(np.std(values, ddof=1))


def test_cv_needs_two_folds(tiny, synth, cli, capsys):
    assert cli("cv", synth, "--folds", "1", *tiny) == 2
    assert "at least 2 folds" in capsys.readouterr().err


def test_tune_coarse_then_fine_writes_table_and_plot(tiny, synth, cli, tmp_path, capsys):
    out = tmp_path / "tune"
    code = cli(
        "tune",
        synth,
        "--trials",
        "4",
        "--fine-trials",
        "3",
        "--coarse-epochs",
        "2",
        "--fine-epochs",
        "2",
        "--lr-range",
        "1e-4",
        "1e-1",
        "--reg-range",
        "1e-6",
        "1e-2",
        "--fine-window",
        "0.5",
        "--out",
        out,
        *tiny,
    )
    assert code == 0
    with open(out / "tune.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stage"] for r in rows] == ["coarse"] * 4 + ["fine"] * 3
    coarse = [r for r in rows if r["stage"] == "coarse"]
    for r in coarse:
        assert 1e-4 <= float(r["lr"]) <= 1e-1 and 1e-6 <= float(r["weight_decay"]) <= 1e-2
    # log-space sampling: values spread over decades, not clustered at the top of the range
    assert max(float(r["lr"]) for r in coarse) / min(float(r["lr"]) for r in coarse) > 3
    best = json.loads((out / "best.json").read_text())
    window = best["ranges"]["fine"]
    for r in rows[4:]:
        assert window["lr"][0] <= float(r["lr"]) <= window["lr"][1]
        assert window["weight_decay"][0] <= float(r["weight_decay"]) <= window["weight_decay"][1]
    assert math.isclose(window["lr"][1] / window["lr"][0], 10.0, rel_tol=1e-6)
    assert (out / "tune.png").stat().st_size > 1000
    assert "train with: clsloc train" in capsys.readouterr().out


def test_tune_stops_a_trial_whose_loss_explodes(synth, tiny_config):
    from clsloc.models import get_backbone
    from clsloc.training.data import ImageStore, prepare_splits
    from clsloc.training.features import FeatureCache
    from clsloc.training.tune import search

    config = tiny_config([synth], optimizer="sgd", momentum=0.9)
    splits = prepare_splits(config.datasets, [], config.val_split, config.seed, config.policy)
    store = ImageStore(get_backbone("resnet18").preprocessing(64))
    rows = search(
        config,
        splits,
        stage="coarse",
        trials=2,
        epochs=10,
        lr_range=(1e3, 1e4),
        reg_range=(1e-6, 1e-5),
        seed=0,
        store=store,
        features=FeatureCache(),
        log=lambda *a: None,
    )
    assert [r["state"] for r in rows] == ["exploded", "exploded"]
    assert all(r["epochs"] < 10 for r in rows)


@pytest.mark.parametrize("value,expected", [(1.1e-5, "low"), (1e-3, None), (0.09, "high"), (5e-5, None)])
def test_edge_of_range(value, expected):
    from clsloc.training.tune import at_edge

    assert at_edge(value, 1e-5, 1e-1) == expected

"""`clsloc train` end to end on synthetic data with a tiny model: run directory, resume, heads, bad data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG  # at import: inside a test, "conftest" may be another directory's


def test_train_writes_a_complete_run_directory(tiny, synth, cli, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", synth, "--out", run, "--epochs", "3", "--finetune-epochs", "1", "--batch-size", "8", *tiny) == 0
    out = capsys.readouterr().out
    for name in (
        "config.json",
        "split.json",
        "metrics.jsonl",
        "metrics.json",
        "best.pt",
        "last.pt",
        "loss.png",
        "accuracy_iou.png",
    ):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in lines] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert "stage 1 epoch   1/3" in out and "val acc" in out and "upd/w heads" in out
    assert set(lines[-1]["update_ratio"]) == {"backbone", "heads"}
    assert all(v > 0 for v in lines[-1]["update_ratio"].values())

    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "mean_iou", "loc_accuracy", "per_class", "confusion"):
        assert key in metrics
    assert set(metrics["per_class"]) == {"circle", "square"}
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["circle", "square"]
    assert config["head"] == {"attach": "map", "per_class": False}
    assert config["preprocessing"]["size"] == [64, 64]
    assert config["data_fingerprint"] and config["metrics"]["accuracy"] == metrics["accuracy"]

    # checkpoints load with weights_only=True; load_run/load_split give back the model and the split
    for name in ("best.pt", "last.pt"):
        torch.load(run / name, map_location="cpu", weights_only=True)
    from clsloc.training.checkpoint import load_run, load_split

    model, cfg = load_run(run)
    assert not model.training and cfg["classes"] == ["circle", "square"]
    train, val = load_split(run)
    split = json.loads((run / "split.json").read_text())
    assert [str(r.image) for r in val] == split["val"] and len(train) + len(val) == 40
    assert not {r.image for r in train} & {r.image for r in val}

    # the loaded best model reproduces metrics.json on the validation images through Preprocessing
    from clsloc.boxes import denormalize_boxes
    from clsloc.images import decode_image
    from clsloc.metrics import evaluate_records
    from clsloc.models import select_boxes

    x = torch.from_numpy(model.preprocessing.batch([decode_image(r.image) for r in val]))
    with torch.no_grad():
        logits, boxes = model(x)
    boxes = select_boxes(logits, boxes).clamp(0, 1).numpy()
    labels = [cfg["classes"][i] for i in logits.argmax(1)]
    px = np.stack([denormalize_boxes(b, r.width, r.height) for b, r in zip(boxes, val)])
    report = evaluate_records(val, labels, px, cfg["classes"])
    assert report["accuracy"] == pytest.approx(metrics["accuracy"])
    assert report["mean_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-4)


class Killed(Exception):
    pass


def _resume_config(synth):

    from clsloc.training.config import TrainConfig

    return TrainConfig(datasets=[str(synth)], **TINY_CONFIG)


@pytest.fixture(scope="module")
def unbroken(synth, tmp_path_factory):
    """One uninterrupted run, shared by the kill points."""
    from clsloc.training.data import prepare_splits
    from clsloc.training.fit import fit

    config = _resume_config(synth)
    splits = prepare_splits(config.datasets, [], config.val_split, config.seed, config.policy)
    out = tmp_path_factory.mktemp("unbroken") / "run"
    fit(config, splits, out, progress=False, log_epochs=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [(1, 2), (2, 2)], ids=["during-stage-1", "during-stage-2"])
def test_resume_equals_an_unbroken_run(synth, unbroken, tmp_path, cli, kill_at):
    from clsloc.training.data import prepare_splits
    from clsloc.training.fit import fit

    config = _resume_config(synth)
    splits = prepare_splits(config.datasets, [], config.val_split, config.seed, config.policy)

    def kill(stage, epoch, record):
        if (stage, epoch) == kill_at:
            raise Killed  # like a SIGKILL after the epoch's work, before its checkpoint
        return False

    with pytest.raises(Killed):
        fit(config, splits, tmp_path / "killed", progress=False, log_epochs=False, epoch_callback=kill)
    assert cli("train", "--resume", tmp_path / "killed", "--quiet") == 0

    a = json.loads((unbroken / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    for key in ("accuracy", "mean_iou", "loc_accuracy"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    hist_a = [json.loads(line) for line in (unbroken / "metrics.jsonl").read_text().splitlines()]
    hist_b = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [(h["stage"], h["epoch"]) for h in hist_a] == [(h["stage"], h["epoch"]) for h in hist_b]
    for ha, hb in zip(hist_a, hist_b):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-5)
        assert ha["val_mean_iou"] == pytest.approx(hb["val_mean_iou"], abs=1e-6)
    wa = torch.load(unbroken / "last.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_resume_with_cached_finetuning_equals_an_unbroken_run(synth, tmp_path, cli):
    """--finetune-cache: the views are rebuilt on resume and each epoch draws the same ones."""
    from dataclasses import replace

    from clsloc.training.data import prepare_splits
    from clsloc.training.fit import fit

    config = replace(_resume_config(synth), finetune_cache=True, cache_views=3)
    splits = prepare_splits(config.datasets, [], config.val_split, config.seed, config.policy)
    fit(config, splits, tmp_path / "unbroken", progress=False, log_epochs=False)

    def kill(stage, epoch, record):
        if (stage, epoch) == (2, 1):
            raise Killed
        return False

    with pytest.raises(Killed):
        fit(config, splits, tmp_path / "killed", progress=False, log_epochs=False, epoch_callback=kill)
    assert cli("train", "--resume", tmp_path / "killed", "--quiet") == 0
    hist_a = [json.loads(line) for line in (tmp_path / "unbroken" / "metrics.jsonl").read_text().splitlines()]
    hist_b = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [h["stage"] for h in hist_a] == [1, 1, 1, 2, 2]
    for ha, hb in zip(hist_a, hist_b, strict=True):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-5)
        assert ha["val_mean_iou"] == pytest.approx(hb["val_mean_iou"], abs=1e-6)


@pytest.mark.parametrize("per_class", [False, True], ids=["agnostic", "per-class"])
def test_agnostic_and_per_class_heads(tiny, synth3, cli, tmp_path, per_class):
    run = tmp_path / "run"
    flags = ["--per-class"] if per_class else []
    assert cli("train", synth3, "--out", run, "--epochs", "2", "--finetune-epochs", "0", *flags, *tiny) == 0
    from clsloc.training.checkpoint import load_run

    model, config = load_run(run)
    assert config["head"]["per_class"] is per_class
    with torch.no_grad():
        logits, boxes = model(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 3)
    assert boxes.shape == (2, 3 if per_class else 1, 4)


def test_per_class_loss_trains_the_true_class_row():
    from clsloc.training.engine import compute_loss, target_boxes

    boxes = torch.rand(4, 3, 4, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 2])
    picked = target_boxes(boxes, labels)
    assert torch.equal(picked, boxes[torch.arange(4), labels])
    logits = torch.zeros(4, 3)
    compute_loss(logits, boxes, labels, torch.rand(4, 4), box_kind="mse", box_weight=1.0).total.backward()
    grad_rows = boxes.grad.abs().sum(-1) > 0
    assert torch.equal(grad_rows, torch.nn.functional.one_hot(labels, 3).bool())


def test_box_target_nearest_takes_the_l2_against_the_closest_box_of_the_class():
    """--box-target nearest: with several boxes of the class (NaN rows: none), the box loss is the L2
    to the nearest; policy keeps the first (the --policy box); a lone box is the same either way."""
    from clsloc.training.engine import chosen_targets, compute_loss

    nan = float("nan")
    targets = torch.tensor(
        [
            [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [nan, nan, nan, nan]],  # two kangaroos
            [[0.1, 0.1, 0.9, 0.9], [nan, nan, nan, nan], [nan, nan, nan, nan]],  # one
        ]
    )
    pred = torch.tensor([[[0.45, 0.5, 0.95, 1.0]], [[0.2, 0.2, 0.8, 0.8]]], requires_grad=True)
    assert torch.equal(chosen_targets(pred[:, 0], targets, "nearest"), targets[[0, 1], [1, 0]])
    assert torch.equal(chosen_targets(pred[:, 0], targets, "policy"), targets[:, 0])
    logits, labels = torch.zeros(2, 2), torch.tensor([0, 1])
    parts = compute_loss(logits, pred, labels, targets, box_kind="mse", box_weight=1.0, box_target="nearest")
    want = ((pred[:, 0] - targets[[0, 1], [1, 0]]) ** 2).mean()
    assert float(parts.box) == pytest.approx(float(want.detach()))
    parts.total.backward()
    assert torch.isfinite(pred.grad).all()  # the NaN rows reach no gradient
    policy = compute_loss(logits, pred, labels, targets, box_kind="mse", box_weight=1.0, box_target="policy")
    assert float(policy.box) > float(parts.box)


def test_training_with_several_boxes_per_image(synth, tiny_config, tmp_path):
    """Images listing several boxes of their class train through both stages (cached views, fresh
    augmentation, validation) with the box loss against the nearest, and score as before."""
    from dataclasses import replace as copy

    from clsloc.datasets import GroundTruth
    from clsloc.training.data import prepare_splits
    from clsloc.training.fit import fit

    config = tiny_config([synth], box_target="nearest", cache_views=3, finetune_epochs=1, epochs=2)
    splits = prepare_splits(config.datasets, [], config.val_split, config.seed, config.policy)
    for i, record in enumerate(splits.train + splits.val):
        if i % 3 == 0:  # a second, smaller box of the same class in one image of three
            x0, y0, x1, y1 = record.box
            record.objects = [*record.objects, GroundTruth(record.label, (x0, y0, (x0 + x1) / 2, (y0 + y1) / 2))]
    result = fit(config, splits, tmp_path / "run", progress=False, log_epochs=False)
    assert [h["stage"] for h in result.history] == [1, 1, 2]
    for h in result.history:
        assert math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) and 0 < h["train_mean_iou"] <= 1
    assert 0 <= result.metrics["mean_iou"] <= 1 and len(result.metrics["predictions"]) == len(splits.val)
    policy = fit(copy(config, box_target="policy"), splits, None, progress=False, log_epochs=False)
    assert policy.history[0]["train_loss"] != result.history[0]["train_loss"]  # the choice reaches the loss


@pytest.mark.parametrize("kind", ["mse", "smooth_l1", "giou"])
def test_box_losses_are_zero_at_the_target_and_grow_away_from_it(kind):
    from clsloc.training.engine import box_loss

    target = torch.tensor([[0.2, 0.3, 0.6, 0.9]])
    near = torch.tensor([[0.22, 0.3, 0.6, 0.88]])
    far = torch.tensor([[0.5, 0.1, 0.9, 0.4]])
    assert float(box_loss(target, target, kind)) == pytest.approx(0.0, abs=1e-6)
    assert 0 < float(box_loss(near, target, kind)) < float(box_loss(far, target, kind))


def _voc_with_one_class(src: Path, dst: Path, keep: str) -> Path:
    shutil.copytree(src, dst)
    for xml in (dst / "annotations").glob("*.xml"):
        if f"<name>{keep}</name>" not in xml.read_text():
            xml.unlink()
    return dst


def test_one_class_only_is_a_clear_error_before_training(tiny, synth, cli, tmp_path, capsys):
    data = _voc_with_one_class(synth, tmp_path / "one", "circle")
    code = cli("train", data, "--out", tmp_path / "run", *tiny)
    err = capsys.readouterr().err
    assert code == 2
    assert "only one class" in err and "circle" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_train_and_val_classes_that_differ_are_a_clear_error(tiny, synth, synth3, cli, tmp_path, capsys):
    code = cli("train", synth, "--val", synth3, "--out", tmp_path / "run", *tiny)
    err = capsys.readouterr().err
    assert code == 2
    assert "class sets differ" in err and "triangle" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_images_the_dataset_check_rejects_are_skipped_with_a_count(tiny, synth, cli, tmp_path, capsys, caplog):
    data = tmp_path / "broken"
    shutil.copytree(synth, data)
    images = sorted((data / "images").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:200])  # truncated image
    images[1].write_bytes(b"not an image at all")
    run = tmp_path / "run"
    assert cli("train", data, "--out", run, "--epochs", "1", "--finetune-epochs", "0", *tiny) == 0
    captured = capsys.readouterr()
    assert "skipped 2 image(s)" in captured.err + caplog.text
    assert "2 image(s) skipped by the dataset check" in captured.out
    config = json.loads((run / "config.json").read_text())
    assert config["skipped"] == 2 and config["n_train"] + config["n_val"] == 38


def test_finetune_depth_trains_only_the_top_of_the_backbone(tiny, synth, cli, tmp_path):
    from clsloc.training.checkpoint import load_checkpoint, model_from_config, read_config

    common = [synth, *tiny, "--epochs", "2", "--patience", "0"]
    assert cli("train", *common, "--finetune-epochs", "0", "--out", tmp_path / "frozen") == 0
    assert cli("train", *common, "--finetune-epochs", "1", "--finetune-depth", "0.5", "--out", tmp_path / "half") == 0
    assert (
        cli(
            "train",
            *common,
            "--finetune-epochs",
            "1",
            "--finetune-depth",
            "0.5",
            "--finetune-norm",
            "--out",
            tmp_path / "half_norm",
        )
        == 0
    )
    before = load_checkpoint(tmp_path / "frozen" / "last.pt")["model"]
    model = model_from_config(read_config(tmp_path / "half"))
    # parameter tensors of the backbone, in order (buffers such as BatchNorm statistics left out)
    names = ["backbone." + n for n, _ in model.backbone.named_parameters()]
    norm = {
        "backbone." + n
        for m_name, m in model.backbone.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for n in (f"{m_name}.weight", f"{m_name}.bias")
    }
    half = len(names) - round(0.5 * len(names))
    top_dense = [n for n in names[half:] if n not in norm]
    top_norm = [n for n in names[half:] if n in norm]
    assert top_dense and top_norm
    for run, trained in (("half", top_dense), ("half_norm", names[half:])):
        after = load_checkpoint(tmp_path / run / "last.pt")["model"]
        changed = {n for n in names if not torch.equal(before[n], after[n])}
        assert changed == set(trained), f"{run}: fine-tuned {sorted(changed ^ set(trained))[:4]}..."


def test_finetuning_keeps_depthwise_filters_and_norm_affine_unless_asked():
    """Lite0's top: by default its dense convolutions train and its depthwise filters and BatchNorm
    scale/shift stay as pretrained (measured cheaper at no loss); the flags train them too."""
    from clsloc.models import build_model
    from clsloc.models.backbones import trunk_stages
    from clsloc.training.engine import set_backbone_trainable

    model = build_model("efficientnet_lite0", 2, pretrained=False, input_size=64)
    depthwise = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    dense = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    set_backbone_trainable(model, True, 0.5)
    k = model.frozen_stages()
    assert any(m.weight.requires_grad for m in depthwise) and any(m.weight.requires_grad for m in norms)
    set_backbone_trainable(model, True, 0.5, depthwise=False, norm=False)
    assert not any(p.requires_grad for m in depthwise + norms for p in m.parameters())
    assert any(m.weight.requires_grad for m in dense)
    assert model.frozen_stages() >= k  # what stays frozen can only grow
    assert not any(
        p.requires_grad for s in trunk_stages(model.backbone)[: model.frozen_stages()] for p in s.parameters()
    )
    set_backbone_trainable(model, True, 0.5, depthwise=True, norm=False)
    assert any(m.weight.requires_grad for m in depthwise) and not any(m.weight.requires_grad for m in norms)


def test_frozen_stages_are_the_untrained_bottom():
    from clsloc.models import build_model
    from clsloc.models.backbones import trunk_stages
    from clsloc.training.engine import set_backbone_trainable

    model = build_model("efficientnet_lite0", 2, pretrained=False, input_size=64)
    stages = trunk_stages(model.backbone)
    set_backbone_trainable(model, True, 0.5)
    k = model.frozen_stages()
    assert 0 < k < len(stages)
    assert not any(p.requires_grad for s in stages[:k] for p in s.parameters())
    assert any(p.requires_grad for p in stages[k].parameters())
    set_backbone_trainable(model, True, 1.0)
    assert model.frozen_stages() == 0


def test_cached_finetuning_is_the_whole_network_computation(synth, tiny_config):
    """Stage 2 on the frozen bottom's cached output runs what the whole network would: without
    augmentation (one view) a cached and a fresh run agree epoch by epoch."""
    from clsloc.training.data import prepare_splits
    from clsloc.training.fit import fit

    runs = []
    for cached in (True, False):
        config = tiny_config([synth], epochs=2, finetune_epochs=2, augment=False, finetune_cache=cached)
        splits = prepare_splits(config.datasets, [], config.val_split, config.seed, config.policy)
        runs.append(fit(config, splits, None, progress=False, log_epochs=False))
    cached, fresh = runs
    assert [h["stage"] for h in cached.history] == [1, 1, 2, 2]
    for a, b in zip(cached.history, fresh.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_mean_iou"] == pytest.approx(b["val_mean_iou"], abs=1e-4)
    assert cached.metrics["mean_iou"] == pytest.approx(fresh.metrics["mean_iou"], abs=1e-4)


def test_finetune_validation_on_the_cached_bottom_equals_the_whole_network(synth, tiny_config):
    """Each stage-2 epoch validates with the frozen bottom's output computed once; the last epoch's
    numbers must be those of the final report, which runs the whole network on the images."""
    from clsloc.training.data import prepare_splits
    from clsloc.training.fit import fit

    # Per-epoch validation runs the plain model: no mirror pass, no refining pass in the final report either.
    config = tiny_config([synth], epochs=1, finetune_epochs=2, tta=False, refine_context=0.0, finetune_depth=0.5)
    splits = prepare_splits(config.datasets, [], config.val_split, config.seed, config.policy)
    result = fit(config, splits, None, progress=False, log_epochs=False, select_best=False)
    last = result.history[-1]
    assert last["stage"] == 2
    for key in ("accuracy", "mean_iou", "loc_accuracy", "loss"):
        assert last[f"val_{key}"] == pytest.approx(result.metrics[key], abs=1e-6), key
    assert result.history[-2]["val_loss"] != last["val_loss"]  # the top did train between the two epochs


def test_cached_views_draw_one_view_per_image_each_epoch():
    from clsloc.training.features import CachedViews

    views = [
        torch.utils.data.TensorDataset(torch.full((50, 1), float(v)), torch.zeros(50), torch.zeros(50, 4))
        for v in range(3)
    ]
    data = CachedViews(views)
    seen = []
    for epoch in range(2):
        data.draw(torch.Generator().manual_seed(epoch))
        seen.append([int(data[i][0]) for i in range(len(data))])
        again = CachedViews(views)
        again.draw(torch.Generator().manual_seed(epoch))
        assert [int(again[i][0]) for i in range(len(again))] == seen[-1]  # the epoch's seed decides (resume)
    assert seen[0] != seen[1] and all(set(s) == {0, 1, 2} for s in seen)


def test_finetune_depth_must_be_a_fraction(tiny, synth, cli, tmp_path, capsys):
    assert cli("train", synth, *tiny, "--finetune-depth", "0", "--out", tmp_path / "run") == 2
    assert "finetune_depth=0.0 must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--box-bins", "1"], "box_bins=1 must be 0 (sigmoid head) or >= 2"),
        (["--zoom-out-p", "1.5"], "zoom_out_p=1.5 must be in [0, 1]"),
        (["--zoom-out-max", "0.5"], "zoom_out_max=0.5 >= 1"),
    ],
)
def test_bad_head_and_augmentation_options_are_named(tiny, synth, cli, tmp_path, capsys, flags, message):
    assert cli("train", synth, *tiny, *flags, "--out", tmp_path / "run") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_update_weight_ratio_warning_only_when_it_means_something():
    from clsloc.training.fit import ratio_warning

    assert "too low" in ratio_warning("backbone", 3e-5, epoch=3, lr_fraction=1.0)
    assert "too high" in ratio_warning("heads", 5e-2, epoch=3, lr_fraction=0.9)
    assert ratio_warning("heads", 1e-3, epoch=3, lr_fraction=1.0) is None  # the lecture's ~1e-3
    assert ratio_warning("heads", 5e-2, epoch=1, lr_fraction=1.0) is None  # fresh heads move fast
    assert ratio_warning("heads", 3e-5, epoch=30, lr_fraction=0.1) is None  # the schedule's tail, on purpose


def test_a_config_written_before_the_finetune_options_resumes_as_it_began():
    """``--resume`` rebuilds the config from RUN_DIR/config.json: a run from before
    --finetune-depthwise/--finetune-norm existed trained both, and must go on doing so."""
    from clsloc.training.config import TrainConfig

    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("finetune_depthwise", "finetune_norm")}
    assert TrainConfig.from_dict(old).finetune_depthwise and TrainConfig.from_dict(old).finetune_norm
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()

"""``clsloc export``: a real (tiny) training run -> self-contained ONNX + manifest, parity checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clsloc.manifest import Manifest

pytestmark = pytest.mark.slow


def clsloc(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clsloc.cli", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


# One frozen-backbone epoch at 64 px: a real run in seconds.
QUICK = ["--epochs", "1", "--finetune-epochs", "0", "--image-size", "64", "--threads", "1", "--quiet"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real training run: 30 synthetic images, 64 px input, one frozen-backbone epoch."""
    root = tmp_path_factory.mktemp("tiny-run")
    synth = clsloc("data", "synth", str(root / "synth"), "--images", "30", "--classes", "3", "--seed", "1")
    assert synth.returncode == 0, synth.stderr
    train = clsloc(
        "train",
        str(root / "synth"),
        "--out",
        str(root / "run"),
        *QUICK,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="session")
def exported(tiny_run, tmp_path_factory):
    from clsloc.training.export import export_run

    out = tmp_path_factory.mktemp("exported") / "model"
    manifest = export_run(tiny_run, out, log=lambda *_: None)
    return out, manifest


def test_export_writes_one_self_contained_onnx_and_a_manifest(exported, tiny_run):
    import onnx

    out, manifest = exported
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "samples"]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    assert [i.name for i in graph.graph.input] == ["image"]
    assert [o.name for o in graph.graph.output] == ["logits", "boxes"]
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis

    config = json.loads((tiny_run / "config.json").read_text())
    saved = Manifest.load(out)
    assert saved.classes == config["classes"] == manifest.classes
    assert saved.preprocessing.size == (64, 64)
    assert saved.data_fingerprint == config["data_fingerprint"]
    assert saved.parity["passed"] is True
    assert saved.parity["max_abs_logit_diff"] <= 1e-4 and saved.parity["min_box_iou"] >= 0.999
    assert saved.parity["images"] == saved.metrics["onnx"]["n"] > 0
    for key in ("accuracy", "mean_iou", "loc_accuracy", "per_class"):
        assert key in saved.metrics["onnx"] and key in saved.metrics["pytorch"]


def test_export_ships_validation_images_of_each_class_as_samples(exported, tiny_run):
    from PIL import Image

    from clsloc.training.checkpoint import load_split

    out, manifest = exported
    _, val = load_split(tiny_run)
    per_class = {label: [r for r in val if r.label == label] for label in manifest.classes}
    assert [s["label"] for s in manifest.samples] == [
        r.label for r in val if r in per_class[r.label][:2]
    ]  # the first two of each class, in validation order
    assert sorted(p.name for p in (out / "samples").iterdir()) == sorted(Path(s["file"]).name for s in manifest.samples)
    for sample, record in zip(manifest.samples, [r for r in val if r in per_class[r.label][:2]]):
        with Image.open(out / sample["file"]) as image, Image.open(record.image) as original:
            assert image.format == "JPEG" and image.size == original.size  # small synthetic images stay as they are


def test_tf_same_padding_is_exported_as_constant_conv_pads(exported, tiny_run, tmp_path):
    """Lite's stride-2 convs pad from the input shape at run time; exported that way, onnxruntime
    could neither fold the Pads nor lay the graph out for its fast kernels. The exporter fixes H and W,
    so each TF-"same" pad is a constant inside its Conv: no Pad, Shape or Ceil in the file, nor after
    onnxruntime's own optimizations."""
    import collections

    import onnx
    import onnxruntime as ort
    from onnx import helper

    out, _ = exported
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["Pad"] == 0 and ops["Shape"] == 0 and ops["Ceil"] == 0
    convs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in graph.node if n.op_type == "Conv"]
    strided = [c for c in convs if c["strides"] == [2, 2]]
    passes = 2 if json.loads((tiny_run / "config.json").read_text())["refine_context"] else 1  # the refining pass
    assert len(strided) == 5 * passes  # Lite0's five strided convs in each pass of the trunk...
    for conv in strided:  # ...each with TF's asymmetric "same" pads (one more after than before) inside the Conv
        top, left, bottom, right = conv["pads"]
        assert (bottom - top, right - left) == (1, 1), conv
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert optimized["Pad"] == 0 and optimized["Shape"] == 0 and optimized["Conv"] == ops["Conv"]


@pytest.mark.parametrize("size", [(64, 64), (65, 71)])
def test_exported_tf_same_convolutions_compute_what_timm_computes(size, tmp_path):
    """Odd sizes pad differently at each side: the constant pads must be timm's, not a symmetric guess."""
    import onnxruntime as ort
    import torch
    from timm.layers import Conv2dSame
    from torch import nn

    from clsloc.training.export import export_onnx

    class TwoOutputs(nn.Module):  # the exporter's graph contract: (logits, boxes)
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU(), Conv2dSame(8, 8, 5, stride=2, groups=8))

        def forward(self, x):
            y = self.net(x)
            return y.flatten(1), y.mean((2, 3))

    torch.manual_seed(0)
    net = TwoOutputs().eval()
    export_onnx(net, tmp_path / "same.onnx", size)
    x = torch.randn(3, 3, *size)
    session = ort.InferenceSession(str(tmp_path / "same.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = net(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-5)


def test_exported_model_serves_any_batch_size_and_agrees_with_pytorch(exported, tiny_run):
    import torch

    from clsloc.models import ExportWrapper
    from clsloc.serving.engine import Engine
    from clsloc.training.checkpoint import load_run, load_split

    out, _ = exported
    engine = Engine(out, threads=1)
    _, val = load_split(tiny_run)
    images = [engine.decode(r.image) for r in val[:5]]
    batch = engine.preprocessing.batch(images)
    model, _ = load_run(tiny_run)
    with torch.inference_mode():
        logits, boxes = ExportWrapper(model)(torch.from_numpy(batch))
    probs, onnx_boxes = engine.run(batch)
    np.testing.assert_allclose(onnx_boxes, boxes.numpy(), atol=1e-4)
    assert list(probs.argmax(1)) == list(logits.argmax(1).numpy())
    one = engine.predict_arrays(images[:1])[0]
    assert one.label == engine.classes[int(logits[0].argmax())]
    assert (one.width, one.height) == (images[0].shape[1], images[0].shape[0])


def test_parity_failure_fails_the_export_with_the_numbers(tiny_run, tmp_path, monkeypatch):
    from clsloc.training import export

    monkeypatch.setattr(export, "MAX_LOGIT_DIFF", -1.0)  # no real export can meet this
    with pytest.raises(export.ExportError, match=r"parity failed .*max \|logit diff\| \d.*min box IoU \d"):
        export.export_run(tiny_run, tmp_path / "m", log=lambda *_: None)
    assert not (tmp_path / "m" / "manifest.json").exists() and not (tmp_path / "m" / "model.onnx").exists()


def test_int8_is_refused_with_both_numbers_and_the_command_passes_its_options(tiny_run, tmp_path, monkeypatch, capsys):
    from clsloc.cli import main
    from clsloc.training import export

    monkeypatch.setattr(export, "INT8_TOLERANCE", -1.0)  # any int8 model "loses" against this
    code = main(
        ["export", str(tiny_run), "--out", str(tmp_path / "m"), "--int8", "--calibration-images", "4",
         "--int8-views", "2", "--int8-calibration", "minmax", "--int8-reduce-range", "off",
         "--int8-keep-fp32", "model.bn1", "--int8-debug"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 1
    assert "int8 refused" in err and "fp32: n=" in err and "int8: n=" in err
    kept = Manifest.load(tmp_path / "m")
    assert kept.precision == "fp32" and "onnx_int8" in kept.metrics
    assert kept.extra["int8"]["gate"]["accepted"] is False
    assert not (tmp_path / "m" / "model.int8.onnx").exists()
    settings = kept.extra["int8"]["settings"]
    assert settings["calibration"] == "minmax" and settings["reduce_range"] is False
    assert settings["calibration_inputs"] == 8 and settings["keep_fp32"] == ["model.bn1"]
    assert "own dB" in out and "accumulated" in out  # --int8-debug: the per-layer table in the log

    assert main(["export", str(tiny_run), "--out", str(tmp_path / "x"), "--int8", "--int8-views", "0"]) == 2
    assert "at least 1 image and 1 view" in capsys.readouterr().err


def test_int8_is_kept_within_tolerance_with_its_agreement_and_settings(tiny_run, tmp_path, monkeypatch):
    import onnx

    from clsloc.serving.engine import Engine
    from clsloc.training import export
    from clsloc.training.int8 import Int8Options

    monkeypatch.setattr(export, "INT8_TOLERANCE", 1.0)
    lines = []
    options = Int8Options(images=8, views=2, reduce_range=True)
    manifest = export.export_run(tiny_run, tmp_path / "m", int8=True, int8_options=options, log=lines.append)
    assert manifest.precision == "int8"
    graph = onnx.load(str(tmp_path / "m" / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert any("backbone" in name for name in dequantized)
    assert not any("cls_head" in name or "box_head" in name for name in dequantized)  # the heads read fp32 weights
    assert not any("conv_stem" in name or ".blocks.0." in name for name in dequantized)  # stem, first block: fp32
    assert any(".blocks.1." in name for name in dequantized)
    assert not (tmp_path / "m" / "model.int8.onnx").exists()
    assert Engine(tmp_path / "m", threads=1).classes == manifest.classes

    gate, settings = manifest.extra["int8"]["gate"], manifest.extra["int8"]["settings"]
    agreement = gate["agreement"]
    assert agreement["images"] == manifest.metrics["onnx_int8"]["n"] > 0
    assert 0 <= agreement["top1_agreement"] <= 1 and 0 <= agreement["min_box_iou_to_fp32"] <= 1
    fp, q = manifest.metrics["onnx"], manifest.metrics["onnx_int8"]
    assert gate["drops"]["accuracy"] == pytest.approx(fp["accuracy"] - q["accuracy"])
    assert settings["reduce_range"] is True and settings["calibration_inputs"] == 16
    assert settings["calibration"] == "percentile" and settings["quantize"] == ["backbone"]
    log = "\n".join(lines)
    assert "top-1 agreement" in log and "box IoU to fp32" in log and "reduce_range=True (given)" in log


def test_bentoml_option_stores_model_with_manifest_metadata(exported):
    import bentoml

    from clsloc.serving import store
    from clsloc.serving.engine import Engine
    from clsloc.training.export import store_in_bentoml

    out, manifest = exported
    tag = store_in_bentoml(out, "clsloc-export-test")
    assert tag == f"clsloc-export-test:{manifest.version}"
    stored = bentoml.models.get(tag)
    assert stored.info.metadata["classes"] == manifest.classes
    assert stored.info.metadata["parity"]["passed"] is True
    assert store.latest_tag("clsloc-export-test") == tag
    assert Engine(store.store_path(tag), threads=1).classes == manifest.classes
    for sample in manifest.samples:  # the samples travel with the model
        assert (store.store_path(tag) / sample["file"]).read_bytes() == (out / sample["file"]).read_bytes()


def test_export_command_reports_a_missing_run_without_a_traceback(tmp_path):
    result = clsloc("export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "m"))
    assert result.returncode == 2
    assert "no-such-run" in result.stderr and "Traceback" not in result.stderr


def test_binned_head_flip_tta_and_refining_pass_are_part_of_the_exported_graph(tmp_path):
    """A run trained with --box-bins, --tta and --refine-context exports a graph that computes
    exactly that: ONNX agrees with the PyTorch model averaged over the image and its mirror, then
    looking again at a window around its first box."""
    import torch

    from clsloc.models import ExportWrapper
    from clsloc.serving.engine import Engine
    from clsloc.training.checkpoint import load_run, load_split
    from clsloc.training.export import export_run

    assert clsloc("data", "synth", str(tmp_path / "synth"), "--images", "24", "--classes", "2").returncode == 0
    train = clsloc(
        "train",
        str(tmp_path / "synth"),
        "--out",
        str(tmp_path / "run"),
        *QUICK,
        "--box-bins",
        "8",
        "--tta",
        "--refine-context",
        "1.5",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    export_run(tmp_path / "run", tmp_path / "model", log=lambda *_: None)  # raises if parity fails
    model, config = load_run(tmp_path / "run")
    assert model.flip_tta and model.box_head.bins == 8 and config["tta"] and model.refine_context == 1.5
    engine = Engine(tmp_path / "model", threads=1)
    _, val = load_split(tmp_path / "run")
    batch = engine.preprocessing.batch([engine.decode(r.image) for r in val[:4]])
    x = torch.from_numpy(batch)
    with torch.inference_mode():
        _, boxes = ExportWrapper(model)(x)
        model.refine_context = 0.0
        _, one_look = ExportWrapper(model)(x)
        model.flip_tta = False
        _, plain_boxes = ExportWrapper(model)(x)
    _, onnx_boxes = engine.run(batch)
    np.testing.assert_allclose(onnx_boxes, boxes.numpy(), atol=1e-4)
    assert np.abs(onnx_boxes - one_look.numpy()).max() > 1e-3  # the refining pass is in the graph
    assert np.abs(one_look.numpy() - plain_boxes.numpy()).max() > 1e-3  # and so is the mirror pass

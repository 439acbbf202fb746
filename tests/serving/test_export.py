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


def test_tf_same_padding_is_exported_as_constants_that_onnxruntime_folds(exported, tmp_path):
    """Lite's stride-2 convs pad from the input shape at run time; exported that way, onnxruntime
    could not fold the Pads nor lay the graph out for its fast kernels (measured 1.6x slower)."""
    import collections

    import onnx
    import onnxruntime as ort

    out, _ = exported
    ops = collections.Counter(n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node)
    assert ops["Pad"] == 5 and ops["Shape"] == 0 and ops["Ceil"] == 0  # Lite0's five strided convs, constant pads
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert optimized["Pad"] == 0 and optimized["Conv"] == ops["Conv"]  # every Pad folded into its Conv


@pytest.mark.parametrize("size", [(64, 64), (65, 71)])
def test_static_same_padding_computes_what_timm_computes(size):
    import torch
    from timm.layers import Conv2dSame
    from torch import nn

    from clsloc.training.export import static_same_padding

    torch.manual_seed(0)
    net = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.ReLU(), Conv2dSame(8, 8, 5, stride=2, groups=8)).eval()
    fixed = static_same_padding(net, size)
    assert not any(isinstance(m, Conv2dSame) for m in fixed.modules())
    assert any(isinstance(m, Conv2dSame) for m in net.modules())  # the original is left as it was
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), net(x), rtol=0, atol=1e-6)


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


def test_int8_is_refused_with_both_numbers_when_it_loses_accuracy(tiny_run, tmp_path, monkeypatch):
    from clsloc.training import export

    monkeypatch.setattr(export, "INT8_TOLERANCE", -1.0)  # any int8 model "loses" against this
    with pytest.raises(export.ExportError) as refused:
        export.export_run(tiny_run, tmp_path / "m", int8=True, calibration_images=8, log=lambda *_: None)
    message = str(refused.value)
    assert "int8 refused" in message and "fp32: n=" in message and "int8: n=" in message
    kept = Manifest.load(tmp_path / "m")
    assert kept.precision == "fp32" and "onnx_int8" in kept.metrics


def test_int8_is_kept_within_tolerance_and_is_really_quantized(tiny_run, tmp_path, monkeypatch):
    import onnx

    from clsloc.serving.engine import Engine
    from clsloc.training import export

    monkeypatch.setattr(export, "INT8_TOLERANCE", 1.0)
    manifest = export.export_run(tiny_run, tmp_path / "m", int8=True, calibration_images=8, log=lambda *_: None)
    assert manifest.precision == "int8"
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m" / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert not (tmp_path / "m" / "model.int8.onnx").exists()
    assert Engine(tmp_path / "m", threads=1).classes == manifest.classes


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


def test_binned_head_and_flip_tta_are_part_of_the_exported_graph(tmp_path):
    """A run trained with --box-bins and --tta exports a graph that computes exactly that:
    ONNX agrees with the PyTorch model averaged over the image and its mirror."""
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
    )
    assert train.returncode == 0, train.stderr[-3000:]
    export_run(tmp_path / "run", tmp_path / "model", log=lambda *_: None)  # raises if parity fails
    model, config = load_run(tmp_path / "run")
    assert model.flip_tta and model.box_head.bins == 8 and config["tta"]
    engine = Engine(tmp_path / "model", threads=1)
    _, val = load_split(tmp_path / "run")
    batch = engine.preprocessing.batch([engine.decode(r.image) for r in val[:4]])
    x = torch.from_numpy(batch)
    with torch.inference_mode():
        _, boxes = ExportWrapper(model)(x)
        model.flip_tta = False
        _, plain_boxes = ExportWrapper(model)(x)
    _, onnx_boxes = engine.run(batch)
    np.testing.assert_allclose(onnx_boxes, boxes.numpy(), atol=1e-4)
    assert np.abs(onnx_boxes - plain_boxes.numpy()).max() > 1e-3  # the mirror pass is in the graph

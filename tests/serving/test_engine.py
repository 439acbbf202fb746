"""The onnxruntime engine: known answers from the oracle model, and refusals of untrustworthy artifacts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import oracle
import pytest

from clsloc.images import ImageError
from clsloc.serving.engine import CUDA, Engine, EngineError


@pytest.fixture(scope="module")
def engine(oracle_dir):
    return Engine(oracle_dir, threads=1)


def close_box(box: dict, expected_xywh, tol: float) -> bool:
    return all(abs(box[k] - v) <= tol for k, v in zip("xywh", expected_xywh))


@pytest.mark.parametrize(
    "label,box", [("red", (40, 30, 50, 40)), ("green", (5, 60, 100, 50)), ("blue", (100, 10, 55, 100))]
)
def test_label_score_and_pixel_box(engine, label, box):
    prediction = engine.predict(oracle.object_image(label, box))
    assert prediction.label == label
    assert 0.5 < prediction.score <= 1.0
    assert (prediction.width, prediction.height) == (160, 120)
    # the oracle sees a 64x64 input: one input pixel is 2.5 image pixels wide here
    assert close_box(prediction.box, box, tol=2.6), prediction.box


def test_box_is_in_the_displayed_image_when_exif_rotates(engine):
    # stored 160x120 with EXIF orientation 6 (rotate 90 clockwise): displayed 120x160
    prediction = engine.predict(oracle.object_image("blue", (10, 20, 30, 80), exif_orientation=6))
    assert (prediction.width, prediction.height) == (120, 160)
    # (x, y, w, h) rotated: x' = H - (y + h) = 20, y' = x = 10, w' = h, h' = w
    assert close_box(prediction.box, (20, 10, 80, 30), tol=2.6), prediction.box


def test_predict_many_reports_bad_images_and_scores_the_others_in_order(engine):
    good_red = oracle.object_image("red", (10, 10, 40, 40))
    good_green = oracle.object_image("green", (60, 50, 40, 40))
    results = engine.predict_many([good_red, b"not an image", b"", good_green, good_red[:200]], batch_size=2)
    assert [type(r).__name__ for r in results] == ["Prediction", "ImageError", "ImageError", "Prediction", "ImageError"]
    assert results[0].label == "red" and results[3].label == "green"
    assert [results[i].kind for i in (1, 2, 4)] == ["not_an_image", "empty", "truncated"]


def test_image_limits_are_enforced(oracle_dir):
    small = Engine(oracle_dir, threads=1, max_bytes=100, max_pixels=100 * 100)
    with pytest.raises(ImageError) as too_big:
        small.predict(oracle.object_image("red", (1, 1, 5, 5)))
    assert too_big.value.kind == "too_large"
    pixels = Engine(oracle_dir, threads=1, max_pixels=100 * 100)
    with pytest.raises(ImageError) as too_many:
        pixels.predict(oracle.object_image("red", (1, 1, 5, 5)))
    assert too_many.value.kind == "too_many_pixels"


def test_session_runs_without_spinning_threads(engine):
    options = engine.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1
    assert engine.providers[-1] == "CPUExecutionProvider"


def _copy(oracle_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(oracle_dir, target)
    return target


def _edit_manifest(model_dir, **changes):
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "size":
            data["preprocessing"]["size"] = value
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_refuses_a_file_that_is_not_onnx(oracle_dir, tmp_path):
    model_dir = _copy(oracle_dir, tmp_path)
    (model_dir / "model.onnx").write_bytes(b"this is not a protobuf")
    with pytest.raises(EngineError, match="not a loadable ONNX model"):
        Engine(model_dir)


def test_refuses_class_count_that_disagrees_with_logits(oracle_dir, tmp_path):
    model_dir = _copy(oracle_dir, tmp_path)
    _edit_manifest(model_dir, classes=["a", "b"])
    with pytest.raises(EngineError, match="3 columns but the manifest lists 2 classes"):
        Engine(model_dir)


def test_refuses_input_size_that_disagrees_with_preprocessing(tmp_path):
    # a graph with a fixed 64x64 input: the manifest claiming 96x96 must be refused
    import torch

    from clsloc.manifest import Manifest
    from clsloc.preprocess import Preprocessing
    from clsloc.training.export import export_onnx

    class Fixed(torch.nn.Module):
        def forward(self, x):
            flat = x.reshape(x.shape[0], 3 * 64 * 64)
            return flat[:, :3], torch.sigmoid(flat[:, :4])

    model_dir = tmp_path / "fixed"
    export_onnx(Fixed(), model_dir / "model.onnx", (64, 64))
    Manifest("fixed", "1", ["a", "b", "c"], Preprocessing(size=(96, 96)), "none").save(model_dir)
    with pytest.raises(EngineError, match="input height is 64 in the graph but 96 in the manifest"):
        Engine(model_dir)


def test_refuses_output_names_missing_from_graph(oracle_dir, tmp_path):
    model_dir = _copy(oracle_dir, tmp_path)
    _edit_manifest(model_dir, output_names=["scores", "boxes"])
    with pytest.raises(EngineError, match="output 'scores' named in the manifest is not in the graph"):
        Engine(model_dir)


def test_refuses_a_directory_without_manifest(oracle_dir, tmp_path):
    model_dir = _copy(oracle_dir, tmp_path)
    (model_dir / "manifest.json").unlink()
    with pytest.raises(EngineError, match="no manifest"):
        Engine(model_dir)


def test_require_gpu_without_a_gpu_is_fatal(oracle_dir, monkeypatch):
    import onnxruntime as ort

    probe = Engine(oracle_dir, threads=1)
    if CUDA in probe.providers:
        pytest.skip("this machine has a working CUDA provider")
    monkeypatch.setenv("CLSLOC_REQUIRE_GPU", "1")
    with pytest.raises(EngineError, match="CLSLOC_REQUIRE_GPU"):
        Engine(oracle_dir, threads=1)
    assert ort.get_device()  # onnxruntime itself still imports fine


def test_softmax_scores_sum_to_one(engine):
    batch = engine.preprocessing.batch([np.full((50, 50, 3), 255, np.uint8)] * 2)
    probs, boxes = engine.run(batch)
    assert probs.shape == (2, 3) and boxes.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_runs_default_to_small_batches_on_a_cpu_and_large_ones_on_a_gpu():
    from clsloc.serving.engine import CPU_BATCH, CUDA, GPU_BATCH, default_batch_size

    assert default_batch_size(["CPUExecutionProvider"]) == CPU_BATCH < GPU_BATCH
    assert default_batch_size([CUDA, "CPUExecutionProvider"]) == GPU_BATCH

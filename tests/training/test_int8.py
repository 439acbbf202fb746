"""clsloc.training.int8: what int8 quantizes, how it calibrates, and the per-layer report.

Each quantizing test exports a tiny hand-made network (a TF-"same" conv trunk
named ``backbone``, a head named ``cls_head``) through the real exporter, so the
module paths int8 relies on come from ``torch.onnx.export`` itself.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest

from clsloc.datasets.records import Record
from clsloc.training import int8


def _record(label: str, name: str) -> Record:
    return Record(Path(f"/nowhere/{name}.jpg"), 10, 10, [], f"{name}.xml", label, (0, 0, 5, 5))


def test_reduce_range_only_on_x86_without_vnni():
    assert int8.needs_reduce_range({"avx2", "fma"}, "x86_64") is True
    assert int8.needs_reduce_range({"avx2", "avx512f", "avx512_vnni"}, "x86_64") is False
    assert int8.needs_reduce_range({"avx2", "avx_vnni"}, "AMD64") is False
    assert int8.needs_reduce_range(set(), "aarch64") is False  # ARM's int8 kernels do not saturate this way


def test_calibration_images_take_turns_over_the_classes():
    # A training list sorted by file name: every raccoon before the first kangaroo.
    records = [_record("raccoon", f"r{i}") for i in range(10)] + [_record("kangaroo", f"k{i}") for i in range(4)]
    picked = int8.spread_over_classes(records, 6, seed=0)
    assert collections.Counter(r.label for r in picked) == {"raccoon": 3, "kangaroo": 3}
    assert len({r.image for r in picked}) == 6
    assert picked == int8.spread_over_classes(records, 6, seed=0)  # seeded: the same export calibrates the same
    assert picked != int8.spread_over_classes(records, 6, seed=1)
    everything = int8.spread_over_classes(records, 100)
    assert sorted(r.image for r in everything) == sorted(r.image for r in records)  # a class runs out: the rest fill


def test_options_name_the_bad_value():
    with pytest.raises(ValueError, match="'median' is not one of minmax, percentile, entropy"):
        int8.Int8Options(calibration="median")
    with pytest.raises(ValueError, match="at least 1 image and 1 view"):
        int8.Int8Options(views=0)


def test_module_patterns_match_whole_parts_in_a_row():
    assert int8.in_module("model.cls_head.fc", "cls_head")
    assert int8.in_module("model.backbone.model.bn1", "model.bn1")
    assert not int8.in_module("model.backbone.model.blocks.0.0.bn1", "model.bn1")
    assert not int8.in_module("model.box_head_extra", "box_head")


def test_calibration_inputs_are_the_served_image_then_augmented_views(synth):
    from clsloc.datasets import load_dataset
    from clsloc.images import decode_image
    from clsloc.preprocess import Preprocessing

    records = load_dataset([str(synth)]).records
    pre = Preprocessing(size=(48, 48))
    options = int8.Int8Options(images=3, views=4)
    inputs = int8.calibration_inputs(records, pre, options)
    assert inputs.shape == (12, 3, 48, 48) and inputs.dtype == np.float32
    first = int8.spread_over_classes(records, 3)[0]
    np.testing.assert_allclose(inputs[0], pre.batch([decode_image(first.image)])[0], atol=1e-6)
    assert all(np.abs(inputs[k] - inputs[0]).mean() > 1e-3 for k in (1, 2, 3))  # views differ from the image
    np.testing.assert_array_equal(inputs, int8.calibration_inputs(records, pre, options))  # seeded


class _Tiny:
    """A tiny exported network: ``backbone`` (TF-same convs, ReLU6) then ``cls_head`` and a box head."""

    @staticmethod
    def build():
        import torch
        from timm.layers import Conv2dSame
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = nn.Sequential(
                    Conv2dSame(3, 8, 3, stride=2),
                    nn.BatchNorm2d(8),
                    nn.ReLU6(),
                    nn.Conv2d(8, 16, 3, padding=1),
                    nn.ReLU6(),
                )
                self.cls_head = nn.Linear(16, 3)
                self.box_head = nn.Linear(16, 4)

            def forward(self, x):
                f = self.backbone(x).mean((2, 3))
                return self.cls_head(f), torch.sigmoid(self.box_head(f))

        torch.manual_seed(0)
        net = Net().eval()
        with torch.no_grad():
            net.backbone[1].running_var.uniform_(0.5, 2.0)
        return net


@pytest.fixture(scope="module")
def tiny_graphs(tmp_path_factory):
    from clsloc.training.export import export_onnx

    root = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(_Tiny.build(), root / "fp32.onnx", (32, 32))
    inputs = np.random.default_rng(0).uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32)
    return root, fp32, inputs


def _consumers_of_dequantized(path: Path) -> set[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {n.op_type for n in graph.node if set(n.input) & dequantized}


def test_only_the_backbone_is_quantized_and_chosen_modules_stay_fp32(tiny_graphs):
    import onnx

    root, fp32, inputs = tiny_graphs
    settings = int8.quantize(fp32, root / "q.onnx", inputs, int8.Int8Options(reduce_range=False))
    graph = onnx.load(str(root / "q.onnx")).graph
    quantized_weights = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert any("backbone" in w for w in quantized_weights)
    assert not any("head" in w for w in quantized_weights)  # the heads' Gemms read fp32 weights
    assert "Gemm" not in _consumers_of_dequantized(root / "q.onnx")
    assert settings["reduce_range"] is False and settings["fp32_nodes"] > 0

    int8.quantize(fp32, root / "q2.onnx", inputs, int8.Int8Options(keep_fp32=("backbone.3",)))
    graph = onnx.load(str(root / "q2.onnx")).graph
    weights = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert not any("backbone.3" in w for w in weights) and any("backbone.0" in w for w in weights)


def test_layer_report_measures_each_quantized_tensor_against_fp32(tiny_graphs):
    root, fp32, inputs = tiny_graphs
    int8.quantize(fp32, root / "good.onnx", inputs, int8.Int8Options(calibration="minmax"))
    # Calibrated on inputs 50x too large: every range far too wide, so each 8-bit step is far too coarse.
    int8.quantize(fp32, root / "bad.onnx", inputs * 50, int8.Int8Options(calibration="minmax"))
    good = int8.layer_report(fp32, root / "good.onnx", inputs)
    bad = int8.layer_report(fp32, root / "bad.onnx", inputs)
    assert [r.tensor for r in good] == [r.tensor for r in bad] and len(good) >= 3
    assert all(np.isfinite(r.own_db) and np.isfinite(r.accumulated_db) for r in good)
    assert min(r.own_db for r in good) > 25  # 8 bits over a calibrated range: well over 25 dB
    assert all(b.own_db < g.own_db - 10 for g, b in zip(good, bad))
    assert bad[-1].accumulated_db < good[-1].accumulated_db
    assert any(r.module.startswith("backbone") for r in good)
    text = int8.format_layer_table(good, worst=2)
    assert len(text.splitlines()) == 4 and "accumulated" in text.splitlines()[-1]

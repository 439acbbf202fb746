"""int8 static quantization of an exported model, and the numbers behind keeping it.

``clsloc export --int8`` calls ``quantize`` on the parity-checked fp32 graph
(onnxruntime.quantization, QDQ format, uint8 activations, int8 per-channel
weights) and keeps the result only if the export's gate passes (see
``clsloc.training.export``). What this module decides, and why:

- Calibration images are spread over the classes (a training list sorted by
  file name would otherwise calibrate on one class only) and each is seen as
  is plus as augmented views drawn like training's (crop, mirror, zoom-out,
  colour): activation ranges from more varied inputs than the few images.
- Ranges come from a high percentile of each activation's histogram rather
  than its min/max: one outlier pixel no longer stretches a whole tensor's
  8-bit grid.
- Only the backbone is quantized (``quantize``, matched against the module
  path that the exporter records on each node): the classification and box
  heads, and the arithmetic after them (test-time mirror averaging, box
  selection), stay fp32. They are a small share of the work, and they turn
  features into the decision and the box; an 8-bit grid on the final box
  corners alone would move them by up to half a step. ``keep_fp32`` keeps
  chosen backbone modules in fp32 too: by default the stem and the first block.
- ``reduce_range`` (7-bit weights) only where the CPU needs it: x86 without a
  VNNI dot-product instruction, whose u8 x s8 kernels saturate int16 sums.
- ``layer_report`` compares every quantized activation with its fp32 twin
  (the pairing of onnxruntime's ``qdq_loss_debug``, in its dB) to show where
  accuracy goes; docs/int8.md says how to read it.
"""

from __future__ import annotations

import ast
import contextlib
import io
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clsloc.boxes import paired_iou
from clsloc.manifest import INPUT_NAME
from clsloc.preprocess import Preprocessing
from clsloc.training.export import NAME_SCOPES

CALIBRATIONS = ("minmax", "percentile", "entropy")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# The compute-heavy ops and the activations after them. With Clip/Relu among them the quantizer folds
# each activation into the Conv before it and quantizes the Conv's output over the clipped range: a
# ReLU6 network's pre-activation outputs reach far below 0, and an 8-bit grid stretched over that
# range has few steps left for the [0, 6] that the next layer sees. Add (the residual sums) keeps the
# blocks' outputs in int8 from one block to the next. Shape plumbing (Flatten/Reshape around the box
# head) stays out: quantized, onnxruntime fused a QGemm with the wrong K there.
OPS_TO_QUANTIZE = ("Conv", "Gemm", "MatMul", "Clip", "Relu", "Add")
TRUNK = ("backbone",)  # ClsLocNet's feature extractor (clsloc.models.network); what int8 quantizes
# EfficientNet-Lite's stem conv and first block (a 3x3 depthwise at the highest resolution, where BatchNorm
# folded into 32 filters leaves them the most uneven ranges) stay fp32: quantized one stage at a time,
# the first block moved a borderline call the most (docs/int8.md); they are a small share of the work.
# The stem conv's nodes carry its BatchNorm's path where the exporter folded the two, the conv's own where
# two passes share its weights (the refining pass) and the BatchNorm stays a node: both are named.
FIRST_LAYERS = ("model.conv_stem", "model.bn1", "blocks.0")


@dataclass(frozen=True)
class Int8Options:
    """How ``quantize`` calibrates and what it leaves in fp32 (the export's ``--int8-*`` flags)."""

    calibration: str = "percentile"  # minmax | percentile | entropy
    percentile: float = 99.999  # for "percentile": the share of each activation's values the range covers
    images: int = 64  # calibration images, spread over the classes
    views: int = 2  # inputs per calibration image: the image, then augmented views
    reduce_range: bool | None = None  # 7-bit weights; None = decided from this CPU's flags
    symmetric_activations: bool = False
    quantize: tuple[str, ...] = TRUNK  # modules whose nodes are quantized (``in_module`` patterns) ...
    keep_fp32: tuple[str, ...] = FIRST_LAYERS  # ... except these
    ops: tuple[str, ...] = OPS_TO_QUANTIZE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"int8 calibration {self.calibration!r} is not one of {', '.join(CALIBRATIONS)}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"int8 percentile must be in (0, 100], got {self.percentile}")
        if self.images < 1 or self.views < 1:
            raise ValueError(f"int8 calibration needs at least 1 image and 1 view (got {self.images}, {self.views})")


# -- the CPU -------------------------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def needs_reduce_range(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """7-bit weights on x86 without VNNI: there the u8 x s8 kernels add pairs of products in int16,
    which full-range weights can saturate. VNNI (and ARM's dot-product kernels) accumulate in int32."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686"):
        return False
    return not (cpu_flags() if flags is None else flags) & set(VNNI_FLAGS)


# -- calibration inputs ----------------------------------------------------------------------------------


def spread_over_classes(records: Sequence, count: int, seed: int = 0) -> list:
    """Up to ``count`` records taking turns over the classes (``overfit.pick_subset``), each class's
    order shuffled by ``seed`` first."""
    from clsloc.training.overfit import pick_subset

    rng = np.random.default_rng(seed)
    labels = sorted({record.label for record in records})
    groups = [[record for record in records if record.label == label] for label in labels]
    return pick_subset([group[i] for group in groups for i in rng.permutation(len(group))], count)


def calibration_inputs(records: Sequence, preprocessing: Preprocessing, options: Int8Options, log=print) -> np.ndarray:
    """(N, 3, H, W) network inputs: each picked image as served, then ``views - 1`` augmented views
    drawn as training draws them. Seeded: the same run calibrates the same way every time."""
    import torch

    from clsloc.images import ImageError
    from clsloc.training.config import TrainConfig
    from clsloc.training.data import ImageStore, apply, colour_transform, draw, train_transform

    defaults = TrainConfig()
    geometric = train_transform(defaults.crop_p, defaults.crop_scale, defaults.zoom_out_p, defaults.zoom_out_max)
    colour = colour_transform()
    store = ImageStore(preprocessing, threads=1)
    inputs = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        for record in spread_over_classes(records, options.images, options.seed):
            try:
                sample = store[record]
            except ImageError as exc:
                log(f"export: calibration image left out: {exc}")
                continue
            inputs.append(preprocessing.normalize(sample.fixed))
            inputs.extend(apply(draw(sample, geometric, colour), preprocessing)[0] for _ in range(options.views - 1))
    if not inputs:
        raise ValueError("no decodable training image to calibrate int8 on")
    return np.stack(inputs).astype(np.float32)


class InputReader:
    """onnxruntime's CalibrationDataReader over an array of inputs, in batches. ``set_range`` (in
    batches) lets quantize_static calibrate one batch at a time: ranges and histograms are merged
    as it goes instead of every activation of every input being held in memory at once."""

    def __init__(self, inputs: np.ndarray, batch_size: int = 8):
        self.inputs, self.batch_size = inputs, batch_size
        self.position, self.stop = 0, len(self)

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.stop = start_index, min(end_index, len(self))

    def get_next(self) -> dict | None:
        if self.position >= self.stop:
            return None
        start = self.position * self.batch_size
        self.position += 1
        return {INPUT_NAME: self.inputs[start : start + self.batch_size]}

    def rewind(self) -> None:
        self.set_range(0, len(self))

    def __iter__(self):
        self.rewind()
        return iter(self.get_next, None)


# -- the graph's modules ---------------------------------------------------------------------------------


def node_module(node) -> str:
    """The innermost module path the exporter recorded on ``node`` ("" when none)."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            *modules, _op = ast.literal_eval(prop.value)  # the last scope names the op itself
            return next((m for m in reversed(modules) if m), "")
    return ""


def in_module(path: str, pattern: str) -> bool:
    """Whether module ``path`` lies inside ``pattern``: its dotted parts appear in the path's, in a row
    ("cls_head" matches "model.cls_head.fc"; "model.bn1" matches the stem's "model.backbone.model.bn1",
    not a block's "...blocks.0.0.bn1")."""
    parts, want = path.split("."), pattern.split(".")
    return any(parts[i : i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def nodes_in_modules(model, patterns: Sequence[str]) -> list[str]:
    """Names of the nodes recorded inside any module that ``patterns`` name (see ``in_module``); "*": all."""
    if "*" in patterns:
        return [node.name for node in model.graph.node]
    return [
        node.name
        for node in model.graph.node
        if (path := node_module(node)) and any(in_module(path, p) for p in patterns)
    ]


# -- quantizing ------------------------------------------------------------------------------------------


def quantize(fp32_path: Path, int8_path: Path, inputs: np.ndarray, options: Int8Options) -> dict:
    """Write the int8 graph of ``fp32_path`` to ``int8_path``; -> the settings used (for the manifest)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reduce_range = needs_reduce_range() if options.reduce_range is None else options.reduce_range
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[options.calibration]
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        # Nodes are picked by their module paths in the exported graph: onnxruntime's optimizer keeps every
        # node's name but drops all paths once it rewrites the graph (it folds the BatchNorms the exporter
        # left where two passes share the trunk's weights: the refining pass).
        exported = onnx.load(str(fp32_path))
        quantizable = set(nodes_in_modules(exported, options.quantize)) - set(
            nodes_in_modules(exported, options.keep_fp32)
        )
        graph = onnx.load(str(prepared))
        excluded = [node.name for node in graph.graph.node if node.name not in quantizable]
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints a line per batch
            quantize_static(
                str(prepared),
                str(int8_path),
                InputReader(inputs),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=reduce_range,
                calibrate_method=method,
                op_types_to_quantize=list(options.ops),
                nodes_to_exclude=excluded,
                extra_options={
                    "ActivationSymmetric": options.symmetric_activations,
                    "CalibPercentile": options.percentile,
                    "CalibStridedMinMax": 1,  # one batch at a time (any method, despite the name): bounded memory
                },
            )
    settings = asdict(options)
    settings.update(reduce_range=reduce_range, calibration_inputs=int(len(inputs)), fp32_nodes=len(excluded))
    settings.update(quantize=list(options.quantize), keep_fp32=list(options.keep_fp32), ops=list(options.ops))
    return settings


# -- judging -----------------------------------------------------------------------------------------------


def agreement(logits: np.ndarray, boxes: np.ndarray, q_logits: np.ndarray, q_boxes: np.ndarray) -> dict:
    """How closely int8 follows fp32 on the same images: top-1 agreement, IoU of each int8 box to
    the fp32 box (mean and worst). Less noisy than comparing two accuracies on a small validation set."""
    ious = paired_iou(boxes, q_boxes) if len(boxes) else np.ones(0)
    return {
        "images": int(len(logits)),
        "top1_agreement": float(np.mean(logits.argmax(1) == q_logits.argmax(1))) if len(logits) else 1.0,
        "mean_box_iou_to_fp32": float(np.mean(ious)) if len(ious) else 1.0,
        "min_box_iou_to_fp32": float(np.min(ious)) if len(ious) else 1.0,
    }


@dataclass
class LayerError:
    """One quantized activation against its fp32 twin, in dB of signal to quantization noise (higher is better)."""

    tensor: str
    module: str
    op: str  # the op that produces it in the fp32 graph
    own_db: float  # the fp32 tensor through this tensor's own quantize/dequantize: this step's error alone
    accumulated_db: float  # the int8 graph's value against the fp32 graph's: every step up to here


def quantized_activations(int8_model, fp32_tensors: set[str]) -> dict[str, tuple[float, int, int, int, str]]:
    """fp32 tensor -> (scale, zero point, qmin, qmax, the int8 graph's dequantized twin) for each
    activation the int8 graph quantizes (per tensor, as onnxruntime quantizes activations)."""
    from onnx import numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in int8_model.graph.initializer}
    dequantized = {n.input[0]: n.output[0] for n in int8_model.graph.node if n.op_type == "DequantizeLinear"}
    found = {}
    for node in int8_model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in fp32_tensors or node.output[0] not in dequantized:
            continue
        scale, zero = constants[node.input[1]], constants[node.input[2]]
        if scale.size != 1:
            continue
        info = np.iinfo(zero.dtype)
        found[node.input[0]] = (float(scale), int(zero), int(info.min), int(info.max), dequantized[node.output[0]])
    return found


def _with_outputs(model, names: Sequence[str], path: Path) -> Path:
    """``model`` with ``names`` added as graph outputs, saved to ``path``."""
    from onnx import TensorProto, helper, save_model

    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in existing
    )
    save_model(model, str(path))
    return path


def layer_report(fp32_path: Path, int8_path: Path, inputs: np.ndarray, batch_size: int = 8) -> list[LayerError]:
    """Every activation the int8 graph quantizes, compared with the fp32 graph's on ``inputs``, in graph
    order (the pairing onnxruntime.quantization.qdq_loss_debug makes, summed batch by batch: keeping
    every activation of every image would not fit in memory)."""
    import onnx
    import onnxruntime as ort

    fp32, q = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    producers = {out: node for node in fp32.graph.node for out in node.output}
    found = quantized_activations(q, set(producers) | {i.name for i in fp32.graph.input})
    names = list(found)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as written
    with tempfile.TemporaryDirectory() as tmp:
        sessions = [
            ort.InferenceSession(
                str(_with_outputs(model, wanted, Path(tmp) / f"{k}.onnx")), options, ["CPUExecutionProvider"]
            )
            for k, (model, wanted) in enumerate(((fp32, names), (q, [found[n][4] for n in names])))
        ]
    sums = np.zeros((len(names), 3))  # |fp32|^2, |fp32 - own QDQ of fp32|^2, |fp32 - int8|^2
    want = [names, [found[n][4] for n in names]]
    for batch in InputReader(inputs, batch_size):
        fp_values, q_values = (dict(zip(w, s.run(w, batch))) for w, s in zip(want, sessions))
        for i, name in enumerate(names):
            scale, zero, qmin, qmax, twin = found[name]
            x = fp_values[name].astype(np.float64)
            own = (np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale
            sums[i] += [np.sum(x * x), np.sum((x - own) ** 2), np.sum((x - q_values[twin]) ** 2)]
    order = {out: i for i, out in enumerate(producers)}
    rows = [
        LayerError(
            tensor=name,
            module=node_module(producers[name]) if name in producers else "(graph input)",
            op=producers[name].op_type if name in producers else "",
            own_db=_db(signal, own),
            accumulated_db=_db(signal, accumulated),
        )
        for name, (signal, own, accumulated) in zip(names, sums)
    ]
    return sorted(rows, key=lambda r: order.get(r.tensor, -1))


def _db(signal: float, noise: float) -> float:
    """Signal to quantization noise in dB, as qdq_loss_debug computes it (20 log10 of the norms' ratio)."""
    tiny = np.finfo(np.float64).tiny
    return float(10 * np.log10(max(signal, tiny) / max(noise, tiny)))


def format_layer_table(rows: list[LayerError], worst: int = 12) -> str:
    """The ``worst`` layers by their own quantization error, then the whole path's error at the end."""
    lines = [f"{'module':<44} {'op':<8} {'own dB':>7} {'accum dB':>9}"]
    ranked = sorted(rows, key=lambda r: r.own_db)[:worst]
    for r in ranked:
        lines.append(f"{r.module[-44:]:<44} {r.op:<8} {r.own_db:>7.1f} {r.accumulated_db:>9.1f}")
    if rows:
        last = rows[-1]
        lines.append(f"last quantized tensor ({last.module}): accumulated {last.accumulated_db:.1f} dB")
    return "\n".join(lines)

"""``clsloc export RUN_DIR --out MODEL_DIR [--int8] [--bentoml NAME]``.

A training run becomes a served artifact: one self-contained ``model.onnx``
(dynamic batch axis, no external data file) plus ``manifest.json``
(clsloc.manifest). Parity is checked here, not assumed:

1. PyTorch (the run's best checkpoint) and onnxruntime run the same
   preprocessed validation images: max |logit difference| <= 1e-4 and the
   IoU of every box pair >= 0.999, or the export fails with the numbers.
2. The ONNX model is re-evaluated on the validation set with
   ``clsloc.metrics`` (the one metrics definition) and the numbers go into the
   manifest next to PyTorch's.

``--int8``: static quantization (onnxruntime.quantization, QDQ, calibrated on
training images, ``reduce_range=True`` because this CPU has AVX2 but no VNNI:
plain u8s8 kernels saturate there). int8 is kept only when its validation
accuracy and mean IoU are within 1 point of fp32; otherwise the export
refuses with both sets of numbers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import secrets
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from clsloc.boxes import denormalize_boxes, paired_iou
from clsloc.manifest import INPUT_NAME, MANIFEST_FILE, MODEL_FILE, OUTPUT_NAMES, Manifest
from clsloc.preprocess import Preprocessing
from clsloc.samples import write_samples

MAX_LOGIT_DIFF = 1e-4
MIN_BOX_IOU = 0.999
INT8_TOLERANCE = 0.01  # "within 1 point" of fp32 accuracy and mean IoU
OPSET = 18


class ExportError(RuntimeError):
    """The export cannot produce a trustworthy artifact (message carries the numbers)."""


# -- ONNX writing (also used by tests with tiny modules) -------------------------------------


def export_onnx(module, path: str | Path, input_size: tuple[int, int], *, opset: int = OPSET) -> Path:
    """Write ``module`` ((N,3,H,W) -> (logits, boxes)) as one self-contained ONNX file.

    Input ``image`` with a dynamic batch axis; outputs ``logits`` and ``boxes``
    (the graph contract in clsloc.manifest). Weights are embedded, never an
    external-data side file, so the artifact is one file to copy.
    """
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = static_same_padding(module.eval(), input_size)
    example = torch.zeros(2, 3, *input_size)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # select_boxes branches on the head's (fixed) box count: a constant per model, as the tracer assumes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The constant pads of static_same_padding go through a reversed Slice the tracer cannot fold;
        # onnxruntime folds it at load (tests/serving/test_export checks no Pad is left after that).
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module,
            (example,),
            str(raw),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=opset,
            dynamo=False,
        )
        # Re-save from memory: whatever the exporter did, the result is one file with the weights inside.
        model = onnx.load(str(raw), load_external_data=True)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return path


def static_same_padding(module, input_size: tuple[int, int]):
    """A copy of ``module`` whose TF-"same" convolutions pad by constants fixed for ``input_size``.

    timm's ``Conv2dSame`` (every stride-2 convolution of the EfficientNet-Lite
    ports) works its padding out from the input's shape at run time. Traced,
    that is a chain of Shape/Gather/Ceil/Sub ops feeding a Pad that copies the
    activation before each of those convolutions. The served input size is
    fixed by the manifest, so the pads are constants: exported as such,
    onnxruntime folds each Pad into its Conv. Modules without ``Conv2dSame``
    come back unchanged; export parity still compares against the original.
    """
    import copy

    import torch
    from torch import nn

    try:
        from timm.layers import Conv2dSame
        from timm.layers.padding import get_same_padding
    except ImportError:  # no timm: no TF-same convolutions to fix
        return module
    names = [name for name, m in module.named_modules() if isinstance(m, Conv2dSame)]
    if not names:
        return module
    module = copy.deepcopy(module)
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:]))
        )
        for name in names
    ]
    with torch.no_grad():
        module(torch.zeros(1, 3, *input_size))
    for hook in hooks:
        hook.remove()
    for name in names:
        same = module.get_submodule(name)
        (ih, iw), (kh, kw), (sh, sw), (dh, dw) = sizes[name], same.kernel_size, same.stride, same.dilation
        pad_h, pad_w = get_same_padding(ih, kh, sh, dh), get_same_padding(iw, kw, sw, dw)
        conv = nn.Conv2d(
            same.in_channels,
            same.out_channels,
            same.kernel_size,
            same.stride,
            0,
            same.dilation,
            same.groups,
            same.bias is not None,
        )
        conv.load_state_dict(same.state_dict())
        pad = nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        module.set_submodule(name, nn.Sequential(pad, conv))
    return module.eval()


# -- running both sides ------------------------------------------------------------------------


def _decode_all(records, log=print) -> tuple[list, list[np.ndarray]]:
    """Decode validation images; one that no longer decodes is reported and left out, not fatal."""
    from clsloc.images import ImageError, decode_image

    kept, images = [], []
    for record in records:
        try:
            images.append(decode_image(record.image))
            kept.append(record)
        except ImageError as exc:
            log(f"export: validation image left out: {exc}")
    return kept, images


def _torch_outputs(wrapper, batches) -> tuple[np.ndarray, np.ndarray]:
    import torch

    logits, boxes = [], []
    with torch.inference_mode():
        for x in batches:
            lo, bo = wrapper(torch.from_numpy(x))
            logits.append(lo.numpy())
            boxes.append(bo.numpy())
    return np.concatenate(logits), np.concatenate(boxes)


def _onnx_outputs(session, batches) -> tuple[np.ndarray, np.ndarray]:
    logits, boxes = [], []
    for x in batches:
        lo, bo = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        logits.append(lo)
        boxes.append(bo)
    return np.concatenate(logits), np.concatenate(boxes)


def _batches(preprocessing: Preprocessing, images: list[np.ndarray], size: int = 16):
    for i in range(0, len(images), size):
        yield preprocessing.batch(images[i : i + size])


def _session(path: Path):
    import onnxruntime as ort

    from clsloc.serving.engine import session_options

    # Parity is judged against the CPU provider wherever export runs: the reference kernels.
    return ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])


def parity(logits_a, boxes_a, logits_b, boxes_b) -> dict:
    diff = float(np.max(np.abs(logits_a - logits_b))) if len(logits_a) else 0.0
    ious = paired_iou(boxes_a, boxes_b) if len(boxes_a) else np.ones(0)
    min_iou = float(np.min(ious)) if len(ious) else 1.0
    label_agreement = float(np.mean(logits_a.argmax(1) == logits_b.argmax(1))) if len(logits_a) else 1.0
    return {
        "images": int(len(logits_a)),
        "max_abs_logit_diff": diff,
        "min_box_iou": min_iou,
        "label_agreement": label_agreement,
        "thresholds": {"max_abs_logit_diff": MAX_LOGIT_DIFF, "min_box_iou": MIN_BOX_IOU},
        "passed": bool(diff <= MAX_LOGIT_DIFF and min_iou >= MIN_BOX_IOU),
    }


def evaluate_outputs(records, classes: list[str], logits: np.ndarray, boxes_norm: np.ndarray) -> dict:
    """Val records + network outputs -> clsloc.metrics report (boxes scored in pixels)."""
    from clsloc.metrics import evaluate_records

    labels = [classes[int(k)] for k in logits.argmax(1)]
    boxes_px = (
        np.stack([denormalize_boxes(b, r.width, r.height) for b, r in zip(boxes_norm, records)])
        if len(records)
        else np.zeros((0, 4))
    )
    return evaluate_records(records, labels, boxes_px)


def _summary(report: dict) -> dict:
    return {k: report[k] for k in ("n", "accuracy", "balanced_accuracy", "mean_iou", "loc_accuracy") if k in report}


def _fmt(report: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in _summary(report).items())


# -- int8 ----------------------------------------------------------------------------------------


class _CalibrationReader:
    """Feeds preprocessed training images to onnxruntime's static quantizer."""

    def __init__(self, preprocessing: Preprocessing, paths: list[Path]):
        self.preprocessing = preprocessing
        self.paths = list(paths)

    def get_next(self):
        from clsloc.images import ImageError, decode_image

        while self.paths:
            path = self.paths.pop(0)
            try:
                return {INPUT_NAME: self.preprocessing.batch([decode_image(path)])}
            except ImageError:
                continue
        return None

    def rewind(self):  # onnxruntime calls this between calibration passes on newer versions
        pass


def quantize_int8(fp32_path: Path, int8_path: Path, preprocessing: Preprocessing, calibration: list[Path]) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            _CalibrationReader(preprocessing, calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,  # 7-bit weights: no VNNI on this CPU, u8s8 saturates without it
            calibrate_method=CalibrationMethod.MinMax,
            # Only the compute-heavy ops. Quantizing the shape plumbing around the box head
            # (Flatten/Reshape) made onnxruntime fuse a QGemm with the wrong K and fail at run time.
            op_types_to_quantize=["Conv", "Gemm", "MatMul"],
        )
    return int8_path


# -- the command ---------------------------------------------------------------------------------


def _version_now() -> str:
    # Time-ordered, plus a few random characters so two exports in one second never collide in the store.
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    int8: bool = False,
    bentoml_name: str | None = None,
    name: str | None = None,
    calibration_images: int = 64,
    description: str = "",
    samples_per_class: int = 2,
    log=print,
) -> Manifest:
    """Export ``run_dir``'s best checkpoint to ``out``; returns the manifest written. Raises ExportError."""
    from clsloc.models import ExportWrapper
    from clsloc.training.checkpoint import load_run, load_split

    run_dir, out = Path(run_dir), Path(out)
    model, config = load_run(run_dir, "best")
    train_records, val_records = load_split(run_dir)
    classes = list(config["classes"])
    preprocessing = Preprocessing.from_dict(config["preprocessing"])
    wrapper = ExportWrapper(model).eval()

    out.mkdir(parents=True, exist_ok=True)
    fp32_path = out / MODEL_FILE
    log(f"export: writing {fp32_path} (input {preprocessing.size}, {len(classes)} classes)")
    export_onnx(wrapper, fp32_path, preprocessing.size)

    log(f"export: parity on {len(val_records)} validation images")
    val_records, images = _decode_all(val_records, log)
    if not images:
        raise ExportError(f"{run_dir}: no decodable validation images to check parity on")
    torch_logits, torch_boxes = _torch_outputs(wrapper, _batches(preprocessing, images))
    onnx_logits, onnx_boxes = _onnx_outputs(_session(fp32_path), _batches(preprocessing, images))
    check = parity(torch_logits, torch_boxes, onnx_logits, onnx_boxes)
    log(
        f"export: parity max |logit diff| = {check['max_abs_logit_diff']:.2e} (<= {MAX_LOGIT_DIFF:g}), "
        f"min box IoU = {check['min_box_iou']:.6f} (>= {MIN_BOX_IOU})"
    )
    if not check["passed"]:
        fp32_path.unlink(missing_ok=True)
        raise ExportError(
            f"parity failed for {run_dir}: max |logit diff| {check['max_abs_logit_diff']:.3e} "
            f"(limit {MAX_LOGIT_DIFF:g}), min box IoU {check['min_box_iou']:.6f} (limit {MIN_BOX_IOU}) "
            f"over {check['images']} validation images"
        )
    metrics = {
        "pytorch": evaluate_outputs(val_records, classes, torch_logits, torch_boxes),
        "onnx": evaluate_outputs(val_records, classes, onnx_logits, onnx_boxes),
    }
    log(f"export: ONNX on validation: {_fmt(metrics['onnx'])}")

    precision, refusal = "fp32", None
    if int8:
        int8_path = out / "model.int8.onnx"
        calibration = [r.image for r in train_records[:calibration_images]]
        log(f"export: int8 static quantization calibrated on {len(calibration)} training images")
        quantize_int8(fp32_path, int8_path, preprocessing, calibration)
        q_logits, q_boxes = _onnx_outputs(_session(int8_path), _batches(preprocessing, images))
        metrics["onnx_int8"] = evaluate_outputs(val_records, classes, q_logits, q_boxes)
        fp, q = metrics["onnx"], metrics["onnx_int8"]
        log(f"export: int8 on validation: {_fmt(q)}")
        if any(fp[k] - q[k] > INT8_TOLERANCE for k in ("accuracy", "mean_iou")):
            int8_path.unlink(missing_ok=True)
            refusal = (
                "int8 refused: it loses more than 1 point of accuracy or mean IoU on validation "
                f"(fp32: {_fmt(fp)}; int8: {_fmt(q)}); the parity-checked fp32 model is written to {out} instead"
            )
        else:
            int8_path.replace(fp32_path)
            precision = "int8"

    manifest = Manifest(
        name=name or bentoml_name or run_dir.name,
        version=_version_now(),
        classes=classes,
        preprocessing=preprocessing,
        backbone=str(config.get("backbone", "")),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        precision=precision,
        data_fingerprint=str(config.get("data_fingerprint", "")),
        head=dict(config.get("head", {})),
        metrics=metrics,
        parity=check,
        extra={"run_dir": str(run_dir.resolve()), "checkpoint": "best.pt", "opset": OPSET},
        description=description,
        samples=write_samples(val_records, out, per_class=samples_per_class),
    )
    manifest.save(out)
    log(f"export: wrote {out / MODEL_FILE} and {out / MANIFEST_FILE} ({precision})")
    if refusal:
        raise ExportError(refusal)
    if bentoml_name:
        tag = store_in_bentoml(out, bentoml_name, manifest)
        log(f"export: stored in the BentoML model store as {tag}")
    return manifest


def _without_nulls(value):
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value if item is not None]
    return value


def store_in_bentoml(model_dir: str | Path, name: str, manifest: Manifest | None = None) -> str:
    """Copy an exported model into the BentoML store as NAME:VERSION (the manifest's version).

    The stored manifest carries the store name, so what the service reports
    ({"model": {"name", "version"}}) is the tag it was pinned by.
    """
    import dataclasses

    import bentoml

    model_dir = Path(model_dir)
    manifest = dataclasses.replace(manifest or Manifest.load(model_dir), name=name)
    # JSON round trip: BentoML metadata accepts plain JSON-like values only, and no None (a metric with no
    # images, e.g. an empty breakdown bin, is left out there; the stored manifest.json keeps it).
    metadata = _without_nulls(json.loads(json.dumps(manifest.to_dict())))
    with bentoml.models.create(
        f"{name}:{manifest.version}",
        module="clsloc",
        labels={"framework": "onnxruntime", "precision": manifest.precision},
        metadata=metadata,
    ) as stored:
        shutil.copy2(model_dir / MODEL_FILE, Path(stored.path) / MODEL_FILE)
        for sample in manifest.samples:
            (Path(stored.path) / sample["file"]).parent.mkdir(exist_ok=True)
            shutil.copy2(model_dir / sample["file"], Path(stored.path) / sample["file"])
        manifest.save(stored.path)
    return str(stored.tag)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (clsloc train --out)")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="where model.onnx + manifest.json go")
    parser.add_argument(
        "--int8", action="store_true", help="static int8 quantization, kept only within 1 point of fp32"
    )
    parser.add_argument(
        "--bentoml", metavar="NAME", help="also store the model in the BentoML model store as NAME:VERSION"
    )
    parser.add_argument("--name", help="model name in the manifest (default: --bentoml NAME or the run directory name)")
    parser.add_argument("--calibration-images", type=int, default=64, help="training images used to calibrate int8")
    parser.add_argument(
        "--description", default="", help="what the model is, in a sentence: shown by clsloc serve and the web page"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=2,
        metavar="N",
        help="validation images per class copied beside the model as examples to try (0: none)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        export_run(
            args.run_dir,
            args.out,
            int8=args.int8,
            bentoml_name=args.bentoml,
            name=args.name,
            calibration_images=args.calibration_images,
            description=args.description,
            samples_per_class=args.samples,
        )
    except ExportError as exc:
        print(f"clsloc export: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"clsloc export: {exc}", file=sys.stderr)
        return 2
    return 0

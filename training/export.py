"""``clsloc export RUN_DIR --out MODEL_DIR [--int8] [--bentoml NAME]``.

A training run becomes a served artifact: one self-contained ``model.onnx``
(dynamic batch axis, no external data file), written by the maintained
``torch.export``-based exporter, plus ``manifest.json`` (clsloc.manifest).
Parity is checked here, not assumed:

1. PyTorch (the run's best checkpoint) and onnxruntime run the same
   preprocessed validation images: max |logit difference| <= 1e-4 and the
   IoU of every box pair >= 0.999, or the export fails with the numbers.
2. The ONNX model is re-evaluated on the validation set with
   ``clsloc.metrics`` (the one metrics definition) and the numbers go into the
   manifest next to PyTorch's.

``--int8``: static quantization (``clsloc.training.int8``: calibration,
which layers stay fp32, reduce_range from the CPU). int8 is kept only when
its validation accuracy and mean IoU are within 1 point of fp32; otherwise
the export refuses with both sets of numbers. Either way the manifest and
the log carry int8's agreement with fp32 on the same images (top-1
agreement, box IoU to the fp32 box). docs/int8.md says more.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import secrets
import shutil
import sys
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
NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # the module path the exporter records on each node


class ExportError(RuntimeError):
    """The export cannot produce a trustworthy artifact (message carries the numbers)."""


# -- ONNX writing (also used by tests with tiny modules) -------------------------------------


def export_onnx(module, path: str | Path, input_size: tuple[int, int], *, opset: int = OPSET) -> Path:
    """Write ``module`` ((N,3,H,W) -> (logits, boxes)) as one self-contained ONNX file.

    Input ``image`` with a dynamic batch axis; outputs ``logits`` and ``boxes``
    (the graph contract in clsloc.manifest). Weights are embedded, never an
    external-data side file, so the artifact is one file to copy.

    The maintained exporter (``torch.export`` + onnxscript) traces with the
    served input size fixed and only the batch axis symbolic, so shape
    arithmetic on H and W is done at export time: timm's TF-"same"
    convolutions (``Conv2dSame``, which pad from the input's shape at run
    time) come out as constant pads, and onnxscript's optimizer folds each
    one into its Conv's ``pads``. No Pad, Shape or Ceil op is left for the
    runtime (tests/serving/test_export.py checks it).
    """
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, *input_size)
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # The exporter reports each of its steps on stdout; an export's own log says what matters.
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            module.eval(),
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    model = program.model_proto
    for node in model.graph.node:
        # Keep each node's module path (int8 picks the layers it leaves fp32 by it); drop the Python stack
        # traces and FX dumps the exporter also records: they name this machine's files and weigh the artifact.
        keep = [p for p in node.metadata_props if p.key == NAME_SCOPES]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return path


# -- running both sides ------------------------------------------------------------------------


def decode_all(records, log=print) -> tuple[list, list[np.ndarray]]:
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


def torch_outputs(wrapper, inputs) -> tuple[np.ndarray, np.ndarray]:
    import torch

    logits, boxes = [], []
    with torch.inference_mode():
        for x in inputs:
            lo, bo = wrapper(torch.from_numpy(x))
            logits.append(lo.numpy())
            boxes.append(bo.numpy())
    return np.concatenate(logits), np.concatenate(boxes)


def onnx_outputs(session, inputs) -> tuple[np.ndarray, np.ndarray]:
    logits, boxes = [], []
    for x in inputs:
        lo, bo = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        logits.append(lo)
        boxes.append(bo)
    return np.concatenate(logits), np.concatenate(boxes)


def batches(preprocessing: Preprocessing, images: list[np.ndarray], size: int = 16):
    for i in range(0, len(images), size):
        yield preprocessing.batch(images[i : i + size])


def cpu_session(path: Path):
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


def int8_gate(fp32: dict, int8: dict, agreement: dict) -> dict:
    """int8 is kept when validation accuracy and mean IoU are each within ``INT8_TOLERANCE`` of fp32's.
    Agreement with fp32 (same images) is reported beside it: less noisy on a small validation set."""
    drops = {k: float(fp32[k] - int8[k]) for k in ("accuracy", "mean_iou")}
    return {
        "tolerance": INT8_TOLERANCE,
        "drops": drops,
        "accepted": all(d <= INT8_TOLERANCE for d in drops.values()),
        "agreement": agreement,
    }


def _int8_step(fp32_path: Path, out: Path, train_records, val_records, images, fp32_outputs, ctx: dict, log) -> dict:
    """Quantize, evaluate and judge: -> {"metrics", "gate", "settings", "refusal"}. Accepted, the int8
    graph replaces ``fp32_path``; refused, it is deleted and "refusal" says why with both sets of numbers."""
    from clsloc.training import int8

    options, preprocessing, classes = ctx["options"], ctx["preprocessing"], ctx["classes"]
    int8_path = out / "model.int8.onnx"
    inputs = int8.calibration_inputs(train_records, preprocessing, options, log)
    log(
        f"export: int8 static quantization, {options.calibration} calibration on {len(inputs)} inputs "
        f"({options.images} training images x {options.views} views)"
    )
    settings = int8.quantize(fp32_path, int8_path, inputs, options)
    log(
        f"export: int8 reduce_range={settings['reduce_range']} "
        f"({'given' if options.reduce_range is not None else 'from this CPU'}), "
        f"quantized: {', '.join(options.quantize)}"
        + (f" except {', '.join(options.keep_fp32)}" if options.keep_fp32 else "")
        + f"; {settings['fp32_nodes']} nodes stay fp32"
    )
    q_logits, q_boxes = onnx_outputs(cpu_session(int8_path), batches(preprocessing, images))
    metrics = evaluate_outputs(val_records, classes, q_logits, q_boxes)
    gate = int8_gate(ctx["fp32_metrics"], metrics, int8.agreement(*fp32_outputs, q_logits, q_boxes))
    agree = gate["agreement"]
    log(f"export: int8 on validation: {_fmt(metrics)}")
    log(
        f"export: int8 vs fp32: top-1 agreement {agree['top1_agreement']:.4f}, box IoU to fp32 "
        f"mean {agree['mean_box_iou_to_fp32']:.4f} (min {agree['min_box_iou_to_fp32']:.4f})"
    )
    if ctx.get("debug"):
        log("export: int8 per-layer error on the validation images (dB, higher is better):")
        log(
            int8.format_layer_table(
                int8.layer_report(fp32_path, int8_path, np.concatenate(list(batches(preprocessing, images))))
            )
        )
    refusal = None
    if gate["accepted"]:
        int8_path.replace(fp32_path)
    else:
        int8_path.unlink(missing_ok=True)
        refusal = (
            "int8 refused: it loses more than 1 point of accuracy or mean IoU on validation "
            f"(fp32: {_fmt(ctx['fp32_metrics'])}; int8: {_fmt(metrics)}); "
            f"the parity-checked fp32 model is written to {out} instead"
        )
    return {"metrics": metrics, "gate": gate, "settings": settings, "refusal": refusal}


# -- the command ---------------------------------------------------------------------------------


def _version_now() -> str:
    # Time-ordered, plus a few random characters so two exports in one second never collide in the store.
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _check_parity(wrapper, fp32_path: Path, preprocessing: Preprocessing, images, run_dir: Path, log):
    """PyTorch vs onnxruntime on the validation images: -> (check, torch outputs, onnx outputs)."""
    reference = torch_outputs(wrapper, batches(preprocessing, images))
    fp32_outputs = onnx_outputs(cpu_session(fp32_path), batches(preprocessing, images))
    check = parity(*reference, *fp32_outputs)
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
    return check, reference, fp32_outputs


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    int8: bool = False,
    int8_options=None,
    int8_debug: bool = False,
    bentoml_name: str | None = None,
    name: str | None = None,
    description: str = "",
    samples_per_class: int = 2,
    log=print,
) -> Manifest:
    """Export ``run_dir``'s best checkpoint to ``out``; returns the manifest written. Raises ExportError.

    ``int8_options`` (a ``clsloc.training.int8.Int8Options``; default: its defaults) says how
    ``int8=True`` quantizes; ``int8_debug`` also logs the per-layer error table."""
    from clsloc.models import ExportWrapper
    from clsloc.training.checkpoint import load_run, load_split
    from clsloc.training.int8 import Int8Options

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
    val_records, images = decode_all(val_records, log)
    if not images:
        raise ExportError(f"{run_dir}: no decodable validation images to check parity on")
    check, reference, fp32_outputs = _check_parity(wrapper, fp32_path, preprocessing, images, run_dir, log)
    metrics = {
        "pytorch": evaluate_outputs(val_records, classes, *reference),
        "onnx": evaluate_outputs(val_records, classes, *fp32_outputs),
    }
    log(f"export: ONNX on validation: {_fmt(metrics['onnx'])}")

    precision, refusal = "fp32", None
    extra = {"run_dir": str(run_dir.resolve()), "checkpoint": "best.pt", "opset": OPSET}
    if int8:
        ctx = {
            "options": int8_options or Int8Options(),
            "preprocessing": preprocessing,
            "classes": classes,
            "fp32_metrics": metrics["onnx"],
            "debug": int8_debug,
        }
        step = _int8_step(fp32_path, out, train_records, val_records, images, fp32_outputs, ctx, log)
        metrics["onnx_int8"] = step["metrics"]
        extra["int8"] = {"settings": step["settings"], "gate": step["gate"]}
        precision, refusal = ("int8", None) if step["gate"]["accepted"] else ("fp32", step["refusal"])

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
        extra=extra,
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
    from clsloc.training.int8 import CALIBRATIONS, Int8Options

    d = Int8Options()
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (clsloc train --out)")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="where model.onnx + manifest.json go")
    parser.add_argument(
        "--bentoml", metavar="NAME", help="also store the model in the BentoML model store as NAME:VERSION"
    )
    parser.add_argument("--name", help="model name in the manifest (default: --bentoml NAME or the run directory name)")
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
    q = parser.add_argument_group("int8 (docs/int8.md)")
    q.add_argument(
        "--int8",
        action="store_true",
        help="static int8 quantization, kept only when validation accuracy and mean IoU are within 1 point of fp32",
    )
    q.add_argument(
        "--calibration-images",
        type=int,
        default=d.images,
        help=f"training images that calibrate int8, spread over the classes (default {d.images})",
    )
    q.add_argument(
        "--int8-views",
        type=int,
        default=d.views,
        help=f"inputs per calibration image: the image, then augmented views (default {d.views})",
    )
    q.add_argument(
        "--int8-calibration",
        choices=CALIBRATIONS,
        default=d.calibration,
        help=f"how activation ranges are chosen (default {d.calibration})",
    )
    q.add_argument(
        "--int8-percentile",
        type=float,
        default=d.percentile,
        help=f"share of each activation's values the percentile range covers (default {d.percentile})",
    )
    q.add_argument(
        "--int8-reduce-range",
        choices=["auto", "on", "off"],
        default="auto",
        help="7-bit weights; auto: on for x86 CPUs without VNNI, where 8-bit kernels can saturate (default auto)",
    )
    q.add_argument(
        "--int8-keep-fp32",
        action="append",
        metavar="MODULE",
        help="a backbone module whose layers stay fp32; repeatable, replaces the default "
        f"({' '.join(d.keep_fp32)}: the stem and the first block); 'none' quantizes them all "
        "(the heads and what follows them are always fp32)",
    )
    q.add_argument("--int8-symmetric", action="store_true", help="symmetric activation ranges (zero point fixed)")
    q.add_argument("--int8-debug", action="store_true", help="also log the per-layer quantization error table")


def int8_options_from_args(args: argparse.Namespace):
    from clsloc.training.int8 import Int8Options

    return Int8Options(
        calibration=args.int8_calibration,
        percentile=args.int8_percentile,
        images=args.calibration_images,
        views=args.int8_views,
        reduce_range={"auto": None, "on": True, "off": False}[args.int8_reduce_range],
        symmetric_activations=args.int8_symmetric,
        keep_fp32=Int8Options().keep_fp32
        if args.int8_keep_fp32 is None
        else tuple(m for m in args.int8_keep_fp32 if m != "none"),
    )


def run(args: argparse.Namespace) -> int:
    try:
        export_run(
            args.run_dir,
            args.out,
            int8=args.int8,
            int8_options=int8_options_from_args(args),
            int8_debug=args.int8_debug,
            bentoml_name=args.bentoml,
            name=args.name,
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

"""``clsloc evaluate MODEL DATASET... [--val-of RUN_DIR] [--json] [--report report.html]``.

Scores labelled datasets with an exported model (the same job as ``clsloc
score``) and prints the metrics of ``clsloc.metrics``: accuracy, balanced
accuracy, mean IoU, loc accuracy, GT-known loc accuracy, per class, the
breakdowns and the confusion matrix. ``--val-of RUN_DIR`` evaluates on that
training run's own validation split (its ``split.json``), where the numbers
equal the ONNX metrics export wrote into the model's manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from clsloc.serving.scoring.cli_common import (
    MODEL_HELP,
    add_job_arguments,
    job_options,
    print_inputs_warnings,
    run_reporting_errors,
    warn,
)

COMPARED = ("n", "accuracy", "balanced_accuracy", "mean_iou", "loc_accuracy", "gt_known_loc_accuracy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  clsloc evaluate models/rk ../shared/datasets/raccoon ../shared/datasets/kangaroo --report rk.html\n"
        "  clsloc evaluate models/rk --val-of runs/rk --json\n"
        "  clsloc evaluate clsloc-default data/val --out rows.parquet --engine ray"
    )
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument(
        "datasets", nargs="*", metavar="DATASET", help="labelled dataset: VOC folder, COCO .json, YOLO, CSV"
    )
    parser.add_argument(
        "--val-of", metavar="RUN_DIR", help="also evaluate on the validation split of this training run (split.json)"
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--report", type=Path, metavar="HTML", help="write a self-contained HTML report here")
    parser.add_argument("--worst", type=int, default=12, help="images shown in the report's worst list (default 12)")
    parser.add_argument(
        "--out", type=Path, metavar="PATH", help="keep the rows (.jsonl/.csv/.parquet; default: a temporary file)"
    )
    add_job_arguments(parser)


def collect_inputs(args: argparse.Namespace):
    """The labelled images: the run's validation split first, then each DATASET."""
    from clsloc.runs import load_split
    from clsloc.serving.scoring import inputs as inputs_module

    if not args.datasets and not args.val_of:
        raise inputs_module.InputError("name at least one DATASET, or --val-of RUN_DIR")
    inputs = inputs_module.Inputs()
    if args.val_of:
        _, val = load_split(args.val_of)
        inputs = inputs_module.from_records(val)
        inputs.datasets.append(f"validation split of {args.val_of}")
    for path in args.datasets:
        inputs_module.add_dataset(inputs, path, policy=args.policy, progress=not args.quiet)
    return inputs


def compare_with_manifest(metrics: dict, manifest_metrics: dict) -> str:
    """A line saying whether these numbers equal the ONNX metrics export stored (``--val-of``)."""
    stored = manifest_metrics.get("onnx")
    if not stored:
        return "the model's manifest holds no ONNX validation metrics to compare with"
    differ = [k for k in COMPARED if k in stored and stored[k] != metrics.get(k)]
    if not differ:
        return (
            "equal to the ONNX validation metrics in the model's manifest (written by clsloc export), to the last digit"
        )
    listed = ", ".join(f"{k} {metrics.get(k)} vs {stored[k]}" for k in differ)
    return (
        f"differs from the ONNX validation metrics in the model's manifest (was it exported from this run?): {listed}"
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    from clsloc.serving.scoring.sinks import output_format

    scratch = None if args.out else tempfile.mkdtemp(prefix="clsloc-evaluate-")
    out = args.out or Path(scratch, "rows.jsonl")

    def job() -> int:
        output_format(out)
        return evaluate(args, collect_inputs(args), out)

    try:
        return run_reporting_errors("clsloc evaluate", job, rows=args.out)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def evaluate(args: argparse.Namespace, inputs, out: Path) -> int:
    from clsloc.manifest import Manifest
    from clsloc.metrics import format_table
    from clsloc.serving.scoring.cli_common import print_result
    from clsloc.serving.scoring.job import resolve_model_dir, score, write_metrics
    from clsloc.serving.scoring.report import write_report

    model_dir, pinned = resolve_model_dir(args.model)
    print_inputs_warnings(inputs)
    result = score(model_dir, pinned, inputs, job_options(args, out, desc="evaluating"))
    metrics = result.tally.metrics
    print_result(result, file=sys.stderr if args.json else sys.stdout, name=None if args.out else "evaluated")
    if args.out:
        write_metrics(out, result, inputs)
    if args.report:
        written = write_report(
            args.report,
            model=result.model,
            datasets=inputs.datasets,
            metrics=metrics,
            labelled=result.tally.labelled,
            errors=result.tally.errors,
            error_count=result.tally.error_count,
            worst_n=args.worst,
        )
        print(f"report written to {written}", file=sys.stderr)
    agreement = compare_with_manifest(metrics, Manifest.load(model_dir).metrics) if args.val_of else None
    if args.json:
        print(json.dumps({"model": result.model, "datasets": inputs.datasets, **metrics}, indent=2))
    else:
        print()
        print(format_table(metrics))
    if agreement and agreement.startswith("differs"):
        warn(agreement)
    elif agreement:
        print(agreement, file=sys.stderr)
    return 0

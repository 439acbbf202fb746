"""``clsloc score MODEL INPUT... --out PATH``: score images in batch, one row per image.

INPUT: image files, folders (recursive), globs, text files listing paths,
labelled datasets (see clsloc.serving.scoring.inputs). PATH's extension picks
the format: .jsonl, .csv or .parquet (see clsloc.serving.scoring.rows for the
columns). With ground truth the metrics are printed and written to
PATH.metrics.json. ``--resume`` continues a killed job; ``--engine ray`` runs
the same job on Ray Data.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clsloc.serving.scoring.cli_common import (
    MODEL_HELP,
    add_job_arguments,
    job_options,
    print_inputs_warnings,
    print_result,
    run_reporting_errors,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "rows: path, status (ok or the image's error kind), detail, label, score, x, y, w, h (pixels of the\n"
        "image as displayed), width, height; with ground truth also gt_label, iou, correct.\n"
        "examples:\n"
        "  clsloc score clsloc-default photos/ --out scores.parquet\n"
        "  clsloc score models/rk 'shots/**/*.jpg' list.txt ../shared/datasets/raccoon --out rows.jsonl --resume\n"
        "  RAY_ADDRESS=ray://head:10001 clsloc score models/rk /mnt/shared/photos --out rows.csv --engine ray"
    )
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image, folder (recursive), glob, text file listing paths, or labelled dataset (VOC/COCO/YOLO/CSV)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="PATH", help="output file: .jsonl, .csv or .parquet")
    parser.add_argument(
        "--images-only", action="store_true", help="read folders as images even where they hold annotations"
    )
    add_job_arguments(parser)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return run_reporting_errors("clsloc score", lambda: score_job(args), rows=args.out)


def score_job(args: argparse.Namespace) -> int:
    from clsloc.metrics import format_table
    from clsloc.serving.scoring import inputs as inputs_module
    from clsloc.serving.scoring.job import resolve_model_dir, score, write_metrics
    from clsloc.serving.scoring.sinks import output_format

    output_format(args.out)
    inputs = inputs_module.collect(
        args.inputs, images_only=args.images_only, policy=args.policy, progress=not args.quiet
    )
    model_dir, pinned = resolve_model_dir(args.model)
    print_inputs_warnings(inputs)
    result = score(model_dir, pinned, inputs, job_options(args, args.out, desc="scoring"))
    print_result(result)
    metrics_path = write_metrics(args.out, result, inputs)
    if metrics_path is not None:
        print()
        print(format_table(result.tally.metrics))
        print(f"\nmetrics written to {metrics_path}")
    return 0

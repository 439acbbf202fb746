"""``clsloc data check|synth``: look at a dataset before training on it, or write a synthetic one.

    clsloc data check DATASET... [--json] [--policy largest|first|skip] [--plot PNG]
    clsloc data synth OUT [--images N] [--classes K] [--seed S]

``check`` exits 0 when training can use the data (problems are warnings that
training skips) and 1 when it cannot (no usable image, a single class).
"""

from __future__ import annotations

import argparse
import json
import sys

from clsloc.datasets import POLICIES, load_dataset
from clsloc.datasets.check import format_summary, plot_overview, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    check = sub.add_parser(
        "check",
        help="what is in one or more datasets, and what is wrong with them",
        description="Read datasets (VOC / COCO / YOLO / CSV, detected from the path), merged, and report "
        "images, classes, objects, box statistics and every problem with its file. "
        "Exit status 0 when the data is usable for training, 1 when it is not.",
    )
    check.add_argument("datasets", nargs="+", metavar="DATASET", help="dataset folder or annotation file")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    check.add_argument(
        "--plot", metavar="PNG", help="also write a picture: sample images with their boxes, box sizes per class"
    )
    check.add_argument(
        "--policy",
        choices=POLICIES,
        default="largest",
        help="training target of multi-object images: largest box (default), first box, or skip the image",
    )

    synth = sub.add_parser(
        "synth",
        help="write a deterministic synthetic Pascal VOC dataset",
        description="Write OUT/images/*.jpg and OUT/annotations/*.xml: one object per image, K kinds "
        "(shape + colour + texture) at varied sizes, positions and aspect ratios on cluttered backgrounds.",
    )
    synth.add_argument("out", metavar="OUT", help="output folder (created)")
    synth.add_argument("--images", type=int, default=200, help="number of images (default 200)")
    synth.add_argument("--classes", type=int, default=3, help="number of kinds, 1-10 (default 3)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run_check(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.datasets, policy=args.policy, check_images=True, errors="report", progress=True)
    summary = summarize(dataset)
    if args.plot and dataset.records:
        plot_overview(dataset, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0 if summary["usable"] else 1


def run_synth(args: argparse.Namespace) -> int:
    from clsloc.synth import class_names, write_synthetic_voc

    try:
        out = write_synthetic_voc(args.out, images=args.images, classes=args.classes, seed=args.seed, progress=True)
    except ValueError as exc:
        print(f"clsloc data synth: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"clsloc data synth: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.images} images of {args.classes} classes ({', '.join(class_names(args.classes))}) to {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_check(args) if args.action == "check" else run_synth(args)

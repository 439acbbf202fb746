"""``clsloc train DATASET... [--val DATASET...] --out RUN_DIR``: the two-stage recipe as a command.

    clsloc train ../shared/datasets/raccoon ../shared/datasets/kangaroo --out runs/rk
    clsloc train SYNTH --out runs/synth --epochs 15 --finetune-epochs 0     # fast, frozen backbone only
    clsloc train ... --sanity          # initial loss vs ln(C) (+ box term), regularization raises it
    clsloc train ... --overfit 20      # can the model memorize 20 examples?
    clsloc train --resume runs/rk      # continue a killed run where it stopped
    torchrun --nproc-per-node 2 -m clsloc.cli train ...   # DistributedDataParallel, same flags

The run directory receives config.json, split.json, metrics.jsonl (one line
per epoch), metrics.json (final validation report), best.pt, last.pt and PNG
curves. See ``clsloc.training.fit`` for the recipe itself.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from clsloc.training.config import HelpFormatter, TrainConfig, add_train_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    add_train_arguments(parser)
    parser.add_argument(
        "--out", metavar="RUN_DIR", help="run directory to write (required unless --resume/--sanity/--overfit)"
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last finished epoch")
    parser.add_argument("--sanity", action="store_true", help="check the initial loss (babysitting step 1) and exit")
    parser.add_argument(
        "--overfit", type=int, metavar="N", default=0, help="try to memorize N training examples and exit"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from clsloc.datasets import DatasetError
    from clsloc.images import ImageError
    from clsloc.training import distributed
    from clsloc.training.cpu import tune_cpu_allocator
    from clsloc.training.data import DataError

    setup_logging()
    tune_cpu_allocator()
    distributed.init()
    try:
        return _run(args)
    except (DataError, DatasetError, ImageError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()


def _run(args: argparse.Namespace) -> int:
    from clsloc.training.checkpoint import load_split, read_config
    from clsloc.training.data import Splits, prepare_splits
    from clsloc.training.fit import fit

    if args.resume:
        saved = read_config(args.resume)
        config = TrainConfig.from_dict(saved)
        train, val = load_split(args.resume)
        splits = Splits(train, val, list(saved["classes"]), int(saved.get("skipped", 0)))
        result = fit(config, splits, args.resume, resume=True, progress=not args.quiet)
        return _summary(result)

    if not args.datasets and not args.config:
        raise ValueError("give at least one DATASET (or --config RECIPE.yaml, or --resume RUN_DIR)")
    config = config_from_args(args)
    splits = prepare_splits(config.datasets, config.val, config.val_split, config.seed, config.policy)
    print(
        f"data: {len(splits.train)} training, {len(splits.val)} validation images, classes {splits.classes}"
        + (f"; {splits.skipped} image(s) skipped by the dataset check" if splits.skipped else ""),
        flush=True,
    )
    if args.sanity:
        from clsloc.training.sanity import sanity_check

        return 0 if sanity_check(config, splits).passed else 1
    if args.overfit:
        from clsloc.training.overfit import overfit

        return 0 if overfit(config, splits, args.overfit, out=args.out, progress=not args.quiet).passed else 1
    if not args.out:
        raise ValueError("--out RUN_DIR is required")
    result = fit(config, splits, args.out, progress=not args.quiet)
    return _summary(result)


def _summary(result) -> int:
    from clsloc.metrics import format_table
    from clsloc.training import distributed

    if distributed.is_main():
        best = result.best
        print(
            f"\nbest: stage {best.get('stage')} epoch {best.get('epoch')}; final validation of best.pt "
            f"({result.seconds:.0f}s in all):"
        )
        print(format_table(result.metrics))
        if result.run_dir is not None:
            print(
                f"\nrun written to {Path(result.run_dir)} (export with: clsloc export {result.run_dir} --out MODEL_DIR)"
            )
    return 0

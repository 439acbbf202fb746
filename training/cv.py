"""``clsloc cv DATASET... --folds K [--json]``: k-fold cross-validation of the training recipe.

    clsloc cv ../shared/datasets/raccoon ../shared/datasets/kangaroo --folds 5

Every fold trains with the same flags as ``clsloc train`` and is scored on its
held-out fold with ``clsloc.metrics``. The held-out fold never picks the
model: early stopping and best-epoch selection are off, each fold keeps its
last weights (with a decaying learning rate the last epoch is the settled
one). Images are decoded, and frozen features computed, once for all folds.
Prints each fold and the mean and standard deviation of accuracy, mean IoU
and localization accuracy (``--json``: the same as JSON on stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from clsloc.training.config import HelpFormatter, TrainConfig, add_train_arguments, config_from_args, write_json

KEYS = ("accuracy", "mean_iou", "loc_accuracy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    add_train_arguments(parser)
    parser.add_argument("--folds", type=int, default=5, help="number of folds K")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (progress goes to stderr)")
    parser.add_argument("--out", metavar="DIR", help="also write each fold's run directory and cv.json here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def fold_splits(config: TrainConfig, folds: int):
    """-> (list of Splits, classes): stratified folds over all the datasets' records."""
    from clsloc.datasets import kfold_splits
    from clsloc.training.data import Splits, check_classes, load_records

    if folds < 2:
        raise ValueError(f"--folds {folds}: cross-validation needs at least 2 folds")
    records, _, skipped = load_records(config.datasets, config.policy)
    classes = check_classes(records, [])
    return [
        Splits(list(tr), list(va), classes, skipped) for tr, va in kfold_splits(records, k=folds, seed=config.seed)
    ], classes


def image_store(config: TrainConfig):
    """Decoded images at the input size ``config`` trains at, to share between folds (and variants)."""
    from clsloc.models import get_backbone
    from clsloc.training.data import ImageStore

    return ImageStore(get_backbone(config.backbone).preprocessing(config.image_size or None))


def cross_validate(
    config: TrainConfig,
    folds: int,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    log=print,
    splits=None,
    store=None,
    features=None,
    also: dict[str, dict] | None = None,
) -> dict:
    """Train and score each fold; -> {"folds": [...], "mean": {...}, "std": {...}, ...}.

    ``also``: {name: {model attribute: value}}: each fold's trained model is also scored with
    those attributes set (e.g. ``{"refine 2": {"refine_context": 2.0}}``: the same weights with a
    refining pass), -> ``summary["also"][name]``, with its own folds, mean and std.
    """
    from clsloc.training.features import FeatureCache
    from clsloc.training.fit import fit

    if splits is None:
        splits, _ = fold_splits(config, folds)
    store = store or image_store(config)
    features = features if features is not None else FeatureCache()
    fold_config = replace(config, patience=0)  # the held-out fold must not stop or pick anything
    rows, predictions = [], []
    also_rows: dict[str, list] = {name: [] for name in also or {}}
    for i, split in enumerate(splits, 1):
        run = Path(out) / f"fold{i}" if out else None
        result = fit(
            fold_config,
            split,
            run,
            store=store,
            features=features,
            progress=progress,
            log_epochs=False,
            select_best=False,
        )
        row = {
            "fold": i,
            "n_train": len(split.train),
            "n_val": len(split.val),
            **{k: result.metrics[k] for k in KEYS},
            "seconds": round(result.seconds, 1),
        }
        rows.append(row)
        predictions += [{"fold": i, **p} for p in result.metrics["predictions"]]
        for name, attributes in (also or {}).items():
            report = score_with(result.model, attributes, split, store, fold_config)
            also_rows[name].append({"fold": i, **{k: report[k] for k in KEYS}, "predictions": report["predictions"]})
        log(f"fold {i}/{len(splits)}: " + "  ".join(f"{k} {row[k]:.3f}" for k in KEYS) + f"  ({row['seconds']:.0f}s)")
    summary = {
        **summarize(rows),
        "k": len(rows),
        "config": config.to_dict(),
        "model_selection": "last epoch of each fold (no early stopping on the held-out fold)",
        "predictions": predictions,  # every held-out image's label and pixel xyxy box, for breakdowns
    }
    if also:
        summary["also"] = {name: summarize(rows) for name, rows in also_rows.items()}
    if out:
        write_json(Path(out) / "cv.json", summary)
    return summary


def score_with(model, attributes: dict, split, store, config: TrainConfig) -> dict:
    """``model`` scored on ``split.val`` (``training.fit.score``) with ``attributes`` set for the while."""
    from clsloc.training.fit import score

    before = {name: getattr(model, name) for name in attributes}
    for name, value in attributes.items():
        setattr(model, name, value)
    try:
        return score(model, split.val, store, split.classes, config, next(model.parameters()).device)
    finally:
        for name, value in before.items():
            setattr(model, name, value)


def summarize(rows: list[dict]) -> dict:
    """Fold rows -> {"folds", "mean", "std"} of KEYS."""
    return {
        "folds": rows,
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in KEYS},
        "std": {k: float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else 0.0 for k in KEYS},
    }


def format_summary(summary: dict) -> str:
    lines = [f"{'fold':>5}  " + "  ".join(f"{k:>12}" for k in KEYS)]
    for r in summary["folds"]:
        lines.append(f"{r['fold']:>5}  " + "  ".join(f"{r[k]:>12.3f}" for k in KEYS))
    lines.append(f"{'mean':>5}  " + "  ".join(f"{summary['mean'][k]:>12.3f}" for k in KEYS))
    lines.append(f"{'std':>5}  " + "  ".join(f"{summary['std'][k]:>12.3f}" for k in KEYS))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from clsloc.datasets import DatasetError
    from clsloc.training.cpu import tune_cpu_allocator
    from clsloc.training.data import DataError
    from clsloc.training.train import setup_logging

    setup_logging()
    tune_cpu_allocator()
    try:
        config = config_from_args(args)
        log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print
        summary = cross_validate(config, args.folds, out=args.out, progress=not args.quiet, log=log)
    except (DataError, DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\n{summary['k']}-fold cross-validation ({summary['model_selection']}):")
        print(format_summary(summary))
    return 0

"""``clsloc train ... --overfit 20``: can the model memorize a tiny subset?

The lecture's second babysitting check: take N training examples, turn
regularization off (no weight decay, no dropout, no augmentation) and train
until training accuracy is 1.0 and mean IoU > 0.9 — or say clearly that it
could not. Only the heads train, on cached frozen features, so the check
takes seconds; failing it means the heads, the loss or the targets are broken.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from clsloc.training.config import TrainConfig
from clsloc.training.data import Splits

TARGET_ACCURACY = 1.0
TARGET_IOU = 0.9
MAX_EPOCHS = 400


@dataclass
class OverfitReport:
    n: int
    epochs: int
    accuracy: float
    mean_iou: float
    passed: bool


def pick_subset(records, n: int):
    """n records, classes taken in turn, so every class is present."""
    by_class: dict[str, list] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    queues = [list(v) for _, v in sorted(by_class.items())]
    subset = []
    while len(subset) < n and any(queues):
        for q in queues:
            if q and len(subset) < n:
                subset.append(q.pop(0))
    return subset


def overfit(
    config: TrainConfig,
    splits: Splits,
    n: int = 20,
    *,
    out=None,
    progress: bool = True,
    max_epochs: int = MAX_EPOCHS,
    verbose: bool = True,
) -> OverfitReport:
    from clsloc.training.fit import fit

    subset = pick_subset(splits.train, n)
    tiny = replace(
        config,
        weight_decay=0.0,
        dropout=0.0,
        augment=False,
        cache_views=1,
        finetune_epochs=0,
        epochs=max_epochs,
        patience=0,
        lr_schedule="none",
        batch_size=min(config.batch_size, 5),
    )
    if verbose:
        print(
            f"overfitting {len(subset)} training examples, regularization off, up to {max_epochs} epochs "
            f"(goal: train accuracy {TARGET_ACCURACY:.1f} and mean IoU > {TARGET_IOU})",
            flush=True,
        )

    def done(stage: int, epoch: int, record: dict) -> bool:
        return record["val_accuracy"] >= TARGET_ACCURACY and record["val_mean_iou"] > TARGET_IOU

    # "validation" here is the same tiny set, evaluated in eval mode: the training accuracy
    result = fit(
        tiny,
        Splits(subset, subset, splits.classes, 0),
        out,
        progress=progress,
        log_epochs=False,
        epoch_callback=done,
        select_best=False,
    )
    last = result.history[-1]
    report = OverfitReport(
        len(subset), len(result.history), last["val_accuracy"], last["val_mean_iou"], passed=done(1, 0, last)
    )
    if verbose:
        if report.passed:
            print(
                f"overfit OK: train accuracy {report.accuracy:.3f}, mean IoU {report.mean_iou:.3f} "
                f"on {report.n} examples after {report.epochs} epochs"
            )
        else:
            print(
                f"COULD NOT OVERFIT {report.n} examples in {report.epochs} epochs: train accuracy "
                f"{report.accuracy:.3f} (goal {TARGET_ACCURACY}), mean IoU {report.mean_iou:.3f} (goal > {TARGET_IOU}). "
                "Check the loss, the learning rate (--lr) and the box targets."
            )
    return report

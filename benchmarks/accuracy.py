"""5-fold cross-validation of the default recipe on the shared photos, beside two baselines.

    .venv/bin/python benchmarks/accuracy.py [--folds 5] [--variants ours pooled meanbox]

Same folds, same run, side by side:

* ours     — ``clsloc train`` defaults (box head on the feature map, frozen stage
             on cached features, then fine-tuning with augmentation);
* pooled   — the same recipe with the box head on pooled features (``--attach pooled``);
* meanbox  — no network: the majority training class and the mean training box.

Acceptance (issue 3): ours accuracy >= 0.99, mean IoU >= 0.72, loc accuracy >= 0.90.
Images are decoded and frozen features computed once for every fold and variant.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import add_json_flag, save  # noqa: E402 - benchmarks/results.py, beside this script

DATASETS = [str(ROOT / "../shared/datasets/raccoon"), str(ROOT / "../shared/datasets/kangaroo")]
KEYS = ("accuracy", "mean_iou", "loc_accuracy")
GOAL = {"accuracy": 0.99, "mean_iou": 0.72, "loc_accuracy": 0.90}


def mean_box_baseline(splits) -> dict:
    import numpy as np

    from clsloc.boxes import denormalize_boxes
    from clsloc.metrics import evaluate_records

    rows = []
    for split in splits:
        label = Counter(r.label for r in split.train).most_common(1)[0][0]
        box = np.mean([r.box_normalized for r in split.train], axis=0)
        px = np.stack([denormalize_boxes(box, r.width, r.height) for r in split.val])
        report = evaluate_records(split.val, [label] * len(split.val), px, split.classes)
        rows.append({k: report[k] for k in KEYS})
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    import numpy as np

    return {
        "folds": rows,
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in KEYS},
        "std": {k: float(np.std([r[k] for r in rows], ddof=1)) for k in KEYS},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--variants", nargs="+", default=["ours", "pooled", "meanbox"], choices=["ours", "pooled", "meanbox"]
    )
    parser.add_argument("--finetune-epochs", type=int, default=None, help="override the default (for quick looks)")
    add_json_flag(parser)
    args = parser.parse_args()

    from clsloc.training.cpu import tune_cpu_allocator

    tune_cpu_allocator()
    from clsloc.training.config import TrainConfig
    from clsloc.training.cv import cross_validate, fold_splits, image_store
    from clsloc.training.features import FeatureCache

    config = TrainConfig(datasets=DATASETS)  # the defaults of `clsloc train`
    if args.finetune_epochs is not None:
        config = replace(config, finetune_epochs=args.finetune_epochs)
    splits, classes = fold_splits(config, args.folds)
    store = image_store(config)
    features = FeatureCache()
    results, seconds = {}, {}
    for variant in args.variants:
        start = time.perf_counter()
        print(f"--- {variant}", flush=True)
        if variant == "meanbox":
            results[variant] = mean_box_baseline(splits)
        else:
            cfg = replace(config, attach="pooled") if variant == "pooled" else config
            results[variant] = cross_validate(
                cfg, args.folds, splits=splits, store=store, features=features, progress=False
            )
        seconds[variant] = time.perf_counter() - start

    n = sum(len(s.val) for s in splits)
    print(
        f"\n{args.folds}-fold cross-validation on {n} photos ({', '.join(classes)}), "
        f"default settings ({config.backbone} at {config.image_size or 'its own'} px, head on the map, "
        f"{config.epochs} frozen + {config.finetune_epochs} fine-tune epochs, test-time flip {'on' if config.tta else 'off'})"
    )
    header = f"{'variant':<10}" + "".join(f"{k:>22}" for k in KEYS) + f"{'time':>9}"
    print(header)
    for variant, r in results.items():
        cells = "".join(f"{r['mean'][k]:>14.3f} ± {r['std'][k]:.3f}" for k in KEYS)
        print(f"{variant:<10}{cells}{seconds[variant]:>8.0f}s")
    if "ours" in results:
        for other in ("pooled", "meanbox"):
            if other in results:
                ratio = results["ours"]["mean"]["mean_iou"] / max(results[other]["mean"]["mean_iou"], 1e-9)
                print(f"mean IoU ours / {other}: {ratio:.2f}x")
        ok = {k: results["ours"]["mean"][k] >= GOAL[k] for k in KEYS}
        print("goal (ours): " + "  ".join(f"{k} >= {GOAL[k]}: {'met' if v else 'NOT met'}" for k, v in ok.items()))
    if args.json:
        save("accuracy", {"results": results, "seconds": seconds}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

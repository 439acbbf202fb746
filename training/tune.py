"""``clsloc tune DATASET... --trials N``: the lecture's hyperparameter search.

    clsloc tune ../shared/datasets/raccoon ../shared/datasets/kangaroo --trials 20 --out runs/tune

Random search (Optuna's ``RandomSampler``) in log space over the learning
rate and the regularization strength (weight decay), in stages:

1. coarse: ``--trials`` trials of ``--coarse-epochs`` epochs over wide ranges;
2. fine: ``--fine-trials`` trials of ``--fine-epochs`` epochs in a window of
   +-``--fine-window`` decades around the best coarse trial.

Trials train the heads on cached frozen-backbone features (stage 1), so the
backbone runs once for the whole search. Optuna's median pruner stops trials
that fall behind, and a trial stops at once when its loss exceeds 3x its
starting loss or becomes NaN. Writes ``tune.csv`` (every trial), ``tune.png``
(lr vs regularization, coloured by the validation metric) and
``best.json``, and warns when the best value lies at the edge of a range.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import replace
from pathlib import Path

from clsloc.training.config import HelpFormatter, TrainConfig, add_train_arguments, config_from_args, write_json

EXPLODE_FACTOR = 3.0
EDGE_FRACTION = 0.1  # within 10 % of a range's log width from an end counts as "at the edge"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = HelpFormatter
    add_train_arguments(parser)
    g = parser.add_argument_group("search")
    g.add_argument("--trials", type=int, default=20, help="coarse-stage trials")
    g.add_argument("--fine-trials", type=int, default=None, help="fine-stage trials (default: half of --trials)")
    g.add_argument("--coarse-epochs", type=int, default=5, help="epochs per coarse trial")
    g.add_argument("--fine-epochs", type=int, default=20, help="epochs per fine trial")
    g.add_argument("--lr-range", type=float, nargs=2, default=(1e-5, 1e-1), metavar=("LOW", "HIGH"))
    g.add_argument(
        "--reg-range", type=float, nargs=2, default=(1e-6, 1e-1), metavar=("LOW", "HIGH"), help="weight decay range"
    )
    g.add_argument("--fine-window", type=float, default=0.5, help="fine ranges: best coarse value x 10^(+-window)")
    parser.add_argument("--out", metavar="DIR", default="runs/tune", help="where tune.csv / tune.png / best.json go")
    parser.add_argument("--quiet", action="store_true")


def at_edge(value: float, low: float, high: float) -> str | None:
    span = math.log10(high) - math.log10(low)
    if math.log10(value) - math.log10(low) <= EDGE_FRACTION * span:
        return "low"
    if math.log10(high) - math.log10(value) <= EDGE_FRACTION * span:
        return "high"
    return None


def search(
    config: TrainConfig,
    splits,
    *,
    stage: str,
    trials: int,
    epochs: int,
    lr_range,
    reg_range,
    seed: int,
    store,
    features,
    log=print,
) -> list[dict]:
    """One random-search stage; -> one row per trial."""
    import optuna

    from clsloc.training.fit import fit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    study = optuna.create_study(
        direction="minimize" if config.monitor == "loss" else "maximize", sampler=sampler, pruner=pruner
    )
    rows: list[dict] = []
    metric_key = "val_loss" if config.monitor == "loss" else f"val_{config.monitor}"

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *lr_range, log=True)
        reg = trial.suggest_float("weight_decay", *reg_range, log=True)
        trial_config = replace(config, lr=lr, weight_decay=reg, epochs=epochs, finetune_epochs=0, patience=0)
        pruned = {}

        def report(stage_no: int, epoch: int, record: dict) -> bool:
            trial.report(record[metric_key], epoch)
            if trial.should_prune():
                pruned["epoch"] = epoch
                return True
            return False

        result = fit(
            trial_config,
            splits,
            None,
            store=store,
            features=features,
            progress=False,
            log_epochs=False,
            epoch_callback=report,
            explode_factor=EXPLODE_FACTOR,
        )
        history = [h for h in result.history if not h.get("exploded")]
        values = [h[metric_key] for h in history]
        best = (min(values) if config.monitor == "loss" else max(values)) if values else float("nan")
        state = "exploded" if result.exploded else "pruned" if pruned else "complete"
        row = {
            "stage": stage,
            "trial": trial.number,
            "lr": lr,
            "weight_decay": reg,
            "value": best,
            "state": state,
            "epochs": len(result.history),
            "first_loss": result.history[0].get("train_loss") if result.history else None,
        }
        rows.append(row)
        log(
            f"{stage} trial {trial.number + 1:>3}/{trials}: lr {lr:.2e}  reg {reg:.2e}  "
            f"val {config.monitor} {best:.4f}  ({state}, {len(result.history)} epochs)"
        )
        if result.exploded:
            raise optuna.TrialPruned("loss exploded")
        if pruned:
            raise optuna.TrialPruned()
        return best

    study.optimize(objective, n_trials=trials, catch=())
    return rows


def best_row(rows: list[dict], monitor: str) -> dict | None:
    done = [r for r in rows if r["state"] == "complete" and math.isfinite(r["value"])]
    if not done:
        return None
    return (min if monitor == "loss" else max)(done, key=lambda r: r["value"])


def write_csv(rows: list[dict], path: Path) -> None:
    fields = ["stage", "trial", "lr", "weight_decay", "value", "state", "epochs", "first_loss"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k) for k in fields})


def plot_search(rows: list[dict], path: Path, monitor: str, best: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ok = [r for r in rows if math.isfinite(r["value"]) and r["state"] != "exploded"]
    bad = [r for r in rows if r not in ok]
    scatter = None
    for stage, marker in (("coarse", "o"), ("fine", "s")):
        pts = [r for r in ok if r["stage"] == stage]
        if pts:
            scatter = ax.scatter(
                [r["lr"] for r in pts],
                [r["weight_decay"] for r in pts],
                c=[r["value"] for r in pts],
                cmap="viridis",
                marker=marker,
                s=50,
                edgecolors="k",
                linewidths=0.5,
                label=stage,
                vmin=min(r["value"] for r in ok),
                vmax=max(r["value"] for r in ok),
            )
    if bad:
        ax.scatter(
            [r["lr"] for r in bad], [r["weight_decay"] for r in bad], marker="x", c="red", label="exploded / no result"
        )
    if best:
        ax.scatter(
            [best["lr"]], [best["weight_decay"]], marker="*", s=300, facecolors="none", edgecolors="red", label="best"
        )
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label=f"val {monitor}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("regularization (weight decay)")
    ax.set_title("random search in log space")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tune(
    config: TrainConfig,
    *,
    trials: int,
    fine_trials: int,
    coarse_epochs: int,
    fine_epochs: int,
    lr_range,
    reg_range,
    fine_window: float,
    out: str | Path,
    log=print,
) -> dict:
    from clsloc.models import get_backbone
    from clsloc.training.data import ImageStore, prepare_splits
    from clsloc.training.features import FeatureCache

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = prepare_splits(config.datasets, config.val, config.val_split, config.seed, config.policy)
    log(f"data: {len(splits.train)} training, {len(splits.val)} validation images, classes {splits.classes}")
    store = ImageStore(get_backbone(config.backbone).preprocessing(config.image_size or None))
    features = FeatureCache()
    common = dict(store=store, features=features, log=log)

    rows = search(
        config,
        splits,
        stage="coarse",
        trials=trials,
        epochs=coarse_epochs,
        lr_range=lr_range,
        reg_range=reg_range,
        seed=config.seed,
        **common,
    )
    coarse_best = best_row(rows, config.monitor)
    warnings = []
    ranges = {"coarse": {"lr": list(lr_range), "weight_decay": list(reg_range)}}
    if coarse_best and fine_trials:
        w = 10**fine_window
        fine_lr = (coarse_best["lr"] / w, coarse_best["lr"] * w)
        fine_reg = (coarse_best["weight_decay"] / w, coarse_best["weight_decay"] * w)
        ranges["fine"] = {"lr": list(fine_lr), "weight_decay": list(fine_reg)}
        log(f"fine stage around lr {coarse_best['lr']:.2e}, reg {coarse_best['weight_decay']:.2e}")
        rows += search(
            config,
            splits,
            stage="fine",
            trials=fine_trials,
            epochs=fine_epochs,
            lr_range=fine_lr,
            reg_range=fine_reg,
            seed=config.seed + 1,
            **common,
        )
    best = best_row(rows, config.monitor)
    if best:
        for name, (low, high) in zip(("lr", "weight_decay"), (lr_range, reg_range)):
            edge = at_edge(best[name], low, high)
            if edge:
                warnings.append(
                    f"best {name} {best[name]:.2e} is at the {edge} edge of the searched range "
                    f"[{low:.0e}, {high:.0e}]: widen the range and search again"
                )
    write_csv(rows, out / "tune.csv")
    plot_search(rows, out / "tune.png", config.monitor, best)
    result = {
        "best": best,
        "monitor": config.monitor,
        "ranges": ranges,
        "warnings": warnings,
        "trials": len(rows),
        "csv": str(out / "tune.csv"),
        "plot": str(out / "tune.png"),
    }
    write_json(out / "best.json", result)
    for w in warnings:
        log(f"warning: {w}")
    return result


def run(args: argparse.Namespace) -> int:
    from clsloc.datasets import DatasetError
    from clsloc.training.cpu import tune_cpu_allocator
    from clsloc.training.data import DataError
    from clsloc.training.train import setup_logging

    setup_logging()
    tune_cpu_allocator()
    try:
        config = config_from_args(args)
        for name, (low, high) in (("--lr-range", args.lr_range), ("--reg-range", args.reg_range)):
            if not 0 < low < high:
                raise ValueError(f"{name} {low} {high}: need 0 < LOW < HIGH")
        if args.trials < 1:
            raise ValueError(f"--trials {args.trials}: need at least 1")
        fine = args.trials // 2 if args.fine_trials is None else args.fine_trials
        result = tune(
            config,
            trials=args.trials,
            fine_trials=fine,
            coarse_epochs=args.coarse_epochs,
            fine_epochs=args.fine_epochs,
            lr_range=tuple(args.lr_range),
            reg_range=tuple(args.reg_range),
            fine_window=args.fine_window,
            out=args.out,
        )
    except (DataError, DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best = result["best"]
    if best is None:
        print("no trial finished: every trial exploded or was pruned; lower the learning-rate range", file=sys.stderr)
        return 1
    print(
        f"\nbest ({best['stage']} trial {best['trial'] + 1}): lr {best['lr']:.3e}  weight decay "
        f"{best['weight_decay']:.3e}  val {result['monitor']} {best['value']:.4f}"
    )
    print(f"table: {result['csv']}   plot: {result['plot']}")
    print(f"train with: clsloc train ... --lr {best['lr']:.2e} --weight-decay {best['weight_decay']:.2e}")
    return 0

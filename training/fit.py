"""The two-stage training recipe, from records to a run directory.

Stage 1 trains the heads on the frozen backbone's cached features; stage 2
(optional) fine-tunes the top of the backbone with the heads at a lower rate,
starting from the best stage-1 weights (``training.stages`` says what each
stage trains and on what; ``training.features`` holds the cache).

Both stages run the same epoch loop: per-step learning-rate decay, early
stopping on a validation metric, ``best.pt``/``last.pt`` after every epoch,
one line per epoch on the console and in ``metrics.jsonl``. Every epoch
reseeds every RNG from (seed, stage, epoch), so ``--resume`` replays the rest
of a killed run exactly as the unbroken run would have. What a run has done
so far is one :class:`RunState`, saved in ``last.pt``.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from clsloc.datasets import fingerprint
from clsloc.training import distributed
from clsloc.training.checkpoint import (
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    load_checkpoint,
    save_checkpoint,
    write_split,
)
from clsloc.training.config import TrainConfig, write_json, write_recipe
from clsloc.training.data import FixedDataset, ImageStore, Splits
from clsloc.training.engine import EpochStats, evaluate, train_one_epoch
from clsloc.training.features import INFERENCE_BATCH, CachedViews, FeatureCache
from clsloc.training.stages import StagePlan, freeze_batchnorm, plan_stage

RATIO_LOW, RATIO_HIGH = 1e-4, 1e-2  # a decade either side of the lecture's ~1e-3


def say(*args) -> None:
    if distributed.is_main():
        print(*args, flush=True)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return (seed * 1_000_003 + stage * 10_007 + epoch) % 2**31


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
        return torch.device("cuda", distributed.local_rank() if distributed.is_distributed() else 0)
    return torch.device("cpu")


def ratio_warning(name: str, ratio: float, *, epoch: int, lr_fraction: float) -> str | None:
    """The lecture's check: updates about 1e-3 of the weights. A message when far off, else None.

    Not judged in epoch 1 (freshly initialized heads move fast relative to their
    small weights) nor once the schedule has decayed the rate below half its
    base value (small updates are then the point, not a symptom).
    """
    if epoch <= 1 or lr_fraction < 0.5 or ratio <= 0 or RATIO_LOW <= ratio <= RATIO_HIGH:
        return None
    hint = "learning rate too high?" if ratio > RATIO_HIGH else "learning rate too low?"
    return f"update/weight ratio of {name} is {ratio:.1e}, far from ~1e-3 ({hint})"


def better(value: float, best: float | None, monitor: str) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(value)
    return value < best - 1e-9 if monitor == "loss" else value > best + 1e-9


def make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)
    # fused: one kernel per step instead of a dozen small ops per tensor, which matters for stage 1,
    # whose small heads train for many short steps.
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=True)


def make_scheduler(config: TrainConfig, optimizer, total_steps: int, warmup_steps: int = 0):
    """Per-step decay over the stage: cosine (default), step (x0.1 at 2/3), or none;
    after a linear warm-up of ``warmup_steps`` (stage 2: Adam's first full-size steps
    on every pretrained weight at once knock the stage-1 heads off, measured)."""
    total = max(1, total_steps)

    def decay(step: int) -> float:
        if config.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        if config.lr_schedule == "step":
            return 0.1 if step >= 2 * total // 3 else 1.0
        return 1.0

    def fn(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warm * decay(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


@dataclass
class FitResult:
    run_dir: Path | None
    metrics: dict  # final validation report of the best model
    history: list[dict]
    best: dict
    seconds: float
    exploded: bool = False
    model: torch.nn.Module | None = None  # the kept weights, in eval mode as exported


@dataclass
class RunState:
    """Where a run stands: saved in ``last.pt`` after every epoch, restored by ``--resume``."""

    stage: int = 1
    epoch: int = 0  # last finished epoch of ``stage``
    stage_done: bool = False
    best_value: float | None = None  # of the monitored validation metric
    best: dict = field(default_factory=dict)  # {"stage", "epoch", monitor: value} of the best epoch
    bad_epochs: int = 0  # epochs since the monitored metric last improved
    history: list[dict] = field(default_factory=list)  # one record per epoch (metrics.jsonl)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> RunState:
        state = cls(**{f.name: checkpoint[f.name] for f in fields(cls)})
        state.history = list(state.history)
        return state


@dataclass
class Run:
    """One call of :func:`fit`: what it trains, on what, where it writes, and its state."""

    config: TrainConfig
    splits: Splits
    model: torch.nn.Module
    device: torch.device
    store: ImageStore
    features: FeatureCache
    run_dir: Path | None
    write: bool  # this process writes the run directory (the main rank, with a directory)
    progress: bool  # progress bars
    log_epochs: bool
    select_best: bool
    epoch_callback: object = None
    explode_factor: float | None = None
    state: RunState = field(default_factory=RunState)
    checkpoint: dict | None = None  # last.pt when resuming
    best_weights: dict | None = None  # state dict of the best epoch so far
    start_loss: float | None = None  # the run's first batch loss (explode_factor)
    exploded: dict | None = None  # where the loss exploded, if it did

    @property
    def classes(self) -> list[str]:
        return list(self.splits.classes)

    @property
    def class_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.splits.classes)}

    @property
    def amp(self) -> bool:
        return self.config.amp and self.device.type == "cuda"

    @property
    def per_rank_batch(self) -> int:
        return max(1, self.config.batch_size // distributed.world_size())

    def evaluate(self, forward, loader) -> dict:
        """The validation report (``clsloc.metrics``) and loss of ``forward`` over ``loader``."""
        loss = self.config.loss_options()
        return evaluate(forward, loader, self.splits.val, self.classes, self.device, **loss, amp=self.amp)

    def save_last(self, optimizer, scheduler, scaler) -> None:
        save_checkpoint(
            self.run_dir / "last.pt",
            {
                "model": self.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                **asdict(self.state),
                "rng_torch": torch.get_rng_state(),
            },
        )

    def save_best(self, weights: dict, stage: int, epoch: int, value: float | None) -> None:
        save_checkpoint(
            self.run_dir / "best.pt",
            {"model": weights, "stage": stage, "epoch": epoch, "monitor": self.config.monitor, "value": value},
        )


def fit(
    config: TrainConfig,
    splits: Splits,
    out: str | Path | None,
    *,
    resume: bool = False,
    store: ImageStore | None = None,
    features: FeatureCache | None = None,
    progress: bool = True,
    log_epochs: bool = True,
    select_best: bool = True,
    epoch_callback=None,
    input_size: int | None = None,
    explode_factor: float | None = None,
) -> FitResult:
    """Train per ``config`` on ``splits``; write the run to ``out`` (None: nothing written).

    ``select_best=False`` keeps the last weights instead of the best validation
    epoch (cross-validation: the held-out fold must not pick the model).
    ``epoch_callback(stage, epoch, record) -> bool``: return True to stop
    (tune's pruning). ``explode_factor``: stop as soon as a batch loss exceeds
    this factor x the first batch's loss, or is NaN (the lecture's "cost >
    3x original cost: break out early"); the result's ``exploded`` says so.
    """
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    run_dir = Path(out) if out is not None else None
    write = run_dir is not None and distributed.is_main()
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    model = model_for(config, len(splits.classes), input_size=input_size)
    # Per-epoch validation runs the plain model (the mirror pass and the refining pass would double its
    # cost each); the final report runs the model as exported, with both when the config asks for them.
    model.flip_tta, model.refine_context = False, 0.0
    model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)  # the conv trunk runs faster so on a CPU
    run = Run(
        config=config,
        splits=splits,
        model=model,
        device=device,
        store=store or ImageStore(model.preprocessing),
        features=features if features is not None else FeatureCache(),
        run_dir=run_dir,
        write=write,
        progress=progress and distributed.is_main(),
        log_epochs=log_epochs,
        select_best=select_best,
        epoch_callback=epoch_callback,
        explode_factor=explode_factor,
    )
    full_config = resolved_config(config, model, splits)
    full_config.update(device_used=str(device), amp_used=run.amp, world_size=distributed.world_size())
    if write and not resume:
        write_json(run_dir / CONFIG_FILE, full_config)
        write_recipe(run_dir / RECIPE_FILE, config)
        write_split(run_dir, splits.train, splits.val, full_config)
        (run_dir / HISTORY_FILE).write_text("")
    if resume:
        restore(run)
    world = distributed.world_size()
    if world > 1 and log_epochs:
        say(
            f"distributed: {world} processes ({torch.distributed.get_backend()}), {run.per_rank_batch} images per process per step"
        )

    run_stage(run, 1, config.epochs)
    if not run.exploded and config.finetune_epochs and run.state.stage == 1 and select_best and run.best_weights:
        model.load_state_dict(run.best_weights)  # fine-tune from the best heads, not the last
    if not run.exploded:
        run_stage(run, 2, config.finetune_epochs)
    if run.exploded:
        metrics = {"exploded": run.exploded}
        return FitResult(run_dir, metrics, run.state.history, run.state.best, time.perf_counter() - started, True)
    metrics = final_report(run, started)
    if write:
        write_outputs(run, metrics, full_config)
    return FitResult(run_dir, metrics, run.state.history, run.state.best, metrics["seconds"], model=model)


def restore(run: Run) -> None:
    """``--resume``: the model, state and best weights of ``run.run_dir``'s last finished epoch."""
    run.checkpoint = load_checkpoint(run.run_dir / "last.pt")
    run.model.load_state_dict(run.checkpoint["model"])
    run.state = RunState.from_checkpoint(run.checkpoint)
    if run.write:  # drop lines a killed run appended after its last checkpoint
        (run.run_dir / HISTORY_FILE).write_text("".join(json.dumps(h) + "\n" for h in run.state.history))
    best = run.state.best
    if best and (best["stage"], best["epoch"]) == (run.state.stage, run.state.epoch):
        run.best_weights = run.checkpoint["model"]  # the last finished epoch was the best (best.pt may lag)
    elif (run.run_dir / "best.pt").exists():
        run.best_weights = load_checkpoint(run.run_dir / "best.pt")["model"]
    say(f"resuming {run.run_dir} at stage {run.state.stage}, epoch {run.state.epoch}")


@dataclass
class Loop:
    """What one stage's epochs share: its plan and the optimizer, scheduler and loaders built for it."""

    stage: int
    epochs: int
    plan: StagePlan
    forward: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    sampler: object
    val_loader: torch.utils.data.DataLoader
    warned: set[str] = field(default_factory=set)


def run_stage(run: Run, stage: int, epochs: int) -> None:
    """Train ``stage`` for ``epochs`` (from where a resumed run stopped), one epoch at a time."""
    state = run.state
    if epochs == 0 or state.stage > stage or (state.stage == stage and state.stage_done):
        return
    resuming_here = run.checkpoint is not None and run.checkpoint["stage"] == stage and not run.checkpoint["stage_done"]
    if state.stage < stage:
        state.stage, state.epoch, state.stage_done, state.bad_epochs = stage, 0, False, 0
    loop = prepare_loop(run, stage, epochs)
    if resuming_here:
        loop.optimizer.load_state_dict(run.checkpoint["optimizer"])
        loop.scheduler.load_state_dict(run.checkpoint["scheduler"])
        if loop.scaler is not None and run.checkpoint["scaler"]:
            loop.scaler.load_state_dict(run.checkpoint["scaler"])
    for epoch in range(state.epoch + 1, epochs + 1):
        stats = train_epoch(run, loop, epoch)
        if stats.aborted:
            record_explosion(run, stage, epoch, stats)
            break
        record = validate_epoch(run, loop, epoch, stats)
        if finish_epoch(run, loop, epoch, record, stats):
            break


def prepare_loop(run: Run, stage: int, epochs: int) -> Loop:
    """The stage's plan, and the optimizer, scheduler, sampler and validation loader for it."""
    plan = plan_stage(run, stage)
    forward = plan.forward(run.device)
    optimizer = make_optimizer(run.config, plan.groups)
    sampler = distributed.sampler(plan.train_set, seed=run.config.seed)
    steps = math.ceil(len(sampler if sampler is not None else plan.train_set) / run.per_rank_batch)
    scheduler = make_scheduler(run.config, optimizer, steps * epochs, warmup_steps=steps if stage == 2 else 0)
    scaler = torch.amp.GradScaler("cuda") if run.amp else None
    val_loader = torch.utils.data.DataLoader(plan.val_set, batch_size=INFERENCE_BATCH)
    return Loop(stage, epochs, plan, forward, optimizer, scheduler, scaler, sampler, val_loader)


def train_epoch(run: Run, loop: Loop, epoch: int) -> EpochStats:
    """One pass over the stage's training set, every RNG seeded from (seed, stage, epoch)."""
    config, plan = run.config, loop.plan
    generator = seed_everything(epoch_seed(config.seed, loop.stage, epoch))
    if loop.sampler is not None:
        loop.sampler.set_epoch(epoch)
    if isinstance(plan.train_set, CachedViews):
        plan.train_set.draw(generator)
    loader = torch.utils.data.DataLoader(
        plan.train_set,
        batch_size=run.per_rank_batch,
        shuffle=loop.sampler is None,
        sampler=loop.sampler,
        generator=generator,
        num_workers=config.workers if loop.stage == 2 and not plan.cached_start else 0,
        drop_last=len(plan.train_set) > run.per_rank_batch * distributed.world_size(),
        persistent_workers=False,
    )
    run.model.train()
    if loop.stage == 1 or config.freeze_bn:
        # Frozen, or fine-tuned with small batches: the backbone's BatchNorm keeps its
        # ImageNet statistics (batch statistics wreck the stage-1 heads).
        run.model.backbone.apply(freeze_batchnorm)
    explode = run.explode_factor
    stats = train_one_epoch(
        loop.forward,
        loader,
        loop.optimizer,
        **config.loss_options(),
        device=run.device,
        scaler=loop.scaler,
        scheduler=loop.scheduler,
        progress=run.progress,
        desc=f"stage {loop.stage} epoch {epoch}/{loop.epochs}",
        abort_above=explode * run.start_loss if explode and run.start_loss is not None else None,
        explode_factor=explode if run.start_loss is None else None,
    )
    if run.start_loss is None:
        run.start_loss = stats.first_loss
    return stats


def record_explosion(run: Run, stage: int, epoch: int, stats: EpochStats) -> None:
    run.exploded = {"stage": stage, "epoch": epoch, "loss": stats.loss, "start_loss": run.start_loss}
    say(f"  stage {stage} epoch {epoch}: loss {stats.loss:.4g} exploded (start {run.start_loss:.4g}); stopping")
    run.state.stage_done = True
    run.state.history.append({"stage": stage, "epoch": epoch, "exploded": True, "train_loss": stats.loss})


def validate_epoch(run: Run, loop: Loop, epoch: int, stats: EpochStats) -> dict:
    """Score the epoch on validation; keep its weights as the best when the monitored metric improved."""
    config, state = run.config, run.state
    run.model.eval()
    report = run.evaluate(loop.plan.val_forward or loop.plan.trainable, loop.val_loader)
    record = epoch_record(loop, epoch, stats, report)
    monitored = report["loss"] if config.monitor == "loss" else report[config.monitor]
    improved = better(monitored, state.best_value, config.monitor)
    if improved:
        state.best_value, state.bad_epochs = monitored, 0
        state.best = {"stage": loop.stage, "epoch": epoch, config.monitor: monitored}
        run.best_weights = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    else:
        state.bad_epochs += 1
    record["best"] = improved
    state.history.append(record)
    state.epoch = epoch
    return record


def epoch_record(loop: Loop, epoch: int, stats: EpochStats, report: dict) -> dict:
    """One line of metrics.jsonl."""
    return {
        "stage": loop.stage,
        "epoch": epoch,
        "lr": loop.optimizer.param_groups[0]["lr"],
        "train_loss": stats.loss,
        "train_cls_loss": stats.cls_loss,
        "train_box_loss": stats.box_loss,
        "train_accuracy": stats.accuracy,
        "train_mean_iou": stats.mean_iou,
        "val_loss": report["loss"],
        "val_accuracy": report["accuracy"],
        "val_mean_iou": report["mean_iou"],
        "val_loc_accuracy": report["loc_accuracy"],
        "update_ratio": stats.update_ratio,
        "seconds": round(stats.seconds, 3),
        "images_per_s": stats.n * distributed.world_size() / max(stats.seconds, 1e-9),
    }


def finish_epoch(run: Run, loop: Loop, epoch: int, record: dict, stats: EpochStats) -> bool:
    """Log and save the epoch; -> True when the stage stops here (early stopping or the callback)."""
    config, state = run.config, run.state
    patience_spent = bool(config.patience) and state.bad_epochs >= config.patience
    stop = patience_spent
    if run.epoch_callback is not None and run.epoch_callback(loop.stage, epoch, record):
        stop = True
    if stop or epoch == loop.epochs:
        state.stage_done = True
    if run.log_epochs:
        say(format_epoch(record, loop.epochs))
        lr_fraction = loop.optimizer.param_groups[0]["lr"] / loop.plan.base_lr
        for name, ratio in stats.update_ratio.items():
            warning = ratio_warning(name, ratio, epoch=epoch, lr_fraction=lr_fraction)
            if warning and name not in loop.warned:
                loop.warned.add(name)
                say(f"  warning: {warning}")
    if run.write:
        with open(run.run_dir / HISTORY_FILE, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        run.save_last(loop.optimizer, loop.scheduler, loop.scaler)
        if record["best"]:  # after last.pt: a best.pt on disk never belongs to an epoch --resume replays
            run.save_best(run.best_weights, loop.stage, epoch, state.best_value)
    if stop and run.log_epochs and patience_spent:
        say(f"  early stop: no better val {config.monitor} for {config.patience} epochs")
    return stop


def final_report(run: Run, started: float) -> dict:
    """The kept weights (best or last) scored on validation as exported (mirror and refining passes included)."""
    config, model = run.config, run.model
    if run.select_best and run.best_weights:
        model.load_state_dict(run.best_weights)
    model.flip_tta, model.refine_context = config.tta, config.refine_context
    report = score(model, run.splits.val, run.store, run.classes, config, run.device, amp=run.amp)
    seconds = time.perf_counter() - started
    return {
        **report,
        "best": run.state.best,
        "selected": "best" if run.select_best else "last",
        "seconds": round(seconds, 2),
    }


def score(model, records, store: ImageStore, classes, config: TrainConfig, device, *, amp: bool = False) -> dict:
    """``model`` (in eval mode, as set: mirror and refining passes or not) on ``records``: the
    ``clsloc.metrics`` report with the loss and every image's prediction."""
    model.eval()
    store.load(records)
    val_set = FixedDataset(records, store, {c: i for i, c in enumerate(classes)})
    batch = INFERENCE_BATCH // 2 if model.flip_tta else INFERENCE_BATCH  # the mirror pass doubles each batch
    return evaluate(
        model,
        torch.utils.data.DataLoader(val_set, batch_size=batch),
        records,
        classes,
        device,
        **config.loss_options(),
        amp=amp,
        keep_predictions=True,
    )


def write_outputs(run: Run, metrics: dict, full_config: dict) -> None:
    """metrics.json, the config with its final metrics, the curves, and best.pt if no epoch made one."""
    write_json(run.run_dir / METRICS_FILE, {k: v for k, v in metrics.items() if k != "predictions"})
    full_config["metrics"] = {k: metrics[k] for k in ("accuracy", "mean_iou", "loc_accuracy", "n")}
    write_json(run.run_dir / CONFIG_FILE, full_config)
    from clsloc.training.plots import plot_history

    plot_history(run.state.history, run.run_dir)
    if not (run.run_dir / "best.pt").exists():
        run.save_best(run.model.state_dict(), run.state.stage, run.state.epoch, None)


def resolved_config(config: TrainConfig, model, splits: Splits) -> dict:
    d = config.to_dict()
    d.update(
        classes=list(splits.classes),
        head={"attach": config.attach, "per_class": config.per_class},
        preprocessing=model.preprocessing.to_dict(),
        data_fingerprint=fingerprint(splits.train + splits.val),
        n_train=len(splits.train),
        n_val=len(splits.val),
        skipped=splits.skipped,
        torch=torch.__version__,
    )
    return d


def model_for(config: TrainConfig, num_classes: int, *, input_size: int | None = None, dropout: float | None = None):
    """The network ``config`` describes (training, the sanity check), before any training."""
    from clsloc.models import build_model

    return build_model(
        config.backbone,
        num_classes,
        attach=config.attach,
        per_class=config.per_class,
        pretrained=config.pretrained,
        dropout=config.dropout if dropout is None else dropout,
        input_size=input_size or config.image_size or None,
        box_bins=config.box_bins,
        flip_tta=config.tta,
        refine_context=config.refine_context,
    )


def format_epoch(r: dict, epochs: int) -> str:
    ratios = " ".join(f"{k} {v:.1e}" for k, v in r["update_ratio"].items())
    return (
        f"stage {r['stage']} epoch {r['epoch']:>3}/{epochs}  loss {r['train_loss']:.4f}"
        f" (cls {r['train_cls_loss']:.3f} box {r['train_box_loss']:.4f})"
        f"  train acc {r['train_accuracy']:.3f} iou {r['train_mean_iou']:.3f}"
        f" | val acc {r['val_accuracy']:.3f} iou {r['val_mean_iou']:.3f} loc {r['val_loc_accuracy']:.3f}"
        f" loss {r['val_loss']:.4f} | upd/w {ratios} | {r['seconds']:.1f}s{' *' if r['best'] else ''}"
    )

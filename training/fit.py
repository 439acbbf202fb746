"""The two-stage training recipe, from records to a run directory.

Stage 1 trains the heads on the frozen backbone. Its inputs never change
(no augmentation needs them fresh), so the backbone runs ONCE over every
image — and over ``cache_views - 1`` fixed variants of it (its mirror image, then
augmented copies drawn once) — and the heads train
on those cached features: dozens of epochs cost what one epoch of the full
network would.

Stage 2 (optional) fine-tunes the top ``finetune_depth`` of the backbone
with the heads at a lower rate on freshly augmented images, starting from the
best stage-1 weights. Within the top, by default, only the dense convolutions
train: the depthwise filters and BatchNorm (statistics, scale and shift) stay
as pretrained, which on a CPU saves a fifth of the step at no measured loss,
and lets the top train with its norm layers folded into the convolutions
(``ClsLocNet.top_with_constant_norms_folded``). With ``--finetune-cache`` its
frozen bottom's output is cached too, per view, in the same pass as stage 1's
features, and each epoch draws one cached view per image so only the trained
top runs, forward and back: about 1.7x the images/s of fresh augmentation on
a CPU, but measured less accurate (README), so it is an option for quick
experiments.

Wherever the backbone stays frozen (stage 1's features, stage 2's bottom
under fresh augmentation, the cached activations) it runs as one
BatchNorm-folded inference snapshot (``ClsLocNet.frozen_trunk``, held by the
``FeatureCache``): 16% (stage 2's bottom) to 21% (the whole trunk) less
time per image than the modules being trained, measured on the 2-core CPU,
with the same function up to float rounding.

Both stages: per-step learning-rate decay, early stopping on a validation
metric, ``best.pt``/``last.pt`` after every epoch, one line per epoch on the
console and in ``metrics.jsonl``. Every epoch reseeds every RNG from
(seed, stage, epoch), so ``--resume`` replays the rest of a killed run
exactly as the unbroken run would have.
"""

from __future__ import annotations

import json
import math
import random
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clsloc.datasets import fingerprint
from clsloc.training import distributed
from clsloc.training.checkpoint import (
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    load_checkpoint,
    save_checkpoint,
    write_split,
)
from clsloc.training.config import TrainConfig, write_json
from clsloc.training.data import AugmentedDataset, FixedDataset, ImageStore, Splits, train_transform
from clsloc.training.engine import compute_features, evaluate, set_backbone_trainable, train_one_epoch

RATIO_LOW, RATIO_HIGH = 1e-4, 1e-2  # a decade either side of the lecture's ~1e-3
# Images per forward pass where nothing trains (features, validation). Measured on the 2-core CPU, Lite0 at
# 256 px: 19 ms per image at 32, 28 at 64; and the larger activations of 64 fragmented the heap (mmap is off,
# training/cpu.py), after which every fine-tune epoch ran ~20% slower and peak RSS was 5.9 GB instead of 3.6.
INFERENCE_BATCH = 32


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


class Heads(nn.Module):
    """The heads alone, as a module (so DDP can wrap stage 1)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return self.model.forward_heads(features)


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
    # fused: one kernel per step instead of a dozen small ops per tensor; measured about half of
    # stage 1's optimizer time on the 2-core CPU (its heads train for over a thousand steps).
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


class FeatureCache:
    """What the frozen network computes per (record, view, depth), shared by stages, folds and trials.

    ``depth`` counts trunk stages (``clsloc.models.backbones.trunk_stages``): None is
    the whole trunk (stage 1's features, the heads' input); k is the output of
    the frozen bottom that stage 2 fine-tunes on top of. Both come from one
    pass over each view when asked together (``also``).
    """

    def __init__(self):
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._trunks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def trunk(self, model) -> nn.Sequential:
        """``model``'s trunk as a BatchNorm-folded inference snapshot (``ClsLocNet.frozen_trunk``),
        made on first use: what every cached activation comes from, and stage 2's frozen bottom
        (sliced) on fresh images. Only its frozen stages may be used once training has begun."""
        if model not in self._trunks:
            self._trunks[model] = model.frozen_trunk()
        return self._trunks[model]

    def dataset(
        self,
        model,
        records,
        store,
        class_index,
        device,
        *,
        view=0,
        depth: int | None = None,
        also: tuple[int, ...] = (),
        crop: tuple[float, float] | None = None,
        amp=False,
        progress=True,
        desc="",
    ):
        variant = crop if view >= 2 else None  # only the augmented views depend on the crop settings

        def key(record, stop):
            return str(record.image), view, variant, stop

        todo = [r for r in records if key(r, depth) not in self._cache]
        if todo:
            wanted = {depth, *also}  # trunk depths in ascending order, the whole trunk (None) last
            stops = sorted(d for d in wanted if d is not None) + ([None] if None in wanted else [])
            loader = torch.utils.data.DataLoader(
                FixedDataset(todo, store, class_index, view=view, crop=crop), batch_size=INFERENCE_BATCH
            )
            outs = compute_features(
                self.trunk(model), loader, device, stops=stops, desc=desc, amp=amp, progress=progress
            )
            for stop, ds in zip(stops, outs):
                for r, f, b in zip(todo, ds.tensors[0], ds.tensors[2]):
                    self._cache[key(r, stop)] = (f.clone(), b.clone())
        feats = torch.stack([self._cache[key(r, depth)][0] for r in records])
        boxes = torch.stack([self._cache[key(r, depth)][1] for r in records])
        labels = torch.tensor([class_index[r.label] for r in records])
        return torch.utils.data.TensorDataset(feats, labels, boxes)


class CachedViews(torch.utils.data.Dataset):
    """Stage 2 on cached activations: item i is one of record i's cached views, drawn anew
    each epoch (``draw``) — the fixed-view stand-in for fresh augmentation."""

    def __init__(self, views: list[torch.utils.data.TensorDataset]):
        self.views = views
        self.choice = torch.zeros(len(views[0]), dtype=torch.long)

    def draw(self, generator: torch.Generator) -> None:
        if len(self.views) > 1:  # one view: nothing to draw, and the shuffle's random stream stays as it was
            self.choice = torch.randint(len(self.views), (len(self),), generator=generator)

    def __len__(self) -> int:
        return len(self.views[0])

    def __getitem__(self, i: int):
        return self.views[int(self.choice[i])][i]


class Top(nn.Module):
    """The network above its cached frozen bottom, as a module (so DDP can wrap stage 2).

    ``fold_norms``: train through ``ClsLocNet.top_with_constant_norms_folded``, the
    top's convolutions with the norm layers that cannot change folded in (the
    same function and gradients up to float rounding, without the norm
    layers' work). Build it after the norm layers are frozen.
    """

    def __init__(self, model, start: int, *, fold_norms: bool = False):
        super().__init__()
        self.model = model
        self.start = start
        self.trunk = model.top_with_constant_norms_folded(start) if fold_norms else None

    def forward(self, activations):
        if self.trunk is None:
            return self.model.forward_top(activations, self.start)
        return self.model.forward_heads(self.trunk(activations))


class ThroughFrozen:
    """Stage 2 on fresh images: the frozen bottom's inference snapshot (no autograd graph,
    BatchNorm folded), then the top that trains: the whole network's function up to float rounding."""

    def __init__(self, bottom: nn.Module, top):
        self.bottom, self.top = bottom, top

    def __call__(self, x):
        with torch.no_grad():
            x = self.bottom(x)
        return self.top(x)


def set_finetune_trainable(model, config: TrainConfig) -> None:
    """What stage 2 trains: the top ``finetune_depth`` of the backbone, its depthwise filters and
    norm layers' scale/shift only when the config asks (``set_backbone_trainable``)."""
    set_backbone_trainable(
        model, True, config.finetune_depth, depthwise=config.finetune_depthwise, norm=config.finetune_norm
    )


def cached_finetune_start(model, config: TrainConfig) -> int:
    """The trunk stage stage 2 starts from when it trains on cached activations; 0 = it runs
    the whole network on fresh images (no stage 2, the cache switched off, the whole trunk
    trained, or BatchNorm statistics that change and would make the cache stale)."""
    if not (config.finetune_epochs and config.finetune_cache and config.freeze_bn):
        return 0
    set_finetune_trainable(model, config)
    start = model.frozen_stages()
    set_backbone_trainable(model, False)
    return start


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
    amp = config.amp and device.type == "cuda"
    rank_main = distributed.is_main()
    run_dir = Path(out) if out is not None else None
    write = run_dir is not None and rank_main
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)

    classes = list(splits.classes)
    class_index = {c: i for i, c in enumerate(classes)}
    seed_everything(config.seed)
    model = model_for(config, len(classes), input_size=input_size)
    # Per-epoch validation runs the plain model (the mirror pass would double its cost); the final
    # report runs the model as exported, with test-time augmentation when the config asks for it.
    model.flip_tta = False
    model.to(device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)  # measured faster for the conv trunk on CPU
    full_config = resolved_config(config, model, splits)
    full_config.update(device_used=str(device), amp_used=amp, world_size=distributed.world_size())
    if write and not resume:
        write_json(run_dir / CONFIG_FILE, full_config)
        write_split(run_dir, splits.train, splits.val, full_config)
        (run_dir / HISTORY_FILE).write_text("")

    store = store or ImageStore(model.preprocessing)
    features = features if features is not None else FeatureCache()
    state = {
        "stage": 1,
        "epoch": 0,
        "stage_done": False,
        "best_value": None,
        "best": {},
        "bad_epochs": 0,
        "history": [],
    }
    ckpt = None
    best_weights: dict = {}  # {"model": state dict} of the best epoch so far
    start_loss: dict = {}  # {"value": first batch loss}, for explode_factor
    exploded: dict = {}
    if resume:
        ckpt = load_checkpoint(run_dir / "last.pt")
        model.load_state_dict(ckpt["model"])
        state.update({k: ckpt[k] for k in state})
        state["history"] = list(ckpt["history"])
        if write:  # drop lines a killed run appended after its last checkpoint
            (run_dir / HISTORY_FILE).write_text("".join(json.dumps(h) + "\n" for h in state["history"]))
        if (run_dir / "best.pt").exists():
            best_weights["model"] = load_checkpoint(run_dir / "best.pt")["model"]
        say(f"resuming {run_dir} at stage {state['stage']}, epoch {state['epoch']}")

    n_steps_world = distributed.world_size()
    if n_steps_world > 1 and log_epochs:
        say(
            f"distributed: {n_steps_world} processes ({torch.distributed.get_backend()}), "
            f"{max(1, config.batch_size // n_steps_world)} images per process per step"
        )
    per_rank_batch = max(1, config.batch_size // n_steps_world)

    def save(stage_state: dict, optimizer, scheduler, scaler) -> None:
        if not write:
            return
        save_checkpoint(
            run_dir / "last.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                **{
                    k: stage_state[k]
                    for k in ("stage", "epoch", "stage_done", "best_value", "best", "bad_epochs", "history")
                },
                "rng_torch": torch.get_rng_state(),
            },
        )

    def run_stage(stage: int, epochs: int) -> None:
        if epochs == 0 or state["stage"] > stage or (state["stage"] == stage and state["stage_done"]):
            return
        resuming_here = ckpt is not None and ckpt["stage"] == stage and not ckpt["stage_done"]
        if state["stage"] < stage:
            state.update(stage=stage, epoch=0, stage_done=False, bad_epochs=0)
        start = cached_finetune_start(model, config)  # stage 2's cached bottom, computed with stage 1's features
        cache_args = dict(amp=amp, progress=progress and rank_main, crop=(config.crop_p, config.crop_scale))
        also = (start,) if start else ()
        val_forward = None  # what validates each epoch; None: the module being trained
        frozen_bottom = None  # stage 2 on fresh images: the frozen bottom's snapshot, run before the trained top
        if stage == 1:
            set_backbone_trainable(model, False)
            store.load(splits.train + splits.val)
            train_sets = [
                features.dataset(
                    model,
                    splits.train,
                    store,
                    class_index,
                    device,
                    view=view,
                    also=also,
                    desc=f"features (train, view {view + 1}/{config.cache_views})",
                    **cache_args,
                )
                for view in range(config.cache_views)
            ]
            train_set = torch.utils.data.ConcatDataset(train_sets)
            val_set = features.dataset(
                model, splits.val, store, class_index, device, also=also, desc="features (val)", **cache_args
            )
            trainable: nn.Module = Heads(model)
            groups = [{"params": model.head_parameters(), "lr": config.lr, "name": "heads"}]
            base_lr = config.lr
        else:
            set_finetune_trainable(model, config)
            if config.freeze_bn:
                model.backbone.apply(_freeze_batchnorm)  # before Top folds the norm layers that cannot change
            store.load(splits.train + splits.val)
            if start:  # the frozen bottom's output per cached view: only the top runs, forward and back
                views = range(config.cache_views) if config.augment else [0]
                train_set = CachedViews(
                    [
                        features.dataset(
                            model,
                            splits.train,
                            store,
                            class_index,
                            device,
                            view=view,
                            depth=start,
                            desc=f"activations (train, view {view + 1}/{len(views)})",
                            **cache_args,
                        )
                        for view in views
                    ]
                )
                trainable = Top(model, start, fold_norms=True)  # the cache needs frozen norm statistics
            else:
                train_set = (
                    AugmentedDataset(splits.train, store, class_index, augmentation(config))
                    if config.augment
                    else FixedDataset(splits.train, store, class_index)
                )
                trainable = model
            bottom = model.frozen_stages() if config.freeze_bn else 0
            if bottom:
                # What the frozen bottom computes on the validation images cannot change during this stage:
                # computed once, each epoch's validation runs only the trained top (about 40% of the
                # network at the default depth), with the whole network's numbers up to float rounding.
                val_set = features.dataset(
                    model, splits.val, store, class_index, device, depth=bottom, desc="activations (val)", **cache_args
                )
                val_forward = Top(model, bottom)
                if not start:
                    # Fresh images: the frozen bottom runs as its BatchNorm-folded snapshot, outside autograd,
                    # and the top trains with its constant norm layers folded in too.
                    frozen_bottom = features.trunk(model)[:bottom]
                    trainable = Top(model, bottom, fold_norms=True)
            else:
                val_set = FixedDataset(splits.val, store, class_index)
            groups = [
                {
                    "params": [p for p in model.backbone.parameters() if p.requires_grad],
                    "lr": config.finetune_lr,
                    "name": "backbone",
                },
                {"params": model.head_parameters(), "lr": config.finetune_lr, "name": "heads"},
            ]
            base_lr = config.finetune_lr
        forward = distributed.wrap(trainable, device)
        if frozen_bottom is not None:
            forward = ThroughFrozen(frozen_bottom, forward)
        optimizer = make_optimizer(config, groups)
        sampler = distributed.sampler(train_set, seed=config.seed)
        steps = math.ceil(len(sampler if sampler is not None else train_set) / per_rank_batch)
        scheduler = make_scheduler(config, optimizer, steps * epochs, warmup_steps=steps if stage == 2 else 0)
        scaler = torch.amp.GradScaler("cuda") if amp else None
        if resuming_here:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt["scaler"]:
                scaler.load_state_dict(ckpt["scaler"])
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=INFERENCE_BATCH)
        warned: set[str] = set()

        for epoch in range(state["epoch"] + 1, epochs + 1):
            generator = seed_everything(epoch_seed(config.seed, stage, epoch))
            if sampler is not None:
                sampler.set_epoch(epoch)
            if isinstance(train_set, CachedViews):
                train_set.draw(generator)
            loader = torch.utils.data.DataLoader(
                train_set,
                batch_size=per_rank_batch,
                shuffle=sampler is None,
                sampler=sampler,
                generator=generator,
                num_workers=config.workers if stage == 2 and not start else 0,
                drop_last=len(train_set) > per_rank_batch * n_steps_world,
                persistent_workers=False,
            )
            model.train()
            if stage == 1 or config.freeze_bn:
                # Frozen, or fine-tuned with small batches: the backbone's BatchNorm keeps its
                # ImageNet statistics (measured: batch statistics wreck the stage-1 heads).
                model.backbone.apply(_freeze_batchnorm)
            abort_above = explode_factor * start_loss["value"] if explode_factor and start_loss else None
            stats = train_one_epoch(
                forward,
                loader,
                optimizer,
                box_kind=config.box_loss,
                box_weight=config.box_weight,
                device=device,
                scaler=scaler,
                scheduler=scheduler,
                progress=progress and rank_main,
                desc=f"stage {stage} epoch {epoch}/{epochs}",
                abort_above=abort_above,
                explode_factor=explode_factor if not start_loss else None,
            )
            start_loss.setdefault("value", stats.first_loss)
            if stats.aborted:
                exploded["at"] = {"stage": stage, "epoch": epoch, "loss": stats.loss, "start_loss": start_loss["value"]}
                say(
                    f"  stage {stage} epoch {epoch}: loss {stats.loss:.4g} exploded (start {start_loss['value']:.4g}); stopping"
                )
                state["stage_done"] = True
                state["history"].append({"stage": stage, "epoch": epoch, "exploded": True, "train_loss": stats.loss})
                break
            model.eval()
            report = evaluate(
                val_forward or trainable,
                val_loader,
                splits.val,
                classes,
                device,
                box_kind=config.box_loss,
                box_weight=config.box_weight,
                amp=amp,
            )
            record = {
                "stage": stage,
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
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
                "images_per_s": stats.n * n_steps_world / max(stats.seconds, 1e-9),
            }
            monitored = report["loss"] if config.monitor == "loss" else report[config.monitor]
            improved = better(monitored, state["best_value"], config.monitor)
            if improved:
                state.update(
                    best_value=monitored, best={"stage": stage, "epoch": epoch, config.monitor: monitored}, bad_epochs=0
                )
                best_weights["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if write:
                    save_checkpoint(
                        run_dir / "best.pt",
                        {
                            "model": best_weights["model"],
                            "stage": stage,
                            "epoch": epoch,
                            "monitor": config.monitor,
                            "value": monitored,
                        },
                    )
            else:
                state["bad_epochs"] += 1
            record["best"] = improved
            state["history"].append(record)
            state["epoch"] = epoch
            stop = config.patience and state["bad_epochs"] >= config.patience
            if epoch_callback is not None and epoch_callback(stage, epoch, record):
                stop = True
            if stop or epoch == epochs:
                state["stage_done"] = True
            if log_epochs:
                say(format_epoch(record, epochs))
                lr_fraction = optimizer.param_groups[0]["lr"] / base_lr
                for name, ratio in stats.update_ratio.items():
                    warning = ratio_warning(name, ratio, epoch=epoch, lr_fraction=lr_fraction)
                    if warning and name not in warned:
                        warned.add(name)
                        say(f"  warning: {warning}")
            if write:
                with open(run_dir / HISTORY_FILE, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                save(state, optimizer, scheduler, scaler)
            if stop:
                if log_epochs and config.patience and state["bad_epochs"] >= config.patience:
                    say(f"  early stop: no better val {config.monitor} for {config.patience} epochs")
                break

    run_stage(1, config.epochs)
    if exploded:
        return FitResult(
            run_dir,
            {"exploded": exploded["at"]},
            state["history"],
            state["best"],
            time.perf_counter() - started,
            exploded=True,
        )
    if config.finetune_epochs and state["stage"] == 1 and select_best and best_weights:
        model.load_state_dict(best_weights["model"])  # fine-tune from the best heads, not the last
    run_stage(2, config.finetune_epochs)
    if exploded:
        return FitResult(
            run_dir,
            {"exploded": exploded["at"]},
            state["history"],
            state["best"],
            time.perf_counter() - started,
            exploded=True,
        )

    if select_best and best_weights:
        model.load_state_dict(best_weights["model"])
    model.flip_tta = config.tta
    model.eval()
    val_set = FixedDataset(splits.val, store, class_index)
    store.load(splits.val)
    batch = INFERENCE_BATCH // 2 if model.flip_tta else INFERENCE_BATCH  # the mirror pass doubles each batch
    report = evaluate(
        model,
        torch.utils.data.DataLoader(val_set, batch_size=batch),
        splits.val,
        classes,
        device,
        box_kind=config.box_loss,
        box_weight=config.box_weight,
        amp=amp,
    )
    seconds = time.perf_counter() - started
    metrics = {
        **report,
        "best": state["best"],
        "selected": "best" if select_best else "last",
        "seconds": round(seconds, 2),
    }
    if write:
        write_json(run_dir / METRICS_FILE, metrics)
        full_config["metrics"] = {k: metrics[k] for k in ("accuracy", "mean_iou", "loc_accuracy", "n")}
        write_json(run_dir / CONFIG_FILE, full_config)
        from clsloc.training.plots import plot_history

        plot_history(state["history"], run_dir)
        if not (run_dir / "best.pt").exists():
            save_checkpoint(
                run_dir / "best.pt",
                {
                    "model": model.state_dict(),
                    "stage": state["stage"],
                    "epoch": state["epoch"],
                    "monitor": config.monitor,
                    "value": None,
                },
            )
    return FitResult(run_dir, metrics, state["history"], state["best"], seconds)


def _freeze_batchnorm(module: nn.Module) -> None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.eval()


def augmentation(config: TrainConfig):
    """Stage 2's geometric augmentation as ``config`` sets it (crop, flip, zoom-out)."""
    return train_transform(config.crop_p, config.crop_scale, config.zoom_out_p, config.zoom_out_max)


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

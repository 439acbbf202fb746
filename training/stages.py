"""What each training stage trains, on what, and what validates it.

Stage 1 trains the heads on the frozen backbone's cached features (the
backbone's output never changes, so it runs once per image and view).
Stage 2 fine-tunes the top ``finetune_depth`` of the backbone with the heads
on freshly augmented images, or with ``--finetune-cache`` on the frozen
bottom's cached output. Within the top, by default, only the dense
convolutions train: the depthwise filters and BatchNorm (statistics, scale
and shift) stay as pretrained — on a CPU their gradients cost far more than
their few parameters are worth — which also lets the top train with its
norm layers folded into its convolutions.

Each builder returns a :class:`StagePlan`; ``training.fit`` runs the epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from clsloc.models.views import Heads, ThroughFrozen, Top
from clsloc.training import distributed
from clsloc.training.config import TrainConfig
from clsloc.training.data import AugmentedDataset, FixedDataset, train_transform
from clsloc.training.engine import set_backbone_trainable
from clsloc.training.features import CachedViews

if TYPE_CHECKING:
    from clsloc.training.fit import Run


@dataclass
class StagePlan:
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    trainable: nn.Module  # what the optimizer's parameters belong to, and what validates by default
    groups: list[dict]  # optimizer parameter groups
    base_lr: float
    cached_start: int = 0  # stage 2 on cached activations from this trunk stage (0: fresh images)
    val_forward: nn.Module | None = None  # validates each epoch instead of ``trainable``
    frozen_bottom: nn.Module | None = None  # stage 2 on fresh images: runs before the trained top

    def forward(self, device: torch.device):
        """What one training step calls on a batch: the trained module (DDP-wrapped when
        distributed), behind the frozen bottom's snapshot when stage 2 runs on fresh images."""
        forward = distributed.wrap(self.trainable, device)
        return ThroughFrozen(self.frozen_bottom, forward) if self.frozen_bottom is not None else forward


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm keeps its (ImageNet) running statistics: eval mode for norm layers only."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.eval()


def augmentation(config: TrainConfig):
    """Stage 2's geometric augmentation as ``config`` sets it (crop, flip, zoom-out)."""
    return train_transform(
        config.crop_p,
        config.crop_scale,
        config.zoom_out_p,
        config.zoom_out_max,
        context_p=config.context_crop_p,
        context=config.refine_context or 2.0,
    )


def crop_settings(config: TrainConfig) -> tuple[float, ...]:
    """The augmented cached views' crops (``training.data.FixedDataset``'s ``crop``): the
    object-keeping crop's, and the refining pass's window's when it is asked for."""
    if config.context_crop_p:
        return (config.crop_p, config.crop_scale, config.context_crop_p, config.refine_context or 2.0)
    return (config.crop_p, config.crop_scale)


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


def plan_stage(run: Run, stage: int) -> StagePlan:
    """Set the model up for ``stage`` (what trains, which norm layers stay frozen) and say what it runs on."""
    # Stage 2's cached bottom (if any) is computed in the same pass as stage 1's features.
    start = cached_finetune_start(run.model, run.config)
    return heads_stage(run, start) if stage == 1 else finetune_stage(run, start)


def _cached(run: Run, records, *, desc: str, **kwargs) -> torch.utils.data.TensorDataset:
    """``run.features.dataset`` with the run's model, images, classes, device and crop settings."""
    config = run.config
    return run.features.dataset(
        run.model,
        records,
        run.store,
        run.class_index,
        run.device,
        amp=run.amp,
        progress=run.progress,
        crop=crop_settings(config),
        desc=desc,
        **kwargs,
    )


def heads_stage(run: Run, start: int) -> StagePlan:
    """Stage 1: the heads on the frozen backbone's cached features, ``cache_views`` views per image."""
    config, model, splits = run.config, run.model, run.splits
    also = (start,) if start else ()
    set_backbone_trainable(model, False)
    run.store.load(splits.train + splits.val)
    train_sets = [
        _cached(run, splits.train, view=view, also=also, desc=f"features (train, view {view + 1}/{config.cache_views})")
        for view in range(config.cache_views)
    ]
    val_set = _cached(run, splits.val, also=also, desc="features (val)")
    groups = [{"params": model.head_parameters(), "lr": config.lr, "name": "heads"}]
    return StagePlan(torch.utils.data.ConcatDataset(train_sets), val_set, Heads(model), groups, config.lr)


def finetune_stage(run: Run, start: int) -> StagePlan:
    """Stage 2: the top of the backbone and the heads, on fresh augmentation or cached activations."""
    config, model, splits = run.config, run.model, run.splits
    set_finetune_trainable(model, config)
    if config.freeze_bn:
        model.backbone.apply(freeze_batchnorm)  # before Top folds the norm layers that cannot change
    run.store.load(splits.train + splits.val)
    if start:  # the frozen bottom's output per cached view: only the top runs, forward and back
        views = range(config.cache_views) if config.augment else [0]
        train_set: torch.utils.data.Dataset = CachedViews(
            [
                _cached(
                    run, splits.train, view=view, depth=start, desc=f"activations (train, view {view + 1}/{len(views)})"
                )
                for view in views
            ]
        )
        trainable: nn.Module = Top(model, start, fold_norms=True)  # the cache needs frozen norm statistics
    else:
        train_set = (
            AugmentedDataset(splits.train, run.store, run.class_index, augmentation(config))
            if config.augment
            else FixedDataset(splits.train, run.store, run.class_index)
        )
        trainable = model
    plan = StagePlan(train_set, None, trainable, [], config.finetune_lr, cached_start=start)
    bottom = model.frozen_stages() if config.freeze_bn else 0
    if bottom:
        # What the frozen bottom computes on the validation images cannot change during this stage:
        # computed once, each epoch's validation runs only the trained top, with the whole network's
        # numbers up to float rounding.
        plan.val_set = _cached(run, splits.val, depth=bottom, desc="activations (val)")
        plan.val_forward = Top(model, bottom)
        if not start:
            # Fresh images: the frozen bottom runs as its BatchNorm-folded snapshot, outside autograd,
            # and the top trains with its constant norm layers folded in too.
            plan.frozen_bottom = run.features.trunk(model)[:bottom]
            plan.trainable = Top(model, bottom, fold_norms=True)
    else:
        plan.val_set = FixedDataset(splits.val, run.store, run.class_index)
    plan.groups = [
        {
            "params": [p for p in model.backbone.parameters() if p.requires_grad],
            "lr": config.finetune_lr,
            "name": "backbone",
        },
        {"params": model.head_parameters(), "lr": config.finetune_lr, "name": "heads"},
    ]
    return plan

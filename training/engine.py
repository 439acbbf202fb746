"""One epoch of training, evaluation, and which backbone parameters train.

In the style of torchvision's ``references/``: plain functions over a model,
a loader and an optimizer. The model is a ``models.ClsLocNet``:
``forward_trunk`` (the backbone, or its first stages) and ``forward_heads``
/ ``forward_top`` (what comes after) are called separately, so the frozen part
runs once and training runs only the rest on what it computed.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from clsloc.boxes import denormalize_boxes, paired_iou
from clsloc.metrics import evaluate_records
from clsloc.models import select_boxes
from clsloc.progress import progress_bar
from clsloc.training.data import box_slots, pad_boxes

# -- loss ------------------------------------------------------------------------------


def target_boxes(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K, 4) -> (N, 4) for the loss: a per-class head is trained on its TRUE class's row."""
    if boxes.shape[1] == 1:
        return boxes[:, 0]
    return boxes.gather(1, labels.view(-1, 1, 1).expand(-1, 1, 4)).squeeze(1)


def box_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":  # the lecture's L2 on normalized corners
        return F.mse_loss(pred, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=0.05)
    if kind == "giou":
        # GIoU needs x1 <= x2; sort each pair so any head output is a valid box.
        pred = torch.stack(
            [
                torch.minimum(pred[:, 0], pred[:, 2]),
                torch.minimum(pred[:, 1], pred[:, 3]),
                torch.maximum(pred[:, 0], pred[:, 2]),
                torch.maximum(pred[:, 1], pred[:, 3]),
            ],
            dim=1,
        )
        return generalized_box_iou_loss(pred, target, reduction="mean")
    raise ValueError(f"unknown box loss {kind!r}")


def chosen_targets(pred: torch.Tensor, targets: torch.Tensor, box_target: str = "policy") -> torch.Tensor:
    """The box each prediction is trained against: (N, 4) predictions, targets (N, 4) or (N, M, 4)
    (the image's boxes of its class, the policy's first, NaN rows for none) -> (N, 4).

    ``policy``: the first (``--policy``'s choice, e.g. the largest). ``nearest``: the one nearest
    the prediction in L2 over the corners (the box loss's own distance). The evaluation scores a
    box against the best-matching ground truth (the ILSVRC rule), so a head that finds one of
    several kangaroos is right; trained against the largest only, it is pulled towards a box
    between them. The choice is a selection, not a path for gradients.
    """
    if targets.dim() == 2:
        return targets
    if box_target == "policy" or targets.shape[1] == 1:
        return targets[:, 0]
    with torch.no_grad():
        distance = torch.nan_to_num(((pred.detach().unsqueeze(1) - targets) ** 2).sum(-1), nan=float("inf"))
        nearest = distance.argmin(1)
    return targets[torch.arange(len(targets), device=targets.device), nearest]


@dataclass
class LossParts:
    total: torch.Tensor
    cls: torch.Tensor
    box: torch.Tensor
    target: torch.Tensor  # (N, 4): the box each prediction was trained against


def compute_loss(
    logits, boxes, labels, targets, *, box_kind: str, box_weight: float, box_target: str = "policy"
) -> LossParts:
    """CE + box_weight x box loss; ``targets`` (N, 4), or (N, M, 4) with ``box_target`` choosing (``chosen_targets``)."""
    cls = F.cross_entropy(logits.float(), labels)
    pred = target_boxes(boxes.float(), labels)
    target = chosen_targets(pred, targets.float(), box_target)
    box = box_loss(pred, target, box_kind)
    return LossParts(cls + box_weight * box, cls, box, target)


def l2_penalty(params) -> torch.Tensor:
    """0.5 * sum of squared weights: the lecture's regularization term, for the sanity check."""
    return 0.5 * sum((p.float() ** 2).sum() for p in params)


# -- update / weight ratio -------------------------------------------------------------


class UpdateRatio:
    """||update|| / ||weights|| per parameter group (the lecture wants about 1e-3)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.sums = [0.0] * len(optimizer.param_groups)
        self.count = 0
        self._before: list[list[torch.Tensor]] | None = None

    def before_step(self) -> None:
        self._before = [torch._foreach_mul([p.detach() for p in g["params"]], 1.0) for g in self.optimizer.param_groups]

    def after_step(self) -> None:
        # foreach ops: a handful of calls per group instead of three per parameter tensor
        for i, (group, before) in enumerate(zip(self.optimizer.param_groups, self._before)):
            if not before:
                continue
            upd = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm(torch._foreach_sub([p.detach() for p in group["params"]], before)))
            )
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(before)))
            self.sums[i] += float(upd) / max(float(norm), 1e-12)
        self.count += 1
        self._before = None

    def means(self) -> dict[str, float]:
        names = [g.get("name", f"group{i}") for i, g in enumerate(self.optimizer.param_groups)]
        return {n: s / max(self.count, 1) for n, s in zip(names, self.sums)}


# -- one epoch ----------------------------------------------------------------------------


@dataclass
class EpochStats:
    loss: float = 0.0
    cls_loss: float = 0.0
    box_loss: float = 0.0
    accuracy: float = 0.0
    mean_iou: float = 0.0
    first_loss: float = float("nan")  # loss of the first batch (tune's explosion check)
    aborted: bool = False  # a batch loss was NaN or above abort_above
    update_ratio: dict = field(default_factory=dict)
    n: int = 0
    seconds: float = 0.0


class Prefetcher:
    """Batches of ``loader``, the next one fetched on a background thread (``fetch_next``) while
    the caller computes on the current one: the augmentation's pixel work of batch i+1 runs
    beside batch i's backward pass instead of after it.

    Where the next fetch starts is the caller's choice, because augmentation
    draws from torch's global RNG: training starts it after the forward pass
    (whose dropout draws come first), so every random number is drawn in the
    order of a plain loop and the results are the same bit for bit.
    """

    _END = object()

    def __init__(self, loader):
        self._batches = iter(loader)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clsloc-prefetch")
        self._next: Future | None = None

    def fetch_next(self) -> None:
        if self._next is None:
            self._next = self._thread.submit(next, self._batches, self._END)

    def __iter__(self):
        try:
            while True:
                self.fetch_next()
                batch, self._next = self._next.result(), None
                if batch is self._END:
                    return
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        """Wait for a fetch in flight (a loop left early), then let the thread go."""
        if self._next is not None:
            self._next.exception()
            self._next = None
        self._thread.shutdown()


def channels_last(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images (N, C, H, W) in channels-last memory on a CPU, where the conv trunk runs faster so."""
    if x.dim() == 4 and device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


class _Tally:
    """Running sums of an epoch's losses, correct labels and box IoUs."""

    def __init__(self):
        self.sums = np.zeros(3)
        self.correct = self.seen = 0
        self.iou_sum = 0.0

    @torch.no_grad()
    def add(self, loss_value: float, parts: LossParts, logits, boxes, labels) -> None:
        n = len(labels)
        self.sums += n * np.array([loss_value, float(parts.cls.detach()), float(parts.box.detach())])
        self.correct += int((logits.argmax(1) == labels).sum())
        pred = select_boxes(logits, boxes).float().cpu().numpy()
        self.iou_sum += float(paired_iou(pred, parts.target.cpu().numpy()).sum())
        self.seen += n

    def finish(self, stats: EpochStats) -> None:
        stats.n = self.seen
        if self.seen and not stats.aborted:
            stats.loss, stats.cls_loss, stats.box_loss = (self.sums / self.seen).tolist()
            stats.accuracy = self.correct / self.seen
            stats.mean_iou = self.iou_sum / self.seen


def train_one_epoch(
    forward,
    loader,
    optimizer,
    *,
    box_kind: str,
    box_weight: float,
    device: torch.device,
    box_target: str = "policy",
    scaler=None,
    scheduler=None,
    desc: str = "train",
    progress: bool = True,
    abort_above: float | None = None,
    explode_factor: float | None = None,
    prefetch: bool = True,
) -> EpochStats:
    """Train over ``loader`` once. ``forward(x) -> (logits, boxes)`` is either the
    whole network (x = images) or only its heads (x = cached features).
    ``abort_above``: stop the epoch as soon as a batch loss exceeds it or is NaN;
    ``explode_factor``: set ``abort_above`` from this epoch's first batch loss.
    ``prefetch``: fetch the next batch during this one's backward pass (``Prefetcher``;
    the same numbers either way)."""
    start = time.perf_counter()
    stats = EpochStats()
    ratio = UpdateRatio(optimizer)
    tally = _Tally()
    use_amp = scaler is not None
    batches = Prefetcher(loader) if prefetch else None
    bar = progress_bar(batches or loader, enabled=progress, total=len(loader), desc=desc, leave=False, unit="batch")
    for x, labels, targets in bar:
        x = channels_last(x.to(device, non_blocking=True), device)
        labels, targets = labels.to(device), targets.to(device)
        with torch.autocast(device.type, enabled=use_amp):
            logits, boxes = forward(x)
            parts = compute_loss(
                logits, boxes, labels, targets, box_kind=box_kind, box_weight=box_weight, box_target=box_target
            )
        if batches is not None:
            batches.fetch_next()  # after the forward's random draws (dropout), as a plain loop would draw them
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(parts.total.detach())
        if tally.seen == 0:
            stats.first_loss = loss_value
            if explode_factor is not None and math.isfinite(loss_value):
                abort_above = explode_factor * loss_value
        if not math.isfinite(loss_value) or (abort_above is not None and loss_value > abort_above):
            stats.aborted = True  # exploding: the caller decides what to do
            stats.loss = loss_value
            break
        ratio.before_step()
        if use_amp:
            scaler.scale(parts.total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            parts.total.backward()
            optimizer.step()
        ratio.after_step()
        if scheduler is not None:
            scheduler.step()
        tally.add(loss_value, parts, logits, boxes, labels)
        bar.set_postfix(loss=f"{loss_value:.3f}")
    bar.close()
    if batches is not None:
        batches.close()
    tally.finish(stats)
    stats.update_ratio = ratio.means()
    stats.seconds = time.perf_counter() - start
    return stats


# -- evaluation -------------------------------------------------------------------------


@torch.no_grad()
def predict(forward, loader, device: torch.device, *, amp: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (logits (N, C), selected boxes (N, 4) normalized xyxy, mean loss inputs unused)."""
    all_logits, all_boxes, all_raw = [], [], []
    for x, _, _ in loader:
        x = channels_last(x.to(device, non_blocking=True), device)
        with torch.autocast(device.type, enabled=amp):
            logits, boxes = forward(x)
        all_logits.append(logits.float().cpu())
        all_boxes.append(select_boxes(logits, boxes).float().cpu())
        all_raw.append(boxes.float().cpu())
    return torch.cat(all_logits).numpy(), torch.cat(all_boxes).numpy(), torch.cat(all_raw).numpy()


def evaluate(
    forward,
    loader,
    records,
    classes,
    device,
    *,
    box_kind: str,
    box_weight: float,
    box_target: str = "policy",
    amp: bool = False,
    keep_predictions: bool = False,
) -> dict:
    """Validation report from ``clsloc.metrics`` (the one definition), plus the validation loss.
    ``keep_predictions``: also each image's predicted label and pixel xyxy box (``"predictions"``, in
    ``records``' order), for breakdowns computed later."""
    logits, boxes, raw = predict(forward, loader, device, amp=amp)
    labels = torch.tensor([classes.index(r.label) for r in records])
    slots = box_slots(records)
    targets = torch.from_numpy(np.stack([pad_boxes(r.label_boxes_normalized, slots) for r in records]))
    parts = compute_loss(
        torch.from_numpy(logits),
        torch.from_numpy(raw),
        labels,
        targets,
        box_kind=box_kind,
        box_weight=box_weight,
        box_target=box_target,
    )
    pred_labels = [classes[i] for i in logits.argmax(1)]
    boxes_px = np.stack([denormalize_boxes(np.clip(b, 0, 1), r.width, r.height) for b, r in zip(boxes, records)])
    report = evaluate_records(records, pred_labels, boxes_px, classes)
    report["loss"] = float(parts.total)
    if keep_predictions:
        report["predictions"] = [
            {"image": str(r.image), "label": label, "box": [round(float(v), 2) for v in box]}
            for r, label, box in zip(records, pred_labels, boxes_px)
        ]
    return report


# -- what trains -------------------------------------------------------------------------


def set_backbone_trainable(
    model: nn.Module, trainable: bool, depth: float = 1.0, *, depthwise: bool = True, norm: bool = True
) -> None:
    """Train the top ``depth`` fraction of the backbone's parameter tensors (by order, so by depth).

    Leaving the bottom layers frozen also skips their backward pass, which is
    where fine-tuning spends most of its time on a CPU (large early maps).
    ``depthwise=False`` keeps the depthwise convolutions' filters as pretrained
    and ``norm=False`` the BatchNorm layers' scale and shift (detectron2's
    FrozenBatchNorm2d): few parameters, but on a CPU their gradients cost a
    large share of the fine-tuning step (oneDNN's depthwise weight gradient
    runs at a fraction of the dense convolutions' speed).
    """
    params = list(model.backbone.parameters())
    first_trained = len(params) - round(depth * len(params)) if trainable else len(params)
    for i, p in enumerate(params):
        p.requires_grad_(i >= first_trained)
    for module in model.backbone.modules():
        kept = (
            not depthwise
            and isinstance(module, nn.Conv2d)
            and module.groups > 1
            and module.groups == module.in_channels
        ) or (not norm and isinstance(module, nn.modules.batchnorm._BatchNorm))
        if kept:
            module.requires_grad_(False)

"""``clsloc train ... --sanity``: the lecture's first babysitting check.

With regularization off, an untrained classifier over C classes should be
unsure: its cross-entropy is about ln(C). The box term at initialization is
compared with the loss of a fixed centred box of half the image
(``clsloc.models.heads.PRIOR_BOX``: what an uninformed head predicts, and
where both box heads start). Then regularization is cranked up (L2 penalty
1e3 on the head weights, as in the lecture) and the loss must go up. Any
check that fails is printed in capitals and the command exits non-zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from clsloc.models.heads import PRIOR_BOX
from clsloc.training.config import TrainConfig
from clsloc.training.data import ImageStore, Splits
from clsloc.training.engine import box_loss, chosen_targets, compute_loss, l2_penalty, set_backbone_trainable

CE_TOLERANCE = 0.25  # |CE - ln C| <= 25 % of ln C
BOX_TOLERANCE = 3.0  # box term <= 3x the uninformed centred box's loss
CRANKED_REG = 1e3
MAX_IMAGES = 256


@dataclass
class SanityReport:
    classes: int
    ce: float
    expected_ce: float
    box: float
    expected_box: float
    loss: float
    loss_cranked: float
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def sanity_check(
    config: TrainConfig, splits: Splits, *, verbose: bool = True, cranked_reg: float = CRANKED_REG
) -> SanityReport:
    from clsloc.training.features import FeatureCache
    from clsloc.training.fit import model_for, pick_device, seed_everything

    device = pick_device(config.device)
    seed_everything(config.seed)
    classes = splits.classes
    model = model_for(config, len(classes), dropout=0.0).to(device)
    set_backbone_trainable(model, False)
    model.eval()  # regularization off: no dropout; batch statistics do not matter here
    records = splits.train[:MAX_IMAGES]
    store = ImageStore(model.preprocessing)
    store.load(records)
    data = FeatureCache().dataset(model, records, store, {c: i for i, c in enumerate(classes)}, device, progress=False)
    features, labels, targets = (t.to(device) for t in data.tensors)
    with torch.no_grad():
        logits, boxes = model.forward_heads(features)
        parts = compute_loss(logits, boxes, labels, targets, **config.loss_options())
        centred = torch.tensor(PRIOR_BOX, device=device).expand(len(targets), 4)
        expected_box = float(box_loss(centred, chosen_targets(centred, targets, config.box_target), config.box_loss))
        penalty = float(l2_penalty(model.head_parameters()))
    loss = float(parts.total)
    report = SanityReport(
        classes=len(classes),
        ce=float(parts.cls),
        expected_ce=math.log(len(classes)),
        box=float(parts.box),
        expected_box=expected_box,
        loss=loss,
        loss_cranked=loss + cranked_reg * penalty,
    )
    if not abs(report.ce - report.expected_ce) <= CE_TOLERANCE * report.expected_ce:
        report.failures.append(
            f"initial cross-entropy {report.ce:.4f} is not about ln({len(classes)}) = {report.expected_ce:.4f}: "
            "the classifier is confident before training (head initialization too large, or labels wrong?)"
        )
    if not (math.isfinite(report.box) and report.box <= BOX_TOLERANCE * expected_box):
        report.failures.append(
            f"initial box loss {report.box:.4f} is far above the uninformed centred box's {expected_box:.4f}"
        )
    if not report.loss_cranked > report.loss:
        report.failures.append(
            f"cranking regularization up ({cranked_reg:g}) did not raise the loss ({report.loss:.4f} -> {report.loss_cranked:.4f})"
        )
    if verbose:
        print(format_report(report, config, len(records), cranked_reg))
    return report


def format_report(r: SanityReport, config: TrainConfig, n: int, cranked_reg: float) -> str:
    lines = [
        f"sanity check on {n} training images, {r.classes} classes, untrained heads, regularization off:",
        f"  cross-entropy     {r.ce:.4f}   expected ln({r.classes}) = {r.expected_ce:.4f}",
        f"  box loss ({config.box_loss:<9}) {r.box:.4f}   uninformed centred box: {r.expected_box:.4f}",
        f"  total (CE + {config.box_weight:g} x box) {r.loss:.4f}   expected about {r.expected_ce + config.box_weight * r.expected_box:.4f}",
        f"  with regularization {cranked_reg:g}: {r.loss_cranked:.4f} ({'went up, good' if r.loss_cranked > r.loss else 'DID NOT GO UP'})",
    ]
    if r.passed:
        lines.append("sanity check passed")
    else:
        lines += [f"SANITY CHECK FAILED: {f}" for f in r.failures]
    return "\n".join(lines)

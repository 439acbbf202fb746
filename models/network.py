"""ClsLocNet: a pretrained backbone with a classification head and a box head."""

from __future__ import annotations

import torch
from torch import nn

from clsloc.boxes import mirror_boxes
from clsloc.models.backbones import get_backbone, trunk_stages
from clsloc.models.frozen import fold_batchnorm, fold_constant_norms, rng_devices
from clsloc.models.heads import BoxHead, ClassificationHead
from clsloc.models.refine import from_window, refine_windows, window_resampler
from clsloc.preprocess import Preprocessing


class ClsLocNet(nn.Module):
    """image (N, 3, H, W) -> (logits (N, C), boxes (N, K, 4) normalized xyxy).

    ``forward_features`` and ``forward_heads`` are split so training can cache
    the frozen backbone's features once and train the heads on them;
    ``forward_trunk`` / ``forward_top`` split the same way at any trunk stage,
    so fine-tuning can cache what its frozen bottom computes.

    In eval mode ``forward`` is the model as exported: with ``flip_tta`` each
    look averages the image and its mirror; with ``refine_context`` > 0 a
    second look at a window around the first box refines it
    (``clsloc.models.refine``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        channels: int,
        map_size: tuple[int, int],
        num_classes: int,
        *,
        attach: str = "map",
        per_class: bool = False,
        dropout: float = 0.2,
        backbone_name: str = "",
        preprocessing: Preprocessing | None = None,
        box_bins: int = 0,
        flip_tta: bool = False,
        refine_context: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.cls_head = ClassificationHead(channels, num_classes, dropout)
        self.box_head = BoxHead(
            channels, map_size, num_classes if per_class else 1, attach, dropout=dropout, bins=box_bins
        )
        self.flip_tta = flip_tta
        self.refine_context = refine_context
        self.num_classes = num_classes
        self.per_class = per_class
        self.attach = attach
        self.backbone_name = backbone_name
        self.preprocessing = preprocessing

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_head(features), self.box_head(features)

    def frozen_stages(self) -> int:
        """How many leading trunk stages have no trainable parameter: their output can be cached."""
        count = 0
        for stage in trunk_stages(self.backbone):
            if any(p.requires_grad for p in stage.parameters()):
                break
            count += 1
        return count

    def forward_trunk(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Trunk stages ``start`` to ``stop`` (exclusive; None = to the end) of ``trunk_stages``."""
        for stage in trunk_stages(self.backbone)[start:stop]:
            x = stage(x)
        return x

    def probe_input(self) -> torch.Tensor:
        """Two random images at the input size, on the model's device and in its memory format, for
        the checks of ``clsloc.models.frozen``. A local generator: training's random streams stay as they were."""
        param = next(self.backbone.parameters())
        probe = torch.randn(2, 3, *self.preprocessing.size, generator=torch.Generator().manual_seed(0))
        probe = probe.to(param.device)
        if param.device.type == "cpu":
            probe = probe.contiguous(memory_format=torch.channels_last)
        return probe

    def frozen_trunk(self) -> nn.Sequential:
        """The trunk's stages as a BatchNorm-folded inference snapshot (``clsloc.models.frozen``): what
        training runs where the trunk, or its bottom (slice it), stays frozen."""
        return fold_batchnorm(trunk_stages(self.backbone), self.probe_input())

    def top_with_constant_norms_folded(self, start: int) -> nn.Sequential:
        """Trunk stages ``start`` on as a training view (``clsloc.models.frozen.fold_constant_norms``): the
        same convolutions, the norm layers that cannot change folded into them. Freeze first."""
        probe = self.probe_input()
        with torch.no_grad(), torch.random.fork_rng(devices=rng_devices(probe)):  # drop path, if any, draws nothing
            probe = self.forward_trunk(probe, 0, start)
        return fold_constant_norms(trunk_stages(self.backbone)[start:], probe)

    def forward_top(self, activations: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The network from trunk stage ``start`` on: ``forward_top(forward_trunk(x, 0, k), k) == forward(x)``."""
        return self.forward_heads(self.forward_trunk(activations, start))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            return self.forward_heads(self.forward_features(x))
        logits, boxes = self._look(x)
        if self.refine_context:
            # The class is the whole image's; the box is the closer look's, mapped back to the image.
            windows = refine_windows(select_boxes(logits, boxes), self.refine_context)
            _, closer = self._look(window_resampler(x, windows))
            boxes = from_window(closer, windows)
        return logits, boxes

    def _look(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.flip_tta:
            return self._forward_flip_tta(x)
        return self.forward_heads(self.forward_features(x))

    def _forward_flip_tta(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Test-time augmentation: the image and its mirror in one batch, logits and boxes averaged
        (the mirror's boxes flipped back first)."""
        logits, boxes = self.forward_heads(self.forward_features(torch.cat([x, x.flip(-1)])))
        # Split the halves by reshaping with constant sizes: exported, that needs no Shape op of the input.
        logits = logits.view(2, -1, self.num_classes)
        plain, mirror = boxes.view(2, -1, self.box_head.num_boxes, 4).unbind(0)
        return 0.5 * (logits[0] + logits[1]), 0.5 * (plain + mirror_boxes(mirror))

    def head_parameters(self):
        return [*self.cls_head.parameters(), *self.box_head.parameters()]


def select_boxes(logits: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(N, K, 4) -> (N, 4): the only row of an agnostic head, or the predicted class's row."""
    if boxes.shape[1] == 1:
        return boxes[:, 0]
    index = logits.argmax(dim=1).view(-1, 1, 1).expand(-1, 1, 4)
    return boxes.gather(1, index).squeeze(1)


class ExportWrapper(nn.Module):
    """What is exported to ONNX: (logits (N, C), boxes (N, 4)) per the manifest's graph contract."""

    def __init__(self, model: ClsLocNet):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, boxes = self.model(image)
        return logits, select_boxes(logits, boxes).clamp(0.0, 1.0)


def build_model(
    backbone: str = "efficientnet_lite0",
    num_classes: int = 2,
    *,
    attach: str = "map",
    per_class: bool = False,
    pretrained: bool = True,
    dropout: float = 0.2,
    input_size: int | None = None,
    box_bins: int = 0,
    flip_tta: bool = False,
    refine_context: float = 0.0,
) -> ClsLocNet:
    """Build a ClsLocNet. ``input_size`` overrides the backbone's (small sizes make fast tests)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    spec = get_backbone(backbone)
    trunk, channels = spec.build(pretrained)
    preprocessing = spec.preprocessing(input_size)
    # The box head's fully connected layer needs the feature map's size at this input size.
    trunk.eval()
    with torch.no_grad():
        map_size = tuple(trunk(torch.zeros(1, 3, *preprocessing.size)).shape[-2:])
    return ClsLocNet(
        trunk,
        channels,
        map_size,
        num_classes,
        attach=attach,
        per_class=per_class,
        dropout=dropout,
        backbone_name=backbone,
        preprocessing=preprocessing,
        box_bins=box_bins,
        flip_tta=flip_tta,
        refine_context=refine_context,
    )

"""The two heads of the lecture's recipe: class scores and a box regression head.

The box head outputs boxes normalized to the image, as xyxy in [0, 1]. With
``bins=0`` a sigmoid gives centre and size in [0, 1], converted to corners;
with ``bins=N`` (training's default, 16) each corner coordinate is the
expectation of a softmax over N evenly spaced positions (as in GFL's
distribution heads). Trained
with L2 (MSE) on the corners by default.

Both start from the same uninformed answer, the centred box of half the
image side (:data:`PRIOR_BOX`): the sigmoid head because sigmoid(0) = 0.5
for centre and size, the binned head because its last layer's bias is set
so (:func:`tilted_logits`). Without that the binned head's softmax starts
uniform, every corner at 0.5, a box of no size at the centre whose L2 is
several times that of any reasonable constant box (the lecture's first
babysitting check, ``clsloc train --sanity``, fails on it).

Where the box head attaches is a choice (``docs/benchmarks.md`` compares both):
on the spatial feature map (``attach="map"``) it keeps *where* features fired;
on pooled features (``attach="pooled"``) that information is averaged away.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert

PRIOR_BOX = (0.25, 0.25, 0.75, 0.75)  # normalized xyxy: centred, half the image side


def tilted_logits(positions: torch.Tensor, mean: float) -> torch.Tensor:
    """Logits ``t * positions`` whose softmax has expectation ``mean`` over ``positions``.

    Of all distributions over the bins with that mean, this exponential tilt is
    the one of maximum entropy: it commits to the mean and to nothing else, so
    every bin still gets gradient, as from a uniform start.
    """
    positions = positions.double()
    low, high = -1e3, 1e3  # the mean grows monotonically with t: bisect
    for _ in range(100):
        t = 0.5 * (low + high)
        if float((torch.softmax(t * positions, 0) * positions).sum()) < mean:
            low = t
        else:
            high = t
    return (0.5 * (low + high) * positions).float()


class ClassificationHead(nn.Module):
    """Global average pool -> dropout -> linear: the fine-tuned classifier."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(features), 1)))


class BoxHead(nn.Module):
    """Regression head: feature map -> (N, K, 4) normalized xyxy boxes.

    K is 1 for a class-agnostic head, C for a per-class head (the row of the
    predicted class is used at test time, see ``clsloc.models.network.select_boxes``).
    """

    def __init__(
        self,
        channels: int,
        map_size: tuple[int, int],
        num_boxes: int = 1,
        attach: str = "map",
        hidden: int = 256,
        reduced: int = 64,
        dropout: float = 0.2,
        bins: int = 0,
    ):
        super().__init__()
        if attach not in ("map", "pooled"):
            raise ValueError(f"attach must be 'map' or 'pooled', got {attach!r}")
        self.attach = attach
        self.num_boxes = num_boxes
        self.bins = bins
        if attach == "map":
            # A 1x1 conv shrinks channels so the fully connected layer sees every position.
            self.reduce = nn.Sequential(
                nn.Conv2d(channels, reduced, kernel_size=1, bias=False), nn.BatchNorm2d(reduced), nn.ReLU(inplace=True)
            )
            in_features = reduced * map_size[0] * map_size[1]
        else:
            self.reduce = nn.AdaptiveAvgPool2d(1)
            in_features = channels
        self.mlp = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_boxes * 4 * max(1, bins)),
        )
        if bins:
            self.register_buffer("positions", torch.linspace(0.0, 1.0, bins), persistent=False)
            self.start_at_prior()

    @torch.no_grad()
    def start_at_prior(self) -> None:
        """Set the binned head's last bias so an untrained head answers :data:`PRIOR_BOX`."""
        corner = torch.stack([tilted_logits(self.positions, float(v)) for v in PRIOR_BOX])  # (4, bins)
        self.mlp[-1].bias.copy_(corner.repeat(self.num_boxes, 1).flatten())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.reduce(features))
        if self.bins:
            # Each corner coordinate is the expectation of a softmax over `bins` positions in [0, 1].
            probs = torch.softmax(out.view(-1, self.num_boxes, 4, self.bins).float(), dim=-1)
            return (probs * self.positions).sum(-1)
        cxcywh = torch.sigmoid(out).view(-1, self.num_boxes, 4)
        return box_convert(cxcywh, "cxcywh", "xyxy")

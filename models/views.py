"""Views of a ClsLocNet that training runs: its heads alone, its top above a frozen bottom.

Training caches what the frozen part of the network computes and trains only
what comes after it. These small modules are that "after": each is the same
function as the corresponding part of the whole network (up to float rounding
where norm layers are folded), wrapped as a module so DDP can wrap it too.
"""

from __future__ import annotations

import torch
from torch import nn


class Heads(nn.Module):
    """The heads alone, on the whole trunk's features (stage 1 on cached features)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return self.model.forward_heads(features)


class Top(nn.Module):
    """The network above its frozen bottom: trunk stages ``start`` on, then the heads.

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
    """Fresh images through the frozen bottom's inference snapshot (no autograd graph, BatchNorm
    folded), then the top that trains: the whole network's function up to float rounding."""

    def __init__(self, bottom: nn.Module, top):
        self.bottom, self.top = bottom, top

    def __call__(self, x):
        with torch.no_grad():
            x = self.bottom(x)
        return self.top(x)

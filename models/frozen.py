"""Inference copies of frozen trunk stages, with BatchNorm folded into the convolutions.

Training runs the frozen part of the backbone thousands of times (stage 1's
feature views, stage 2's bottom under every fresh augmentation) with
BatchNorm on its ImageNet statistics, i.e. an affine map per channel right
after a convolution. Folded into the convolution's weights and bias
(``torch.nn.utils.fusion.fuse_conv_bn_eval``), it costs nothing: measured on
the 2-core CPU, Lite0 at 256 px, batch 32, the whole trunk 14.5 instead of
18.4 ms per image and the bottom that stage 2 keeps frozen 9.1 instead of
10.8. The result differs from the unfolded network by float rounding only
(about 1e-6 of the activations' scale); ``fold_batchnorm`` checks that on a
probe input and keeps the unfolded copy when the architecture's module order
does not allow it.

The copy shares nothing with the model: it is a snapshot, valid while the
stages it was made from stay frozen.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger("clsloc.models")

# Largest |folded - unfolded| allowed on the probe input, relative to the output's scale.
FOLD_TOLERANCE = 1e-4


def _after_batchnorm(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of a norm layer once its affine map is in the conv: timm's BatchNormAct2d
    also holds the activation (and a dropout), torchvision's plain BatchNorm2d nothing."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    return nn.Sequential(*rest) if rest else nn.Identity()


def _fold_in_place(module: nn.Module) -> int:
    """Fold every BatchNorm2d registered right after a Conv2d in the same parent (the order
    torchvision's and timm's blocks run them in). -> number of pairs folded."""
    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for conv_name, bn_name in zip(names, names[1:]):
            conv, bn = parent._modules[conv_name], parent._modules[bn_name]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and bn.num_features == conv.out_channels):
                parent._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                parent._modules[bn_name] = _after_batchnorm(bn)
                folded += 1
    return folded


def fold_batchnorm(stages: list[nn.Module], probe: torch.Tensor) -> nn.Sequential:
    """An eval-mode copy of ``stages`` (run in order) with BatchNorm folded into the convs;
    ``copy[:k]`` computes what ``stages[:k]`` do.

    ``probe``: an input batch for the check; its device and memory format are
    kept. Falls back to the plain copy (logged) if folding changed the output
    by more than rounding, e.g. for an architecture that registers a norm
    layer after a conv it does not follow.
    """
    plain = copy.deepcopy(nn.Sequential(*stages)).eval().requires_grad_(False)
    folded = copy.deepcopy(plain)
    # Within each stage only: a stage boundary between a conv and its norm layer (torchvision's
    # ResNet stem registers conv1 and bn1 as stages of their own) must stay one, so slices of the
    # snapshot compute what the same slices of the trunk do.
    if sum(_fold_in_place(stage) for stage in folded) == 0:
        return plain
    folded.requires_grad_(False)  # the folded convs are new parameters
    if probe.device.type == "cpu":
        folded.to(memory_format=torch.channels_last)  # the folded weights are new tensors
    with torch.no_grad():
        want, got = plain(probe), folded(probe)
    scale = float(want.abs().max()) or 1.0
    error = float((want - got).abs().max()) / scale
    if not error <= FOLD_TOLERANCE:
        log.warning("BatchNorm folding changed the frozen trunk's output by %.1e (relative); running it unfolded", error)
        return plain
    return folded

"""Frozen BatchNorm folded into the convolutions before it: inference snapshots of
frozen trunk stages, and training views of the stages being fine-tuned.

Training runs the frozen part of the backbone thousands of times (stage 1's
feature views, stage 2's bottom under every fresh augmentation) with
BatchNorm on its ImageNet statistics, i.e. an affine map per channel right
after a convolution. Folded into the convolution's weights and bias
(``torch.nn.utils.fusion.fuse_conv_bn_eval``), it costs nothing, and the
norm layers' own passes over the activations go. The result differs from the unfolded network by float rounding only
(about 1e-6 of the activations' scale); ``fold_batchnorm`` checks that on a
probe input and keeps the unfolded copy when the architecture's module order
does not allow it.

The copy shares nothing with the model: it is a snapshot, valid while the
stages it was made from stay frozen.

Fine-tuning trains the convolutions of the top but, by default, keeps
BatchNorm whole: its statistics and its scale and shift. A norm layer that
cannot change is again a constant affine map, so ``fold_constant_norms``
gives a training view of the top in which each such pair runs as one
convolution of the trained weight times the norm's scale, with the norm's
shift as bias. The view shares the model's convolutions (training it trains
them); only the norm layers' work goes.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger("clsloc.models")

# Largest |folded - unfolded| allowed on the probe input, relative to the output's scale.
FOLD_TOLERANCE = 1e-4


def _after_batchnorm(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of a norm layer once its affine map is in the conv: timm's BatchNormAct2d
    also holds the activation (and a dropout), torchvision's plain BatchNorm2d nothing."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    return nn.Sequential(*rest) if rest else nn.Identity()


def _fold_in_place(module: nn.Module, fuse=fuse_conv_bn_eval, foldable=lambda bn: True) -> int:
    """Fold every BatchNorm2d registered right after a Conv2d in the same parent (the order
    torchvision's and timm's blocks run them in) and ``foldable``: the pair becomes
    ``fuse(conv, bn)`` and what follows the norm. -> number of pairs folded."""
    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for conv_name, bn_name in zip(names, names[1:]):
            conv, bn = parent._modules[conv_name], parent._modules[bn_name]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.num_features == conv.out_channels
                and foldable(bn)
            ):
                parent._modules[conv_name] = fuse(conv, bn)
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
    error = _relative_error(plain, folded, probe)
    if not error <= FOLD_TOLERANCE:
        log.warning(
            "BatchNorm folding changed the frozen trunk's output by %.1e (relative); running it unfolded", error
        )
        return plain
    return folded


def rng_devices(tensor: torch.Tensor) -> list[int]:
    """The CUDA devices whose random state work on ``tensor`` may draw from (``fork_rng``'s devices)."""
    return [tensor.device.index or 0] if tensor.device.type == "cuda" else []


def _relative_error(plain: nn.Module, folded: nn.Module, probe: torch.Tensor) -> float:
    """max |folded(probe) - plain(probe)| / max |plain(probe)|, both with the same random draws
    (drop path in training mode) and none used up from training's streams."""
    with torch.no_grad(), torch.random.fork_rng(devices=rng_devices(probe)):
        torch.manual_seed(0)
        want = plain(probe)
        torch.manual_seed(0)
        got = folded(probe)
    scale = float(want.abs().max()) or 1.0
    return float((want - got).abs().max()) / scale


class ConvConstantNorm(nn.Module):
    """A convolution and the BatchNorm after it that cannot change, run as one convolution.

    The norm's affine map y = scale * conv(x) + shift is taken once, at
    construction; the weight stays the conv's own (trained), multiplied by the
    scale on every call, so its gradient is the unfolded pair's.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv = conv
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
        self.register_buffer("scale", scale.reshape(-1, 1, 1, 1).clone())
        self.register_buffer("shift", shift.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.shift if self.conv.bias is None else self.shift + self.conv.bias * self.scale.flatten()
        # The conv's own forward (timm's Conv2dSame pads on the fly) with the scaled weight and the shift.
        return functional_call(self.conv, {"weight": self.conv.weight * self.scale, "bias": bias}, (x,))


def _constant(bn: nn.BatchNorm2d) -> bool:
    """Statistics frozen (eval mode) and scale and shift not trained."""
    return not bn.training and not any(p.requires_grad for p in bn.parameters(recurse=False))


def _view(module: nn.Module) -> nn.Module:
    """A copy of the module tree whose leaves (and norm layers, whole) are the original modules:
    parameters, buffers and train/eval state shared; only the containers are new."""
    if not module._modules or isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module
    copied = copy.copy(module)
    copied._modules = {name: None if child is None else _view(child) for name, child in module._modules.items()}
    return copied


def fold_constant_norms(stages: list[nn.Module], probe: torch.Tensor) -> nn.Sequential:
    """A training view of ``stages`` (run in order): the same convolutions, the norm layers that
    cannot change (eval mode, scale and shift frozen: call after freezing them) folded into
    them (``ConvConstantNorm``). Pairs with a norm layer that trains stay as they are.

    ``probe``: an input of the first stage, for the check ``fold_batchnorm``
    makes too; if the fold changed the output by more than rounding, the
    stages are returned as they are (logged).
    """
    plain = nn.Sequential(*stages)
    view = nn.Sequential(*[_view(stage) for stage in stages])
    if _fold_in_place(view, fuse=ConvConstantNorm, foldable=_constant) == 0:
        return plain
    error = _relative_error(plain, view, probe)
    if not error <= FOLD_TOLERANCE:
        log.warning("folding the constant norm layers changed the output by %.1e (relative); training unfolded", error)
        return plain
    return view

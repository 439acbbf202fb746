"""models.frozen: the frozen trunk's BatchNorm-folded snapshot computes what the trunk computes."""

import logging

import pytest
import torch
from torch import nn

from models import build_model
from models.frozen import fold_batchnorm

torch.set_num_threads(2)


def randomize_batchnorm(model: nn.Module) -> None:
    """Statistics and affine parameters far from the identity, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_frozen_trunk_folds_every_batchnorm_and_keeps_the_function(backbone):
    model = build_model(backbone, 2, pretrained=False, input_size=64)
    randomize_batchnorm(model)
    model.eval()
    frozen = model.frozen_trunk()
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    # all folded; only torchvision's ResNet stem keeps bn1, a trunk stage of its own after the stage conv1
    assert left == (1 if backbone == "resnet18" else 0) and norms > 10
    assert not any(p.requires_grad for p in frozen.parameters())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        for k in range(1, len(frozen) + 1):  # every slice a training may cut: the bottom it keeps frozen
            want = model.forward_trunk(x, 0, k)
            got = frozen[:k](x)
            assert (got - want).abs().max() <= 1e-4 * want.abs().max(), k
        # a snapshot: training the model afterwards does not move it
        before = frozen(x)
        for p in model.backbone.parameters():
            p.add_(1.0)
        torch.testing.assert_close(frozen(x), before)


class NormAfterTheFact(nn.Module):
    """A conv registered right before a norm layer that does not simply follow it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_folding_checks_its_result_and_keeps_the_plain_copy_when_wrong(caplog):
    module = NormAfterTheFact()
    randomize_batchnorm(module)
    module.eval()
    x = torch.randn(2, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="clsloc.models"):
        frozen = fold_batchnorm([module], x)
    assert "running it unfolded" in caplog.text
    assert any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), module(x))

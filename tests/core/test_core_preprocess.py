"""Preprocessing: the Lite normalization, stretch resize keeps normalized boxes, manifest round trip."""

import json

import numpy as np
import pytest

from clsloc.preprocess import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, Preprocessing


def test_lite_normalization_maps_0_and_255_to_about_minus_and_plus_one():
    pre = Preprocessing(size=(4, 4), mean=LITE_MEAN, std=LITE_STD)
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, 2:] = 255
    x = pre(image)
    assert x.shape == (3, 4, 4) and x.dtype == np.float32 and x.flags.c_contiguous
    assert x[:, :, :2] == pytest.approx(-1.0, abs=0.01)
    assert x[:, :, 2:] == pytest.approx(1.0, abs=0.01)


def test_imagenet_normalization_by_channel():
    pre = Preprocessing(size=(2, 2), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    x = pre(np.full((2, 2, 3), 255, np.uint8))
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert x[:, 0, 0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mean, std", [(LITE_MEAN, LITE_STD), (IMAGENET_MEAN, IMAGENET_STD)])
def test_uint8_lookup_equals_the_arithmetic_bit_for_bit_per_image_and_per_batch(mean, std):
    """normalize() looks uint8 values up in a table; float input takes the formula. Same numbers."""
    pre = Preprocessing(size=(17, 19), mean=mean, std=std)
    images = np.random.default_rng(0).integers(0, 256, (4, 17, 19, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 128, 255)
    formula = np.moveaxis((images / np.float32(255.0) - np.float32(mean)) / np.float32(std), -1, -3)
    batch = pre.normalize(images)
    assert batch.shape == (4, 3, 17, 19) and batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, pre.normalize(images.astype(np.float32)))  # table vs formula path
    np.testing.assert_allclose(batch, formula, rtol=1e-6)
    np.testing.assert_array_equal(pre.normalize(images[2]), batch[2])
    np.testing.assert_array_equal(pre.normalize(images[:, ::-1])[1], batch[1][:, ::-1])  # strided views too


def test_a_pillow_image_and_its_array_give_the_same_input():
    from PIL import Image

    pre = Preprocessing(size=(32, 48))
    array = np.random.default_rng(1).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pre(Image.fromarray(array)), pre(array))
    same_size = np.random.default_rng(2).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pre(Image.fromarray(same_size)), pre(same_size))


def test_stretch_resize_keeps_a_normalized_box():
    # a white block at normalized (0.25, 0.5)-(0.75, 1.0) of a 200x100 image stays there at 64x32 input
    image = np.zeros((100, 200, 3), np.uint8)
    image[50:100, 50:150] = 255
    pre = Preprocessing(size=(32, 64))
    resized = pre.resize_image(image)
    assert resized.shape == (32, 64, 3) and resized.dtype == np.uint8
    ys, xs = np.nonzero(resized[..., 0] > 127)
    box = [xs.min() / 64, ys.min() / 32, (xs.max() + 1) / 64, (ys.max() + 1) / 32]
    assert box == pytest.approx([0.25, 0.5, 0.75, 1.0], abs=1 / 32)
    assert pre.resize_image(resized) is resized  # already at input size: untouched


def test_batch_of_mixed_sizes():
    pre = Preprocessing(size=(16, 24))
    batch = pre.batch([np.zeros((10, 10, 3), np.uint8), np.full((40, 7, 3), 255, np.uint8)])
    assert batch.shape == (2, 3, 16, 24) and batch.dtype == np.float32
    assert batch[0].max() < 0 < batch[1].min()


def test_dict_round_trip_and_bad_values():
    pre = Preprocessing(size=(240, 240), interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    d = json.loads(json.dumps(pre.to_dict()))
    assert Preprocessing.from_dict(d) == pre
    with pytest.raises(ValueError, match="unknown preprocessing fields"):
        Preprocessing.from_dict({**d, "crop": 0.875})
    with pytest.raises(ValueError, match="resize policy"):
        Preprocessing(resize="letterbox")
    with pytest.raises(ValueError, match="size"):
        Preprocessing(size=(224,))
    with pytest.raises(ValueError, match="std"):
        Preprocessing(std=(0.5, 0.0, 0.5))

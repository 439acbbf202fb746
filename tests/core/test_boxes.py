"""Boxes: hand-computed cases, and properties against torchvision.ops on random boxes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from clsloc.boxes import (
    box_area,
    box_iou,
    clip_boxes,
    convert_boxes,
    denormalize_boxes,
    mirror_boxes,
    normalize_boxes,
    paired_iou,
    to_api_box,
)


def test_convert_by_hand():
    xyxy = np.array([10.0, 20.0, 50.0, 80.0])
    assert convert_boxes(xyxy, "xyxy", "xywh").tolist() == [10, 20, 40, 60]
    assert convert_boxes(xyxy, "xyxy", "cxcywh").tolist() == [30, 50, 40, 60]
    assert convert_boxes([30, 50, 40, 60], "cxcywh", "xyxy").tolist() == [10, 20, 50, 80]
    assert convert_boxes([10, 20, 40, 60], "xywh", "cxcywh").tolist() == [30, 50, 40, 60]


def test_convert_rejects_unknown_format_and_bad_shape():
    with pytest.raises(ValueError, match="xyhw"):
        convert_boxes([0, 0, 1, 1], "xyhw", "xyxy")
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        convert_boxes([0, 0, 1], "xyxy", "xywh")


def test_normalize_roundtrip_and_float32_kept():
    px = np.array([[0, 0, 640, 480], [64, 48, 320, 240]], dtype=np.float32)
    norm = normalize_boxes(px, 640, 480)
    assert norm.dtype == np.float32
    np.testing.assert_allclose(norm, [[0, 0, 1, 1], [0.1, 0.1, 0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(denormalize_boxes(norm, 640, 480), px, rtol=1e-6)
    with pytest.raises(ValueError, match="width=0"):
        normalize_boxes(px, 0, 480)


def test_clip_area_iou_by_hand():
    np.testing.assert_allclose(clip_boxes([[-0.2, 0.1, 1.3, 0.9]]), [[0, 0.1, 1, 0.9]])
    np.testing.assert_allclose(clip_boxes([[-5, -5, 700, 500]], 640, 480), [[0, 0, 640, 480]])
    assert box_area([[0, 0, 2, 3], [5, 5, 4, 4]]).tolist() == [6, 0]  # inverted counts as empty
    # 10x10 squares overlapping in a 5x10 strip: 50 / (100 + 100 - 50) = 1/3
    iou = box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(iou, [[1 / 3, 0, 1]])
    np.testing.assert_allclose(
        paired_iou([[0, 0, 10, 10], [0, 0, 2, 2]], [[5, 0, 15, 10], [0, 0, 1, 1]]), [1 / 3, 0.25]
    )
    # two empty boxes: IoU 0, not NaN
    assert paired_iou([[1, 1, 1, 1]], [[1, 1, 1, 1]]).tolist() == [0.0]


def test_mirror_boxes_follows_the_mirrored_pixels_for_numpy_and_torch():
    # object on pixel columns 2-4 and rows 1-3 of a 10 x 5 image; mirrored, it covers columns 5-7
    mask = np.zeros((5, 10), bool)
    mask[1:4, 2:5] = True
    flipped = mask[:, ::-1]
    cols, rows = np.flatnonzero(flipped.any(0)), np.flatnonzero(flipped.any(1))
    expected = np.array([cols[0] / 10, rows[0] / 5, (cols[-1] + 1) / 10, (rows[-1] + 1) / 5], dtype=np.float32)
    box = np.array([0.2, 0.2, 0.5, 0.8], dtype=np.float32)
    mirrored = mirror_boxes(box)
    assert mirrored.dtype == np.float32
    np.testing.assert_allclose(mirrored, expected, atol=1e-7)
    batch = np.stack([box, [0.0, 0.0, 1.0, 1.0]]).astype(np.float32)
    np.testing.assert_allclose(mirror_boxes(mirror_boxes(batch)), batch, atol=1e-7)  # mirroring twice undoes it
    torch = pytest.importorskip("torch")
    as_tensor = mirror_boxes(torch.from_numpy(batch))
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), mirror_boxes(batch))


def test_to_api_box_pixels_top_left_clipped():
    assert to_api_box([0.1, 0.2, 0.5, 0.6], 200, 100) == {"x": 20.0, "y": 20.0, "w": 80.0, "h": 40.0}
    clipped = to_api_box([-0.1, 0.5, 1.2, 1.5], 200, 100)
    assert clipped == {"x": 0.0, "y": 50.0, "w": 200.0, "h": 50.0}
    inverted = to_api_box([0.6, 0.5, 0.4, 0.7], 100, 100)
    assert inverted["w"] == 0.0 and inverted["x"] == 60.0
    assert all(isinstance(v, float) for v in clipped.values())


# -- properties against torchvision -------------------------------------------------------

torch = pytest.importorskip("torch")
ops = pytest.importorskip("torchvision.ops")

coords = st.floats(min_value=0, max_value=1000, allow_nan=False, width=32)


def valid_xyxy(n_min=1, n_max=8):
    """Random well-formed xyxy boxes (x1 >= x0, y1 >= y0), degenerate ones included."""
    raw = arrays(np.float64, st.tuples(st.integers(n_min, n_max), st.just(4)), elements=coords)
    return raw.map(lambda a: np.concatenate([np.minimum(a[:, :2], a[:, 2:]), np.maximum(a[:, :2], a[:, 2:])], axis=1))


@settings(max_examples=60, deadline=None)
@given(valid_xyxy(), valid_xyxy())
def test_box_iou_matches_torchvision(a, b):
    expected = ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    expected = np.nan_to_num(expected, nan=0.0)  # torchvision gives NaN for two empty boxes; we say 0
    np.testing.assert_allclose(box_iou(a, b), expected, atol=1e-9)
    n = min(len(a), len(b))
    np.testing.assert_allclose(paired_iou(a[:n], b[:n]), np.diag(box_iou(a[:n], b[:n])), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(valid_xyxy(), st.sampled_from(["xywh", "cxcywh"]))
def test_convert_matches_torchvision_and_roundtrips(boxes, fmt):
    ours = convert_boxes(boxes, "xyxy", fmt)
    theirs = ops.box_convert(torch.from_numpy(boxes), "xyxy", fmt).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)
    back = convert_boxes(ours, fmt, "xyxy")
    np.testing.assert_allclose(back, boxes, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        convert_boxes(theirs, fmt, "xyxy"), ops.box_convert(torch.from_numpy(theirs), fmt, "xyxy").numpy(), atol=1e-9
    )


@settings(max_examples=40, deadline=None)
@given(valid_xyxy(), st.integers(1, 4000), st.integers(1, 4000))
def test_normalize_denormalize_roundtrip_and_clip_bounds(boxes, width, height):
    np.testing.assert_allclose(
        denormalize_boxes(normalize_boxes(boxes, width, height), width, height), boxes, rtol=1e-9
    )
    clipped = clip_boxes(normalize_boxes(boxes, width, height))
    assert clipped.min() >= 0 and clipped.max() <= 1
    api = to_api_box(clipped[0], width, height)
    assert 0 <= api["x"] <= width and 0 <= api["y"] <= height
    assert api["x"] + api["w"] <= width + 1e-6 and api["y"] + api["h"] <= height + 1e-6

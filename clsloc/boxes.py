"""Boxes: one internal convention and the conversions to and from it.

Internal convention: **normalized xyxy** floats in [0, 1] — ``(x0, y0, x1, y1)``
as fractions of the image width and height, continuous coordinates (the
left edge of the image is 0, the right edge is 1). The network's ``boxes``
output, stored targets and the manifest's ``box_format`` all use it. The
HTTP API speaks ``{"x", "y", "w", "h"}`` in pixels of the displayed image
(top-left corner, width, height): :func:`to_api_box`.

Everything works on arrays of shape ``(..., 4)`` with numpy broadcasting, so a
single box and a batch go through the same code.
"""

from __future__ import annotations

import numpy as np

FORMATS = ("xyxy", "xywh", "cxcywh")


def _as_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)  # float32 stays float32 (the network's output); ints become floats
    if arr.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got {arr.shape}")
    return arr


def convert_boxes(boxes, in_fmt: str, out_fmt: str) -> np.ndarray:
    """Convert between ``xyxy``, ``xywh`` (top-left corner) and ``cxcywh``; units unchanged."""
    for fmt in (in_fmt, out_fmt):
        if fmt not in FORMATS:
            raise ValueError(f"unknown box format {fmt!r} (known: {', '.join(FORMATS)})")
    b = _as_boxes(boxes)
    if in_fmt == out_fmt:
        return b.copy()
    a0, a1, a2, a3 = np.moveaxis(b, -1, 0)
    if in_fmt == "xyxy":
        x0, y0, x1, y1 = a0, a1, a2, a3
    elif in_fmt == "xywh":
        x0, y0, x1, y1 = a0, a1, a0 + a2, a1 + a3
    else:  # cxcywh
        x0, y0, x1, y1 = a0 - a2 / 2, a1 - a3 / 2, a0 + a2 / 2, a1 + a3 / 2
    if out_fmt == "xyxy":
        out = (x0, y0, x1, y1)
    elif out_fmt == "xywh":
        out = (x0, y0, x1 - x0, y1 - y0)
    else:
        out = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
    return np.stack(out, axis=-1)


def _scale(width, height, dtype) -> np.ndarray:
    return np.array([width, height, width, height], dtype=dtype)


def normalize_boxes(boxes_xyxy_px, width, height) -> np.ndarray:
    """Pixel xyxy -> normalized xyxy (divide by the image size; no clipping)."""
    b = _as_boxes(boxes_xyxy_px)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width} height={height}")
    return b / _scale(width, height, b.dtype)


def denormalize_boxes(boxes_xyxy_norm, width, height) -> np.ndarray:
    """Normalized xyxy -> pixel xyxy (multiply by the image size; no clipping)."""
    b = _as_boxes(boxes_xyxy_norm)
    return b * _scale(width, height, b.dtype)


def clip_boxes(boxes_xyxy, width=1.0, height=1.0) -> np.ndarray:
    """Clip xyxy boxes to ``[0, width] x [0, height]`` (defaults: normalized)."""
    b = _as_boxes(boxes_xyxy)
    return np.clip(b, 0, _scale(width, height, b.dtype))


def mirror_boxes(boxes_xyxy_norm):
    """Normalized xyxy boxes of the horizontally mirrored image: x -> 1 - x, so the corners swap.

    Takes a numpy array or a torch tensor of shape ``(..., 4)`` and returns the
    same kind and dtype: the stage-1 mirror view flips numpy boxes, the
    network's test-time mirror pass flips tensors inside the exported graph.
    """
    x0, y0, x1, y1 = (boxes_xyxy_norm[..., i] for i in range(4))
    parts = [1.0 - x1, y0, 1.0 - x0, y1]
    if isinstance(boxes_xyxy_norm, np.ndarray):
        return np.stack(parts, axis=-1)
    import torch  # a tensor came in, so torch is installed; the core itself does not need it

    return torch.stack(parts, dim=-1)


def box_area(boxes_xyxy) -> np.ndarray:
    """Area of xyxy boxes; inverted boxes count as 0."""
    b = _as_boxes(boxes_xyxy)
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[..., :2], b[..., :2])
    rb = np.minimum(a[..., 2:], b[..., 2:])
    wh = np.clip(rb - lt, 0, None)
    return wh[..., 0] * wh[..., 1]


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # Two empty boxes have IoU 0 (not NaN): a degenerate prediction is simply wrong.
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.result_type(num, np.float32)), where=den > 0)


def box_iou(a, b) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), xyxy -> (N, M)."""
    a = _as_boxes(a).reshape(-1, 4)
    b = _as_boxes(b).reshape(-1, 4)
    inter = _intersection(a[:, None, :], b[None, :, :])
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return _safe_div(inter, union)


def paired_iou(a, b) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]``, xyxy (N, 4) and (N, 4) -> (N,)."""
    a = _as_boxes(a)
    b = _as_boxes(b)
    inter = _intersection(a, b)
    union = box_area(a) + box_area(b) - inter
    return _safe_div(inter, union)


def to_api_box(box_xyxy_norm, width, height) -> dict[str, float]:
    """One normalized xyxy box -> ``{"x", "y", "w", "h"}`` in pixels, clipped to the image.

    ``width``/``height`` are the size of the image as displayed (EXIF applied),
    which is what the caller sees.
    """
    b = np.asarray(box_xyxy_norm, dtype=np.float64).reshape(4)
    px = clip_boxes(denormalize_boxes(b, width, height), width, height)
    # An inverted prediction (x1 < x0) becomes an empty box at x0 rather than a negative width.
    x0, y0 = px[0], px[1]
    x1, y1 = max(px[2], x0), max(px[3], y0)
    return {"x": float(x0), "y": float(y0), "w": float(x1 - x0), "h": float(y1 - y0)}

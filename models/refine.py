"""The refining pass: look again, closer, where the first pass put the box.

The first pass sees the whole image at the input size; the box it finds is
then cut out of the input with some context around it (``context`` x the
box's longer side, a square, kept inside the image), resampled to the input
size, and the same network regresses the box again on that closer view. The
refined box, mapped back to the image, replaces the first; the class stays
the first pass's, which saw the whole image.

The window is square in the input's coordinates, so the object keeps the
aspect ratio the network saw it with in training; a box whose window would
reach past the image gets the whole image (a second look at the same view).
Resampling is bilinear, written as two matrix products per image
(``window_resampler``): plain MatMul in the exported graph, differentiable,
and the identity for the whole-image window.
"""

from __future__ import annotations

import torch

MIN_SIDE = 0.1  # of the image side: a tiny first box still gets a window with something in it


def refine_windows(boxes: torch.Tensor, context: float) -> torch.Tensor:
    """(N, 4) normalized xyxy boxes -> (N, 4) square windows around them, inside [0, 1]."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    side = (torch.maximum(x1 - x0, y1 - y0).clamp(min=MIN_SIDE) * context).clamp(max=1.0)
    left = ((x0 + x1 - side) * 0.5).clamp(min=0.0)
    top = ((y0 + y1 - side) * 0.5).clamp(min=0.0)
    left = torch.minimum(left, 1.0 - side)
    top = torch.minimum(top, 1.0 - side)
    return torch.stack([left, top, left + side, top + side], dim=-1)


def _axis_weights(start: torch.Tensor, end: torch.Tensor, size_in: int, size_out: int) -> torch.Tensor:
    """(N,) window edges on one axis -> (N, size_out, size_in) bilinear weights (pixel centres,
    torch's ``align_corners=False`` convention; past the outer pixel centres the edge pixel repeats)."""
    steps = (torch.arange(size_out, dtype=start.dtype, device=start.device) + 0.5) / size_out
    source = (start[:, None] + steps[None] * (end - start)[:, None]) * size_in - 0.5  # (N, size_out)
    source = source.clamp(0.0, size_in - 1.0)
    pixels = torch.arange(size_in, dtype=start.dtype, device=start.device)
    return (1.0 - (source[..., None] - pixels).abs()).clamp(min=0.0)


def window_resampler(images: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images, (N, 4) normalized xyxy windows -> (N, C, H, W): each window resampled
    to the image's own size."""
    h, w = images.shape[-2:]
    rows = _axis_weights(windows[:, 1], windows[:, 3], h, h)  # (N, H, H)
    cols = _axis_weights(windows[:, 0], windows[:, 2], w, w)  # (N, W, W)
    return rows[:, None] @ images @ cols.transpose(1, 2)[:, None]


def from_window(boxes: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """(N, K, 4) boxes normalized to their window -> normalized to the image."""
    origin = windows[:, None, :2].repeat(1, 1, 2)
    scale = (windows[:, None, 2:] - windows[:, None, :2]).repeat(1, 1, 2)
    return origin + boxes * scale

"""A tiny hand-written network honouring the graph contract, with known answers.

It "sees" the saturated (coloured) pixels of an image: the label is the
dominant colour of those pixels (classes red, green, blue) and the box is
their bounding box. Exported through ``clsloc.training.export.export_onnx`` like a
real model, it lets serving tests check labels and boxes exactly instead of
trusting random weights.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["blue", "green", "red"]  # sorted, like a dataset's classes
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
INPUT_SIZE = (64, 64)


def build_oracle():
    import torch
    from torch import nn

    from clsloc.preprocess import LITE_MEAN, LITE_STD

    class OracleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1))
            # channel order of CLASSES (blue, green, red) from RGB
            self.register_buffer("order", torch.tensor([2, 1, 0]))

        def forward(self, x):
            p = x * self.std + self.mean  # back to [0, 1] pixels
            mask = ((p.amax(1) - p.amin(1)) > 0.3).float()  # (N, H, W) saturated pixels
            area = mask.sum((1, 2)).clamp(min=1.0)
            colour = (p * mask[:, None]).sum((2, 3)) / area[:, None]  # (N, 3) mean RGB of the object
            logits = 8.0 * colour.index_select(1, self.order)
            h, w = x.shape[-2], x.shape[-1]
            left = torch.arange(w, dtype=x.dtype) / w
            top = torch.arange(h, dtype=x.dtype) / h
            cols, rows = mask.amax(1), mask.amax(2)  # (N, W), (N, H)
            x0 = 1.0 - (cols * (1.0 - left)).amax(1)
            x1 = (cols * (left + 1.0 / w)).amax(1)
            y0 = 1.0 - (rows * (1.0 - top)).amax(1)
            y1 = (rows * (top + 1.0 / h)).amax(1)
            return logits, torch.stack([x0, y0, x1, y1], 1)

    return OracleNet().eval()


def write_oracle_model(out: Path, *, name: str = "oracle", version: str = "1") -> Path:
    from clsloc.manifest import Manifest
    from clsloc.preprocess import Preprocessing
    from clsloc.training.export import export_onnx

    out.mkdir(parents=True, exist_ok=True)
    preprocessing = Preprocessing(size=INPUT_SIZE)
    export_onnx(build_oracle(), out / "model.onnx", INPUT_SIZE)
    # One sample image per class, as export ships them (tests of the web page and /samples click them).
    (out / "samples").mkdir(exist_ok=True)
    samples = []
    for label in CLASSES:
        (out / "samples" / f"{label}-1.jpg").write_bytes(object_image(label, (40, 30, 60, 50), fmt="JPEG"))
        samples.append({"file": f"samples/{label}-1.jpg", "label": label})
    Manifest(
        name=name, version=version, classes=list(CLASSES), preprocessing=preprocessing, backbone="oracle",
        description="A hand-made test model: the colour of the one solid rectangle is the label.", samples=samples,
    ).save(out)  # fmt: skip
    return out


def object_image(label: str, box_xywh, size=(160, 120), fmt="PNG", exif_orientation: int | None = None) -> bytes:
    """White image of ``size`` (width, height) with one solid ``label``-coloured rectangle."""
    width, height = size
    rgb = np.full((height, width, 3), 255, np.uint8)
    x, y, w, h = box_xywh
    rgb[y : y + h, x : x + w] = COLOURS[label]
    image = Image.fromarray(rgb)
    buffer = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()

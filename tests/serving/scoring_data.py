"""Files for the batch scoring tests: images the oracle model answers exactly, labelled sets, bad files."""

from __future__ import annotations

import io
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import oracle
from PIL import Image

# Each bad file and the clsloc.images.ImageError kind its row must carry (with --max-bytes BAD_MAX_BYTES).
BAD_MAX_BYTES = 60_000
BAD_KINDS = {
    "corrupt.jpg": "truncated",
    "truncated.png": "truncated",
    "zero.jpg": "empty",
    "notes.jpg": "not_an_image",
    "huge.png": "too_large",
}


def random_objects(n: int, seed: int = 0, size=(160, 120)) -> list[tuple[str, tuple[int, int, int, int]]]:
    """``n`` (label, box_xywh) pairs inside a ``size`` image, reproducible."""
    rng = np.random.default_rng(seed)
    width, height = size
    out = []
    for i in range(n):
        w, h = int(rng.integers(16, width // 2)), int(rng.integers(16, height // 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        out.append((oracle.CLASSES[i % 3], (x, y, w, h)))
    return out


def write_images(folder: Path, n: int, *, seed: int = 0, size=(160, 120), fmt: str = "PNG") -> list[Path]:
    """``n`` oracle images (one coloured object each) named img-0000.png ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    suffix = ".png" if fmt == "PNG" else ".jpg"
    for i, (label, box) in enumerate(random_objects(n, seed, size)):
        path = folder / f"img-{i:04d}{suffix}"
        path.write_bytes(oracle.object_image(label, box, size=size, fmt=fmt))
        paths.append(path)
    return paths


def _voc(filename: str, width: int, height: int, objects) -> str:
    body = "".join(
        f"<object><name>{label}</name><bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin>"
        f"<xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>"
        for label, (x, y, w, h) in objects
    )
    return (
        f"<annotation><filename>{escape(filename)}</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{body}</annotation>"
    )


def write_voc(root: Path, items: list[tuple[str, list, tuple[int, int]]]) -> Path:
    """A VOC dataset: items are (stem, [(label, box_xywh), ...], (width, height)); the first object is drawn.

    Labels outside the oracle's colours are annotated but drawn red (the model cannot know them).
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for stem, objects, size in items:
        label, box = objects[0]
        drawn = label if label in oracle.COLOURS else "red"
        (root / "images" / f"{stem}.png").write_bytes(oracle.object_image(drawn, box, size=size))
        (root / "annotations" / f"{stem}.xml").write_text(_voc(f"{stem}.png", *size, objects))
    return root


def write_bad_files(folder: Path) -> dict[Path, str]:
    """One file of each bad kind (see BAD_KINDS) -> {path: expected status}."""
    folder.mkdir(parents=True, exist_ok=True)
    good_png = oracle.object_image("red", (10, 10, 40, 30))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    huge = io.BytesIO()
    noise.save(huge, format="PNG")
    assert len(huge.getvalue()) > BAD_MAX_BYTES
    contents = {
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "truncated.png": good_png[: len(good_png) // 2],
        "zero.jpg": b"",
        "notes.jpg": b"these are notes, not a picture\n",
        "huge.png": huge.getvalue(),
    }
    paths = {}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
        paths[folder / name] = BAD_KINDS[name]
    return paths

"""A deterministic synthetic Pascal VOC dataset, for tests and the default model.

Each image holds one object of one of K kinds; a kind is a shape *and* a
colour *and* a texture (red solid circle, blue striped square, ...), so the
kinds are easy to tell apart for a frozen ImageNet backbone while the boxes
still have to be found:

* image sizes vary (96-320 px each side, any aspect ratio);
* objects vary in size (25-80 % of the shorter side by default; ``object_scale``
  sets the range: ``PHOTO_SCALE`` makes them as large as in the shared photos,
  where the main object fills about half the image), aspect ratio (0.6-1.6),
  position, and about one in five touches one or two borders;
* backgrounds are cluttered: a random two-colour gradient, pixel noise and
  small distractor strokes and blobs.

Every shape reaches all four sides of its box, so the written box is exact.
Image ``i`` depends only on ``(seed, i)``: a smaller dataset with the same seed
is a prefix of a larger one. Class of image ``i`` is ``i % K`` (balanced).

The XML follows VOC conventions (1-based inclusive pixel indices), read back
by :mod:`clsloc.datasets.voc` into exactly the drawn 0-based box.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


@dataclass(frozen=True)
class Kind:
    name: str
    colour: tuple[int, int, int]
    texture: str  # solid | stripes | checker | dots | vstripes


KINDS = (
    Kind("circle", (220, 40, 40), "solid"),
    Kind("square", (40, 80, 220), "stripes"),
    Kind("triangle", (40, 170, 60), "dots"),
    Kind("star", (240, 200, 30), "solid"),
    Kind("cross", (140, 50, 180), "checker"),
    Kind("ring", (30, 190, 200), "solid"),
    Kind("diamond", (230, 60, 170), "vstripes"),
    Kind("hexagon", (240, 130, 30), "checker"),
    Kind("arrow", (235, 235, 235), "stripes"),
    Kind("pentagon", (130, 80, 40), "dots"),
)
MIN_SIDE, MAX_SIDE = 96, 320
OBJECT_SCALE = (0.25, 0.8)  # object side / shorter image side
PHOTO_SCALE = (0.5, 1.0)  # about the shared photos' spread (objects of half to all of the image)


def _regular(n: int, rotation: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(math.cos(rotation + 2 * math.pi * k / n), math.sin(rotation + 2 * math.pi * k / n)) for k in range(n)]


def _star() -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = 1.0 if k % 2 == 0 else 0.42
        angle = -math.pi / 2 + math.pi * k / 5
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


# Polygons as vertex lists; each is rescaled to span its box exactly.
POLYGONS = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "star": _star(),
    "cross": [
        (0.35, 0),
        (0.65, 0),
        (0.65, 0.35),
        (1, 0.35),
        (1, 0.65),
        (0.65, 0.65),
        (0.65, 1),
        (0.35, 1),
        (0.35, 0.65),
        (0, 0.65),
        (0, 0.35),
        (0.35, 0.35),
    ],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "hexagon": _regular(6, 0.0),
    "arrow": [(0, 0.3), (0.55, 0.3), (0.55, 0), (1, 0.5), (0.55, 1), (0.55, 0.7), (0, 0.7)],
    "pentagon": _regular(5),
}


def _fit(points: list[tuple[float, float]], w: int, h: int) -> list[tuple[float, float]]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [((x - x0) / (x1 - x0) * (w - 1), (y - y0) / (y1 - y0) * (h - 1)) for x, y in points]


def _mask(shape: str, w: int, h: int) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif shape == "ring":
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
        draw.ellipse((0.3 * w, 0.3 * h, 0.7 * w, 0.7 * h), fill=0)
    else:
        draw.polygon(_fit(POLYGONS[shape], w, h), fill=255)
    return mask


def _pattern(kind: Kind, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    colour = np.clip(np.array(kind.colour) + rng.integers(-20, 21, 3), 0, 255).astype(np.float32)
    dark = colour * 0.45
    yy, xx = np.mgrid[0:h, 0:w]
    period = int(rng.integers(6, 11))
    if kind.texture == "stripes":
        on = (yy // (period // 2)) % 2 == 0
    elif kind.texture == "vstripes":
        on = (xx // (period // 2)) % 2 == 0
    elif kind.texture == "checker":
        on = ((yy // period) + (xx // period)) % 2 == 0
    elif kind.texture == "dots":
        on = ((yy % period) - period / 2) ** 2 + ((xx % period) - period / 2) ** 2 > (period / 3.5) ** 2
    else:
        on = np.ones((h, w), dtype=bool)
    return np.where(on[..., None], colour, dark).astype(np.uint8)


def _background(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    grey = np.array([128.0, 128.0, 128.0])
    a = 0.5 * rng.integers(0, 256, 3) + 0.5 * grey
    b = 0.5 * rng.integers(0, 256, 3) + 0.5 * grey
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (xx * math.cos(angle) + yy * math.sin(angle)).astype(np.float32)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    pixels = a + (b - a) * t[..., None] + rng.normal(0, 10, (h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    side = min(w, h)
    for _ in range(int(rng.integers(5, 16))):  # distractors: small, thin, muted
        colour = tuple(int(v) for v in rng.integers(30, 226, 3))
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        size = float(rng.uniform(0.03, 0.12)) * side
        if rng.random() < 0.6:
            angle = rng.uniform(0, 2 * math.pi)
            draw.line(
                (x, y, x + size * 2 * math.cos(angle), y + size * 2 * math.sin(angle)),
                fill=colour,
                width=int(rng.integers(1, 4)),
            )
        else:
            draw.ellipse((x, y, x + size, y + size * rng.uniform(0.5, 1.5)), fill=colour)
    return image


def draw_example(
    index: int, classes: int, seed: int = 0, object_scale: tuple[float, float] = OBJECT_SCALE
) -> tuple[Image.Image, str, tuple[int, int, int, int]]:
    """Image ``index`` of the dataset: (RGB image, class name, 0-based pixel xyxy box)."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[index % classes]
    w, h = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, 2))
    image = _background(w, h, rng)

    side = rng.uniform(*object_scale) * min(w, h)
    aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
    bw = int(np.clip(round(side * math.sqrt(aspect)), 12, w))
    bh = int(np.clip(round(side / math.sqrt(aspect)), 12, h))
    x0 = int(rng.integers(0, w - bw + 1))
    y0 = int(rng.integers(0, h - bh + 1))
    if rng.random() < 0.2:  # touch one or two borders
        if rng.random() < 0.7:
            x0 = 0 if rng.random() < 0.5 else w - bw
        if rng.random() < 0.5:
            y0 = 0 if rng.random() < 0.5 else h - bh

    pattern = Image.fromarray(_pattern(kind, bw, bh, rng))
    image.paste(pattern, (x0, y0), _mask(kind.name, bw, bh))
    return image, kind.name, (x0, y0, x0 + bw, y0 + bh)


def _voc_xml(filename: str, width: int, height: int, label: str, box: tuple[int, int, int, int]) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "images"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    obj = ET.SubElement(root, "object")
    ET.SubElement(obj, "name").text = label
    ET.SubElement(obj, "truncated").text = "0"
    ET.SubElement(obj, "difficult").text = "0"
    bndbox = ET.SubElement(obj, "bndbox")
    x0, y0, x1, y1 = box  # 0-based continuous -> VOC 1-based inclusive
    for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
        ET.SubElement(bndbox, key).text = str(value)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_synthetic_voc(
    out,
    images: int = 200,
    classes: int = 3,
    seed: int = 0,
    *,
    object_scale: tuple[float, float] = OBJECT_SCALE,
    progress: bool = False,
) -> Path:
    """Write ``out/images/*.jpg`` and ``out/annotations/*.xml``; returns ``out``."""
    if not 1 <= classes <= len(KINDS):
        raise ValueError(f"classes must be between 1 and {len(KINDS)}, got {classes}")
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    indices = range(images)
    if progress:
        from clsloc.progress import progress_bar

        indices = progress_bar(indices, desc="synth", unit="img")
    for i in indices:
        image, label, box = draw_example(i, classes, seed, object_scale)
        name = f"synth_{i:05d}"
        image.save(out / "images" / f"{name}.jpg", quality=92)
        _voc_xml(f"{name}.jpg", image.width, image.height, label, box).write(out / "annotations" / f"{name}.xml")
    return out


def class_names(classes: int) -> list[str]:
    """The names of the first ``classes`` kinds, in class-index order."""
    return [kind.name for kind in KINDS[:classes]]

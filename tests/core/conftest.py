"""Fixtures for the torch-free core: tiny datasets written by the tests themselves.

Helpers are fixtures returning functions (test modules here are not a
package, so they cannot import from each other).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


def _write_image(path: Path, width: int = 64, height: int = 48, colour=(120, 60, 30), fmt: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path, format=fmt)
    return path


def _voc_xml(filename: str, objects, width=64, height=48, path: str | None = None) -> str:
    """A VOC annotation; objects are (name, xmin, ymin, xmax, ymax) in VOC's 1-based convention."""
    objs = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in objects
    )
    path_tag = f"<path>{path}</path>" if path else ""
    return (
        f"<annotation><folder>images</folder><filename>{filename}</filename>{path_tag}"
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objs}</annotation>"
    )


@pytest.fixture
def write_image():
    return _write_image


@pytest.fixture
def voc_xml():
    return _voc_xml


@pytest.fixture
def voc_dataset(tmp_path):
    """Build a VOC dataset: {stem: (objects, (w, h))} -> root with images/ and annots/."""

    def build(items: dict, root: Path | None = None, annotation_folder: str = "annots") -> Path:
        root = Path(root or tmp_path / "voc")
        (root / annotation_folder).mkdir(parents=True, exist_ok=True)
        for stem, (objects, (w, h)) in items.items():
            _write_image(root / "images" / f"{stem}.jpg", w, h)
            xml = _voc_xml(f"{stem}.jpg", objects, w, h, path=f"/home/someone/Desktop/{stem}.jpg")
            (root / annotation_folder / f"{stem}.xml").write_text(xml)
        return root

    return build

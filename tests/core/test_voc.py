"""Pascal VOC reader and the shared box rules, on datasets the tests write."""

import numpy as np
import pytest

from clsloc.datasets import Dataset, DatasetError, detect_format, load_dataset


def kinds(dataset: Dataset) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in dataset.problems:
        out.setdefault(p.kind, []).append(p.file)
    return out


def test_reads_any_folder_names_and_matches_images_by_name(voc_dataset):
    root = voc_dataset(
        {
            "a": ([("cat", 1, 1, 64, 48)], (64, 48)),
            "b": ([("dog", 11, 6, 30, 20)], (64, 48)),
        }
    )
    assert detect_format(root)[0] == "voc"
    data = load_dataset(root)
    assert data.problems == []
    assert data.classes == ["cat", "dog"]
    a, b = sorted(data.records, key=lambda r: r.image.name)
    assert a.image == root / "images" / "a.jpg"  # <path> pointed at /home/someone/Desktop
    assert (a.width, a.height) == (64, 48)
    assert a.box == (0.0, 0.0, 64.0, 48.0)  # 1-based inclusive -> 0-based continuous, whole image
    assert b.box == (10.0, 5.0, 30.0, 20.0)
    assert b.box_normalized.tolist() == pytest.approx([10 / 64, 5 / 48, 30 / 64, 20 / 48])
    assert a.annotation.endswith("annots/a.xml")


def test_devkit_layout_stem_match_and_size_zero(tmp_path, write_image, voc_xml):
    root = tmp_path / "VOC2012"
    write_image(root / "JPEGImages" / "img1.jpg", 80, 60)
    write_image(root / "JPEGImages" / "img2.png", 50, 40)
    (root / "Annotations").mkdir()
    # size 0 and a filename without extension; a wrong extension
    (root / "Annotations" / "img1.xml").write_text(voc_xml("img1", [("car", 1, 1, 40, 30)], 0, 0))
    (root / "Annotations" / "img2.xml").write_text(voc_xml("C:\\Users\\x\\img2.jpg", [("bus", 5, 5, 20, 20)], 50, 40))
    data = load_dataset(root)
    assert data.problems == []
    sizes = {r.image.name: (r.width, r.height) for r in data.records}
    assert sizes == {"img1.jpg": (80, 60), "img2.png": (50, 40)}


def test_images_next_to_xml(tmp_path, write_image, voc_xml):
    write_image(tmp_path / "x.jpg", 32, 32)
    (tmp_path / "x.xml").write_text(voc_xml("x.jpg", [("cat", 1, 1, 16, 16)], 32, 32))
    data = load_dataset(tmp_path)
    assert len(data.records) == 1 and data.records[0].image == tmp_path / "x.jpg"


def test_multi_object_policies_keep_all_objects(voc_dataset):
    items = {
        "m": ([("cat", 1, 1, 10, 10), ("dog", 1, 1, 40, 40), ("cat", 41, 1, 64, 30)], (64, 48)),
        "s": ([("cat", 1, 1, 20, 20)], (64, 48)),
    }
    root = voc_dataset(items)
    largest = {r.image.stem: r for r in load_dataset(root).records}
    assert largest["m"].label == "dog" and largest["m"].box == (0, 0, 40, 40)
    assert len(largest["m"].objects) == 3
    first = {r.image.stem: r for r in load_dataset(root, policy="first").records}
    assert first["m"].label == "cat" and first["m"].box == (0, 0, 10, 10)
    # the boxes a prediction of the target's class is scored against: the policy's first, no dog
    np.testing.assert_allclose(first["m"].label_boxes_normalized, [[0, 0, 10 / 64, 10 / 48], [40 / 64, 0, 1, 30 / 48]])
    np.testing.assert_allclose(largest["m"].label_boxes_normalized, [[0, 0, 40 / 64, 40 / 48]])
    skip = load_dataset(root, policy="skip")
    assert [r.image.stem for r in skip.records] == ["s"]
    assert [r.image.stem for r in skip.skipped] == ["m"]
    assert kinds(skip) == {"multi_object": [str(root / "images" / "m.jpg")]}
    with pytest.raises(ValueError, match="biggest"):
        load_dataset(root, policy="biggest")


def test_bad_boxes_are_reported_never_raised(voc_dataset):
    root = voc_dataset(
        {
            "inverted": ([("cat", 30, 10, 10, 40)], (64, 48)),  # xmax < xmin
            "zero": ([("cat", 10, 10, 9, 30)], (64, 48)),  # zero width after conversion
            "far": ([("cat", -20, 1, 64, 48)], (64, 48)),  # reaches 21 px left of the image: clipped, kept
            "slight": ([("cat", 0, 1, 65, 48)], (64, 48)),  # 1 px over (common rounding): silently clipped
            "outside": ([("cat", 100, 100, 120, 120)], (64, 48)),  # nothing inside the image
            "mixed": ([("cat", 5, 5, 4, 20), ("dog", 1, 1, 20, 20)], (64, 48)),  # bad box dropped, good one kept
        }
    )
    data = load_dataset(root)
    found = kinds(data)
    img = lambda stem: str(root / "images" / f"{stem}.jpg")  # noqa: E731
    assert sorted(found["bad_box"]) == sorted([img("inverted"), img("zero"), img("mixed")])
    assert sorted(found["box_outside_image"]) == sorted([img("far"), img("outside")])
    assert sorted(found["empty_annotation"]) == sorted([img("inverted"), img("zero"), img("outside")])
    records = {r.image.stem: r for r in data.records}
    assert sorted(records) == ["far", "mixed", "slight"]
    assert records["far"].box == (0.0, 0.0, 64.0, 48.0)
    assert records["slight"].box == (0.0, 0.0, 64.0, 48.0)
    assert records["mixed"].label == "dog" and len(records["mixed"].objects) == 1
    far = next(p for p in data.problems if p.file == img("far"))
    assert far.skipped is False and "clipped" in far.detail


def test_malformed_files_become_problems(tmp_path, write_image, voc_xml):
    root = tmp_path / "ds"
    ann = root / "annotations"
    ann.mkdir(parents=True)
    for stem in ("ok", "broken", "nobox", "noname", "nan", "notvoc"):
        write_image(root / "images" / f"{stem}.jpg")
    (ann / "ok.xml").write_text(voc_xml("ok.jpg", [("cat", 1, 1, 10, 10)]))
    (ann / "broken.xml").write_text("<annotation><filename>broken.jpg</filename><object>")
    (ann / "nobox.xml").write_text(
        "<annotation><filename>nobox.jpg</filename><object><name>cat</name></object></annotation>"
    )
    (ann / "noname.xml").write_text(voc_xml("noname.jpg", [("", 1, 1, 10, 10)]))
    (ann / "nan.xml").write_text(voc_xml("nan.jpg", [("cat", "abc", 1, 10, 10)]))
    (ann / "notvoc.xml").write_text("<svg></svg>")
    (ann / "ghost.xml").write_text(voc_xml("ghost.jpg", [("cat", 1, 1, 10, 10)]))
    data = load_dataset(root)
    assert [r.image.stem for r in data.records] == ["ok"]
    by_file = {}
    for p in data.problems:
        by_file.setdefault(p.file.split("/")[-1], set()).add(p.kind)
    assert by_file["broken.xml"] == {"bad_annotation"}
    assert by_file["notvoc.xml"] == {"bad_annotation"}
    assert "missing_field" in by_file["nobox.xml"] and "missing_field" in by_file["noname.xml"]
    assert "bad_box" in by_file["nan.xml"]
    assert by_file["ghost.jpg"] == {"missing_image"}
    detail = next(p.detail for p in data.problems if p.file.endswith("nan.xml"))
    assert "xmin='abc'" in detail


def test_unreadable_image_is_skipped_but_counted(voc_dataset):
    root = voc_dataset({"good": ([("cat", 1, 1, 10, 10)], (64, 48)), "bad": ([("dog", 1, 1, 10, 10)], (64, 48))})
    (root / "images" / "bad.jpg").write_bytes((root / "images" / "bad.jpg").read_bytes()[:200])
    data = load_dataset(root)
    assert [r.image.stem for r in data.records] == ["good"]
    assert [r.image.stem for r in data.skipped] == ["bad"]
    assert kinds(data) == {"truncated": [str(root / "images" / "bad.jpg")]}
    # without the image check only the header is needed: the size comes from the annotation
    assert len(load_dataset(root, check_images=False).records) == 2


def test_declared_size_that_disagrees_is_a_warning(tmp_path, write_image, voc_xml):
    write_image(tmp_path / "images" / "a.jpg", 100, 50)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "a.xml").write_text(voc_xml("a.jpg", [("cat", 1, 1, 10, 10)], 200, 100))
    data = load_dataset(tmp_path)
    assert len(data.records) == 1 and (data.records[0].width, data.records[0].height) == (100, 50)
    assert [(p.kind, p.skipped) for p in data.problems] == [("size_mismatch", False)]


def test_undetectable_and_missing_paths(tmp_path):
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(DatasetError, match="cannot tell the dataset format"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing")
    reported = load_dataset([tmp_path / "missing"], errors="report")
    assert [p.kind for p in reported.problems] == ["unreadable_dataset"]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from clsloc.datasets.records import clean_box  # noqa: E402

coordinate = st.floats(min_value=-500, max_value=1500, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.tuples(coordinate, coordinate, coordinate, coordinate), st.integers(1, 1000), st.integers(1, 1000))
def test_clean_box_keeps_only_boxes_inside_the_image(box, width, height):
    cleaned, kind, detail = clean_box(box, width, height)
    if cleaned is None:
        assert kind in ("bad_box", "box_outside_image") and "dropped" in detail
        return
    x0, y0, x1, y1 = cleaned
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert cleaned == (max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height))
    overshoot_x = max(-box[0], box[2] - width, 0)
    overshoot_y = max(-box[1], box[3] - height, 0)
    far = overshoot_x > max(2, 0.01 * width) or overshoot_y > max(2, 0.01 * height)
    assert (kind == "box_outside_image") == far  # reported only when clearly outside, never for rounding
    if far:
        assert "clipped" in detail

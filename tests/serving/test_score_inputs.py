"""INPUT arguments -> image paths (+ ground truth): folders, globs, list files, labelled datasets."""

from __future__ import annotations

import pytest
import scoring_data

from clsloc.serving.scoring.inputs import InputError, collect


def test_list_file_paths_are_relative_to_the_list(tmp_path):
    images = scoring_data.write_images(tmp_path / "data" / "pics", 3)
    listed = tmp_path / "data" / "list.txt"
    listed.write_text(f"# comment\n\npics/{images[0].name}\n  {images[1]}  \npics/nope.png\n")
    inputs = collect([str(listed)])
    assert inputs.paths == [str(images[0]), str(images[1]), str(tmp_path / "data" / "pics" / "nope.png")]
    assert inputs.truth == {}


def test_a_dataset_contributes_every_image_with_its_truth(tmp_path):
    items = [("a", [("red", (1, 1, 20, 20))], (64, 48)), ("b", [("blue", (5, 5, 20, 20))], (64, 48))]
    root = scoring_data.write_voc(tmp_path / "voc", items)
    (root / "images" / "b.png").write_bytes(b"")  # unreadable: training skips it, scoring gives it a row
    (root / "images" / "c.png").write_bytes((root / "images" / "a.png").read_bytes())
    (root / "annotations" / "c.xml").write_text(
        "<annotation><filename>c.png</filename><size><width>64</width><height>48</height></size></annotation>"
    )  # annotated without a box: scored without ground truth
    inputs = collect([str(root)])
    assert sorted(inputs.paths) == [str(root / "images" / f"{s}.png") for s in "abc"]
    assert {p.rsplit("/", 1)[1]: r.label for p, r in inputs.truth.items()} == {"a.png": "red", "b.png": "blue"}
    assert {p.kind for p in inputs.problems} >= {"empty", "empty_annotation"}


def test_duplicates_are_scored_once_keeping_the_first_truth(tmp_path):
    root = scoring_data.write_voc(tmp_path / "voc", [("a", [("red", (1, 1, 20, 20))], (64, 48))])
    inputs = collect([str(root), str(root / "images"), str(root / "images" / "a.png")])
    assert inputs.paths == [str(root / "images" / "a.png")] and inputs.duplicates == 2
    assert inputs.truth[inputs.paths[0]].label == "red"


def test_images_only_and_unreadable_datasets(tmp_path):
    root = scoring_data.write_voc(tmp_path / "voc", [("a", [("red", (1, 1, 20, 20))], (64, 48))])
    inputs = collect([str(root)], images_only=True)
    assert inputs.paths == [str(root / "images" / "a.png")] and inputs.truth == {}
    folder = tmp_path / "photos"
    scoring_data.write_images(folder, 2)
    (folder / "notes.csv").write_text("just,some,numbers\n1,2,3\n")  # looks like a CSV dataset, is not one
    with pytest.raises(InputError, match="add --images-only"):
        collect([str(folder)])
    assert len(collect([str(folder)], images_only=True).paths) == 2

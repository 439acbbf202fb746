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


def test_a_binary_file_named_on_its_own_is_an_image_input_and_no_images_is_an_error(tmp_path):
    heic = tmp_path / "photo.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    assert collect([str(heic)]).paths == [str(heic)]  # scored: its row will say unsupported_format
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing to see")
    with pytest.raises(InputError, match="no images in"):
        collect([str(tmp_path / "empty")])


def test_progress_lines_when_not_on_a_terminal():
    import io

    from clsloc.serving.scoring.progress import Progress

    stream = io.StringIO()
    progress = Progress(200, done=50, stream=stream, interval=0.0)
    progress.update(30, errors=2)
    line = stream.getvalue().strip()
    assert line.startswith("scoring: 80/200 images (40%)") and "img/s, ETA " in line and "2 error(s)" in line
    quiet = io.StringIO()
    Progress(10, stream=quiet, quiet=True, interval=0.0).update(5)
    assert quiet.getvalue() == ""

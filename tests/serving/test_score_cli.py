"""``clsloc score``: rows equal to serving's answers, every input once, bad files as error rows, safe outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import scoring_data

from clsloc.cli import main
from clsloc.serving.engine import Engine
from clsloc.serving.scoring.sinks import read_rows


def score(*args) -> int:
    return main(["score", *[str(a) for a in args], "--quiet"])


def rows_by_path(out: Path) -> dict[str, dict]:
    rows = list(read_rows(out))
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows), "a path appears twice in the output"
    return by_path


def test_rows_are_what_serving_answers(oracle_dir, tmp_path):
    images = scoring_data.write_images(tmp_path / "in", 23)
    jpegs = scoring_data.write_images(tmp_path / "in" / "deeper", 5, seed=1, fmt="JPEG")
    out = tmp_path / "rows.jsonl"
    assert score(oracle_dir, tmp_path / "in", "--out", out, "--batch-size", "4", "--workers", "2") == 0

    rows = rows_by_path(out)
    assert sorted(rows) == sorted(str(p) for p in images + jpegs)  # recursive, nothing else
    engine = Engine(oracle_dir, threads=1)
    for path in images + jpegs:
        answer = engine.predict(path)  # the HTTP service's engine call for one upload
        row = rows[str(path)]
        assert row["status"] == "ok" and row["detail"] is None
        assert (row["label"], row["score"], row["width"], row["height"]) == (
            answer.label,
            answer.score,
            answer.width,
            answer.height,
        )
        assert {k: row[k] for k in "xywh"} == answer.box
    assert "gt_label" not in next(iter(rows.values()))  # no ground truth, no truth columns


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_every_format_holds_the_same_rows(oracle_dir, tmp_path, fmt):
    scoring_data.write_images(tmp_path / "in", 12)
    scoring_data.write_bad_files(tmp_path / "in")
    reference, out = tmp_path / "ref.jsonl", tmp_path / f"rows.{fmt}"
    flags = ["--max-bytes", scoring_data.BAD_MAX_BYTES]
    assert score(oracle_dir, tmp_path / "in", "--out", reference, *flags) == 0
    assert score(oracle_dir, tmp_path / "in", "--out", out, *flags) == 0
    assert rows_by_path(out) == rows_by_path(reference)  # floats exact through CSV and Parquet too
    assert not Path(f"{out}.partial.jsonl").exists()


def test_bad_files_are_error_rows_and_nothing_is_dropped(oracle_dir, tmp_path, capsys):
    good = scoring_data.write_images(tmp_path / "in", 6)
    odd = tmp_path / "in" / "odd-exif.jpg"  # decodes, with a bogus EXIF orientation: scored, the warning kept
    odd.write_bytes(scoring_data.oracle.object_image("green", (5, 5, 30, 30), exif_orientation=9))
    good.append(odd)
    bad = scoring_data.write_bad_files(tmp_path / "in")
    listed = tmp_path / "list.txt"
    missing = tmp_path / "in" / "gone.png"
    folder = tmp_path / "in"
    listed.write_text(
        "# the images, a missing one and a folder\n" + "\n".join(map(str, [*good, *bad, missing, folder]))
    )
    out = tmp_path / "rows.csv"
    assert score(oracle_dir, listed, "--out", out, "--max-bytes", scoring_data.BAD_MAX_BYTES) == 0

    rows = rows_by_path(out)
    assert len(rows) == len(good) + len(bad) + 2  # every listed path has its row
    for path, kind in {**bad, missing: "missing", folder: "not_an_image"}.items():
        assert rows[str(path)]["status"] == kind, rows[str(path)]
        assert rows[str(path)]["detail"] and rows[str(path)]["label"] is None
    assert all(rows[str(p)]["status"] == "ok" for p in good)
    assert "EXIF orientation 9 is not a valid value" in rows[str(odd)]["detail"]
    assert all(rows[str(p)]["detail"] is None for p in good[:-1])
    printed = capsys.readouterr().out
    assert f"{len(good)} ok, {len(bad) + 2} could not be scored" in printed
    assert "too_large 1" in printed and "truncated 2" in printed


def test_labelled_dataset_rows_and_metrics(oracle_dir, tmp_path, capsys):
    # a VOC set: three known colours, one multi-object image, one class the model does not know,
    # and an annotated image whose file is corrupt (training skips it; scoring gives it an error row)
    items = [
        ("a", [("red", (10, 10, 60, 40))], (160, 120)),
        ("b", [("blue", (80, 50, 50, 40)), ("green", (0, 0, 20, 20))], (160, 120)),
        ("c", [("green", (20, 30, 100, 80))], (160, 120)),
        ("d", [("zebra", (30, 20, 40, 40))], (160, 120)),
        ("e", [("red", (5, 5, 30, 30))], (160, 120)),
    ]
    root = scoring_data.write_voc(tmp_path / "voc", items)
    (root / "images" / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "rows.jsonl"
    assert score(oracle_dir, root, "--out", out) == 0

    rows = rows_by_path(out)
    assert len(rows) == 5
    a, b, d, e = (rows[str(root / "images" / f"{s}.png")] for s in "abde")
    assert (a["gt_label"], a["label"], a["correct"]) == ("red", "red", True) and a["iou"] > 0.9
    assert (b["gt_label"], b["label"], b["correct"]) == ("blue", "blue", True)  # the largest box is the target
    assert (d["gt_label"], d["correct"]) == ("zebra", False)
    assert (e["status"], e["gt_label"], e["iou"]) == ("truncated", "red", None)

    metrics = json.loads(Path(f"{out}.metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["accuracy"] == 0.75
    assert metrics["unknown_classes"] == {"zebra": 1}
    assert metrics["per_class"]["zebra"]["n"] == 1 and metrics["per_class"]["zebra"]["accuracy"] == 0.0
    assert metrics["known_classes_only"]["accuracy"] == 1.0
    assert metrics["by_objects"]["multi"]["n"] == 1 and metrics["by_objects"]["single"]["n"] == 3
    assert metrics["not_scored"] == {"truncated": 1}
    captured = capsys.readouterr()
    assert "ground-truth classes the model does not know: zebra (1 image(s))" in captured.err
    assert "zebra*" in captured.out  # the per-class table marks it


def test_an_existing_output_is_refused_without_resume(oracle_dir, tmp_path, capsys):
    scoring_data.write_images(tmp_path / "in", 3)
    out = tmp_path / "rows.jsonl"
    out.write_text("precious\n")
    assert score(oracle_dir, tmp_path / "in", "--out", out) == 2
    assert "exists: add --resume" in capsys.readouterr().err
    assert out.read_text() == "precious\n"


def test_resume_with_another_model_is_refused(oracle_dir, tmp_path, capsys):
    import shutil

    from clsloc.manifest import Manifest

    scoring_data.write_images(tmp_path / "in", 3)
    other = tmp_path / "other-model"
    shutil.copytree(oracle_dir, other)
    manifest = Manifest.load(other)
    manifest.version = "2"
    manifest.save(other)
    out = tmp_path / "rows.jsonl"
    assert score(oracle_dir, tmp_path / "in", "--out", out) == 0
    before = out.read_bytes()
    assert score(other, tmp_path / "in", "--out", out, "--resume") == 2
    assert "started with model oracle:1, this job runs oracle:2" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_unknown_inputs_and_formats_are_usage_errors(oracle_dir, tmp_path, capsys):
    assert score(oracle_dir, tmp_path / "nowhere", "--out", tmp_path / "a.jsonl") == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert score(oracle_dir, str(tmp_path / "*.png"), "--out", tmp_path / "a.jsonl") == 2
    assert "matches nothing" in capsys.readouterr().err
    scoring_data.write_images(tmp_path / "in", 1)
    assert score(oracle_dir, tmp_path / "in", "--out", tmp_path / "a.xlsx") == 2
    assert "use .jsonl, .csv or .parquet" in capsys.readouterr().err
    assert not list(tmp_path.glob("a.*"))


def test_glob_and_case_insensitive_extensions(oracle_dir, tmp_path):
    folder = tmp_path / "in"
    images = scoring_data.write_images(folder, 3)
    upper = images[0].with_name("SHOUT.PNG")
    images[0].rename(upper)
    (folder / "readme.txt").write_text("not an image")
    out = tmp_path / "rows.jsonl"
    assert score(oracle_dir, folder, "--out", out) == 0
    assert sorted(rows_by_path(out)) == sorted(map(str, [upper, *images[1:]]))
    out2 = tmp_path / "glob.jsonl"
    assert score(oracle_dir, str(folder / "img-*.png"), str(upper), "--out", out2) == 0
    assert sorted(rows_by_path(out2)) == sorted(rows_by_path(out))


def test_nothing_is_written_outside_the_output(oracle_dir, tmp_path):
    """Whatever the inputs are called, the job writes PATH and its PATH.* sidecars and nothing else."""
    inputs = tmp_path / "inputs"
    names = ["../escape.png", "a\nb.png", "a..png", "-rf.png", "<script>.png", 'x,"y".png', "é 漢字.png", "%s%n.png"]
    (inputs / "deep").mkdir(parents=True)
    for i, name in enumerate(names):
        target = inputs / "deep" / name.replace("../", "")
        target.write_bytes(scoring_data.oracle.object_image("red", (i, i, 20, 20)))
    odd = os.fsencode(inputs / "deep") + b"/bad-\xff-utf8.png"
    with open(odd, "wb") as f:
        f.write(scoring_data.oracle.object_image("blue", (5, 5, 20, 20)))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    for fmt in ("jsonl", "csv", "parquet"):
        out = tmp_path / "results" / f"rows.{fmt}"
        assert score(oracle_dir, inputs, "--out", out) == 0
        assert len(list(read_rows(out))) == len(names) + 1
    after = set(tmp_path.rglob("*"))
    new = sorted(str(p.relative_to(tmp_path)) for p in after - set(before))
    assert new == [
        "results",
        "results/rows.csv",
        "results/rows.csv.job.json",
        "results/rows.jsonl",
        "results/rows.jsonl.job.json",
        "results/rows.parquet",
        "results/rows.parquet.job.json",
    ]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # inputs untouched


def test_gpu_required_without_one_is_a_clear_error(oracle_dir, tmp_path, capsys):
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has a GPU")
    scoring_data.write_images(tmp_path / "in", 2)
    assert score(oracle_dir, tmp_path / "in", "--out", tmp_path / "rows.jsonl", "--gpu") == 1
    assert "CUDA" in capsys.readouterr().err


def test_score_and_evaluate_run_with_torch_blocked(oracle_dir, tmp_path):
    """Both commands, report included, in an interpreter where importing torch fails."""
    import subprocess
    import sys

    root = scoring_data.write_voc(tmp_path / "voc", [("a", [("red", (10, 10, 60, 40))], (160, 120))])
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'): raise ImportError('torch blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from clsloc.cli import main\n"
        "m, data, out, report = sys.argv[1:]\n"
        "assert main(['score', m, data, '--out', out, '--quiet']) == 0\n"
        "assert main(['evaluate', m, data, '--report', report, '--quiet']) == 0\n"
        "assert not [n for n in sys.modules if n.split('.')[0] in ('torch', 'torchvision')]\n"
    )
    out, report = tmp_path / "rows.parquet", tmp_path / "report.html"
    done = subprocess.run(
        [sys.executable, "-c", code, str(oracle_dir), str(root), str(out), str(report)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file() and report.read_text().count("data:image/") == 4


def test_a_broken_model_fails_before_any_output_is_written(oracle_dir, tmp_path, capsys):
    import shutil

    scoring_data.write_images(tmp_path / "in", 2)
    broken = tmp_path / "broken"
    shutil.copytree(oracle_dir, broken)
    (broken / "model.onnx").write_bytes(b"not onnx")
    assert score(broken, tmp_path / "in", "--out", tmp_path / "rows.jsonl") == 1
    assert "not a loadable ONNX model" in capsys.readouterr().err
    (broken / "manifest.json").write_text("{}")
    assert score(broken, tmp_path / "in", "--out", tmp_path / "rows.jsonl") == 1
    assert "missing field(s)" in capsys.readouterr().err
    assert not list(tmp_path.glob("rows.*"))


def test_the_bad_input_corpus_gives_every_file_its_row(oracle_dir, tmp_path):
    """tests/corpus.py through ``clsloc score``: a refusal is an error row naming the problem, the rest are scored."""
    import corpus

    max_bytes = 1_000_000  # keeps the over-byte-limit file small; every other case is far below it
    cases = {}
    (tmp_path / "in").mkdir()
    for case in corpus.image_cases(max_bytes=max_bytes):
        path = tmp_path / "in" / f"{case.name}.bin"  # the extension says nothing: the bytes decide
        path.write_bytes(case.data)
        cases[str(path)] = case
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(cases) + "\n")
    out = tmp_path / "rows.jsonl"
    assert score(oracle_dir, listing, "--out", out, "--max-bytes", max_bytes) == 0

    rows = rows_by_path(out)
    assert sorted(rows) == sorted(cases)  # no file dropped, none scored twice
    for path, case in cases.items():
        row = rows[path]
        if case.error:
            assert row["status"] == case.error and case.detail in row["detail"], (case.name, row)
            assert row["label"] is None
            continue
        assert row["status"] == "ok", (case.name, row)
        assert (row["width"], row["height"]) == case.size, (case.name, row)
        if case.red_box:  # the box in pixels of the image as displayed (EXIF orientation applied)
            assert row["label"] == "red", (case.name, row)
            assert all(abs(row[k] - v) <= 3 for k, v in zip("xywh", corpus.RED_BOX)), (case.name, row)

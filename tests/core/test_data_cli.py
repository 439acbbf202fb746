"""``clsloc data check|synth`` through the real command entry point."""

import json
import subprocess
import sys

from clsloc.cli import main


def test_synth_then_check_json(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", str(out), "--images", "9", "--classes", "3", "--seed", "1"]) == 0
    assert "wrote 9 images of 3 classes" in capsys.readouterr().out
    assert main(["data", "check", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 9 and report["objects"] == 9
    assert report["classes"] == {"circle": 3, "square": 3, "triangle": 3}
    assert report["problems"] == [] and report["usable"] is True
    assert report["boxes_per_image"]["histogram"] == {"1": 9}
    assert 0 < report["box_size"]["min"] <= report["box_size"]["median"] <= report["box_size"]["max"] <= 1


def test_check_counts_unreadable_images_and_lists_problems(voc_dataset, capsys):
    root = voc_dataset(
        {
            "a": ([("cat", 1, 1, 30, 30), ("cat", 31, 1, 60, 30)], (64, 48)),
            "b": ([("dog", 1, 1, 30, 30)], (64, 48)),
            "c": ([("dog", 1, 1, 30, 30)], (64, 48)),
            "d": ([("dog", 5, 5, 2, 30)], (64, 48)),
        }
    )
    cut = root / "images" / "c.jpg"
    cut.write_bytes(cut.read_bytes()[:-40])
    assert main(["data", "check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 3 and report["usable_images"] == 2  # c counted, left out; d has no usable box
    assert report["classes"] == {"cat": 1, "dog": 2} and report["objects"] == 4
    assert report["objects_per_class"] == {"cat": 2, "dog": 2}
    kinds = {(p["kind"], p["file"].rsplit("/", 1)[-1]) for p in report["problems"]}
    assert kinds == {("truncated", "c.jpg"), ("bad_box", "d.jpg"), ("empty_annotation", "d.jpg")}
    assert all(set(p) >= {"file", "kind", "detail"} for p in report["problems"])

    assert main(["data", "check", str(root)]) == 0
    text = capsys.readouterr().out
    assert "images    3 found, 2 usable" in text and "truncated" in text and str(cut) in text
    assert "verdict: usable (1 image will be skipped)" in text


def test_check_exit_1_when_not_usable(voc_dataset, tmp_path, capsys):
    one_class = voc_dataset({"a": ([("cat", 1, 1, 30, 30)], (64, 48))})
    assert main(["data", "check", str(one_class)]) == 1
    assert "NOT usable: only one class (cat)" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "empty"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 0 and report["problems"][0]["kind"] == "unreadable_dataset"
    assert "cannot tell the dataset format" in report["problems"][0]["detail"]


def test_console_script_runs_without_traceback(tmp_path):
    """The installed command, in a subprocess: bad input gives a message and exit 1, not a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "clsloc.cli", "data", "check", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "no such file or directory" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "clsloc.cli", "data", "synth", str(tmp_path / "s"), "--classes", "40"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "classes must be between 1 and 10" in bad.stderr and "Traceback" not in bad.stderr


def test_check_plot_writes_a_png(tmp_path, capsys):
    out = tmp_path / "synth"
    main(["data", "synth", str(out), "--images", "6", "--classes", "2"])
    png = tmp_path / "overview.png"
    assert main(["data", "check", str(out), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as image:  # 2 class rows x (4 samples + histogram)
        assert image.width > image.height

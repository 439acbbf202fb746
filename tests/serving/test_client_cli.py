"""``clsloc-client predict``: folders in name order, one line per result, one stderr line per failure, exit status."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import oracle
import pytest
from faulty_server import FaultyServer

from clsloc_client.cli import image_paths, main
from clsloc_client.progress import Progress

pytestmark = pytest.mark.timeout(120)
CLI = Path(sys.executable).with_name("clsloc-client")  # the console script `make venv` installs


def photo_folder(root: Path, labels: list[str]) -> list[str]:
    """Images in a folder tree (plus files a folder scan must skip); the image paths in the order scanned."""
    (root / "sub").mkdir(parents=True)
    (root / ".hidden.png").write_bytes(b"skipped")
    (root / "notes.txt").write_text("skipped")
    top, sub = [], []
    for i, label in enumerate(labels):
        path = (root / "sub" if i % 2 else root) / f"{i:02d}-{label}.PNG"
        path.write_bytes(oracle.object_image(label, (10 + i, 10, 40, 30)))
        (sub if i % 2 else top).append(str(path))
    return sorted(top) + sorted(sub)  # a folder's own files, then its subfolders'


def test_folders_are_scanned_recursively_in_name_order_and_files_taken_as_named(tmp_path):
    expected = photo_folder(tmp_path / "photos", ["red", "green", "blue", "red"])
    assert list(image_paths([str(tmp_path / "photos")])) == expected
    assert list(image_paths(["x.heic", str(tmp_path / "photos" / "sub")])) == ["x.heic", *expected[2:]]


def test_json_lines_in_input_order_and_a_plain_progress_line_when_not_on_a_terminal(tmp_path, capsys):
    expected = photo_folder(tmp_path / "photos", ["red"] * 10)
    with FaultyServer(then="ok") as server:
        status = main(["predict", str(tmp_path / "photos"), "--url", server.url, "--json", "--concurrency", "3"])
    out, err = capsys.readouterr()
    assert status == 0
    assert [json.loads(line)["image"] for line in out.splitlines()] == expected
    assert "clsloc-client: 10/10 images, 0 failed" in err  # stderr is not a terminal here: plain lines
    assert "10 of 10 images scored, 0 failed" in err


def test_after_a_401_the_rest_is_reported_not_sent(tmp_path, capsys):
    expected = photo_folder(tmp_path / "photos", ["red"] * 6)
    out = tmp_path / "out.jsonl"
    with FaultyServer("ok", then="401") as server:
        status = main(
            ["predict", str(tmp_path / "photos"), "--url", server.url, "--out", str(out), "--concurrency", "1"]
        )
        sent = server.count
    err = capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # The 401 stops the run: the image already handed to the client (a window of 2 at concurrency 1) is
    # still sent and reported; no later one is sent.
    assert status == 1 and sent == 3
    assert [r["image"] for r in records] == expected
    assert [r.get("error") for r in records] == [None, "unauthorized", "unauthorized"] + ["not_sent"] * 3
    failures = [line for line in err.splitlines() if line.startswith("clsloc-client: /")]
    assert len(failures) == 5 and all(any(p in line for p in expected[1:]) for line in failures)


def test_an_unreachable_service_fails_every_image_quickly(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    paths = photo_folder(tmp_path / "photos", ["red"] * 5)
    assert main(["predict", *paths, "--url", url, "--retries", "0", "--concurrency", "1"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    failures = err.splitlines()[:-1]
    assert [line.split(": ")[1] for line in failures] == paths
    assert [line.split(": ")[2] for line in failures] == ["unreachable"] * 2 + ["not_sent"] * 3


def test_the_progress_bar_is_redrawn_in_place_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen, file = Terminal(), io.StringIO()
    progress = Progress(4, stream=screen, enabled=True)
    for i in range(4):
        progress.write(f"result {i}", screen if i % 2 else file)
        progress.advance(failed=i == 2)
    progress.close()
    text = screen.getvalue()
    assert text.count("result") == 2 and "\r[" in text and "\033[K" in text
    assert file.getvalue() == "result 0\nresult 2\n"  # lines into a file carry no bar
    assert "[" + "#" * 30 + "] 4/4 images, 1 failed" in text and text.endswith("\n")
    assert text.count("\r\033[K") == 2  # cleared only for the lines printed on the terminal


@pytest.mark.slow
def test_the_console_script_scores_a_folder_against_the_real_service(live_server, tmp_path):
    labels = ["red", "green", "blue", "green", "red"]
    expected = photo_folder(tmp_path / "photos", labels)
    broken = tmp_path / "photos" / "zz-broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    result = subprocess.run(
        [str(CLI), "predict", str(tmp_path / "photos"), "--url", live_server, "--out", str(tmp_path / "out.jsonl")],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 1, result.stderr
    failures = [line for line in result.stderr.splitlines() if str(broken) in line]
    assert len(failures) == 1 and "400 truncated" in failures[0]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == [*expected[:3], str(broken), *expected[3:]]  # top folder's files first
    by_path = {r["image"]: r.get("label") for r in records}
    assert [by_path[p] for p in expected] == [Path(p).stem.split("-")[1].lower() for p in expected]
    assert "5 of 6 images scored, 1 failed" in result.stderr


def test_a_folder_without_images_is_an_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("no images here")
    assert main(["predict", str(tmp_path), "--url", "http://127.0.0.1:9"]) == 1
    assert "no image files (.bmp .gif .jpeg .jpg .png .tif .tiff .webp) in" in capsys.readouterr().err

"""A real ``clsloc score`` killed with SIGKILL mid-way, then ``--resume``d: every input exactly once, same rows.

The job runs in a child process on a few hundred generated photos (640x480
JPEGs: decoding them takes long enough to kill the job part way through),
one worker and small batches so rows land in small steps. The killed output
is then resumed and compared row by row with an unbroken run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import scoring_data

from clsloc.serving.scoring.sinks import read_rows, sidecar

pytestmark = pytest.mark.slow

IMAGES = 300
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    scoring_data.write_images(folder, IMAGES, size=(640, 480), fmt="JPEG")
    scoring_data.write_bad_files(folder)  # bad files are part of the job: they too appear exactly once
    return folder


def _command(model: Path, photos: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clsloc.cli", "score", str(model), str(photos), "--out", str(out), *extra]


def _rows(out: Path) -> list[dict]:
    return list(read_rows(out))


def _count_rows(out: Path) -> int:
    """Rows on disk right now (the Parquet job's rows are in its journal while it runs)."""
    journal = sidecar(out, ".partial.jsonl")
    target = journal if journal.exists() else out
    try:
        return target.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_mid_way(command: list[str], out: Path, at_least: int) -> int:
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _count_rows(out) < at_least:
            assert process.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "the job wrote no rows in time"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    return _count_rows(out)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_killed_job_resumes_to_the_unbroken_result(oracle_dir, photos, tmp_path, fmt):
    n = IMAGES + len(scoring_data.BAD_KINDS)
    flags = ["--batch-size", "2", "--workers", "1", "--quiet", "--max-bytes", str(scoring_data.BAD_MAX_BYTES)]
    unbroken, killed = tmp_path / f"unbroken.{fmt}", tmp_path / f"killed.{fmt}"
    subprocess.run(
        _command(oracle_dir, photos, unbroken, *flags), cwd=REPO, check=True, timeout=300, capture_output=True
    )

    on_disk = _kill_mid_way(_command(oracle_dir, photos, killed, *flags), killed, at_least=40)
    assert on_disk < n, "killed too late to test anything"
    if fmt != "parquet":
        with open(killed, "ab") as f:  # a row torn in half by the kill (sometimes the kill does it itself)
            f.write(b"/half/of/a/row.jpg,o" if fmt == "csv" else b'{"path": "/half/of/a/row.jpg", "sta')
    refused = subprocess.run(_command(oracle_dir, photos, killed, *flags), cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "add --resume" in refused.stderr  # never overwritten without --resume

    resumed = subprocess.run(
        _command(oracle_dir, photos, killed, *flags, "--resume"), cwd=REPO, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = _rows(unbroken), _rows(killed)
    assert len(a) == len(b) == n
    assert len({row["path"] for row in b}) == n  # every input exactly once
    assert sorted(a, key=lambda r: r["path"]) == sorted(b, key=lambda r: r["path"])  # the same predictions
    assert "were already in the output" in resumed.stdout
    print(
        f"\n{fmt}: killed (SIGKILL) with {on_disk} of {n} rows on disk; --resume scored the rest; "
        f"{len(b)} rows, each input once, identical to the unbroken run\n{resumed.stdout.strip()}"
    )

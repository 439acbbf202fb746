"""``clsloc score --engine ray`` on a local Ray instance: the same rows as the local engine, resumable the same way."""

from __future__ import annotations

import logging

import pytest
import scoring_data

from clsloc.cli import main
from clsloc.serving.scoring.sinks import read_rows


@pytest.fixture(scope="module")
def local_ray():
    """A small local Ray instance for this module's tests; always shut down."""
    ray = pytest.importorskip("ray")
    ray.init(  # as clsloc score starts a local instance: workers at normal priority
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        logging_level=logging.WARNING,
        _system_config={"worker_niceness": 0},
    )
    try:
        yield
    finally:
        ray.shutdown()


def _inputs(tmp_path):
    """Good images, every kind of bad file, and a path that does not exist, named by a list file."""
    good = scoring_data.write_images(tmp_path / "in", 30, fmt="JPEG")
    odd = tmp_path / "in" / "odd-exif.jpg"  # scored, with the warning in its row's detail
    odd.write_bytes(scoring_data.oracle.object_image("green", (5, 5, 30, 30), exif_orientation=9))
    good.append(odd)
    bad = scoring_data.write_bad_files(tmp_path / "in")
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join(map(str, [*good, *bad, tmp_path / "in" / "gone.png"])))
    return listed, len(good) + len(bad) + 1


def _score(*args) -> int:
    return main(["score", *map(str, args), "--quiet", "--max-bytes", str(scoring_data.BAD_MAX_BYTES)])


def _by_path(out):
    rows = list(read_rows(out))
    assert len({r["path"] for r in rows}) == len(rows), "a path appears twice"
    return {r["path"]: r for r in rows}


@pytest.mark.slow
def test_ray_rows_equal_local_rows(oracle_dir, tmp_path, local_ray, capsys):
    listed, n = _inputs(tmp_path)
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert _score(oracle_dir, listed, "--out", local) == 0
    assert _score(oracle_dir, listed, "--out", on_ray, "--engine", "ray", "--ray-actors", "2", "--batch-size", "4") == 0

    a, b = _by_path(local), _by_path(on_ray)
    assert len(a) == len(b) == n
    assert a == b  # every field, floats bit for bit; error rows with the same kinds and messages
    assert sum(r["status"] != "ok" for r in b.values()) == len(scoring_data.BAD_KINDS) + 1
    print(f"\nRay vs local: {n} inputs, {len(b)} rows from Ray, identical to the local engine's rows")
    print(capsys.readouterr().out)


@pytest.mark.slow
def test_ray_resumes_a_killed_output(oracle_dir, tmp_path, local_ray):
    listed, n = _inputs(tmp_path)
    reference, out = tmp_path / "reference.jsonl", tmp_path / "resumed.jsonl"
    assert _score(oracle_dir, listed, "--out", reference) == 0
    lines = reference.read_bytes().splitlines(keepends=True)
    # what a kill mid-way leaves: some rows, then half of one
    out.write_bytes(b"".join(lines[:15]) + lines[15][:40])
    (tmp_path / "resumed.jsonl.job.json").write_bytes((tmp_path / "reference.jsonl.job.json").read_bytes())
    assert _score(oracle_dir, listed, "--out", out, "--engine", "ray", "--resume") == 0
    assert _by_path(out) == _by_path(reference)
    assert len(out.read_bytes().splitlines()) == n


def test_files_that_cannot_be_read_never_leave_the_driver(tmp_path):
    import os

    from clsloc.serving.scoring.ray_runner import precheck

    good = scoring_data.write_images(tmp_path, 1)[0]
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/latin-\xe9.jpg")
    with open(odd, "wb") as f:
        f.write(good.read_bytes())
    readable, failed = precheck([str(good), str(empty), str(tmp_path / "gone.jpg"), odd], max_bytes=None)
    assert readable == [str(good)]
    assert [(r.path, r.status) for r in failed] == [
        (str(empty), "empty"),
        (str(tmp_path / "gone.jpg"), "missing"),
        (odd, "missing"),
    ]
    assert "not valid UTF-8" in failed[-1].detail


def test_batch_columns_carry_results_bit_for_bit(oracle_dir, tmp_path):
    import numpy as np

    from clsloc.serving.engine import Engine
    from clsloc.serving.scoring.ray_runner import from_columns, to_columns
    from clsloc.serving.scoring.work import score_paths

    odd = tmp_path / "odd-exif.jpg"
    odd.write_bytes(scoring_data.oracle.object_image("green", (5, 5, 30, 30), exif_orientation=9))
    paths = [*map(str, scoring_data.write_images(tmp_path, 3)), str(odd), str(tmp_path / "gone.png")]
    results = score_paths(Engine(oracle_dir, threads=1), paths)
    back = from_columns(to_columns(results))
    for before, after in zip(results, back):
        assert (after.path, after.status, after.detail, after.label, after.score, after.api_box, after.width) == (
            before.path,
            before.status,
            before.detail,
            before.label,
            before.score,
            before.api_box,
            before.width,
        )
        assert (after.box is None) == (before.box is None)
        if before.box is not None:
            assert after.box.dtype == np.float32 and np.array_equal(after.box, before.box)

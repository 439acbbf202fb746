"""Output files: exact round trips, a torn last row cut off on resume, never an overwrite."""

from __future__ import annotations

import json

import pytest

from clsloc.serving.scoring.rows import columns
from clsloc.serving.scoring.sinks import OutputError, open_sink, read_rows, sidecar

COLUMNS = columns(with_truth=True)


def row(i: int, **changes) -> dict:
    base = dict.fromkeys(COLUMNS)
    base.update(
        path=f"/data/img-{i}.jpg",
        status="ok",
        label="red",
        score=1 / 3 + i,  # not a short decimal: must come back bit for bit
        x=0.1,
        y=2.5e-7,
        w=100.0,
        h=33.333333333333336,
        width=640,
        height=480,
        gt_label="red",
        iou=0.1 + 0.2,
        correct=True,
    )
    base.update(changes)
    return base


AWKWARD = row(99, path='/data/a "quoted", comma\nnewline é.jpg', status="truncated", detail="line one\nline two")
for name in ("label", "score", "x", "y", "w", "h", "width", "height", "iou", "correct"):
    AWKWARD[name] = None


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_round_trip_is_exact(tmp_path, fmt):
    out = tmp_path / f"rows.{fmt}"
    rows = [row(0), AWKWARD, row(1, correct=False, detail="EXIF orientation 9 ignored")]
    sink, done = open_sink(out, COLUMNS, resume=False)
    assert done == set()
    sink.write(rows[:2])
    sink.write(rows[2:])
    sink.close()
    assert list(read_rows(out)) == rows


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_an_existing_output_is_never_overwritten(tmp_path, fmt):
    out = tmp_path / f"rows.{fmt}"
    sink, _ = open_sink(out, COLUMNS, resume=False)
    sink.write([row(0)])
    sink.close()
    before = out.read_bytes()
    with pytest.raises(OutputError, match="exists: add --resume"):
        open_sink(out, COLUMNS, resume=False)
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    ("fmt", "torn"),
    [
        ("jsonl", b'{"path": "/data/img-7.jpg", "status": "o'),
        ("csv", b"/data/img-7.jpg,ok,,re"),
        ("csv", b'"/data/a\nb.jpg",ok'),  # cut inside a quoted field, just after its newline
        ("csv", b'"/data/a\n'),
    ],
)
def test_resume_cuts_a_torn_last_row_and_appends(tmp_path, fmt, torn):
    out = tmp_path / f"rows.{fmt}"
    sink, _ = open_sink(out, COLUMNS, resume=False)
    sink.write([row(0), AWKWARD])
    sink.close()
    with open(out, "ab") as f:
        f.write(torn)
    sink, done = open_sink(out, COLUMNS, resume=True)
    assert done == {"/data/img-0.jpg", AWKWARD["path"]}
    sink.write([row(7)])
    sink.close()
    assert list(read_rows(out)) == [row(0), AWKWARD, row(7)]


def test_parquet_journal_while_running_and_resume_of_a_finished_file(tmp_path):
    out = tmp_path / "rows.parquet"
    journal = sidecar(out, ".partial.jsonl")
    sink, _ = open_sink(out, COLUMNS, resume=False)
    sink.write([row(0), row(1)])
    sink.close(finish=False)  # a job stopped part way: rows stay in the journal, no Parquet file yet
    assert journal.exists() and not out.exists()
    assert [r["path"] for r in read_rows(out)] == ["/data/img-0.jpg", "/data/img-1.jpg"]

    sink, done = open_sink(out, COLUMNS, resume=True)
    assert done == {"/data/img-0.jpg", "/data/img-1.jpg"}
    sink.write([row(2)])
    sink.close()
    assert out.exists() and not journal.exists()

    sink, done = open_sink(out, COLUMNS, resume=True)  # continuing a finished file (new inputs)
    assert len(done) == 3
    sink.write([row(3)])
    sink.close()
    assert list(read_rows(out)) == [row(0), row(1), row(2), row(3)]


def test_other_columns_are_refused_on_resume(tmp_path):
    out = tmp_path / "rows.jsonl"
    out.write_text(json.dumps({"path": "/x.jpg", "status": "ok"}) + "\n")
    with pytest.raises(OutputError, match="has the columns"):
        open_sink(out, COLUMNS, resume=True)


def test_unknown_extension_and_folder_are_refused(tmp_path):
    with pytest.raises(OutputError, match="use .jsonl, .csv or .parquet"):
        open_sink(tmp_path / "rows.txt", COLUMNS, resume=False)
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        open_sink(tmp_path / "dir.jsonl", COLUMNS, resume=False)

"""Output files: rows appended as they are scored, so a killed job loses only the rows in flight.

The format comes from ``--out``'s extension:

* ``.jsonl`` (or ``.ndjson``): one JSON object per line;
* ``.csv``: a header, then one line per row (floats written exactly, ``repr``);
* ``.parquet``: rows go to a JSON-lines journal beside it (``PATH.partial.jsonl``)
  while the job runs; when it ends they become ``PATH`` (written to a
  temporary name, then renamed), and the journal is removed.

Each batch of rows is one ``write`` + ``flush``: what a process killed at
any moment (SIGKILL included) has written is in the file, possibly followed
by part of one row. ``open_sink(..., resume=True)`` cuts such a partial last
row off, reads which paths are done, and appends after them. Without
``resume`` an existing output is refused, never overwritten. Nothing is
written outside ``PATH`` and its sidecars ``PATH.*``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from clsloc.serving.scoring.rows import TYPES, from_text, to_text

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
JOURNAL_SUFFIX = ".partial.jsonl"
PARQUET_CHUNK = 50_000  # rows per Parquet row group when the journal is converted


class OutputError(ValueError):
    """An output path that cannot be written, or an existing output that cannot be continued."""


def sidecar(out: str | Path, suffix: str) -> Path:
    """``PATH`` + ``suffix``, beside it (``scores.csv`` -> ``scores.csv.metrics.json``)."""
    out = Path(out)
    return out.with_name(out.name + suffix)


def output_format(out: str | Path) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"{out}: unknown output format {suffix or '(no extension)'!r}; use .jsonl, .csv or .parquet")
    return FORMATS[suffix]


# -- line files: JSON lines and CSV -----------------------------------------------------------


class LineSink:
    """Rows appended to a text file, one flushed ``write`` per batch."""

    def __init__(self, path: Path, columns: Sequence[str], *, fresh: bool):
        self.path = path
        self.columns = tuple(columns)
        self._file = open(path, "x" if fresh else "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
        if fresh:
            self._write(self.header())

    def header(self) -> str:
        return ""

    def encode(self, row: dict) -> str:
        raise NotImplementedError

    def _write(self, text: str) -> None:
        if text:
            self._file.write(text)
            self._file.flush()

    def write(self, rows: Iterable[dict]) -> None:
        self._write("".join(self.encode(row) for row in rows))

    def close(self, finish: bool = True) -> None:
        """Flush and close (the file is complete either way: ``finish`` matters to Parquet only)."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


class JsonlSink(LineSink):
    def encode(self, row: dict) -> str:
        return json.dumps(row, ensure_ascii=False) + "\n"


class CsvSink(LineSink):
    def header(self) -> str:
        return self._line(self.columns)

    def encode(self, row: dict) -> str:
        return self._line([to_text(row[c]) for c in self.columns])

    @staticmethod
    def _line(fields) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(fields)
        return buffer.getvalue()


def _jsonl_rows(path: Path) -> Iterator[tuple[dict, int]]:
    """(row, byte offset after it) for each complete line; stops at a partial last line."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                return  # cut off mid-row by a kill: not a row
            try:
                row = json.loads(line)
            except ValueError:
                raise OutputError(f"{path}, line {number}: not a JSON row (not written by clsloc score?)") from None
            offset += len(line)
            yield row, offset


def _csv_rows(path: Path) -> Iterator[tuple[dict, int]]:
    """(row, byte offset after it) for each complete CSV record after the header."""
    consumed = 0

    def lines():
        nonlocal consumed
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    return
                consumed += len(line)
                yield line.decode("utf-8")

    # strict: a quoted field still open at the end (a row cut off inside it) is an error, not a row
    reader = csv.reader(lines(), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        for number, record in enumerate(reader, 2):
            if len(record) != len(header):
                raise OutputError(f"{path}, record {number}: {len(record)} fields, the header has {len(header)}")
            yield {name: from_text(name, text) for name, text in zip(header, record)}, consumed
    except csv.Error:
        return


def _csv_header(path: Path) -> list[str] | None:
    with open(path, encoding="utf-8", newline="") as f:
        return next(csv.reader(f), None)


def _scan(path: Path, fmt: str) -> tuple[set[str], int, list[str] | None]:
    """(paths done, byte length of the complete rows, columns of the first row) of an existing line file."""
    done: set[str] = set()
    end, first = 0, None
    rows = _jsonl_rows(path) if fmt == "jsonl" else _csv_rows(path)
    for row, offset in rows:
        first = first or list(row)
        done.add(row["path"])
        end = offset
    if fmt == "csv":
        header = _csv_header(path)
        first = header
        if header and end == 0:  # header only
            end = len(CsvSink._line(header).encode("utf-8"))
    return done, end, first


def _continue(path: Path, fmt: str, columns: Sequence[str]) -> set[str]:
    """Check an existing line file's columns, cut a partial last row off; -> the paths it holds."""
    done, end, found = _scan(path, fmt)
    if found is not None and list(found) != list(columns):
        raise OutputError(
            f"{path} has the columns {found}, this job writes {list(columns)}: "
            "continue it with the same kind of inputs (with or without ground truth), or choose another --out"
        )
    if os.path.getsize(path) != end:
        with open(path, "r+b") as f:
            f.truncate(end)
    return done


# -- Parquet: a journal while running, one file at the end -------------------------------------


def parquet_schema(columns: Sequence[str]):
    import pyarrow as pa

    kinds = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}
    return pa.schema([(name, kinds[TYPES[name]]) for name in columns])


class ParquetSink:
    """Rows journaled as JSON lines while the job runs; ``close`` writes them to ``path`` as Parquet."""

    def __init__(self, path: Path, columns: Sequence[str], journal: JsonlSink):
        self.path = path
        self.columns = tuple(columns)
        self.journal = journal

    def write(self, rows: Iterable[dict]) -> None:
        self.journal.write(rows)

    def close(self, finish: bool = True) -> None:
        """Close the journal; with ``finish`` (the job completed) convert it to ``path`` and remove it."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.journal.close()
        if not finish:
            return  # a stopped job: the journal stays for --resume
        schema = parquet_schema(self.columns)
        tmp = sidecar(self.path, ".tmp")
        with pq.ParquetWriter(tmp, schema) as writer:
            chunk: list[dict] = []
            for row, _ in _jsonl_rows(self.journal.path):
                chunk.append(row)
                if len(chunk) >= PARQUET_CHUNK:
                    writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                    chunk = []
            if chunk:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
        os.replace(tmp, self.path)
        self.journal.path.unlink()


def _parquet_rows(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_CHUNK):
        yield from batch.to_pylist()


def _open_parquet(path: Path, columns: Sequence[str], resume: bool) -> tuple[ParquetSink, set[str]]:
    journal_path = sidecar(path, JOURNAL_SUFFIX)
    if not resume:
        return ParquetSink(path, columns, JsonlSink(journal_path, columns, fresh=True)), set()
    if not journal_path.exists() and path.exists():
        # A finished file being continued: its rows go back to a journal first (renamed into place whole).
        import pyarrow.parquet as pq

        found = pq.read_schema(path).names
        if found != list(columns):
            raise OutputError(f"{path} has the columns {found}, this job writes {list(columns)}")
        tmp = sidecar(path, JOURNAL_SUFFIX + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in _parquet_rows(path):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, journal_path)
    if not journal_path.exists():
        return ParquetSink(path, columns, JsonlSink(journal_path, columns, fresh=True)), set()
    done = _continue(journal_path, "jsonl", columns)
    return ParquetSink(path, columns, JsonlSink(journal_path, columns, fresh=False)), done


# -- the API ---------------------------------------------------------------------------------------


def existing(out: str | Path) -> list[Path]:
    """What a previous job left at ``out``: the output itself and/or a Parquet journal."""
    out = Path(out)
    return [p for p in (out, sidecar(out, JOURNAL_SUFFIX)) if p.exists()]


def open_sink(out: str | Path, columns: Sequence[str], *, resume: bool):
    """-> (sink with ``write(rows)`` and ``close()``, the row paths already in the output)."""
    out = Path(out)
    fmt = output_format(out)
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; --out names the output file")
    left = existing(out)
    if left and not resume:
        raise OutputError(
            f"{left[0]} exists: add --resume to continue that job, or choose another --out (an output is never overwritten)"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            return _open_parquet(out, columns, resume)
        sink_class = JsonlSink if fmt == "jsonl" else CsvSink
        if resume and out.exists() and out.stat().st_size > 0:
            done = _continue(out, fmt, columns)
            return sink_class(out, columns, fresh=False), done
        out.unlink(missing_ok=True)  # an empty file left by a job killed before its first write
        return sink_class(out, columns, fresh=True), set()
    except PermissionError as exc:
        raise OutputError(f"{out}: cannot write ({exc.strerror})") from None


def read_rows(out: str | Path) -> Iterator[dict]:
    """The rows of an output (finished, or a Parquet journal still running), typed, in file order."""
    out = Path(out)
    fmt = output_format(out)
    journal = sidecar(out, JOURNAL_SUFFIX)
    if fmt == "parquet" and journal.exists():
        yield from (row for row, _ in _jsonl_rows(journal))
    elif fmt == "parquet":
        yield from _parquet_rows(out)
    elif fmt == "jsonl":
        yield from (row for row, _ in _jsonl_rows(out))
    else:
        yield from (row for row, _ in _csv_rows(out))

"""What a finished job's output says: counts per status, the errors, and (with ground truth) the metrics.

Read back from the output file itself, so a job resumed three times is
summarized exactly like an unbroken one. The metrics are
``clsloc.metrics.summarize`` over each labelled image's label and IoU as the
rows hold them, in input order: the numbers training and export compute,
to the last digit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clsloc.metrics import calibration, record_share, summarize
from clsloc.serving.scoring.inputs import Inputs
from clsloc.serving.scoring.rows import OK, row_key
from clsloc.serving.scoring.sinks import read_rows

MAX_LISTED_ERRORS = 20


@dataclass
class Labelled:
    """A labelled image's ground truth and its row."""

    path: str
    record: object  # clsloc.datasets.Record
    row: dict


@dataclass
class Tally:
    rows: int = 0  # rows of this job's inputs in the output
    statuses: Counter = field(default_factory=Counter)
    errors: list[dict] = field(default_factory=list)  # the first MAX_LISTED_ERRORS error rows
    missing: list[str] = field(default_factory=list)  # inputs with no row (only if the output was edited)
    labelled: list[Labelled] = field(default_factory=list)  # in input order, scored or not
    metrics: dict | None = None

    @property
    def error_count(self) -> int:
        return self.rows - self.statuses.get(OK, 0)


def tally(out: str | Path, inputs: Inputs, classes: Sequence[str]) -> Tally:
    """Read ``out`` back for ``inputs`` (rows of other inputs in the file are left aside)."""
    keys = {row_key(path): path for path in inputs.paths}
    truth_rows: dict[str, dict] = {}
    seen: set[str] = set()
    result = Tally()
    for row in read_rows(out):
        path = keys.get(row["path"])
        if path is None or row["path"] in seen:
            continue
        seen.add(row["path"])
        result.rows += 1
        result.statuses[row["status"]] += 1
        if row["status"] != OK and len(result.errors) < MAX_LISTED_ERRORS:
            result.errors.append({k: row[k] for k in ("path", "status", "detail")})
        if path in inputs.truth:
            truth_rows[path] = row
    result.missing = [path for key, path in keys.items() if key not in seen]
    result.labelled = [Labelled(p, r, truth_rows[p]) for p, r in inputs.truth.items() if p in truth_rows]
    if inputs.truth:
        result.metrics = metrics(result.labelled, classes)
    return result


def metrics(labelled: Sequence[Labelled], classes: Sequence[str]) -> dict:
    """The metrics report of the scored labelled images, plus calibration and what could not be scored."""
    scored = [item for item in labelled if item.row["status"] == OK]
    report = summarize(
        [item.record.label for item in scored],
        [item.row["label"] for item in scored],
        [item.row["iou"] for item in scored],
        classes,
        objects=[len(item.record.objects) for item in scored],
        box_shares=[record_share(item.record) for item in scored],
    )
    report["calibration"] = calibration(
        [item.row["score"] for item in scored], [item.row["correct"] for item in scored]
    )
    report["not_scored"] = dict(Counter(item.row["status"] for item in labelled if item.row["status"] != OK))
    return report

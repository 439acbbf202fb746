"""One output row per input image: what the model said, or why it could not say anything.

Columns (every output format, in this order):

==========  ==============================================================
path        the image, an absolute path (the row's key: resume matches it)
status      ``ok``, or the ``kind`` of the image's ``clsloc.images.ImageError``
detail      why the image could not be scored; for an ``ok`` row, what was odd
            about an image scored anyway (``clsloc.images.ImageWarning``), else empty
label       predicted class; ``score`` its softmax probability
x y w h     predicted box in pixels of the image as displayed (EXIF applied),
            top-left corner, clipped to the image (exactly what serving answers)
width       size of the image as displayed
height
gt_label    with ground truth only: the image's target class,
iou         the predicted box's IoU with its best-matching ground-truth box
            (``clsloc.metrics.best_iou``, the box as the metrics score it),
correct     and whether ``label == gt_label``
==========  ==============================================================

Empty values are JSON ``null``, an empty CSV field, a Parquet null.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clsloc.boxes import denormalize_boxes
from clsloc.metrics import best_iou

COLUMNS = ("path", "status", "detail", "label", "score", "x", "y", "w", "h", "width", "height")
TRUTH_COLUMNS = ("gt_label", "iou", "correct")
TYPES = {
    "path": str,
    "status": str,
    "detail": str,
    "label": str,
    "score": float,
    "x": float,
    "y": float,
    "w": float,
    "h": float,
    "width": int,
    "height": int,
    "gt_label": str,
    "iou": float,
    "correct": bool,
}
OK = "ok"


def columns(with_truth: bool) -> tuple[str, ...]:
    return COLUMNS + TRUTH_COLUMNS if with_truth else COLUMNS


def row_key(text: str) -> str:
    """A path (or message) as a row holds it: bytes of a file name that are not UTF-8 written as ``\\xNN``.

    Every output format holds valid UTF-8; resume compares inputs with rows through this.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name makes
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


@dataclass
class Scored:
    """One image through the engine: a prediction, or the reason there is none.

    ``box`` is the network's normalized xyxy output row as it came (float32):
    the IoU is computed from it exactly as export and training compute theirs.
    """

    path: str
    status: str = OK
    detail: str | None = None
    label: str | None = None
    score: float | None = None
    api_box: dict | None = None  # {"x", "y", "w", "h"}: Engine.prediction's box
    box: np.ndarray | None = None
    width: int | None = None
    height: int | None = None


def make_row(scored: Scored, record=None, *, with_truth: bool = False) -> dict:
    """A :class:`Scored` image (and its ground-truth record, if any) -> an output row."""
    row = dict.fromkeys(columns(with_truth))
    detail = None if scored.detail is None else row_key(scored.detail)
    row.update(path=row_key(scored.path), status=scored.status, detail=detail)
    if scored.status == OK:
        row.update(label=scored.label, score=scored.score, width=scored.width, height=scored.height)
        row.update({k: scored.api_box[k] for k in ("x", "y", "w", "h")})
    if with_truth and record is not None:
        row["gt_label"] = record.label
        if scored.status == OK:
            # As export's evaluate_outputs and training do: the raw box in pixels, float32 as it came.
            box_px = denormalize_boxes(scored.box, scored.width, scored.height)
            row["iou"] = best_iou(box_px, [(o.label, o.box) for o in record.objects], record.label)
            row["correct"] = scored.label == record.label
    return row


def to_text(value) -> str:
    """A CSV field: '' for empty, repr for floats (exact round trip), true/false for booleans."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def from_text(name: str, text: str):
    """A CSV field back to its column's type."""
    if text == "":
        return None
    kind = TYPES.get(name, str)
    if kind is bool:
        return text == "true"
    return kind(text)

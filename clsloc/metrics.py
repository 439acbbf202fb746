"""Metrics: the one definition used by training validation, export, evaluation and the service.

For image i with true label t_i, predicted label p_i, predicted box b_i and
ground-truth objects G_i (each a label and a box):

* ``iou_i`` = max IoU of b_i with the ground-truth boxes of class t_i
  (several boxes of the class: the best-matching one counts; an image whose
  objects hold no box of t_i falls back to all its boxes).
* ``accuracy`` = mean(p_i == t_i); ``balanced_accuracy`` = mean over the
  classes present of each class's recall.
* ``mean_iou`` = mean(iou_i).
* ``loc_accuracy`` = mean(p_i == t_i and iou_i >= 0.5): the ILSVRC CLS-LOC
  rule (the class is right and the box overlaps a box of that class).
* ``gt_known_loc_accuracy`` = mean(iou_i >= 0.5): localization judged with
  the true class given, whatever the predicted class.
* ``per_class``: the same per true class; ``confusion``: rows true, columns
  predicted, in ``classes`` order.
* ``by_objects``: the same for images with one ground-truth object
  (``single``) and with several (``multi``).
* ``by_box_size``: the same by the size of the image's target box (its main
  object) as a share of the image area: ``small`` below 1/9, ``large`` from
  4/9, ``medium`` between. On average a small box spans less than a third of
  the image's width and height, a large one at least two thirds
  (:data:`BOX_SIZE_SHARES`; the thresholds are in the report too).
* ``unknown_classes``: true classes the model does not know (not in
  ``classes``), with their image counts. They are never a crash: they get
  rows in ``per_class`` and the confusion matrix (always predicted wrong),
  count in every number above, and ``known_classes_only`` repeats the overall
  numbers without them.

Boxes are xyxy in any unit, as long as predictions and ground truth share it.

:func:`evaluate` is :func:`image_ious` followed by :func:`summarize`; batch
scoring computes each image's IoU when it scores it, keeps it in its output,
and summarizes those values later with the same :func:`summarize`, so its
numbers are these to the last digit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clsloc.boxes import box_iou

LOC_IOU_THRESHOLD = 0.5
# Target box area / image area: below the first is "small", from the second "large" (sides of 1/3 and 2/3).
BOX_SIZE_SHARES = (1 / 9, 4 / 9)
BOX_SIZES = ("small", "medium", "large")


def best_iou(pred_box, gt_objects: Sequence[tuple[str, Sequence[float]]], label: str) -> float:
    """IoU of one predicted box with the best-matching ground-truth box of ``label``."""
    boxes = [box for name, box in gt_objects if name == label] or [box for _, box in gt_objects]
    if not boxes:
        return 0.0
    return float(box_iou(np.asarray(pred_box, dtype=np.float64)[None], np.asarray(boxes, dtype=np.float64)).max())


def image_ious(pred_boxes, gt_objects: Sequence, true_labels: Sequence[str]) -> np.ndarray:
    """Each image's :func:`best_iou` (predicted boxes as in :func:`evaluate`)."""
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    return np.array([best_iou(b, g, t) for b, g, t in zip(pred_boxes, gt_objects, true_labels)], dtype=np.float64)


def box_share(box, width: float, height: float) -> float:
    """Area of an xyxy box as a share of the (width x height) image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return max(x1 - x0, 0.0) * max(y1 - y0, 0.0) / (float(width) * float(height))


def box_size(share: float) -> str:
    """``small`` / ``medium`` / ``large`` for a :func:`box_share` (thresholds :data:`BOX_SIZE_SHARES`)."""
    return BOX_SIZES[int(np.searchsorted(BOX_SIZE_SHARES, share, side="right"))]


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _check_lengths(n: int, **others: int) -> None:
    if any(length != n for length in others.values()):
        counts = ", ".join(f"{length} {name.replace('_', ' ')}" for name, length in others.items())
        raise ValueError(f"evaluate needs one entry per image: {n} true labels, {counts}")


def summarize(
    true_labels: Sequence[str],
    pred_labels: Sequence[str],
    ious,
    classes: Sequence[str],
    *,
    objects: Sequence[int] | None = None,
    box_shares: Sequence[float] | None = None,
) -> dict:
    """The report from each image's true label, predicted label and IoU (see the module docstring).

    ``objects`` (ground-truth objects per image) adds ``by_objects``;
    ``box_shares`` (the target box's share of the image) adds ``by_box_size``.
    """
    n = len(true_labels)
    ious = np.asarray(ious, dtype=np.float64).reshape(-1)
    _check_lengths(n, predicted_labels=len(pred_labels), ious=len(ious))
    classes = list(classes)
    unknown_predicted = sorted({str(x) for x in pred_labels} - set(classes))
    if unknown_predicted:
        raise ValueError(f"predicted label(s) {unknown_predicted} not in classes {classes}")
    counts: dict[str, int] = {}
    for label in true_labels:
        if label not in classes:
            counts[str(label)] = counts.get(str(label), 0) + 1
    unknown = sorted(counts)
    names = classes + unknown  # a class the model does not know still gets its row
    position = {name: i for i, name in enumerate(names)}
    true = np.array([position[x] for x in true_labels], dtype=np.int64)
    pred = np.array([position[x] for x in pred_labels], dtype=np.int64)
    correct = true == pred
    located = ious >= LOC_IOU_THRESHOLD

    def stats(mask: np.ndarray) -> dict:
        return {
            "n": int(mask.sum()),
            "accuracy": _mean(correct[mask]),
            "mean_iou": _mean(ious[mask]),
            "loc_accuracy": _mean((correct & located)[mask]),
            "gt_known_loc_accuracy": _mean(located[mask]),
        }

    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    per_class = {name: stats(true == i) for i, name in enumerate(names)}
    recalls = [correct[true == i].mean() for i in range(len(names)) if (true == i).any()]
    report = {
        "n": n,
        "accuracy": _mean(correct),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "mean_iou": _mean(ious),
        "loc_accuracy": _mean(correct & located),
        "gt_known_loc_accuracy": _mean(located),
        "per_class": per_class,
        "confusion": {"classes": names, "matrix": confusion.tolist()},
    }
    if unknown:
        report["unknown_classes"] = {name: counts[name] for name in unknown}
        known = true < len(classes)
        known_recalls = [correct[true == i].mean() for i in range(len(classes)) if (true == i).any()]
        report["known_classes_only"] = {
            **stats(known),
            "balanced_accuracy": float(np.mean(known_recalls)) if known_recalls else None,
        }
    if objects is not None:
        many = np.asarray(objects, dtype=np.int64).reshape(-1) > 1
        _check_lengths(n, object_counts=len(many))
        report["by_objects"] = {"single": stats(~many), "multi": stats(many)}
    if box_shares is not None:
        sizes = np.array([box_size(s) for s in box_shares], dtype=object)
        _check_lengths(n, box_shares=len(sizes))
        report["by_box_size"] = {size: stats(sizes == size) for size in BOX_SIZES}
        report["box_size_shares"] = list(BOX_SIZE_SHARES)
    return report


def evaluate(
    true_labels: Sequence[str],
    pred_labels: Sequence[str],
    pred_boxes,
    gt_objects: Sequence[Sequence[tuple[str, Sequence[float]]]],
    classes: Sequence[str],
    *,
    box_shares: Sequence[float] | None = None,
) -> dict:
    """Classification + localization report (see the module docstring for each key)."""
    n = len(true_labels)
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4) if n else np.zeros((0, 4))
    _check_lengths(
        n, predicted_labels=len(pred_labels), predicted_boxes=len(pred_boxes), ground_truth_lists=len(gt_objects)
    )
    ious = image_ious(pred_boxes, gt_objects, true_labels)
    return summarize(
        true_labels, pred_labels, ious, classes, objects=[len(g) for g in gt_objects], box_shares=box_shares
    )


def record_share(record) -> float:
    """A dataset record's target box as a share of its image (what ``by_box_size`` sorts by)."""
    return box_share(record.box, record.width, record.height)


def evaluate_records(records, pred_labels: Sequence[str], pred_boxes_px, classes: Sequence[str] | None = None) -> dict:
    """:func:`evaluate` for dataset records (``clsloc.datasets.Record``) and pixel xyxy predictions.

    ``classes`` defaults to the sorted union of the records' and the predicted labels.
    """
    true_labels = [r.label for r in records]
    if classes is None:
        classes = sorted(set(true_labels) | {str(p) for p in pred_labels})
    gt_objects = [[(o.label, o.box) for o in r.objects] for r in records]
    shares = [record_share(r) for r in records]
    return evaluate(true_labels, list(pred_labels), pred_boxes_px, gt_objects, classes, box_shares=shares)


def calibration(scores, correct, bins: int = 10) -> dict:
    """Reliability of the predicted label's score: does a score of 0.8 mean right 80% of the time?

    Scores are cut into ``bins`` equal-width bins over [0, 1] (a score of 1.0
    goes in the last). Per bin: its range, ``n``, the mean score and the
    accuracy (None when empty). ``ece`` (expected calibration error) is the
    mean of |accuracy - mean score| over bins, weighted by their image counts.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    if len(scores) != len(correct):
        raise ValueError(f"calibration needs one score per image: {len(scores)} scores, {len(correct)} outcomes")
    which = np.minimum((scores * bins).astype(np.int64), bins - 1)
    table, gap = [], 0.0
    for b in range(bins):
        mask = which == b
        mean_score, accuracy = _mean(scores[mask]), _mean(correct[mask])
        if mask.any():
            gap += mask.sum() * abs(accuracy - mean_score)
        table.append(
            {"low": b / bins, "high": (b + 1) / bins, "n": int(mask.sum()), "score": mean_score, "accuracy": accuracy}
        )
    return {"bins": table, "ece": float(gap / len(scores)) if len(scores) else None}


def _fmt(value: float | None) -> str:
    return "   -" if value is None else f"{value:.3f}"


def _table(title: str, rows: dict, mark: set[str] = frozenset()) -> list[str]:
    width = max([len(title)] + [len(name) + (1 if name in mark else 0) for name in rows])
    lines = [f"{title:<{width}}  {'n':>5}  {'acc':>6}  {'mIoU':>6}  {'loc':>6}  {'gtloc':>6}"]
    for name, row in rows.items():
        shown = f"{name}*" if name in mark else name
        lines.append(
            f"{shown:<{width}}  {row['n']:>5}  {_fmt(row['accuracy']):>6}  {_fmt(row['mean_iou']):>6}"
            f"  {_fmt(row['loc_accuracy']):>6}  {_fmt(row.get('gt_known_loc_accuracy')):>6}"
        )
    return lines


def format_table(report: dict) -> str:
    """A plain-text table of a report: overall numbers, one row per class, then the breakdowns."""
    lines = [
        f"images {report['n']}   accuracy {_fmt(report['accuracy'])}   balanced accuracy {_fmt(report['balanced_accuracy'])}",
        f"mean IoU {_fmt(report['mean_iou'])}   loc accuracy (class right, IoU>=0.5) {_fmt(report['loc_accuracy'])}"
        f"   GT-known loc accuracy {_fmt(report['gt_known_loc_accuracy'])}",
        "",
    ]
    unknown = report.get("unknown_classes") or {}
    lines += _table("class", report["per_class"], set(unknown))
    if unknown:
        known = report["known_classes_only"]
        lines += [
            f"* not a class of the model: {', '.join(f'{k} ({v})' for k, v in unknown.items())}; always counted wrong",
            f"  without them: images {known['n']}   accuracy {_fmt(known['accuracy'])}   "
            f"mean IoU {_fmt(known['mean_iou'])}   loc accuracy {_fmt(known['loc_accuracy'])}",
        ]
    if "by_objects" in report:
        lines += ["", *_table("objects", report["by_objects"])]
    if "by_box_size" in report:
        small, large = report.get("box_size_shares", BOX_SIZE_SHARES)
        lines += ["", *_table("box size", report["by_box_size"])]
        lines.append(f"(target box area / image area: small < {small:.3f} <= medium < {large:.3f} <= large)")
    return "\n".join(lines)


def plot_confusion(report: dict, path) -> None:
    """Write the confusion matrix as a PNG (counts, and row-normalized colour)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    classes = report["confusion"]["classes"]
    matrix = np.asarray(report["confusion"]["matrix"], dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(4.0, 0.6 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j, i, f"{int(matrix[i, j])}", ha="center", va="center", color="white" if share[i, j] > 0.5 else "black"
            )
    acc = report.get("accuracy")
    ax.set_title(f"confusion (n={report['n']}, accuracy {_fmt(acc)})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

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

Boxes are xyxy in any unit, as long as predictions and ground truth share it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clsloc.boxes import box_iou

LOC_IOU_THRESHOLD = 0.5


def best_iou(pred_box, gt_objects: Sequence[tuple[str, Sequence[float]]], label: str) -> float:
    """IoU of one predicted box with the best-matching ground-truth box of ``label``."""
    boxes = [box for name, box in gt_objects if name == label] or [box for _, box in gt_objects]
    if not boxes:
        return 0.0
    return float(box_iou(np.asarray(pred_box, dtype=np.float64)[None], np.asarray(boxes, dtype=np.float64)).max())


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def evaluate(
    true_labels: Sequence[str],
    pred_labels: Sequence[str],
    pred_boxes,
    gt_objects: Sequence[Sequence[tuple[str, Sequence[float]]]],
    classes: Sequence[str],
) -> dict:
    """Classification + localization report (see the module docstring for each key)."""
    n = len(true_labels)
    pred_boxes = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4) if n else np.zeros((0, 4))
    if not (len(pred_labels) == n and len(pred_boxes) == n and len(gt_objects) == n):
        raise ValueError(
            f"evaluate needs one entry per image: {n} true labels, {len(pred_labels)} predicted labels, "
            f"{len(pred_boxes)} predicted boxes, {len(gt_objects)} ground-truth lists"
        )
    classes = list(classes)
    position = {name: i for i, name in enumerate(classes)}
    for kind, labels in (("true", true_labels), ("predicted", pred_labels)):
        unknown = sorted({str(x) for x in labels} - set(position))
        if unknown:
            raise ValueError(f"{kind} label(s) {unknown} not in classes {classes}")

    true = np.array([position[x] for x in true_labels], dtype=np.int64)
    pred = np.array([position[x] for x in pred_labels], dtype=np.int64)
    ious = np.array([best_iou(b, g, t) for b, g, t in zip(pred_boxes, gt_objects, true_labels)], dtype=np.float64)
    correct = true == pred
    located = ious >= LOC_IOU_THRESHOLD

    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)

    per_class = {}
    recalls = []
    for i, name in enumerate(classes):
        mask = true == i
        per_class[name] = {
            "n": int(mask.sum()),
            "accuracy": _mean(correct[mask]),
            "mean_iou": _mean(ious[mask]),
            "loc_accuracy": _mean((correct & located)[mask]),
            "gt_known_loc_accuracy": _mean(located[mask]),
        }
        if mask.any():
            recalls.append(correct[mask].mean())
    return {
        "n": n,
        "accuracy": _mean(correct),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "mean_iou": _mean(ious),
        "loc_accuracy": _mean(correct & located),
        "gt_known_loc_accuracy": _mean(located),
        "per_class": per_class,
        "confusion": {"classes": classes, "matrix": confusion.tolist()},
    }


def evaluate_records(records, pred_labels: Sequence[str], pred_boxes_px, classes: Sequence[str] | None = None) -> dict:
    """:func:`evaluate` for dataset records (``clsloc.datasets.Record``) and pixel xyxy predictions.

    ``classes`` defaults to the sorted union of the records' and the predicted labels.
    """
    true_labels = [r.label for r in records]
    if classes is None:
        classes = sorted(set(true_labels) | {str(p) for p in pred_labels})
    gt_objects = [[(o.label, o.box) for o in r.objects] for r in records]
    return evaluate(true_labels, list(pred_labels), pred_boxes_px, gt_objects, classes)


def _fmt(value: float | None) -> str:
    return "   -" if value is None else f"{value:.3f}"


def format_table(report: dict) -> str:
    """A plain-text table of a report: overall numbers, then one row per class."""
    lines = [
        f"images {report['n']}   accuracy {_fmt(report['accuracy'])}   balanced accuracy {_fmt(report['balanced_accuracy'])}",
        f"mean IoU {_fmt(report['mean_iou'])}   loc accuracy (class right, IoU>=0.5) {_fmt(report['loc_accuracy'])}"
        f"   GT-known loc accuracy {_fmt(report['gt_known_loc_accuracy'])}",
        "",
    ]
    width = max([len("class")] + [len(name) for name in report["per_class"]])
    lines.append(f"{'class':<{width}}  {'n':>5}  {'acc':>6}  {'mIoU':>6}  {'loc':>6}  {'gtloc':>6}")
    for name, row in report["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['n']:>5}  {_fmt(row['accuracy']):>6}  {_fmt(row['mean_iou']):>6}"
            f"  {_fmt(row['loc_accuracy']):>6}  {_fmt(row.get('gt_known_loc_accuracy')):>6}"
        )
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

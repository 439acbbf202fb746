"""The report's pictures, each a data URI: matplotlib plots as PNG, drawn images as JPEG."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

from clsloc.images import open_image
from clsloc.metrics import plot_confusion
from clsloc.serving.scoring.rows import OK
from clsloc.serving.scoring.summary import Labelled

GT_COLOUR = (0, 170, 60)
PRED_COLOUR = (230, 30, 30)
THUMB = 360  # longest side of a drawn image, pixels


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def confusion_png(metrics: dict) -> str:
    buffer = io.BytesIO()
    plot_confusion(metrics, buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def iou_histogram_png(labelled: Sequence[Labelled]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [item.row for item in labelled if item.row["status"] == OK]
    right = [row["iou"] for row in scored if row["correct"]]
    wrong = [row["iou"] for row in scored if not row["correct"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.hist([right, wrong], bins=np.linspace(0, 1, 21), stacked=True, label=["class right", "class wrong"])
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1, label="IoU 0.5 (ILSVRC)")
    ax.set_xlabel("IoU of the predicted box with the best ground-truth box")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def calibration_png(calibration: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in calibration["bins"] if b["n"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    top.bar(centres, [b["accuracy"] for b in bins], width=0.09, alpha=0.7, label="accuracy of the bin")
    top.plot([b["score"] for b in bins], [b["accuracy"] for b in bins], "o", color="black", label="at its mean score")
    ece = calibration.get("ece")
    top.set_title("score calibration" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1.02)
    top.legend(loc="upper left")
    bottom.bar(centres, [b["n"] for b in bins], width=0.09, color="grey")
    bottom.set_xlabel("score of the predicted label")
    bottom.set_ylabel("images")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    return _png(fig)


def worst(labelled: Sequence[Labelled], n: int) -> list[Labelled]:
    """The ``n`` worst scored images: wrong labels first, then the lowest IoU."""
    scored = [item for item in labelled if item.row["status"] == OK]
    return sorted(scored, key=lambda item: (bool(item.row["correct"]), item.row["iou"]))[:n]


def drawn_image(item: Labelled) -> str:
    """The image with every ground-truth box (green) and the predicted box (red), as a JPEG data URI."""
    from PIL import ImageDraw

    image = open_image(item.path)
    scale = min(1.0, THUMB / max(image.size))
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(image)
    width = max(2, round(3 * max(image.size) / THUMB))
    for obj in item.record.objects:
        draw.rectangle([v * scale for v in obj.box], outline=GT_COLOUR, width=width)
    row = item.row
    draw.rectangle(
        [row["x"] * scale, row["y"] * scale, (row["x"] + row["w"]) * scale, (row["y"] + row["h"]) * scale],
        outline=PRED_COLOUR,
        width=width,
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()

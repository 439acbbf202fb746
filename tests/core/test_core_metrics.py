"""Metrics against numbers computed by hand, including multi-box images (ILSVRC rule)."""

import json
from pathlib import Path

import pytest

from clsloc.datasets import GroundTruth, Record
from clsloc.metrics import evaluate, evaluate_records, format_table, plot_confusion

CLASSES = ["cat", "dog"]


def test_hand_computed_report():
    # image 1: cat, right class, box equal to the GT                         iou 1
    # image 2: cat with two cat boxes, predicted dog; box matches the 2nd    iou 1   (class wrong)
    # image 3: dog with a dog box and a cat box; box half-overlaps the dog   iou 1/3 (class right)
    # image 4: dog, right class, box overlaps only the *cat* box fully        iou 0   (best box of the true class counts)
    true = ["cat", "cat", "dog", "dog"]
    pred = ["cat", "dog", "dog", "dog"]
    boxes = [[0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10], [50, 50, 60, 60]]
    gt = [
        [("cat", (0, 0, 10, 10))],
        [("cat", (0, 0, 10, 10)), ("cat", (20, 20, 30, 30))],
        [("dog", (0, 0, 10, 10)), ("cat", (5, 0, 15, 10))],
        [("dog", (0, 0, 10, 10)), ("cat", (50, 50, 60, 60))],
    ]
    report = evaluate(true, pred, boxes, gt, CLASSES)
    assert report["n"] == 4
    assert report["accuracy"] == pytest.approx(3 / 4)
    assert report["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert report["mean_iou"] == pytest.approx((1 + 1 + 1 / 3 + 0) / 4)
    assert report["loc_accuracy"] == pytest.approx(1 / 4)  # only image 1: class right AND IoU >= 0.5
    assert report["gt_known_loc_accuracy"] == pytest.approx(2 / 4)  # images 1 and 2, whatever the predicted class
    assert report["per_class"]["cat"] == pytest.approx(
        {"n": 2, "accuracy": 0.5, "mean_iou": 1.0, "loc_accuracy": 0.5, "gt_known_loc_accuracy": 1.0}
    )
    assert report["per_class"]["dog"]["mean_iou"] == pytest.approx(1 / 6)
    assert report["per_class"]["dog"]["loc_accuracy"] == 0.0
    assert report["confusion"] == {"classes": CLASSES, "matrix": [[1, 1], [0, 2]]}
    json.dumps(report)  # plain JSON types only


def test_iou_threshold_is_inclusive_and_class_without_images_is_none():
    # 10x10 GT, prediction 10x5 inside it: IoU exactly 0.5 -> counts as located
    report = evaluate(["cat"], ["cat"], [[0, 0, 10, 5]], [[("cat", (0, 0, 10, 10))]], ["cat", "dog", "fox"])
    assert report["loc_accuracy"] == 1.0
    assert report["per_class"]["dog"] == {
        "n": 0,
        "accuracy": None,
        "mean_iou": None,
        "loc_accuracy": None,
        "gt_known_loc_accuracy": None,
    }
    assert report["balanced_accuracy"] == 1.0  # over classes present only


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="not in classes"):
        evaluate(["cat"], ["cow"], [[0, 0, 1, 1]], [[("cat", (0, 0, 1, 1))]], CLASSES)
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate(["cat", "dog"], ["cat"], [[0, 0, 1, 1]], [[("cat", (0, 0, 1, 1))]], CLASSES)


def test_evaluate_records_table_and_plot(tmp_path):
    records = [
        Record(
            Path("a.jpg"),
            100,
            100,
            [GroundTruth("cat", (0, 0, 50, 50)), GroundTruth("cat", (50, 50, 100, 100))],
            "a.xml",
            "cat",
            (0, 0, 50, 50),
        ),
        Record(Path("b.jpg"), 100, 100, [GroundTruth("dog", (10, 10, 90, 90))], "b.xml", "dog", (10, 10, 90, 90)),
    ]
    report = evaluate_records(records, ["cat", "cat"], [[50, 50, 100, 100], [10, 10, 90, 90]])
    assert report["confusion"]["classes"] == CLASSES
    assert report["loc_accuracy"] == 0.5 and report["mean_iou"] == 1.0  # second cat box counts
    table = format_table(report)
    cat_row = next(line for line in table.splitlines() if line.startswith("cat "))
    assert cat_row.split()[1:3] == ["1", "1.000"]  # one cat image, classified right
    png = tmp_path / "confusion.png"
    plot_confusion(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

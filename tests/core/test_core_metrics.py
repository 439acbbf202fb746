"""Metrics against numbers computed by hand, including multi-box images (ILSVRC rule)."""

import json
from pathlib import Path

import numpy as np
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


def test_classes_the_model_does_not_know_are_counted_and_named_never_a_crash():
    # the model knows cat and dog; the data also holds a fox (twice) and an owl
    true = ["cat", "fox", "dog", "fox", "owl"]
    pred = ["cat", "cat", "dog", "dog", "cat"]
    boxes = [[0, 0, 10, 10]] * 5
    gt = [[(t, (0, 0, 10, 10))] for t in true]
    report = evaluate(true, pred, boxes, gt, CLASSES)
    assert report["unknown_classes"] == {"fox": 2, "owl": 1}
    assert report["accuracy"] == pytest.approx(2 / 5)  # images of unknown classes count as wrong
    assert report["balanced_accuracy"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    assert report["per_class"]["fox"] == {
        "n": 2,
        "accuracy": 0.0,
        "mean_iou": 1.0,
        "loc_accuracy": 0.0,
        "gt_known_loc_accuracy": 1.0,
    }
    assert report["confusion"]["classes"] == ["cat", "dog", "fox", "owl"]  # unknown ones after the model's
    assert report["confusion"]["matrix"] == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    assert report["known_classes_only"]["n"] == 2 and report["known_classes_only"]["accuracy"] == 1.0
    table = format_table(report)
    assert "fox*" in table and "owl*" in table and "not a class of the model: fox (2), owl (1)" in table
    # without unknown classes the report has neither key
    assert "unknown_classes" not in evaluate(["cat"], ["cat"], [[0, 0, 1, 1]], [[("cat", (0, 0, 1, 1))]], CLASSES)


def test_breakdowns_by_object_count_and_box_size():
    # 100x100 images; target boxes of area 100 (share 0.01: small), 2500 (0.25: medium), 6400 (0.64: large)
    records = [
        Record(Path("s.jpg"), 100, 100, [GroundTruth("cat", (0, 0, 10, 10))], "s.xml", "cat", (0, 0, 10, 10)),
        Record(
            Path("m.jpg"),
            100,
            100,
            [GroundTruth("dog", (0, 0, 50, 50)), GroundTruth("cat", (60, 60, 70, 70))],
            "m.xml",
            "dog",
            (0, 0, 50, 50),
        ),
        Record(Path("l.jpg"), 100, 100, [GroundTruth("dog", (0, 0, 80, 80))], "l.xml", "dog", (0, 0, 80, 80)),
    ]
    # s: right class, exact box; m: wrong class, exact box; l: right class, box a quarter of the GT (IoU 0.25)
    report = evaluate_records(records, ["cat", "cat", "dog"], [[0, 0, 10, 10], [0, 0, 50, 50], [0, 0, 40, 40]])
    assert report["by_objects"]["single"] == pytest.approx(
        {"n": 2, "accuracy": 1.0, "mean_iou": (1 + 0.25) / 2, "loc_accuracy": 0.5, "gt_known_loc_accuracy": 0.5}
    )
    assert report["by_objects"]["multi"] == {
        "n": 1,
        "accuracy": 0.0,
        "mean_iou": 1.0,
        "loc_accuracy": 0.0,
        "gt_known_loc_accuracy": 1.0,
    }
    sizes = report["by_box_size"]
    assert [sizes[k]["n"] for k in ("small", "medium", "large")] == [1, 1, 1]
    assert sizes["large"]["mean_iou"] == pytest.approx(0.25) and sizes["medium"]["accuracy"] == 0.0
    assert report["box_size_shares"] == pytest.approx([1 / 9, 4 / 9])


def test_box_size_thresholds_are_inclusive_from_below():
    from clsloc.metrics import box_share, box_size

    assert box_share((0, 0, 30, 30), 90, 90) == pytest.approx(1 / 9)
    assert box_size(1 / 9 - 1e-9) == "small" and box_size(1 / 9) == "medium"
    assert box_size(4 / 9 - 1e-9) == "medium" and box_size(4 / 9) == "large" and box_size(1.0) == "large"


def test_summarize_from_ious_is_evaluate_to_the_last_digit():
    from clsloc.metrics import image_ious, summarize

    rng = np.random.default_rng(0)
    n = 200
    true = [CLASSES[i] for i in rng.integers(0, 2, n)]
    pred = [CLASSES[i] for i in rng.integers(0, 2, n)]
    corner = rng.uniform(0, 50, (n, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 50, (n, 2))], 1)
    gt = [[(t, (10.0, 10.0, 60.0, 55.0)), ("dog", (0.0, 0.0, 30.0, 30.0))] for t in true]
    full = evaluate(true, pred, boxes, gt, CLASSES)
    ious = image_ious(boxes, gt, true)
    assert summarize(true, pred, [float(v) for v in ious], CLASSES, objects=[2] * n) == full


def test_calibration_bins_by_hand():
    from clsloc.metrics import calibration

    scores = [0.55, 0.58, 0.95, 1.0, 0.91]
    correct = [True, False, True, True, False]
    report = calibration(scores, correct, bins=10)
    by_low = {round(b["low"], 1): b for b in report["bins"]}
    assert by_low[0.5]["n"] == 2 and by_low[0.5]["accuracy"] == 0.5
    assert by_low[0.5]["score"] == pytest.approx(0.565)
    assert by_low[0.9]["n"] == 3 and by_low[0.9]["accuracy"] == pytest.approx(2 / 3)  # 1.0 falls in the last bin
    assert by_low[0.0]["n"] == 0 and by_low[0.0]["accuracy"] is None
    expected = (2 * abs(0.5 - 0.565) + 3 * abs(2 / 3 - (0.95 + 1.0 + 0.91) / 3)) / 5
    assert report["ece"] == pytest.approx(expected)

"""``clsloc evaluate``: the metrics table / JSON, and the HTML report rendered in Debian's headless Chromium."""

from __future__ import annotations

import json

import pytest
import scoring_data
from chromium import ARGS, CHROMIUM, require_chromium

from clsloc.cli import main

HTML_NAME = '<img src=x onerror="alert(1)">'
SECTIONS = ("summary", "warnings", "per-class", "breakdown", "confusion", "iou", "calibration", "worst")


@pytest.fixture
def labelled(tmp_path):
    """Ten labelled images: a multi-object one, a class the oracle does not know, and a corrupt file
    whose name is HTML."""
    items = [(f"img{i}", [(label, box)], (160, 120)) for i, (label, box) in enumerate(scoring_data.random_objects(6))]
    items.append(("multi", [("green", (70, 40, 60, 50)), ("green", (2, 2, 20, 15))], (160, 120)))
    items.append(("zebra", [("zebra", (10, 10, 50, 50))], (160, 120)))
    items.append(("blue", [("blue", (30, 30, 40, 40))], (160, 120)))
    items.append((HTML_NAME, [("red", (5, 5, 30, 30))], (160, 120)))
    root = scoring_data.write_voc(tmp_path / "voc", items)
    (root / "images" / f"{HTML_NAME}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # corrupt: listed in warnings
    return root


def test_evaluate_prints_the_metrics_as_json(oracle_dir, labelled, capsys):
    assert main(["evaluate", str(oracle_dir), str(labelled), "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout holds the JSON alone
    assert report["n"] == 9 and report["unknown_classes"] == {"zebra": 1}
    assert report["not_scored"] == {"truncated": 1}
    assert report["per_class"]["zebra"]["accuracy"] == 0.0
    assert report["by_objects"]["multi"]["n"] == 1 and report["calibration"]["ece"] is not None
    assert "does not know: zebra" in captured.err


def test_evaluate_refuses_what_is_not_a_labelled_dataset(oracle_dir, tmp_path, capsys):
    scoring_data.write_images(tmp_path / "plain", 2)
    assert main(["evaluate", str(oracle_dir), str(tmp_path / "plain"), "--quiet"]) == 2
    assert "cannot tell the dataset format" in capsys.readouterr().err
    assert main(["evaluate", str(oracle_dir), "--quiet"]) == 2
    assert "name at least one DATASET, or --val-of RUN_DIR" in capsys.readouterr().err


@pytest.mark.browser
@pytest.mark.slow
def test_report_opens_from_disk_with_every_section_and_picture(oracle_dir, labelled, tmp_path):
    require_chromium()
    from playwright.sync_api import sync_playwright

    report = tmp_path / "out" / "report.html"
    assert main(["evaluate", str(oracle_dir), str(labelled), "--report", str(report), "--worst", "4", "--quiet"]) == 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            fetched = []
            page.on("request", lambda request: fetched.append(request.url))
            dialogs = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            for section in SECTIONS:
                assert page.locator(f"section#{section}").is_visible(), section
            images = page.locator("img")
            # confusion, IoU histogram, calibration, and the 4 worst images: no image injected by a file name
            assert images.count() == 3 + 4
            sizes = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            assert all(done and w > 100 and h > 50 for done, w, h in sizes), sizes
            assert page.locator("#worst figure").count() == 4
            warnings = page.inner_text("#warnings")
            assert "zebra" in warnings and f"{HTML_NAME}.png: truncated" in warnings  # shown as text, never run
            assert dialogs == []
            assert [url for url in fetched if not url.startswith(("file:", "data:"))] == []  # self-contained
            assert page.locator("#per-class td", has_text="zebra *").count() == 1
        finally:
            browser.close()

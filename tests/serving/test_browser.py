"""The web page in Debian's headless Chromium (Playwright): upload a known image, see label and box."""

from __future__ import annotations

import oracle
import pytest
from chromium import ARGS, CHROMIUM, require_chromium
from conftest import running_server  # at import: inside a test, 'conftest' may be another directory's

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser():
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def test_upload_shows_label_score_and_box_over_the_image(browser, live_server, tmp_path):
    # 320x240 image, blue object at x=200 y=40 w=80 h=120 (pixels of the image)
    image = tmp_path / "blue-object.png"
    image.write_bytes(oracle.object_image("blue", (200, 40, 80, 120), size=(320, 240)))
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    try:
        page.goto(live_server + "/")
        page.wait_for_function("document.getElementById('model-line').textContent.includes('oracle')")
        page.set_input_files("#file", str(image))
        page.wait_for_selector("body[data-state=done]", timeout=30_000)

        assert page.inner_text("#label") == "blue"
        assert page.inner_text("#score").endswith("%")
        photo = page.locator("#photo").bounding_box()
        box = page.locator("#box").bounding_box()
        # the page shows the image at its natural size here, so the drawn box sits at the object's pixels
        scale = photo["width"] / 320
        tol = 3.5 * scale  # the oracle sees a 64 px input: a 5 px step on this image, plus the 3 px border
        assert abs(box["x"] - photo["x"] - 200 * scale) <= tol, (box, photo)
        assert abs(box["y"] - photo["y"] - 40 * scale) <= tol, (box, photo)
        assert abs(box["width"] - 80 * scale) <= 2 * tol and abs(box["height"] - 120 * scale) <= 2 * tol, box
    finally:
        page.close()


def test_the_page_says_what_the_model_knows_and_its_samples_score_with_one_click(browser, live_server):
    page = browser.new_page()
    try:
        page.goto(live_server + "/")
        page.wait_for_selector("#about:not([hidden])", timeout=30_000)
        assert "hand-made test model" in page.inner_text("#description")
        assert page.inner_text("#classes") == ", ".join(oracle.CLASSES)
        assert "Serve a model of your own" in page.inner_text("#about")
        samples = page.locator("button.sample")
        assert samples.count() == len(oracle.CLASSES)
        page.wait_for_function(
            "[...document.querySelectorAll('button.sample img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        for i in range(samples.count()):
            label = samples.nth(i).get_attribute("data-label")
            page.evaluate("document.body.dataset.state = ''")
            samples.nth(i).click()
            page.wait_for_selector("body[data-state=done]", timeout=30_000)
            assert page.inner_text("#label") == label
    finally:
        page.close()


def test_bad_file_shows_the_service_error(browser, live_server, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not an image")
    page = browser.new_page()
    try:
        page.goto(live_server + "/")
        page.set_input_files("#file", str(junk))
        page.wait_for_selector("#status.error", timeout=30_000)
        assert "400 not_an_image" in page.inner_text("#status")
        assert page.locator("#result").is_hidden()
    finally:
        page.close()


def test_with_an_api_key_the_page_asks_for_it_and_then_scores(browser, oracle_dir, tmp_path):
    image = tmp_path / "red-object.png"
    image.write_bytes(oracle.object_image("red", (40, 30, 100, 80), size=(320, 240)))
    with running_server(str(oracle_dir), env={"CLSLOC_API_KEY": "s3cret"}) as url:
        page = browser.new_page()
        try:
            page.goto(url + "/")
            page.wait_for_selector("#key-form:not([hidden])", timeout=30_000)  # /model said 401
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "401" in page.inner_text("#status")
            page.fill("#api-key", "s3cret")
            page.click("#key-form button")
            page.wait_for_function("document.getElementById('model-line').textContent.includes('oracle')")
            assert page.locator("#key-form").is_hidden()
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-state=done]", timeout=30_000)
            assert page.inner_text("#label") == "red"
        finally:
            page.close()

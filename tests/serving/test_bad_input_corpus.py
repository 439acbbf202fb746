"""The bad-input corpus (tests/corpus.py) against a real ``clsloc serve``: POST /predict and /predict_batch.

Each case gets its documented answer with a message naming the problem; the
worker that answered is still the same process (a crash would be hidden by
the restart, so the test compares worker pids), and the next good request is
answered right.
"""

from __future__ import annotations

import corpus
import httpx
import pytest
from conftest import worker_pids

pytestmark = pytest.mark.slow

IMAGES = list(corpus.image_cases())
GOOD = corpus.good_image()
REQUESTS = [case.name for case in corpus.request_cases("image")]


def test_the_corpus_has_at_least_25_kinds_of_file():
    assert len({case.name for case in IMAGES}) == len(IMAGES) >= 25


@pytest.fixture(scope="module")
def server(live_server):
    """(url, http client, worker pids at the start)."""
    with httpx.Client(base_url=live_server, timeout=60) as http:
        yield live_server, http, worker_pids(live_server)


def assert_answers(body: dict, case: corpus.Case) -> None:
    assert (body["width"], body["height"]) == case.size, body
    if case.red_box:  # the oracle finds the red rectangle, in pixels of the image as displayed
        assert body["label"] == "red", body
        assert all(abs(body["box"][k] - v) <= 3 for k, v in zip("xywh", corpus.RED_BOX)), body["box"]


def assert_refuses(body: dict, case: corpus.Case) -> None:
    assert body["error"] == case.error, body
    assert case.detail in body["detail"], body


def assert_still_serving(url: str, http: httpx.Client, pids: set[int]) -> None:
    assert worker_pids(url) == pids, "a worker died (and was restarted) on this input"
    good = http.post("/predict", files={"image": ("good.png", GOOD)})
    assert good.status_code == 200 and good.json()["label"] == "red", good.text


@pytest.mark.parametrize("case", IMAGES, ids=[case.name for case in IMAGES])
def test_predict(server, case):
    url, http, pids = server
    response = http.post("/predict", files={"image": (case.filename, case.data)})
    assert response.status_code == case.status, response.text[:500]
    (assert_answers if case.status == 200 else assert_refuses)(response.json(), case)
    assert_still_serving(url, http, pids)


@pytest.mark.parametrize("case", IMAGES, ids=[case.name for case in IMAGES])
def test_predict_batch_answers_the_good_images_around_a_bad_one(server, case):
    url, http, pids = server
    files = [("images", ("a.png", GOOD)), ("images", (case.filename, case.data)), ("images", ("b.png", GOOD))]
    response = http.post("/predict_batch", files=files)
    assert response.status_code == 200, response.text[:500]
    first, middle, last = response.json()
    assert first["label"] == last["label"] == "red"
    if case.status == 200:
        assert_answers(middle, case)
    else:
        assert_refuses(middle, case)
        assert middle["status"] == case.status
    assert_still_serving(url, http, pids)


@pytest.mark.parametrize("route,field", [("/predict", "image"), ("/predict_batch", "images")])
@pytest.mark.parametrize("name", REQUESTS)
def test_malformed_requests(server, route, field, name):
    url, http, pids = server
    case = next(case for case in corpus.request_cases(field) if case.name == name)
    response = http.post(route, **case.kwargs)
    assert response.status_code == case.status, response.text[:500]
    if case.error is None:  # refused by the HTTP server before the service
        assert case.detail in response.text
    else:
        assert response.json()["error"] == case.error and case.detail in response.json()["detail"], response.text
    assert_still_serving(url, http, pids)


def test_several_files_in_predict_and_too_many_in_a_batch_are_400(server):
    url, http, pids = server
    two = http.post("/predict", files=[("image", ("a.png", GOOD)), ("image", ("b.png", GOOD))])
    assert two.status_code == 400 and "more than the limit of 1" in two.json()["detail"]
    many = http.post("/predict_batch", files=[("images", (f"{i}.png", GOOD)) for i in range(65)])
    assert many.status_code == 400 and "65 files" in many.json()["detail"], many.text
    assert_still_serving(url, http, pids)

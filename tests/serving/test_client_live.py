"""The SDK against a real ``clsloc serve`` (the oracle model) on a free loopback port.

Every input kind, every error kind of the service's contract, 200 concurrent
async calls on one client, predict_many's order and per-item errors.
"""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np
import oracle
import pytest
from conftest import running_server  # at import: inside a test, 'conftest' may be another directory's
from PIL import Image

from clsloc_client import (
    AsyncClient,
    BadImage,
    Client,
    InputError,
    Prediction,
    Retry,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedFormat,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
KEY = "s3cret-key"
MAX_BYTES, MAX_PIXELS = 30_000, 100_000
RED = oracle.object_image("red", (40, 30, 50, 40))  # 160 x 120 PNG


@pytest.fixture(scope="module")
def guarded_server(oracle_dir):
    """A service with an API key and small limits, for 401 and both kinds of 413."""
    env = {"CLSLOC_API_KEY": KEY, "CLSLOC_MAX_BYTES": str(MAX_BYTES), "CLSLOC_MAX_PIXELS": str(MAX_PIXELS)}
    with running_server(str(oracle_dir), env=env) as url:
        yield url


def test_every_input_kind_gets_the_answer_of_its_pixels(live_server, tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(RED)
    pillow = Image.open(io.BytesIO(RED)).convert("RGB")
    rgb = np.asarray(pillow)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    with Client(live_server) as client, open(path, "rb") as file:
        expected = client.predict(RED)
        lossless = [str(path), path, bytearray(RED), memoryview(RED), file, io.BytesIO(RED), pillow, rgb, rgba]
        answers = [client.predict(image) for image in lossless]
        as_jpeg = client.predict(pillow, jpeg_quality=90)
    raw = httpx.post(f"{live_server}/predict", files={"image": ("red.png", RED)}).json()
    assert expected.to_dict() == raw  # the typed result gives back the service's JSON
    assert expected.label == "red" and expected.box.x == pytest.approx(40, abs=3)
    assert (expected.width, expected.height) == (160, 120) and expected.model.name == "oracle"
    for image, answer in zip(lossless, answers):
        assert answer == expected, type(image)
    assert as_jpeg.label == "red" and as_jpeg.box.xyxy() == pytest.approx(expected.box.xyxy(), abs=3)


@pytest.mark.parametrize(
    ("data", "cls", "error"),
    [
        (b"definitely not an image", BadImage, "not_an_image"),
        (b"", BadImage, "empty"),
        (RED[:60], BadImage, "truncated"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, UnsupportedFormat, "unsupported_format"),
    ],
)
def test_each_refused_image_raises_its_class_with_the_service_error(live_server, data, cls, error):
    with Client(live_server) as client, pytest.raises(cls) as caught:
        client.predict(data)
    expected = httpx.post(f"{live_server}/predict", files={"image": ("x", data)})
    assert caught.value.status == expected.status_code == {BadImage: 400, UnsupportedFormat: 415}[cls]
    assert (caught.value.error, caught.value.detail) == (error, expected.json()["detail"])


def test_unauthorized_and_too_large_from_a_guarded_service(guarded_server):
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), np.uint8)).save(noise, format="PNG")
    many_pixels = oracle.object_image("green", (10, 10, 50, 50), size=(400, 300))  # 120,000 px in a few KB
    assert len(noise.getvalue()) > MAX_BYTES and len(many_pixels) < MAX_BYTES
    for key in (None, "wrong-key"):
        with Client(guarded_server, api_key=key) as client:
            for call in (lambda c=client: c.predict(RED), client.model_info):
                with pytest.raises(Unauthorized) as caught:
                    call()
                assert caught.value.status == 401 and caught.value.error == "unauthorized"
    with Client(guarded_server, api_key=KEY) as client:
        assert client.predict(RED).label == "red"
        with pytest.raises(TooLarge) as too_many_bytes:
            client.predict(noise.getvalue())
        with pytest.raises(TooLarge) as too_many_pixels:
            client.predict(many_pixels)
    assert (too_many_bytes.value.status, too_many_bytes.value.error) == (413, "too_large")
    assert (too_many_pixels.value.status, too_many_pixels.value.error) == (413, "too_many_pixels")
    assert str(MAX_BYTES) in too_many_bytes.value.detail


def test_api_key_comes_from_the_environment(guarded_server, monkeypatch):
    monkeypatch.setenv("CLSLOC_API_KEY", KEY)
    with Client(guarded_server) as client:
        assert client.predict(RED).label == "red"


def test_200_concurrent_async_predicts_on_one_client(live_server):
    cases = [(["red", "green", "blue"][i % 3], (5 + (i % 50) * 2, 10, 40, 40)) for i in range(200)]

    async def main():
        async with AsyncClient(live_server) as client:
            await client.wait_ready(30)
            started = time.monotonic()
            answers = await asyncio.gather(*(client.predict(oracle.object_image(label, box)) for label, box in cases))
            return answers, time.monotonic() - started

    answers, elapsed = asyncio.run(main())
    assert [a.label for a in answers] == [label for label, _ in cases]
    assert all(abs(a.box.x - box[0]) <= 3 for a, (_, box) in zip(answers, cases))  # each answer is its request's
    assert elapsed < 120


def items(tmp_path):
    """24 inputs, every fourth one bad in a different way; the label expected at each place (None: an error)."""
    labels = ["red", "green", "blue"]
    bad = [b"", b"not an image", tmp_path / "missing.png", RED[:60]]
    inputs, expected = [], []
    for i in range(24):
        if i % 4 == 3:
            inputs.append(bad[(i // 4) % 4])
            expected.append(None)
        else:
            inputs.append(oracle.object_image(labels[i % 3], (10 + i, 10, 30, 30)))
            expected.append(labels[i % 3])
    return inputs, expected


def test_predict_many_keeps_order_with_per_item_errors(live_server, tmp_path):
    inputs, expected = items(tmp_path)
    with Client(live_server) as client:
        results = client.predict_many(iter(inputs), concurrency=6)

    async def run_async():
        async with AsyncClient(live_server) as client:
            return await client.predict_many(iter(inputs), concurrency=6)

    for outcome in (results, asyncio.run(run_async())):
        assert [r.label if isinstance(r, Prediction) else None for r in outcome] == expected
        errors = [(type(r).__name__, r.error) for r in outcome if not isinstance(r, Prediction)]
        assert errors == [
            ("BadImage", "empty"),
            ("BadImage", "not_an_image"),
            ("InputError", "unreadable"),
            ("BadImage", "truncated"),
            ("BadImage", "empty"),
            ("BadImage", "not_an_image"),
        ]


def test_predict_batch_results_are_typed_in_order(live_server, tmp_path):
    with Client(live_server) as client:
        results = client.predict_batch(
            [RED, b"", tmp_path / "missing.png", oracle.object_image("blue", (5, 5, 30, 30))]
        )
    assert isinstance(results[0], Prediction) and results[0].label == "red"
    assert isinstance(results[1], BadImage) and (results[1].status, results[1].error) == (400, "empty")
    assert isinstance(results[2], InputError) and results[2].status is None
    assert isinstance(results[3], Prediction) and results[3].label == "blue"


def test_async_wait_ready_and_health(live_server):
    async def main():
        async with AsyncClient(live_server) as client:
            await client.wait_ready(10)
            healthy = await client.health()
        async with AsyncClient("http://127.0.0.1:9") as nobody:  # the discard port: nothing answers
            started = time.monotonic()
            with pytest.raises(TimeoutError, match="not ready after 0.3s"):
                await nobody.wait_ready(0.3, interval=0.05)
            return healthy, await nobody.health(), time.monotonic() - started

    healthy, unhealthy, waited = asyncio.run(main())
    assert healthy and not unhealthy and waited < 5


def test_an_overloaded_service_sheds_and_the_retries_get_every_image_through(oracle_dir):
    """The service's admission bound (CLSLOC_MAX_QUEUE) answers 503 overloaded with Retry-After;
    without retries some images end as Unavailable, with them every image is scored."""
    with running_server(str(oracle_dir), env={"CLSLOC_MAX_QUEUE": "1"}) as url:

        async def main():
            async with AsyncClient(url, retries=0) as impatient:
                shed = await impatient.predict_many([RED] * 24, concurrency=24)
            async with AsyncClient(url, retries=Retry(retries=10, budget=60)) as patient:
                started = time.monotonic()
                kept = await patient.predict_many([RED] * 24, concurrency=24)
            return shed, kept, time.monotonic() - started

        shed, kept, elapsed = asyncio.run(main())
    refused = [r for r in shed if not isinstance(r, Prediction)]
    assert refused and all(isinstance(r, Unavailable) for r in refused)
    assert {(r.status, r.error, r.retry_after, r.attempts) for r in refused} == {(503, "overloaded", 1.0, 1)}
    assert all(isinstance(r, Prediction) and r.label == "red" for r in kept), kept
    assert elapsed < 30

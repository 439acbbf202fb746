"""predict_many / predict_iter / predict_batch without a server: order, one outcome per item, bounded read-ahead.

An in-process transport (httpx.MockTransport) answers each request with the
label written in its image bytes, after a random delay, so answers finish out
of order and each result can be matched to its input.
"""

from __future__ import annotations

import asyncio
import random
import re
import time

import httpx
import pytest

from clsloc_client import AsyncClient, BadImage, Client, InputError, Prediction

pytestmark = pytest.mark.timeout(60)


def answer(request: httpx.Request) -> httpx.Response:
    labels = re.findall(rb"label=(\w+)", request.content)
    if not labels:
        return httpx.Response(400, json={"error": "not_an_image", "detail": "no label in the bytes"})
    result = {"box": {"x": 0, "y": 0, "w": 1, "h": 1}, "score": 1.0, "width": 1, "height": 1}
    result["model"] = {"name": "echo", "version": "1"}
    if request.url.path == "/predict_batch":
        return httpx.Response(200, json=[{**result, "label": label.decode()} for label in labels])
    return httpx.Response(200, json={**result, "label": labels[0].decode()})


def slow_answer(request: httpx.Request) -> httpx.Response:
    time.sleep(random.uniform(0, 0.01))
    return answer(request)


async def slow_async_answer(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(random.uniform(0, 0.01))
    return answer(request)


def images(n: int, pulled: list[int] | None = None, bad_every: int = 0):
    """A generator of n images (every ``bad_every``-th one not an image); counts what was taken from it."""
    for i in range(n):
        if pulled is not None:
            pulled.append(i)
        yield b"garbage" if bad_every and i % bad_every == bad_every - 1 else f"label=img{i}".encode()


def labels(results) -> list[str | None]:
    return [r.label if isinstance(r, Prediction) else None for r in results]


def test_predict_many_keeps_input_order_with_one_outcome_per_item():
    with Client("http://svc", transport=httpx.MockTransport(slow_answer)) as client:
        results = client.predict_many(images(120, bad_every=7), concurrency=8)
    assert len(results) == 120
    for i, result in enumerate(results):
        if i % 7 == 6:
            assert isinstance(result, BadImage) and result.error == "not_an_image"
        else:
            assert isinstance(result, Prediction) and result.label == f"img{i}"


def test_predict_iter_reads_a_long_generator_only_a_window_ahead():
    pulled: list[int] = []
    with Client("http://svc", transport=httpx.MockTransport(answer)) as client:
        results = client.predict_iter(images(100_000, pulled), concurrency=4)
        for consumed in range(1, 51):
            assert next(results).label == f"img{consumed - 1}"
            assert len(pulled) <= consumed + 2 * 4, (consumed, len(pulled))
        results.close()  # stopping early cancels the queued requests; the generator is not drained
    assert len(pulled) < 100


def test_async_predict_many_keeps_order_and_reads_a_window_ahead():
    async def main():
        async with AsyncClient("http://svc", transport=httpx.MockTransport(slow_async_answer)) as client:
            results = await client.predict_many(images(120, bad_every=5), concurrency=16)

            async def stream():  # an async iterable works as well as a plain one
                for image in images(100_000, pulled):
                    yield image

            pulled: list[int] = []
            first = []
            generator = client.predict_iter(stream(), concurrency=4)
            async for result in generator:
                first.append(result)
                assert len(pulled) <= len(first) + 2 * 4 + 1
                if len(first) == 30:
                    break
            await generator.aclose()
            return results, first, len(pulled)

    results, first, pulled = asyncio.run(main())
    assert labels(results) == [None if i % 5 == 4 else f"img{i}" for i in range(120)]
    assert labels(first) == [f"img{i}" for i in range(30)] and pulled < 50


def test_predict_batch_keeps_places_of_images_that_could_not_be_sent(tmp_path):
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content.count(b'name="images"'))
        return answer(request)

    batch = [b"label=a", tmp_path / "missing.jpg", b"label=b", 3.5]
    with Client("http://svc", transport=httpx.MockTransport(handler)) as client:
        results = client.predict_batch(batch)
        assert client.predict_batch([tmp_path / "missing.jpg"])[0].error == "unreadable"  # nothing sent at all
    assert sent == [2]
    assert labels(results) == ["a", None, "b", None]
    assert [r.error for r in results if isinstance(r, InputError)] == ["unreadable", "unsupported_input"]


def test_concurrency_must_be_positive():
    with (
        Client("http://svc", transport=httpx.MockTransport(answer)) as client,
        pytest.raises(ValueError, match="at least 1"),
    ):
        client.predict_many([b"label=a"], concurrency=0)

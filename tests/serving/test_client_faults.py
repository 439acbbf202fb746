"""The SDK's retries against a real socket server that drops, resets, stalls or sheds requests.

Each test scripts what the first requests get and checks both sides: the
client's answer (or its ``Unavailable``) and what the server saw (how many
requests, how far apart). Everything is bounded: small timeouts, small
backoff, and a time limit on each test.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import socket
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from faulty_server import PREDICTION, FaultyServer

from clsloc_client import AsyncClient, Client, ClsLocError, Retry, Unavailable
from clsloc_client.retry import Attempts, retry_after_seconds

pytestmark = pytest.mark.timeout(60)
FAST = Retry(retries=3, backoff=0.05, max_delay=2.0, budget=10.0)
IMAGE = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # the fault server never decodes it


@pytest.mark.parametrize("fault", ["drop", "reset", "503", "502", "429 after 0"])
def test_retries_a_failed_attempt_then_succeeds(fault):
    with FaultyServer(fault) as server, Client(server.url, retries=FAST, timeout=5) as client:
        prediction = client.predict(IMAGE)
    assert prediction.to_dict() == PREDICTION
    assert server.count == 2 and server.paths == ["/predict", "/predict"]


def test_a_stalled_attempt_times_out_and_is_sent_again():
    with FaultyServer("stall") as server, Client(server.url, retries=FAST, timeout=0.5) as client:
        started = time.monotonic()
        prediction = client.predict(IMAGE)
        elapsed = time.monotonic() - started
    assert prediction.label == "red" and server.count == 2
    assert 0.5 <= elapsed < 3.0, elapsed  # one timeout, one short backoff


def test_waits_as_long_as_retry_after_says():
    with FaultyServer("503 after 1") as server, Client(server.url, retries=FAST, timeout=5) as client:
        assert client.predict(IMAGE).label == "red"
    (gap,) = server.gaps()
    assert 1.0 <= gap < 1.5, gap  # honoured in full, plus at most a tenth of jitter (and scheduling)


def give_up(server: FaultyServer, retries: Retry = FAST) -> Unavailable:
    """Send one image through a server that keeps failing: the error the client ends with."""
    with Client(server.url, retries=retries, timeout=5) as client, pytest.raises(Unavailable) as caught:
        client.predict(IMAGE)
    return caught.value


def test_gives_up_with_unavailable_once_the_retries_are_spent():
    with FaultyServer(then="503 after 0") as server:
        error = give_up(server)
    assert (error.status, error.error, error.detail) == (503, "overloaded", "scripted 503")
    assert error.attempts == FAST.retries + 1 == server.count
    assert error.retry_after == 0.0


def test_backoff_grows_between_attempts():
    with FaultyServer(then="drop") as server:
        error = give_up(server, Retry(retries=3, backoff=0.1, budget=10.0))
    assert error.status is None and error.error == "disconnected"
    assert "after 4 attempts" in error.detail
    gaps = server.gaps()
    # n-th wait between half and all of backoff * 2**n (plus the time of a request on loopback)
    for n, gap in enumerate(gaps):
        assert 0.1 * 2**n * 0.5 <= gap < 0.1 * 2**n + 0.2, gaps


def test_a_retry_after_beyond_the_budget_gives_up_at_once():
    started = time.monotonic()
    with FaultyServer(then="503 after 1") as server:
        error = give_up(server, Retry(retries=5, backoff=0.05, max_delay=10.0, budget=1.5))
    # 1 s wait fits in the 1.5 s budget once; a second one would end past it
    assert server.count == 2 and error.attempts == 2
    assert time.monotonic() - started < 2.5


def test_a_retry_after_longer_than_max_delay_is_not_waited():
    with FaultyServer(then="503 after 120") as server:
        error = give_up(server)
    assert server.count == 1 and error.retry_after == 120.0


def test_nothing_listening_is_unavailable_after_retries():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", retries=FAST) as client, pytest.raises(Unavailable) as caught:
        client.predict(IMAGE)
    assert caught.value.error == "unreachable" and caught.value.attempts == 4


def test_predict_many_gives_each_item_its_own_outcome_through_faults():
    # 5 images, one request at a time: the first image's first attempt is dropped (then retried),
    # the third image is shed twice (its one retry spent).
    policy = Retry(retries=1, backoff=0.05)
    with (
        FaultyServer("drop", "ok", "ok", "503", "503", then="ok") as server,
        Client(server.url, retries=policy) as client,
    ):
        results = client.predict_many([IMAGE] * 5, concurrency=1)
    assert [type(r).__name__ for r in results] == [
        "Prediction",
        "Prediction",
        "Unavailable",
        "Prediction",
        "Prediction",
    ]
    assert server.count == 7


def test_async_client_retries_then_succeeds_and_gives_up():
    async def main():
        with FaultyServer("drop", "503 after 0.2") as server:
            async with AsyncClient(server.url, retries=FAST, timeout=5) as client:
                prediction = await client.predict(IMAGE)
            first = server.count
        with FaultyServer(then="stall") as server:
            async with AsyncClient(server.url, retries=Retry(retries=1, backoff=0.05), timeout=0.3) as client:
                with pytest.raises(Unavailable) as caught:
                    await client.predict(IMAGE)
            return prediction, first, caught.value, server.count

    prediction, first, error, stalled = asyncio.run(main())
    assert prediction.label == "red" and first == 3
    assert error.error == "timeout" and error.attempts == 2 == stalled


# -- the policy itself: which answers are sent again, and how long each wait is ----------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, "BadImage"),
        (401, "Unauthorized"),
        (404, "ClsLocError"),
        (413, "TooLarge"),
        (415, "UnsupportedFormat"),
        (500, "ClsLocError"),
    ],
)
def test_refusals_and_server_errors_are_never_sent_again(status, expected):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"error": f"kind{status}", "detail": "said once"})

    with (
        Client("http://svc", retries=FAST, transport=httpx.MockTransport(handler)) as client,
        pytest.raises(ClsLocError) as caught,
    ):
        client.predict(IMAGE)
    assert type(caught.value).__name__ == expected and len(calls) == 1
    assert (caught.value.status, caught.value.error, caught.value.detail) == (status, f"kind{status}", "said once")


def test_a_gateway_page_is_unavailable_named_by_its_reason():
    pages = iter([httpx.Response(504, text="<html>upstream timed out</html>")] * 2)
    with (
        Client(
            "http://svc", retries=Retry(retries=1, backoff=0.01), transport=httpx.MockTransport(lambda r: next(pages))
        ) as client,
        pytest.raises(Unavailable) as caught,
    ):
        client.predict(IMAGE)
    assert (caught.value.status, caught.value.error, caught.value.attempts) == (504, "gateway_timeout", 2)
    assert "upstream timed out" in caught.value.detail


def test_waits_follow_exponential_backoff_with_jitter_within_the_budget():
    now = [0.0]
    attempts = Attempts(
        Retry(retries=6, backoff=0.5, max_delay=3.0, budget=8.0), clock=lambda: now[0], rng=random.Random(1)
    )
    dropped = httpx.ConnectError("refused")
    waits = []
    with pytest.raises(Unavailable) as caught:
        while attempts.again(dropped):
            waits.append(attempts.delay)
            now[0] += attempts.delay
    caps = [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert len(waits) < len(caps)  # the budget ends it before the count does
    assert all(cap / 2 <= wait <= cap for wait, cap in zip(waits, caps)), waits
    assert sum(waits) <= 8.0 and caught.value.attempts == len(waits) + 1


def test_retry_after_may_be_an_http_date():
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 < retry_after_seconds(httpx.Response(503, headers={"Retry-After": later})) <= 30
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": "2.5"})) == 2.5
    with pytest.raises(ValueError, match="negative"):
        Retry(retries=-1)

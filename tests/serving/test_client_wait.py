"""Client.wait_ready: polls /readyz until 200, times out, or stops when told to."""

from __future__ import annotations

import httpx
import pytest

from clsloc_client import Client


def counting_transport(ready_after: int):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200 if len(calls) > ready_after else 503)

    return httpx.MockTransport(handler), calls


def test_waits_until_ready():
    transport, calls = counting_transport(ready_after=2)
    with Client("http://svc", transport=transport) as client:
        client.wait_ready(5, interval=0.01)
    assert calls == ["/readyz"] * 3


def test_times_out_naming_the_service():
    transport, calls = counting_transport(ready_after=10**9)
    with Client("http://svc", transport=transport) as client, pytest.raises(TimeoutError, match="http://svc.*0.1s"):
        client.wait_ready(0.1, interval=0.01)
    assert len(calls) >= 2


def test_abort_stops_the_wait_with_its_reason():
    transport, calls = counting_transport(ready_after=10**9)
    polls = iter([None, None, "server exited with code 1"])
    with Client("http://svc", transport=transport) as client, pytest.raises(RuntimeError, match="exited with code 1"):
        client.wait_ready(5, interval=0.01, abort=lambda: next(polls))
    assert len(calls) == 2

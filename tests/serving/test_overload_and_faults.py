"""Traffic and faults together on a real ``clsloc serve``: a bounded queue under overload, a killed worker.

* More concurrent requests than a worker may hold (``--max-queue``): the
  excess gets a fast ``503 overloaded`` with ``Retry-After``, the admitted
  ones are answered right, and a client that retries gets every answer.
* SIGKILL one of 2 workers during load: the requests it held fail at once
  (a closed connection, not a hang), a retrying client completes every
  request, and a new worker takes the dead one's place by itself.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import oracle
import pytest
from conftest import post_with_retries, running_server, worker_pids
from PIL import Image

pytestmark = pytest.mark.slow


def photo(label: str, size=(1600, 1200)) -> bytes:
    """A large JPEG (slow enough to decode that requests pile up) with one ``label`` square on noise."""
    rgb = np.random.default_rng(7).integers(0, 60, (size[1], size[0], 3), dtype=np.uint8) + 195
    rgb[300:700, 400:900] = oracle.COLOURS[label]
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def burst(url: str, data: bytes, n: int) -> list[tuple[httpx.Response, float]]:
    """``n`` requests sent at once, each on its own connection; (response, seconds) in order."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def one():
            started = time.perf_counter()
            response = await http.post("/predict", files={"image": ("p.jpg", data)})
            return response, time.perf_counter() - started

        return await asyncio.gather(*(one() for _ in range(n)))


def overloaded_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    line = next((x for x in text.splitlines() if x.startswith('clsloc_rejected_total{reason="overloaded"}')), None)
    return float(line.split()[-1]) if line else 0.0


def test_overload_is_a_fast_503_with_retry_after_and_retries_get_every_answer(oracle_dir):
    data = photo("red")
    with running_server(str(oracle_dir), args=("--max-queue", "4", "--max-batch", "1")) as url:
        before = overloaded_count(url)
        answers = asyncio.run(burst(url, data, 48))
        rejected = [(r, s) for r, s in answers if r.status_code == 503]
        admitted = [(r, s) for r, s in answers if r.status_code != 503]
        assert rejected, "48 requests at once against a queue of 4: some must be refused"
        for response, _ in rejected:
            assert response.headers["retry-after"] == "1"
            body = response.json()
            assert body["error"] == "overloaded" and "CLSLOC_MAX_QUEUE=4" in body["detail"], body
        assert all(r.status_code == 200 and r.json()["label"] == "red" for r, _ in admitted)
        # refused before the body is read or anything decoded: faster than the answers
        assert np.median([s for _, s in rejected]) < np.median([s for _, s in admitted])
        assert overloaded_count(url) - before == len(rejected)

        # A client that honours Retry-After gets every answer.
        def patient(_):
            with httpx.Client(base_url=url, timeout=60) as http:
                return post_with_retries(http, "/predict", {"image": ("p.jpg", data)}, budget=120)

        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(patient, range(24)))
        assert all(r.status_code == 200 and r.json()["label"] == "red" for r, _ in results)
        assert any(len(attempts) > 1 for _, attempts in results), "24 at once against 4: some were retried"


REQUESTS_PER_CLIENT = 30


def initialized(log) -> int:
    return log.read_text().count("Service clsloc initialized")


def test_a_killed_worker_is_replaced_and_a_retrying_client_completes_every_request(oracle_dir, tmp_path):
    log = tmp_path / "server.log"
    data = photo("blue", size=(800, 600))
    with running_server(str(oracle_dir), args=("--workers", "2"), log=log) as url:
        deadline = time.monotonic() + 60
        while len(worker_pids(url)) < 2 or initialized(log) < 2:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        pids = worker_pids(url)

        answered = []

        def client(_):
            outcomes = []
            with httpx.Client(base_url=url, timeout=30) as http:
                for _ in range(REQUESTS_PER_CLIENT):
                    outcomes.append(post_with_retries(http, "/predict", {"image": ("p.jpg", data)}, budget=90))
                    answered.append(1)
            return outcomes

        with ThreadPoolExecutor(8) as pool:
            running = [pool.submit(client, i) for i in range(8)]
            while len(answered) < 16:  # load is on both workers
                time.sleep(0.01)
            victim = min(pids)
            os.kill(victim, signal.SIGKILL)
            assert len(answered) < 8 * REQUESTS_PER_CLIENT, "the load ended before the kill"
            results = [outcome for future in running for outcome in future.result(timeout=300)]

        assert len(results) == 8 * REQUESTS_PER_CLIENT
        assert all(r.status_code == 200 and r.json()["label"] == "blue" for r, _ in results)
        failed = [(what, s) for _, attempts in results for what, s in attempts if what != "200"]
        assert failed, "requests on the killed worker's connections fail and are retried"
        assert max(s for _, s in failed) < 10, failed  # a clean failure, not a hang until the 30 s timeout

        # The service comes back to 2 workers by itself: a new process loads the model again.
        deadline = time.monotonic() + 90
        while not (len(worker_pids(url)) == 2 and victim not in worker_pids(url) and initialized(log) >= 3):
            assert time.monotonic() < deadline, f"no new worker: {worker_pids(url)}\n{log.read_text()[-2000:]}"
            time.sleep(0.5)
        assert httpx.get(f"{url}/readyz").status_code == 200
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(10):  # both workers answer again (connections spread over them)
                response = http.post("/predict", files={"image": ("p.jpg", data)})
                assert response.status_code == 200 and response.json()["label"] == "blue"

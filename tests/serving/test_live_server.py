"""One real ``clsloc serve`` (BentoML server process) on a free loopback port, driven by the client SDK."""

from __future__ import annotations

import asyncio
import io
import os

import oracle
import pytest
from conftest import running_server, worker_pids  # at import: inside a test, 'conftest' may be another directory's

from clsloc_client import AsyncClient, BadImage, Client, ClsLocError

pytestmark = pytest.mark.slow


def test_sync_client_against_the_real_server(live_server, tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(oracle.object_image("red", (40, 30, 50, 40)))
    with Client(live_server) as client:
        assert client.health()
        by_path = client.predict(path)
        by_bytes = client.predict(path.read_bytes())
        with open(path, "rb") as f:
            by_file = client.predict(f)
        assert by_path == by_bytes == by_file
        assert by_path.label == "red" and abs(by_path.box.x - 40) < 3
        info = client.model_info()
        assert info["classes"] == oracle.CLASSES and info["name"] == "oracle"


def test_client_raises_typed_errors_with_status_and_detail(live_server):
    with Client(live_server) as client, pytest.raises(BadImage) as caught:
        client.predict(b"definitely not an image")
    assert isinstance(caught.value, ClsLocError) and caught.value.status == 400
    assert caught.value.error == "not_an_image"
    assert "not a recognizable image" in caught.value.detail


def test_batch_over_http_keeps_order(live_server):
    images = [oracle.object_image(label, (10 + 20 * i, 10, 40, 40)) for i, label in enumerate(["blue", "red", "green"])]
    with Client(live_server) as client:
        results = client.predict_batch([images[0], b"", images[1], io.BytesIO(images[2])])
    assert [getattr(r, "label", None) for r in results] == ["blue", None, "red", "green"]
    assert isinstance(results[1], BadImage) and results[1].error == "empty"


def test_async_client_concurrent_requests(live_server):
    labels = ["red", "green", "blue"] * 4

    async def main():
        async with AsyncClient(live_server) as client:
            assert await client.health()
            answers = await asyncio.gather(
                *(client.predict(oracle.object_image(label, (20, 20, 60, 50))) for label in labels)
            )
            batch = await asyncio.gather(
                *(client.predict_batch([oracle.object_image(label, (5, 5, 30, 30))]) for label in labels)
            )
            return answers, batch

    answers, batch = asyncio.run(main())
    assert [a.label for a in answers] == labels
    assert [b[0].label for b in batch] == labels  # adaptive batching merges requests, answers stay with theirs


def test_workers_start_with_the_services_malloc_arena_bound(live_server):
    """`clsloc serve` workers get the service's MALLOC_ARENA_MAX; a value set outside wins."""
    import psutil

    expected = os.environ.get("MALLOC_ARENA_MAX", "2")
    pids = worker_pids(live_server)
    assert pids and {psutil.Process(pid).environ().get("MALLOC_ARENA_MAX") for pid in pids} == {expected}


def test_metrics_endpoint_of_the_real_server(live_server):
    import httpx

    with Client(live_server) as client:
        client.predict(oracle.object_image("green", (1, 1, 20, 20)))
    text = httpx.get(f"{live_server}/metrics").text
    assert 'clsloc_predictions_total{label="green"}' in text


@pytest.mark.parametrize("access_log", ["1", "0"])
def test_access_log_lines_for_requests_never_for_probes(oracle_dir, tmp_path, access_log):
    log = tmp_path / "server.log"
    with running_server(str(oracle_dir), env={"CLSLOC_ACCESS_LOG": access_log}, log=log) as url, Client(url) as client:
        client.wait_ready(30)
        assert client.predict(oracle.object_image("red", (10, 10, 40, 40))).label == "red"
    text = log.read_text()
    assert "path=/readyz" not in text  # polled above and by the start-up wait
    assert ("path=/predict" in text) == (access_log == "1"), text[-2000:]

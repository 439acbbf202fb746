"""Fixtures for the serving tests: a temporary BentoML home, the oracle model, clients.

BentoML reads its environment at first use, so the temporary home, the
Prometheus directory and the tracking switch are set when this file is
imported, before any test imports bentoml.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="clsloc-serving-tests-"))
os.environ["BENTOML_HOME"] = str(_TMP / "bentoml")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_TMP / "prometheus")
(_TMP / "prometheus").mkdir()
for _name in ("CLSLOC_API_KEY", "CLSLOC_MAX_BYTES", "CLSLOC_MAX_PIXELS", "CLSLOC_REQUIRE_GPU", "CLSLOC_WORKERS"):
    os.environ.pop(_name, None)
os.environ.setdefault("CLSLOC_THREADS", "1")  # tests share 2 cores with two other people's tests

sys.path.insert(0, str(Path(__file__).parent))
import oracle  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    return oracle.write_oracle_model(_TMP / "oracle-model")


@pytest.fixture
def serving_env(monkeypatch, oracle_dir):
    """Environment of a service serving the oracle model; tests add CLSLOC_* settings to it."""
    monkeypatch.setenv("CLSLOC_MODEL", str(oracle_dir))
    for name in ("CLSLOC_API_KEY", "CLSLOC_MAX_BYTES", "CLSLOC_MAX_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _forget_bentoml_http_metrics() -> None:
    """BentoML registers its HTTP metrics each time an app is built; one process builds several here."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    registry = BentoMLContainer.metrics_client.get().registry
    for collector, names in list(registry._collector_to_names.items()):
        if any(name.startswith("bentoml_") for name in names):
            registry.unregister(collector)


@pytest.fixture
def make_client(serving_env):
    """make_client(**CLSLOC_settings) -> TestClient over Clsloc.to_asgi() (lifespan run, always closed)."""
    from starlette.testclient import TestClient

    from clsloc.serving.service import Clsloc

    with contextlib.ExitStack() as stack:

        def make(**settings):
            for key, value in settings.items():
                serving_env.setenv(f"CLSLOC_{key.upper()}", str(value))
            _forget_bentoml_http_metrics()
            return stack.enter_context(TestClient(Clsloc.to_asgi()))

        yield make


def _ephemeral_low() -> int:
    """The first port of the kernel's range for bind(0) and outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback port free right now, chosen below the kernel's ephemeral range.

    BentoML gives its internal endpoints (circus's control socket among them)
    ports from bind(0), i.e. from the ephemeral range. A port found there and
    released before the server binds it can be handed to one of them first,
    and the server dies at start-up with "Address already in use". bind(0)
    never picks a port below that range.
    """
    low = _ephemeral_low()
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.randrange(max(1024, low - 12000), low)  # well clear of the usual service ports
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port found below {low}")


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    """Until the server at ``url`` is ready (the SDK's own wait), or its process has exited."""
    from clsloc_client import Client

    with Client(url) as client:
        client.wait_ready(
            timeout,
            abort=lambda: f"server exited with code {process.returncode}" if process.poll() is not None else None,
        )


SERVERS: dict[str, subprocess.Popen] = {}  # url -> the ``clsloc serve`` process of each running server


def worker_pids(url: str) -> set[int]:
    """The worker processes of the server at ``url``: BentoML runs each as a child of ``clsloc serve``.

    A worker that died and was restarted has a new pid: tests compare these
    sets to tell "still up" from "came back".
    """
    import psutil

    children = psutil.Process(SERVERS[url].pid).children()
    return {child.pid for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE}


RETRIED_STATUSES = {429, 502, 503, 504}


def post_with_retries(http, path: str, files, *, budget: float = 60.0) -> tuple[object, list[tuple[str, float]]]:
    """POST until answered, as a client with retries does: connection errors and 429/502/503/504 are retried.

    The wait honours ``Retry-After`` when the service sends one, else backs off
    from 0.1 s. Returns the final response and every attempt as (outcome, seconds).
    The SDK's own retries (clsloc_client, client issue) follow the same rules.
    """
    import httpx

    attempts: list[tuple[str, float]] = []
    deadline = time.monotonic() + budget
    while True:
        started = time.monotonic()
        try:
            response = http.post(path, files=files)
        except httpx.TransportError as exc:
            attempts.append((type(exc).__name__, time.monotonic() - started))
            wait = 0.1 * 2 ** min(len(attempts), 4)
        else:
            attempts.append((str(response.status_code), time.monotonic() - started))
            if response.status_code not in RETRIED_STATUSES:
                return response, attempts
            wait = float(response.headers.get("retry-after", 0.1 * 2 ** min(len(attempts), 4)))
        if time.monotonic() + wait > deadline:
            raise TimeoutError(f"no answer within {budget}s: {attempts}")
        time.sleep(wait)


@contextlib.contextmanager
def running_server(model: str, *, env: dict | None = None, log: Path | None = None, args: tuple[str, ...] = ()):
    """``clsloc serve MODEL [ARGS]`` on a free loopback port; always stopped (whole process group)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = log or (_TMP / f"server-{port}.log")
    # Each server its own BENTOML_HOME: a starting server empties $BENTOML_HOME/prometheus_multiproc_dir,
    # the metrics of any other server still running from it. The model store stays shared.
    home = _TMP / f"bentoml-home-{port}"
    home.mkdir()
    store = Path(os.environ["BENTOML_HOME"]) / "models"
    store.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(store, target_is_directory=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "clsloc.cli", "serve", model, "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO,
            env={**os.environ, "BENTOML_HOME": str(home), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_ready(url, process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; server log:\n{log.read_text()[-3000:]}") from None
        SERVERS[url] = process
        yield url
    finally:
        SERVERS.pop(url, None)
        stop_server(process)


def stop_server(process: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True``: its whole process group, killed if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def live_server(oracle_dir):
    """One real BentoML server (``clsloc serve``) for the tests that need real HTTP."""
    with running_server(str(oracle_dir)) as url:
        yield url

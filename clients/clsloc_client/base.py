"""What :class:`~clsloc_client.Client` and :class:`~clsloc_client.AsyncClient` share: settings and one pool."""

from __future__ import annotations

import os
from typing import Any, Generic, TypeVar

import httpx

from clsloc_client._version import __version__
from clsloc_client.retry import Retry, as_retry

DEFAULT_URL = "http://127.0.0.1:3000"
HttpT = TypeVar("HttpT", httpx.Client, httpx.AsyncClient)
TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)


class ClientBase(Generic[HttpT, TransportT]):
    """A client of one clsloc service, with one connection pool (released by ``close``/``aclose`` or ``with``).

    ``api_key`` defaults to $CLSLOC_API_KEY; ``timeout`` is per attempt, in
    seconds (None: no limit); ``retries`` is a count or a :class:`~clsloc_client.Retry`;
    ``max_connections`` bounds the pool; ``transport`` replaces httpx's
    network transport (tests use ``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        retries: int | Retry = 3,
        max_connections: int = 100,
        transport: TransportT | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else (os.environ.get("CLSLOC_API_KEY") or None)
        self.timeout = timeout
        self.retry = as_retry(retries)
        headers = {"User-Agent": f"clsloc-client/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._http: HttpT = self._connect(
            base_url=self.url,
            transport=transport,
            # Waiting for a free connection of our own pool is not the service being slow: no pool timeout.
            timeout=httpx.Timeout(timeout, pool=None),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers=headers,
        )

    def _connect(self, **options: Any) -> HttpT:
        """The httpx client (and its pool) of this kind of client."""
        raise NotImplementedError

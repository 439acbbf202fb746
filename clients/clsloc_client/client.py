"""Sync and async clients. One request builder and one response reader serve both."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Union

import httpx

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, IO[bytes]]


class ClsLocError(Exception):
    """The service refused a request: ``status`` (HTTP), ``error`` (kind) and ``detail`` (message)."""

    def __init__(self, status: int, error: str, detail: Any):
        self.status = status
        self.error = error
        self.detail = detail
        super().__init__(f"{status} {error}: {detail}")


def _file_part(image: ImageInput, default_name: str) -> tuple[str, bytes, str]:
    if isinstance(image, (bytes, bytearray)):
        return default_name, bytes(image), "application/octet-stream"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.name, path.read_bytes(), "application/octet-stream"
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("file objects must be opened in binary mode ('rb')")
        return Path(getattr(image, "name", default_name)).name, bytes(data), "application/octet-stream"
    raise TypeError(f"cannot send {type(image).__name__} as an image (a path, bytes or a binary file)")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _read(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        if isinstance(body, dict):
            raise ClsLocError(response.status_code, str(body.get("error", "error")), body.get("detail", ""))
        raise ClsLocError(response.status_code, "http_error", response.text[:500])
    return body if body is not None else response.text


class Client:
    """Synchronous client. ``api_key`` defaults to the CLSLOC_API_KEY environment variable."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:3000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.api_key = api_key if api_key is not None else os.environ.get("CLSLOC_API_KEY")
        self._http = httpx.Client(base_url=url, timeout=timeout, transport=transport, headers=_headers(self.api_key))

    def predict(self, image: ImageInput) -> dict:
        """One image -> {"label", "score", "box": {"x","y","w","h"}, "width", "height", "model"}."""
        return _read(self._http.post("/predict", files={"image": _file_part(image, "image")}))

    def predict_batch(self, images: Iterable[ImageInput]) -> list[dict]:
        """Several images -> one result each, in order; a failed image is {"error", "detail", "status"}."""
        files = [("images", _file_part(im, f"image{i}")) for i, im in enumerate(images)]
        return _read(self._http.post("/predict_batch", files=files))

    def model_info(self) -> dict:
        return _read(self._http.get("/model"))

    def health(self) -> bool:
        """True when the service is live and ready."""
        try:
            return all(self._http.get(p).status_code == 200 for p in ("/livez", "/readyz"))
        except httpx.HTTPError:
            return False

    def wait_ready(
        self, timeout: float = 60.0, *, interval: float = 0.5, abort: Callable[[], str | None] | None = None
    ) -> None:
        """Poll ``/readyz`` until the service answers 200; ``TimeoutError`` after ``timeout`` seconds.

        ``abort`` is asked between polls; a message from it stops the wait with
        ``RuntimeError`` (e.g. ``lambda: "server exited" if proc.poll() is not None else None``).
        """
        deadline = time.monotonic() + timeout
        while True:
            reason = abort() if abort else None
            if reason:
                raise RuntimeError(f"{self._http.base_url}: {reason}")
            try:
                if self._http.get("/readyz", timeout=min(2.0, timeout)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self._http.base_url} not ready after {timeout:g}s")
            time.sleep(interval)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """Asynchronous client with the same methods as :class:`Client`, awaited."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:3000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.api_key = api_key if api_key is not None else os.environ.get("CLSLOC_API_KEY")
        self._http = httpx.AsyncClient(
            base_url=url, timeout=timeout, transport=transport, headers=_headers(self.api_key)
        )

    async def predict(self, image: ImageInput) -> dict:
        return _read(await self._http.post("/predict", files={"image": _file_part(image, "image")}))

    async def predict_batch(self, images: Iterable[ImageInput]) -> list[dict]:
        files = [("images", _file_part(im, f"image{i}")) for i, im in enumerate(images)]
        return _read(await self._http.post("/predict_batch", files=files))

    async def model_info(self) -> dict:
        return _read(await self._http.get("/model"))

    async def health(self) -> bool:
        try:
            for path in ("/livez", "/readyz"):
                if (await self._http.get(path)).status_code != 200:
                    return False
            return True
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

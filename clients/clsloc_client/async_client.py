"""The asynchronous client: the same methods as :class:`clsloc_client.Client`, awaited, on asyncio."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, TypeAlias

import httpx

from clsloc_client.base import ClientBase
from clsloc_client.errors import ClsLocError
from clsloc_client.protocol import Batch, ReadyWait, Result, check_concurrency, read_json, read_prediction
from clsloc_client.results import Prediction
from clsloc_client.retry import Attempts
from clsloc_client.uploads import ImageInput, Upload, check_jpeg_quality, to_upload

Images: TypeAlias = Iterable[ImageInput] | AsyncIterable[ImageInput]


class AsyncClient(ClientBase[httpx.AsyncClient, httpx.AsyncBaseTransport]):
    """An asyncio client of one clsloc service; one connection pool shared by every call on it.

    Same settings as :class:`~clsloc_client.Client` (:class:`ClientBase`).
    ``async with AsyncClient(url) as client:`` (or ``await client.aclose()``) releases its connections.
    """

    def _connect(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(**options)

    async def predict(self, image: ImageInput, *, jpeg_quality: int | None = None) -> Prediction:
        """Label, score and box of the main object of one image; raises a :class:`ClsLocError` subclass."""
        check_jpeg_quality(jpeg_quality)
        return await self._predict(await _upload(image, jpeg_quality))

    async def predict_many(
        self, images: Images, *, concurrency: int = 8, jpeg_quality: int | None = None
    ) -> list[Result]:
        """One result per image, in input order: a :class:`Prediction`, or the :class:`ClsLocError` of that image.

        ``images`` may be an iterable or an async iterable; at most
        ``concurrency`` requests are in flight and twice that many inputs read ahead.
        """
        return [
            result async for result in self.predict_iter(images, concurrency=concurrency, jpeg_quality=jpeg_quality)
        ]

    async def predict_iter(
        self, images: Images, *, concurrency: int = 8, jpeg_quality: int | None = None
    ) -> AsyncIterator[Result]:
        """``predict_many`` as an async generator: each result as soon as it and all before it are in."""
        window = check_concurrency(concurrency)
        check_jpeg_quality(jpeg_quality)
        in_flight = asyncio.Semaphore(concurrency)

        async def one(image: ImageInput) -> Result:
            async with in_flight:
                return await self._predict_or_error(image, jpeg_quality)

        pending: deque[asyncio.Task[Result]] = deque()
        try:
            async for image in _each(images):
                pending.append(asyncio.ensure_future(one(image)))
                if len(pending) >= window:
                    yield await pending.popleft()
            while pending:
                yield await pending.popleft()
        finally:  # stopped early (or cancelled): no request of ours outlives the generator
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def predict_batch(self, images: Iterable[ImageInput], *, jpeg_quality: int | None = None) -> list[Result]:
        """Several images in one ``/predict_batch`` request: one result per image, in order (see ``Client``)."""
        batch = await asyncio.to_thread(Batch, images, jpeg_quality)
        answer = read_json(await self._send("POST", "/predict_batch", files=batch.files)) if batch.files else []
        return batch.results(answer)

    async def model_info(self) -> dict[str, Any]:
        """The served model's manifest: classes, input size, preprocessing, validation metrics, parity."""
        info: dict[str, Any] = read_json(await self._send("GET", "/model"))
        return info

    async def health(self) -> bool:
        """True when the service is live and ready (one probe each, no retries)."""
        try:
            for path in ("/livez", "/readyz"):
                if (await self._http.get(path)).status_code != 200:
                    return False
        except httpx.HTTPError:
            return False
        return True

    async def wait_ready(
        self, timeout: float = 60.0, *, interval: float = 0.5, abort: Callable[[], str | None] | None = None
    ) -> None:
        """Poll ``/readyz`` until the service answers 200; ``TimeoutError`` after ``timeout`` seconds (see ``Client``)."""
        wait = ReadyWait(self.url, timeout, interval, abort)
        while True:
            wait.check()
            try:
                if (await self._http.get("/readyz", timeout=wait.probe_timeout)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(wait.pause())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _predict(self, upload: Upload) -> Prediction:
        return read_prediction(read_json(await self._send("POST", "/predict", files={"image": upload})))

    async def _predict_or_error(self, image: ImageInput, jpeg_quality: int | None) -> Result:
        try:
            return await self._predict(await _upload(image, jpeg_quality))
        except ClsLocError as exc:
            return exc

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, sent again while :class:`Attempts` says it may help."""
        attempts = Attempts(self.retry)
        while attempts.again(await self._attempt(method, path, kwargs)):
            await asyncio.sleep(attempts.delay)
        return attempts.response

    async def _attempt(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response | httpx.RequestError:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.RequestError as exc:
            return exc


async def _upload(image: ImageInput, jpeg_quality: int | None) -> Upload:
    """Bytes need no work; reading a file or encoding pixels runs in a thread, off the event loop."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return to_upload(image)
    return await asyncio.to_thread(to_upload, image, jpeg_quality=jpeg_quality)


async def _each(images: Images) -> AsyncIterator[ImageInput]:
    if isinstance(images, AsyncIterable):
        async for image in images:
            yield image
    else:
        for image in images:
            yield image

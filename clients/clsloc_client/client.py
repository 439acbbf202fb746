"""The synchronous client. Many images at once go through a thread pool over the client's one connection pool."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx

from clsloc_client.base import ClientBase
from clsloc_client.errors import ClsLocError
from clsloc_client.protocol import Batch, ReadyWait, Result, check_concurrency, read_json, read_prediction
from clsloc_client.results import Prediction
from clsloc_client.retry import Attempts
from clsloc_client.uploads import ImageInput, Upload, check_jpeg_quality, to_upload


class Client(ClientBase[httpx.Client, httpx.BaseTransport]):
    """A client of one clsloc service, safe to share between threads (settings: :class:`ClientBase`).

    ``with Client(url) as client:`` (or ``client.close()``) releases its connections.
    """

    def _connect(self, **options: Any) -> httpx.Client:
        return httpx.Client(**options)

    def predict(self, image: ImageInput, *, jpeg_quality: int | None = None) -> Prediction:
        """Label, score and box of the main object of one image; raises a :class:`ClsLocError` subclass.

        ``jpeg_quality`` (1-100) sends a Pillow image or numpy array as JPEG
        of that quality instead of lossless PNG; other inputs go as they are.
        """
        check_jpeg_quality(jpeg_quality)
        return self._predict(to_upload(image, jpeg_quality=jpeg_quality))

    def predict_many(
        self, images: Iterable[ImageInput], *, concurrency: int = 8, jpeg_quality: int | None = None
    ) -> list[Result]:
        """One result per image, in input order: a :class:`Prediction`, or the :class:`ClsLocError` of that image.

        ``concurrency`` requests are in flight at once; at most twice that many
        inputs are read ahead, so a long generator is never loaded whole.
        """
        return list(self.predict_iter(images, concurrency=concurrency, jpeg_quality=jpeg_quality))

    def predict_iter(
        self, images: Iterable[ImageInput], *, concurrency: int = 8, jpeg_quality: int | None = None
    ) -> Iterator[Result]:
        """``predict_many`` as a generator: each result as soon as it and all before it are in."""
        window = check_concurrency(concurrency)
        check_jpeg_quality(jpeg_quality)
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="clsloc-client") as pool:
            pending: deque[Future[Result]] = deque()
            try:
                for image in images:
                    pending.append(pool.submit(self._predict_or_error, image, jpeg_quality))
                    if len(pending) >= window:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:  # stopped early: drop what has not started; the pool waits for the rest
                for future in pending:
                    future.cancel()

    def predict_batch(self, images: Iterable[ImageInput], *, jpeg_quality: int | None = None) -> list[Result]:
        """Several images in one ``/predict_batch`` request: one result per image, in order.

        An image the service (or the client) cannot use becomes its error in
        the list; a refusal of the whole request (401, 413, 503) raises.
        """
        batch = Batch(images, jpeg_quality)
        answer = read_json(self._send("POST", "/predict_batch", files=batch.files)) if batch.files else []
        return batch.results(answer)

    def model_info(self) -> dict[str, Any]:
        """The served model's manifest: classes, input size, preprocessing, validation metrics, parity."""
        info: dict[str, Any] = read_json(self._send("GET", "/model"))
        return info

    def health(self) -> bool:
        """True when the service is live and ready (one probe each, no retries)."""
        try:
            return all(self._http.get(path).status_code == 200 for path in ("/livez", "/readyz"))
        except httpx.HTTPError:
            return False

    def wait_ready(
        self, timeout: float = 60.0, *, interval: float = 0.5, abort: Callable[[], str | None] | None = None
    ) -> None:
        """Poll ``/readyz`` until the service answers 200; ``TimeoutError`` after ``timeout`` seconds.

        ``abort`` is asked between polls; a message from it stops the wait with
        ``RuntimeError`` (e.g. ``lambda: "server exited" if proc.poll() is not None else None``).
        """
        wait = ReadyWait(self.url, timeout, interval, abort)
        while True:
            wait.check()
            try:
                if self._http.get("/readyz", timeout=wait.probe_timeout).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(wait.pause())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _predict(self, upload: Upload) -> Prediction:
        return read_prediction(read_json(self._send("POST", "/predict", files={"image": upload})))

    def _predict_or_error(self, image: ImageInput, jpeg_quality: int | None) -> Result:
        try:
            return self._predict(to_upload(image, jpeg_quality=jpeg_quality))
        except ClsLocError as exc:
            return exc

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, sent again while :class:`Attempts` says it may help."""
        attempts = Attempts(self.retry)
        while attempts.again(self._attempt(method, path, kwargs)):
            time.sleep(attempts.delay)
        return attempts.response

    def _attempt(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response | httpx.RequestError:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.RequestError as exc:
            return exc

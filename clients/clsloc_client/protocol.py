"""What the sync and async clients share: request bodies, reading answers, the ready wait (no I/O here)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import httpx

from clsloc_client.errors import ClsLocError, InputError, error_for, error_from_response
from clsloc_client.results import Prediction
from clsloc_client.uploads import ImageInput, Upload, check_jpeg_quality, to_upload

Result: TypeAlias = Prediction | ClsLocError
"""One item of ``predict_many`` / ``predict_batch``: the prediction, or the error of that image."""


def read_json(response: httpx.Response) -> Any:
    """The JSON of a successful answer; the matching :class:`ClsLocError` for an error answer."""
    if response.status_code >= 400:
        raise error_from_response(response)
    try:
        return response.json()
    except ValueError:
        raise ClsLocError(response.status_code, "bad_response", f"not JSON: {response.text[:200]!r}") from None


def read_prediction(data: Any) -> Prediction:
    try:
        return Prediction.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ClsLocError(200, "bad_response", f"not a prediction ({exc!r}): {str(data)[:200]}") from None


def read_item(item: Any) -> Result:
    """One entry of a ``/predict_batch`` answer: a prediction, or the error of that image."""
    if isinstance(item, dict) and "error" in item:
        return error_for(int(item.get("status") or 400), str(item["error"]), str(item.get("detail", "")))
    return read_prediction(item)


class Batch:
    """One ``/predict_batch`` request: the images that could be read are sent, the others keep their place."""

    def __init__(self, images: Iterable[ImageInput], jpeg_quality: int | None) -> None:
        check_jpeg_quality(jpeg_quality)
        self.local: dict[int, ClsLocError] = {}  # position -> why it was not sent
        self.files: list[tuple[str, Upload]] = []
        self.count = 0
        for i, image in enumerate(images):
            self.count += 1
            try:
                self.files.append(("images", to_upload(image, jpeg_quality=jpeg_quality, name=f"image{i}")))
            except InputError as exc:
                self.local[i] = exc

    def results(self, answer: Any) -> list[Result]:
        sent = list(answer) if isinstance(answer, list) else []
        if len(sent) != len(self.files):
            raise ClsLocError(200, "bad_response", f"{len(sent)} results for {len(self.files)} images")
        answers = iter(sent)
        return [self.local[i] if i in self.local else read_item(next(answers)) for i in range(self.count)]


def check_concurrency(concurrency: int) -> int:
    """The number of inputs read ahead: twice the requests in flight, so a slow one does not idle the others."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    return 2 * concurrency


class ReadyWait:
    """The deadline and abort check of ``wait_ready`` (the polling itself is sync or async)."""

    def __init__(self, url: str, timeout: float, interval: float, abort: Callable[[], str | None] | None) -> None:
        self.url, self.timeout, self.interval, self.abort = url, timeout, interval, abort
        self.deadline = time.monotonic() + timeout
        self.probe_timeout = min(2.0, timeout) if timeout > 0 else 2.0

    def check(self) -> None:
        """Raise when the caller's ``abort`` gives a reason to stop waiting."""
        reason = self.abort() if self.abort else None
        if reason:
            raise RuntimeError(f"{self.url}: {reason}")

    def pause(self) -> float:
        """Seconds to sleep before the next poll; ``TimeoutError`` once the deadline has passed."""
        if time.monotonic() >= self.deadline:
            raise TimeoutError(f"{self.url} not ready after {self.timeout:g}s")
        return self.interval

"""When to send a request again, and how long to wait first.

Only where it is safe and may help: no connection, a dropped connection, no
answer in time, and the statuses that mean "not now" (429, 502, 503, 504).
A refusal of the request itself (any other 4xx) or a server error (500) is
the same on every try and is never repeated. Scoring an image changes
nothing on the server, so sending it twice is harmless.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from clsloc_client.errors import RETRY_STATUSES, error_from_response, error_from_transport

# Errors after which the same request may well succeed: the server was not reached, went away, or was slow.
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Retry:
    """How a client retries: at most ``retries`` more attempts, waiting with exponential backoff and jitter.

    The n-th wait is a random time between half and all of
    ``min(max_delay, backoff * 2**n)``. A ``Retry-After`` from the service
    replaces it (waited in full, plus up to a tenth more so that clients told
    the same time do not return at once); if the service asks for more than
    ``max_delay``, the client gives up at once instead. No wait starts that
    would end more than ``budget`` seconds after the first attempt began, so a
    call takes at most ``budget`` plus one ``timeout``. ``Retry(retries=0)``
    (or ``retries=0`` on a client) turns retrying off.
    """

    retries: int = 3
    backoff: float = 0.5
    max_delay: float = 10.0
    budget: float = 30.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_delay < 0 or self.budget < 0:
            raise ValueError(f"retry settings must not be negative: {self}")


def as_retry(retries: int | Retry) -> Retry:
    return retries if isinstance(retries, Retry) else Retry(retries=retries)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (a number, or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Attempts:
    """The retry state of one call: counts attempts, decides each wait, or raises the final error."""

    def __init__(self, policy: Retry, *, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.policy = policy
        self.clock = clock
        self.rng = rng or random.Random()
        self.started = clock()
        self.sent = 0
        self.delay = 0.0  # the wait before the next attempt, when again() said so
        self._response: httpx.Response | None = None

    def again(self, result: httpx.Response | httpx.RequestError) -> bool:
        """After one attempt: True to send again after :attr:`delay` seconds, False when :attr:`response` is final.

        Raises the call's error when the attempt failed and may not (or no
        longer) be repeated: :class:`Unavailable` once the retries are spent.
        """
        self.sent += 1
        if isinstance(result, httpx.Response):
            if result.status_code not in RETRY_STATUSES:
                self._response = result
                return False
            retry_after = retry_after_seconds(result)
            delay = self._next_delay(retry_after)
            if delay is None:
                raise error_from_response(result, attempts=self.sent, retry_after=retry_after)
        else:
            delay = self._next_delay(None) if isinstance(result, RETRY_ERRORS) else None
            if delay is None:
                raise error_from_transport(result, attempts=self.sent) from result
        self.delay = delay
        return True

    @property
    def response(self) -> httpx.Response:
        """The final answer, once :meth:`again` has said no."""
        if self._response is None:
            raise RuntimeError("no final answer: again() has not returned False")
        return self._response

    def _next_delay(self, retry_after: float | None) -> float | None:
        policy = self.policy
        if self.sent > policy.retries:
            return None
        if retry_after is not None:
            if retry_after > policy.max_delay:
                return None
            delay = retry_after * self.rng.uniform(1.0, 1.1)
        else:
            delay = min(policy.max_delay, policy.backoff * 2 ** (self.sent - 1)) * self.rng.uniform(0.5, 1.0)
        if self.clock() - self.started + delay > policy.budget:
            return None
        return delay

"""The error contract: one exception class per kind of refusal, each with the server's ``error`` and ``detail``.

===========================  ============================  ==========================================
class                        when                          ``error`` (from the service unless noted)
===========================  ============================  ==========================================
``BadImage``                 400                           ``not_an_image``, ``truncated``, ``empty``,
                                                           ``missing``, ``invalid_request``
``Unauthorized``             401 (and 403)                 ``unauthorized``
``TooLarge``                 413                           ``too_large``, ``too_many_pixels``
``UnsupportedFormat``        415                           ``unsupported_format``
``Unavailable``              429, 502, 503, 504, or no     ``overloaded`` and the like; client-side
                             connection, after retries     ``unreachable``, ``disconnected``, ``timeout``
``InputError``               before sending (no status)    client-side ``unreadable``,
                                                           ``unsupported_input``
``ClsLocError``              any other failure             the service's, or the HTTP reason
===========================  ============================  ==========================================
"""

from __future__ import annotations

from typing import Any

import httpx


class ClsLocError(Exception):
    """A request or an image the service (or the client) could not answer.

    ``status`` is the HTTP status, ``None`` when no answer came (connection
    errors) or the problem was found before sending (:class:`InputError`);
    ``error`` is the kind (a stable word to branch on), ``detail`` the message.
    """

    def __init__(self, status: int | None, error: str, detail: str):
        self.status = status
        self.error = error
        self.detail = detail
        super().__init__(f"{status} {error}: {detail}" if status is not None else f"{error}: {detail}")

    def to_dict(self) -> dict[str, Any]:
        """The service's JSON shape for a failed image (as in a ``/predict_batch`` answer)."""
        return {"error": self.error, "detail": self.detail, "status": self.status}

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses keep the base signature, so errors pickle (and cross process pools) intact.
        return (type(self), (self.status, self.error, self.detail))


class BadImage(ClsLocError):
    """400: the upload is not a usable image (not an image, truncated, empty)."""


class Unauthorized(ClsLocError):
    """401: the service needs ``Authorization: Bearer`` with its API key (``api_key=`` or $CLSLOC_API_KEY)."""


class TooLarge(ClsLocError):
    """413: more bytes or more pixels than the service accepts."""


class UnsupportedFormat(ClsLocError):
    """415: an image format the service cannot read (HEIC, AVIF, JPEG XL): convert to JPEG or PNG."""


class Unavailable(ClsLocError):
    """The service could not answer now: overloaded, rate-limited, a gateway error, or no connection.

    Raised after the client's retries are spent. ``attempts`` is how many
    requests were sent; ``retry_after`` the seconds the service asked to wait
    (``Retry-After``), when it said.
    """

    def __init__(
        self, status: int | None, error: str, detail: str, *, attempts: int = 1, retry_after: float | None = None
    ):
        super().__init__(status, error, detail)
        self.attempts = attempts
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unavailable, (self.status, self.error, self.detail, self.attempts, self.retry_after))


def _unavailable(status: int | None, error: str, detail: str, attempts: int, retry_after: float | None) -> Unavailable:
    return Unavailable(status, error, detail, attempts=attempts, retry_after=retry_after)


class InputError(ClsLocError):
    """The client could not make an upload of this input: a file it cannot read, an object it cannot send."""

    def __init__(self, error: str, detail: str):
        super().__init__(None, error, detail)

    def __reduce__(self) -> tuple[Any, ...]:
        return (InputError, (self.error, self.detail))


BY_STATUS: dict[int, type[ClsLocError]] = {
    400: BadImage,
    401: Unauthorized,
    403: Unauthorized,
    413: TooLarge,
    415: UnsupportedFormat,
}
# Answers that say "not now" rather than "not this request": the only statuses worth sending again.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


def error_for(
    status: int, error: str, detail: str, *, attempts: int = 1, retry_after: float | None = None
) -> ClsLocError:
    """The exception for a refusal with this status (a whole request, or one image of a batch)."""
    if status in RETRY_STATUSES:
        return Unavailable(status, error, detail, attempts=attempts, retry_after=retry_after)
    return BY_STATUS.get(status, ClsLocError)(status, error, detail)


def error_from_response(
    response: httpx.Response, *, attempts: int = 1, retry_after: float | None = None
) -> ClsLocError:
    """The exception for an HTTP error answer: the service's JSON ``{"error", "detail"}``, or a proxy's page."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        error, detail = str(body["error"]), str(body.get("detail", ""))
    else:  # not the service's JSON (a proxy or load balancer answered)
        error = response.reason_phrase.lower().replace(" ", "_") or f"http_{response.status_code}"
        detail = response.text.strip()[:500] or f"{response.request.method} {response.request.url}"
    return error_for(response.status_code, error, detail, attempts=attempts, retry_after=retry_after)


def error_from_transport(exc: httpx.RequestError, *, attempts: int) -> ClsLocError:
    """The exception for a request that got no answer (refused, dropped, timed out)."""
    where = f"{exc.request.method} {exc.request.url}" if _has_request(exc) else "request"
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return Unavailable(None, "unreachable", f"{where}: cannot connect: {message}{tries}", attempts=attempts)
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable(
            None, "timeout", f"{where}: no answer in time ({type(exc).__name__}){tries}", attempts=attempts
        )
    if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
        return Unavailable(None, "disconnected", f"{where}: connection lost: {message}{tries}", attempts=attempts)
    return ClsLocError(None, "request_error", f"{where}: {type(exc).__name__}: {message}")


def _has_request(exc: httpx.RequestError) -> bool:
    try:
        exc.request  # noqa: B018 (the property raises when the error was made without a request)
    except RuntimeError:
        return False
    return True

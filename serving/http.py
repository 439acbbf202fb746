"""The HTTP side of errors, auth and counters (no model code here).

Errors are part of the API: every refusal is JSON ``{"error": KIND, "detail":
MESSAGE}`` with a 4xx status, never a 5xx, and never takes the worker down.
"""

from __future__ import annotations

import hmac

import bentoml
from starlette.responses import JSONResponse

from clsloc.images import ImageError
from serving.settings import Settings

# ImageError.kind -> HTTP status
STATUS = {
    "missing": 400,
    "empty": 400,
    "not_an_image": 400,
    "truncated": 400,
    "too_large": 413,
    "too_many_pixels": 413,
    "unsupported_format": 415,
}
ERROR_HEADER = "x-clsloc-error"  # lets the guard count rejections by reason without parsing bodies

PREDICTIONS = bentoml.metrics.Counter(
    name="clsloc_predictions", documentation="Predictions served, per predicted label", labelnames=["label"]
)
REJECTED = bentoml.metrics.Counter(
    name="clsloc_rejected",
    documentation="Rejected requests (and rejected images inside batches), per reason",
    labelnames=["reason"],
)


def error_response(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers={ERROR_HEADER: error})


def image_error_response(exc: ImageError) -> JSONResponse:
    return error_response(STATUS.get(exc.kind, 400), exc.kind, str(exc))


def image_error_item(exc: ImageError) -> dict:
    """One failed image inside a batch result."""
    REJECTED.labels(reason=exc.kind).inc()
    return {"error": exc.kind, "detail": str(exc), "status": STATUS.get(exc.kind, 400)}


class ApiGuard:
    """ASGI middleware in front of the API routes: bearer auth, body size, rejection counters.

    It answers before the body is read, so an oversized upload costs neither
    memory nor a temporary file.
    """

    def __init__(self, app, *, protected: tuple[str, ...], settings: Settings | None = None):
        settings = settings or Settings.from_env()
        self.app = app
        self.api_key = settings.api_key
        # path -> max Content-Length
        self.limits = {"/predict": settings.max_request_bytes, "/predict_batch": settings.max_batch_request_bytes}
        self.protected = protected

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.protected:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refuse(scope["path"], headers)
        if refusal is not None:
            REJECTED.labels(reason=refusal.headers[ERROR_HEADER]).inc()
            return await refusal(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                reason = dict(message.get("headers") or []).get(ERROR_HEADER.encode(), b"").decode() or (
                    "invalid_request" if message["status"] < 500 else "server_error"
                )
                REJECTED.labels(reason=reason).inc()
            await send(message)

        return await self.app(scope, receive, counting_send)

    def _refuse(self, path: str, headers: dict[str, str]):
        if self.api_key:
            supplied = headers.get("authorization", "")
            scheme, _, token = supplied.partition(" ")
            if not supplied:
                return error_response(401, "unauthorized", "missing Authorization: Bearer header (CLSLOC_API_KEY is set)")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return error_response(401, "unauthorized", "wrong API key in Authorization: Bearer header")
        limit = self.limits.get(path)
        length = headers.get("content-length")
        if limit is not None and length is not None:
            try:
                size = int(length)
            except ValueError:
                return error_response(400, "invalid_request", f"Content-Length {length!r} is not a number")
            if size > limit:
                return error_response(413, "too_large", f"request body is {size} bytes, more than the limit of {limit}")
        return None

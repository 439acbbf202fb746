"""The HTTP side of errors, auth and counters (no model code here).

Errors are part of the API: every refusal is JSON ``{"error": KIND, "detail":
MESSAGE}`` with a 4xx status, never a 5xx, and never takes the worker down.
"""

from __future__ import annotations

import functools
import hmac
from types import SimpleNamespace

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from clsloc.images import ImageError
from clsloc.serving.settings import Settings

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


@functools.cache
def counters() -> SimpleNamespace:
    """The service's Prometheus counters, made on first use.

    That is inside a worker, after BentoML has set PROMETHEUS_MULTIPROC_DIR, so
    the counters land in the multiprocess files its /metrics endpoint reads
    (bentoml.metrics, which deferred the import the same way, is deprecated).
    """
    import prometheus_client

    return SimpleNamespace(
        predictions=prometheus_client.Counter(
            "clsloc_predictions", "Predictions served, per predicted label", labelnames=["label"]
        ),
        rejected=prometheus_client.Counter(
            "clsloc_rejected",
            "Rejected requests (and rejected images inside batches), per reason",
            labelnames=["reason"],
        ),
    )


def error_response(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers={ERROR_HEADER: error})


def image_error_response(exc: ImageError) -> JSONResponse:
    return error_response(STATUS.get(exc.kind, 400), exc.kind, str(exc))


def image_error_item(exc: ImageError) -> dict:
    """One failed image inside a batch result."""
    counters().rejected.labels(reason=exc.kind).inc()
    return {"error": exc.kind, "detail": str(exc), "status": STATUS.get(exc.kind, 400)}


class ApiGuard:
    """ASGI middleware in front of the API routes: bearer auth, body size, request shape, rejection counters.

    It answers auth and declared-size refusals before the body is read. For
    uploads it then reads the body (bounded by the limit), checks that it is
    multipart/form-data with the expected file field and nothing else, and
    replays it to BentoML: a malformed request is a 400 here instead of an
    exception (500) deep in BentoML's parser.
    """

    def __init__(self, app, *, protected: tuple[str, ...], settings: Settings | None = None):
        settings = settings or Settings.from_env()
        self.app = app
        self.api_key = settings.api_key
        # path -> (file field, max body bytes)
        self.uploads = {
            "/predict": ("image", settings.max_request_bytes),
            "/predict_batch": ("images", settings.max_batch_request_bytes),
        }
        self.protected = protected
        # BentoML's own parser raises (500) on some malformed multipart bodies: check those first.
        # /predict is served by clsloc.serving.webapp, which parses its body itself.
        self.prechecked = {"/predict_batch"}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._is_protected(scope["path"]):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refuse_early(scope["path"], headers)
        if refusal is None and scope["path"] in self.prechecked and scope["method"] == "POST":
            refusal, receive = await self._check_upload(scope, receive, *self.uploads[scope["path"]])
        if refusal is not None:
            counters().rejected.labels(reason=refusal.headers[ERROR_HEADER]).inc()
            return await refusal(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                reason = dict(message.get("headers") or []).get(ERROR_HEADER.encode(), b"").decode() or (
                    "invalid_request" if message["status"] < 500 else "server_error"
                )
                counters().rejected.labels(reason=reason).inc()
            await send(message)

        return await self.app(scope, receive, counting_send)

    def _is_protected(self, path: str) -> bool:
        """A protected route, or under a protected prefix (one that ends in "/")."""
        return path in self.protected or path.startswith(tuple(p for p in self.protected if p.endswith("/")))

    def _refuse_early(self, path: str, headers: dict[str, str]):
        if self.api_key:
            supplied = headers.get("authorization", "")
            scheme, _, token = supplied.partition(" ")
            if not supplied:
                return error_response(
                    401, "unauthorized", "missing Authorization: Bearer header (CLSLOC_API_KEY is set)"
                )
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return error_response(401, "unauthorized", "wrong API key in Authorization: Bearer header")
        if path in self.uploads and "content-length" in headers:
            length, limit = headers["content-length"], self.uploads[path][1]
            try:
                size = int(length)
            except ValueError:
                return error_response(400, "invalid_request", f"Content-Length {length!r} is not a number")
            if size > limit:
                return error_response(413, "too_large", f"request body is {size} bytes, more than the limit of {limit}")
        return None

    async def _check_upload(self, scope, receive, field: str, limit: int):
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return error_response(400, "invalid_request", "client disconnected"), receive
            body += message.get("body", b"")
            if len(body) > limit:  # chunked uploads have no Content-Length to refuse early
                return error_response(
                    413, "too_large", f"request body is more than the limit of {limit} bytes"
                ), receive
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        problem = await _multipart_problem(scope, bytes(body), field)
        if problem:
            return error_response(400, "invalid_request", problem), replay
        return None, replay


class UploadProblem(ValueError):
    """A request that is not multipart/form-data with the expected file field (-> 400 invalid_request)."""


async def read_uploads(request: Request, field: str) -> list[bytes]:
    """The bytes of every file sent in multipart field ``field``; anything else raises UploadProblem."""
    expected = f"expected multipart/form-data with file field {field!r}"
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadProblem(f"{expected}, got Content-Type {content_type or '(none)'!r}")
    try:
        form = await request.form()
    except Exception as exc:  # python-multipart's parse errors have no common base class
        raise UploadProblem(f"{expected}; the body could not be parsed ({exc})") from None
    try:
        names = list(form.keys())
        if field not in names:
            raise UploadProblem(f"{expected}; fields sent: {sorted(set(names)) or 'none'}")
        extra = sorted(set(names) - {field})
        if extra:
            raise UploadProblem(f"{expected} only; unexpected field(s): {', '.join(extra)}")
        values = form.getlist(field)
        if not all(isinstance(value, UploadFile) for value in values):
            raise UploadProblem(f"{expected}; {field!r} was sent as text, not as a file")
        return [await value.read() for value in values]
    finally:
        await form.close()


async def _multipart_problem(scope, body: bytes, field: str) -> str | None:
    async def once():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        await read_uploads(Request(scope, once), field)
    except UploadProblem as exc:
        return str(exc)
    return None

"""The HTTP side of errors, auth and counters (no model code here).

Errors are part of the API: every refusal is JSON ``{"error": KIND, "detail":
MESSAGE}`` with a 4xx status, never takes the worker down, and the only 5xx is
``503 overloaded`` with ``Retry-After`` (a worker already holding its
``CLSLOC_MAX_QUEUE`` requests; see docs/reliability.md).
"""

from __future__ import annotations

import functools
import hmac
from http import HTTPStatus
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
# BentoML's probes answer orchestrators in BentoML's own way.
PROBES = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
# HTTP status -> error kind, for refusals made below this service (Starlette's, BentoML's)
ERROR_KINDS_BY_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}
# Seconds an overloaded worker asks a client to wait: about how long it takes to work through a full queue.
RETRY_AFTER_S = 1


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


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": error, "detail": detail}, status_code=status, headers={ERROR_HEADER: error, **(headers or {})}
    )


def overloaded_response(detail: str) -> JSONResponse:
    """503 with Retry-After: the client's retries (clsloc_client) wait that long and try again."""
    return error_response(503, "overloaded", detail, headers={"retry-after": str(RETRY_AFTER_S)})


def image_error_response(exc: ImageError) -> JSONResponse:
    return error_response(STATUS.get(exc.kind, 400), exc.kind, str(exc))


def image_error_item(exc: ImageError) -> dict:
    """One failed image inside a batch result."""
    counters().rejected.labels(reason=exc.kind).inc()
    return {"error": exc.kind, "detail": str(exc), "status": STATUS.get(exc.kind, 400)}


class ApiGuard:
    """ASGI middleware in front of the API routes: auth, body size, admission, request shape, rejection counters.

    It answers auth, declared-size and overload refusals before the body is
    read. Admission bounds the work a worker holds: at most ``max_queue``
    uploads at once (being received, decoded, queued for a batch or run);
    one more is a fast ``503 overloaded`` with ``Retry-After`` instead of a
    place in an ever longer queue, so admitted requests keep a bounded
    latency. For /predict_batch it then reads the body (bounded by the limit),
    checks that it is multipart/form-data with the expected file field and
    nothing else, and replays it to BentoML: a malformed request is a 400 here
    instead of an exception (500) deep in BentoML's parser.
    """

    def __init__(self, app, *, protected: tuple[str, ...], settings: Settings | None = None):
        settings = settings or Settings.from_env()
        self.app = app
        self.api_key = settings.api_key
        self.max_queue = settings.max_queue
        self.max_batch_images = settings.max_batch_images
        self.held = 0  # uploads this worker holds now (one event loop per worker: a plain count is exact)
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
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        protected = self._is_protected(scope["path"])
        send = _json_errors(send, count=protected)
        if not protected:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        upload = scope["path"] in self.uploads and scope["method"] == "POST"
        refusal = self._refuse_early(scope["path"], headers)
        if refusal is None and upload and self.held >= self.max_queue:
            refusal = overloaded_response(
                f"this worker already holds {self.held} requests, its limit (CLSLOC_MAX_QUEUE={self.max_queue}); "
                f"retry after {RETRY_AFTER_S} s"
            )
        if refusal is not None:
            return await refusal(scope, receive, send)
        if not upload:
            return await self.app(scope, receive, send)
        self.held += 1
        try:
            if scope["path"] in self.prechecked:
                refusal, receive = await self._check_upload(scope, receive, *self.uploads[scope["path"]])
                if refusal is not None:
                    return await refusal(scope, receive, send)
            return await self.app(scope, receive, send)
        finally:
            self.held -= 1

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

        problem = await _multipart_problem(scope, bytes(body), field, self.max_batch_images)
        if problem:
            return error_response(400, "invalid_request", problem), replay
        return None, replay


def _json_errors(send, *, count: bool):
    """``send`` that gives every error answer the API's shape, and counts refusals by reason when ``count``.

    This service's own refusals carry ERROR_HEADER and pass as they are. One
    made below it (Starlette's 404 and 405, BentoML's 503 for a request that
    waited past the adaptive batch's latency budget, an unexpected 500) is
    rewritten: same status, an ``{"error", "detail"}`` body, its Allow header
    kept, Retry-After on a 503.
    """
    rewriting: dict = {}  # the start of an answer being rewritten, and its body so far

    async def json_send(message):
        if message["type"] == "http.response.start" and message["status"] >= 400:
            reason = dict(message.get("headers") or []).get(ERROR_HEADER.encode(), b"").decode()
            if not reason:
                rewriting.update(start=message, body=b"")
                return
            if count:
                counters().rejected.labels(reason=reason).inc()
        elif rewriting and message["type"] == "http.response.body":
            rewriting["body"] += message.get("body", b"")
            if message.get("more_body", False):
                return
            response = _in_api_shape(rewriting["start"], rewriting["body"])
            if count:
                counters().rejected.labels(reason=response.headers[ERROR_HEADER]).inc()
            await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
            message = {"type": "http.response.body", "body": response.body, "more_body": False}
        await send(message)

    return json_send


def _in_api_shape(start: dict, body: bytes) -> JSONResponse:
    """An error answer from below this service (status, headers, body) -> the same refusal as an Error."""
    status = start["status"]
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start.get("headers") or []}
    if status in (429, 503):
        return overloaded_response("the service is busy; retry later")
    if status == 504:  # BentoML's traffic timeout
        return error_response(504, "timeout", "not answered within the service's time limit; retry later")
    if status >= 500:  # the log has the details; the body never carries internals
        return error_response(status, "server_error", "unexpected error; the server log has the details")
    detail = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "refused"
    text = body.decode("utf-8", "replace").strip()
    if headers.get("content-type", "").startswith("text/plain") and 0 < len(text) <= 200:
        detail = text
    kept = {name: headers[name] for name in ("allow",) if name in headers}
    return error_response(status, ERROR_KINDS_BY_STATUS.get(status, "http_error"), detail, headers=kept)


class UploadProblem(ValueError):
    """A request that is not multipart/form-data with the expected file field (-> 400 invalid_request)."""


async def read_uploads(request: Request, field: str, max_files: int = 1) -> list[bytes]:
    """The bytes of every file sent in multipart field ``field`` (at most ``max_files``); else UploadProblem."""
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
        if len(values) > max_files:
            raise UploadProblem(
                f"{len(values)} files in field {field!r}, more than the limit of {max_files}"
                + (" (send several images to /predict_batch)" if max_files == 1 else " (CLSLOC_MAX_BATCH_IMAGES)")
            )
        return [await value.read() for value in values]
    finally:
        await form.close()


async def _multipart_problem(scope, body: bytes, field: str, max_files: int) -> str | None:
    async def once():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        await read_uploads(Request(scope, once), field, max_files)
    except UploadProblem as exc:
        return str(exc)
    return None

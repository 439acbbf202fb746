"""Routes mounted into the BentoML service: POST /predict (lean path), GET /model, the model's
sample images (GET /samples/NAME), the web page, /docs (Swagger UI)."""

from __future__ import annotations

import json
from pathlib import Path

import bentoml
from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clsloc.manifest import SAMPLES_DIR
from clsloc.serving import openapi
from clsloc.serving.http import UploadProblem, error_response, read_uploads

WEB_DIR = Path(__file__).parent / "web"


async def index(_request):
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


async def docs(_request):
    return FileResponse(WEB_DIR / "docs.html", media_type="text/html")


async def predict(request):
    """POST /predict, multipart field ``image`` -> the service's answer as JSON."""
    try:
        (data,) = await read_uploads(request, "image")
    except UploadProblem as exc:
        return error_response(400, "invalid_request", str(exc))
    result = await bentoml.get_current_service().predict_image(data)
    return result if isinstance(result, Response) else JSONResponse(result)


async def model_info(_request):
    """The manifest of the model being served (classes, input size, metrics, parity) + providers in use."""
    service = bentoml.get_current_service()
    return JSONResponse(service.engine.describe())


async def sample(request):
    """One of the served model's sample images: only the files its manifest lists, nothing else on disk."""
    engine = bentoml.get_current_service().engine
    file = f"{SAMPLES_DIR}/{request.path_params['name']}"
    if file not in {s["file"] for s in engine.manifest.samples}:
        return error_response(404, "not_found", f"the served model has no sample {request.path_params['name']!r}")
    return FileResponse(engine.model_dir / file, media_type="image/jpeg")


web_app = Starlette(
    routes=[
        Route("/", index, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/model", model_info, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Route("/samples/{name}", sample, methods=["GET"]),
        Mount("/web", StaticFiles(directory=WEB_DIR), name="web"),
    ],
)


class LeanRoutes:
    """ASGI middleware: the requests answered here ahead of BentoML's router.

    * POST /predict is declared as a BentoML API (so /docs.json, /schema.json
      and BentoML's own client know it), but BentoML's generic handler would
      write the upload to a temporary file and validate pydantic models on
      the way in and out; the lean ``predict`` above answers it instead.
    * GET /docs.json is BentoML's document completed by clsloc.serving.openapi.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/predict":
            return await web_app(scope, receive, send)
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/docs.json":
            return await self._document(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _document(self, scope, receive, send):
        start, body = {}, bytearray()

        async def keep(message):
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                body.extend(message.get("body", b""))

        await self.app(scope, receive, keep)
        if start.get("status") != 200:
            return await Response(bytes(body), status_code=start.get("status", 500))(scope, receive, send)
        return await JSONResponse(openapi.complete(json.loads(body)))(scope, receive, send)

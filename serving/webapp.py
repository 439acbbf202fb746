"""The non-inference routes mounted into the service: the web page and GET /model."""

from __future__ import annotations

from pathlib import Path

import bentoml
from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).parent / "web"


async def index(_request):
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


async def model_info(_request):
    """The manifest of the model being served (classes, input size, metrics, parity) + providers in use."""
    service = bentoml.get_current_service()
    return JSONResponse(service.engine.describe())


web_app = Starlette(
    routes=[
        Route("/", index, methods=["GET"]),
        Route("/model", model_info, methods=["GET"]),
        Mount("/web", StaticFiles(directory=WEB_DIR), name="web"),
    ]
)

"""Routes mounted into the BentoML service: POST /predict (lean path), GET /model, the model's
sample images (GET /samples/NAME), the web page."""

from __future__ import annotations

from pathlib import Path

import bentoml
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from clsloc.manifest import SAMPLES_DIR
from clsloc.serving.http import UploadProblem, error_response, read_uploads

WEB_DIR = Path(__file__).parent / "web"


async def index(_request):
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


async def predict(request):
    """POST /predict, multipart field ``image`` -> the service's answer as JSON."""
    try:
        (data,) = await read_uploads(request, "image")
    except UploadProblem as exc:
        return error_response(400, "invalid_request", str(exc))
    except ValueError:  # several files in the one field
        return error_response(400, "invalid_request", "send exactly one file in field 'image' (or use /predict_batch)")
    result = await bentoml.get_current_service().predict(data)
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


async def http_error(_request, exc: HTTPException):
    """Starlette's own refusals (405, 404 under /web) in the API's JSON error shape."""
    error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, error, str(exc.detail))


web_app = Starlette(
    exception_handlers={HTTPException: http_error},
    routes=[
        Route("/", index, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/model", model_info, methods=["GET"]),
        Route("/samples/{name}", sample, methods=["GET"]),
        Mount("/web", StaticFiles(directory=WEB_DIR), name="web"),
    ],
)

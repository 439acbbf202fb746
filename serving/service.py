"""The BentoML service: it only wires the engine, the HTTP guard and the web page.

Routes: POST /predict, POST /predict_batch (adaptive batching), GET /model,
GET / (web page), and BentoML's own /livez, /readyz, /metrics.
Settings come from the environment (clsloc.serving.settings); the model is pinned
by CLSLOC_MODEL (a directory or NAME:VERSION), never an implicit latest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import bentoml

from clsloc.images import ImageError
from clsloc.serving import store
from clsloc.serving.batcher import MicroBatcher
from clsloc.serving.engine import Engine
from clsloc.serving.http import ApiGuard, counters, image_error_item, image_error_response
from clsloc.serving.settings import Settings
from clsloc.serving.webapp import web_app

# The engine logs which onnxruntime providers are really in use (CPU fallback is silent otherwise).
logging.getLogger("clsloc").setLevel(logging.INFO)

# Read at import only for what BentoML needs at class definition (workers, the packed model);
# the rest is read when a worker starts (Clsloc.__init__, ApiGuard).
_IMPORT_SETTINGS = Settings.from_env()
# A store tag is declared as a BentoModel so `bentoml build` packs that exact model into the Bento.
MODEL_TAG = _IMPORT_SETTINGS.model if store.looks_like_tag(_IMPORT_SETTINGS.model) else None


@bentoml.service(
    name="clsloc",
    workers=_IMPORT_SETTINGS.workers,
    traffic={"timeout": 60},
    # Probes and scrapes every few seconds would drown the log; CLSLOC_ACCESS_LOG=0 drops request lines too.
    logging={"access": {"enabled": _IMPORT_SETTINGS.access_log, "skip_paths": ["/livez", "/readyz", "/metrics"]}},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
)
@bentoml.asgi_app(web_app, path="/")
class Clsloc:
    if MODEL_TAG:
        stored_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        settings = Settings.from_env()
        if MODEL_TAG and settings.model == MODEL_TAG:
            model_dir = Path(self.stored_model.path)
        elif settings.model:
            model_dir = store.resolve(settings.model)
        else:
            raise store.ModelNotFound(
                "no model: set CLSLOC_MODEL to a model directory or NAME:VERSION (clsloc serve does)"
            )
        self.engine = Engine(
            model_dir, threads=settings.threads, max_bytes=settings.max_bytes, max_pixels=settings.max_pixels
        )
        # Concurrent /predict requests share onnxruntime runs; one run at a time per worker.
        self.batcher = MicroBatcher(self.engine, max_batch=settings.max_batch)
        # Requests past parsing that decode and preprocess at once: enough to fill the next batch
        # while one runs, no more (extra decoders would only fight onnxruntime for the cores).
        self._pipeline = anyio.CapacityLimiter(settings.max_batch + 1)

    def __is_ready__(self) -> bool:
        return self.engine is not None

    def _answer(self, prediction) -> dict:
        counters().predictions.labels(label=prediction.label).inc()
        return {**prediction.to_dict(), "model": self.engine.model_ref}

    async def predict(self, image: bytes | Path):
        """One image -> label, score, box in pixels of the displayed image (a dict), or a 4xx JSON response.

        Served at POST /predict by clsloc.serving.webapp: a lean route (one multipart
        parse, bytes in memory, no temporary file or pydantic models) keeps
        HTTP within a few milliseconds of calling the engine in-process.
        """
        try:
            prediction = await anyio.to_thread.run_sync(self._predict_blocking, image, limiter=self._pipeline)
        except ImageError as exc:
            return image_error_response(exc)
        return self._answer(prediction)

    def _predict_blocking(self, image):
        # One thread hop per request: decoding and preprocessing run beside the batch in flight.
        return self.batcher.predict(self.engine.open(image, name="image"))

    @bentoml.api(route="/predict_batch", batchable=True, max_batch_size=64, max_latency_ms=2000)
    def predict_batch(self, images: list[Path]) -> list[dict]:
        """Several images (multipart fields ``images``) -> one result each, in request order.

        BentoML merges concurrent requests into one call (adaptive batching);
        a bad image becomes an error item and the others are still scored.
        """
        results = self.engine.predict_many(images, names=["uploaded image"] * len(images))
        return [image_error_item(r) if isinstance(r, ImageError) else self._answer(r) for r in results]


Clsloc.add_asgi_middleware(ApiGuard, protected=("/predict", "/predict_batch", "/model", "/samples/"))

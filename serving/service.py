"""The BentoML service: it only wires the engine, the HTTP guard and the web page.

Routes: POST /predict, POST /predict_batch (adaptive batching), GET /model,
GET / (web page), GET /docs (Swagger UI of /docs.json), and BentoML's own
/livez, /readyz, /metrics.
Settings come from the environment (clsloc.serving.settings). The model is
CLSLOC_MODEL (a directory or a pinned NAME:VERSION, never an implicit latest),
else the model a built Bento packs (clsloc.serving.store.choose).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import anyio
import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import Field

from clsloc.images import ImageError
from clsloc.serving import store
from clsloc.serving.batcher import MicroBatcher
from clsloc.serving.engine import Engine, EngineError, default_batch_size
from clsloc.serving.http import ApiGuard, counters, image_error_item, image_error_response
from clsloc.serving.openapi import ImageFailure, PredictResult
from clsloc.serving.settings import Settings
from clsloc.serving.webapp import LeanRoutes, web_app

# The engine logs which onnxruntime providers are really in use (CPU fallback is silent otherwise).
logging.getLogger("clsloc").setLevel(logging.INFO)
log = logging.getLogger("clsloc.service")

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
    # glibc gives each thread that allocates its own malloc arena (up to 8 per core), and memory freed in
    # one arena is not reused by the others: decoding threads and onnxruntime's would each hold a
    # high-water mark (benchmarks/memory.py). BentoML starts every worker with these variables, whatever
    # starts the server (`clsloc serve`, `bentoml serve`, the container); a value set outside wins.
    envs=[{"name": "MALLOC_ARENA_MAX", "value": "2", "stage": "runtime"}],
)
@bentoml.asgi_app(web_app, path="/")
class Clsloc:
    if MODEL_TAG:
        stored_model = store.declared_model(MODEL_TAG)

    @bentoml.on_deployment
    def check_model() -> None:
        """Once, in the serving process before any worker starts and before the port opens.

        A model that cannot be served stops `bentoml serve` here, non-zero, with
        the reason; failing in a worker instead would have BentoML restart it in a
        loop while every request hangs. Checked on CPU: the GPU stays untouched here.
        """
        try:
            model_dir, source = chosen_model(Settings.from_env())
            Engine(model_dir, threads=1, cpu_only=True)
        except (store.ModelNotFound, EngineError) as exc:
            raise BentoMLException(f"the model cannot be served: {exc}") from None
        log.info("serving model %s from %s", source, model_dir)

    def __init__(self) -> None:
        settings = Settings.from_env()
        model_dir, _ = chosen_model(settings)
        self.engine = Engine(
            model_dir, threads=settings.threads, max_bytes=settings.max_bytes, max_pixels=settings.max_pixels
        )
        # Concurrent /predict requests share onnxruntime runs; one run at a time per worker.
        max_batch = settings.max_batch or default_batch_size(self.engine.providers)
        self.batcher = MicroBatcher(self.engine, max_batch=max_batch)
        # Requests past parsing that decode and preprocess at once: enough to fill the next batch
        # while one runs, no more (extra decoders would only fight onnxruntime for the cores).
        self._pipeline = anyio.CapacityLimiter(max_batch + 1)

    def __is_ready__(self) -> bool:
        return self.engine is not None

    def _answer(self, prediction) -> dict:
        counters().predictions.labels(label=prediction.label).inc()
        return {**prediction.to_dict(), "model": self.engine.model_ref}

    # A BentoML API so that /docs.json, /schema.json and bentoml.SyncHTTPClient know it; over HTTP the lean
    # route of clsloc.serving.webapp answers it (one multipart parse, bytes in memory, no temporary file or
    # pydantic models), which keeps HTTP within a few milliseconds of calling the engine in-process.
    @bentoml.api(route="/predict")
    async def predict(self, image: Path) -> PredictResult:
        """One image (multipart field ``image``) -> label, score, and box in pixels of the image as displayed."""
        return await self.predict_image(image)

    async def predict_image(self, image: bytes | Path):
        """One image -> the answer of POST /predict as a dict, or a 4xx JSON response."""
        try:
            prediction = await anyio.to_thread.run_sync(self._predict_blocking, image, limiter=self._pipeline)
        except ImageError as exc:
            return image_error_response(exc)
        return self._answer(prediction)

    def _predict_blocking(self, image):
        # One thread hop per request: decoding and preprocessing run beside the batch in flight.
        return self.batcher.predict(self.engine.open(image, name="image"))

    @bentoml.api(route="/predict_batch", batchable=True, max_batch_size=64, max_latency_ms=2000)
    def predict_batch(
        self, images: Annotated[list[Path], Field(min_length=1, max_length=_IMPORT_SETTINGS.max_batch_images)]
    ) -> list[PredictResult | ImageFailure]:
        """Several images (multipart fields ``images``) -> one result each, in request order.

        BentoML merges concurrent requests into one call (adaptive batching);
        a bad image becomes an error item and the others are still scored.
        """
        # Runs of at most max_batch images, as /predict's: the largest run sets the worker's memory
        # (onnxruntime's arena keeps it), so neither route may make a bigger one.
        names = ["uploaded image"] * len(images)
        results = self.engine.predict_many(images, names=names, batch_size=self.batcher.max_batch)
        return [image_error_item(r) if isinstance(r, ImageError) else self._answer(r) for r in results]


# Outermost first: refusals (auth, size, overload) come before the lean routes answer.
Clsloc.add_asgi_middleware(ApiGuard, protected=("/predict", "/predict_batch", "/model", "/samples/"))
Clsloc.add_asgi_middleware(LeanRoutes)


def chosen_model(settings: Settings) -> tuple[Path, str]:
    """CLSLOC_MODEL, else the model this Bento packs (BentoML sets Clsloc.bento when it loads a Bento)."""
    return store.choose(settings.model, store.packed_tags(Clsloc.bento, Clsloc.name))

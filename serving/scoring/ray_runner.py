"""The Ray Data runner: the same scoring on a Ray cluster (or a local Ray instance).

    files (driver: clsloc.images.check_file) --read_binary_files(include_paths)-->
    actors: one Engine (one onnxruntime session) each, decode + run per batch --> rows back to the driver

* Bytes are read with their paths and decoded inside the batch function, so a
  corrupt file is an error row (``ray.data.read_images`` would fail the whole
  job on it). Files that are missing, empty, over the byte limit or
  unreadable never leave the driver: their rows are written at once.
* A callable class runs through ``map_batches(..., compute=ActorPoolStrategy(...))``
  with ``num_cpus`` per actor; onnxruntime gets that many intra-op threads
  and one inter-op thread (it ignores OMP_NUM_THREADS and would otherwise
  take every core of the node per actor). An actor decodes its batch on as
  many threads.
* The model travels with the job (its two files as constructor arguments, in
  Ray's object store): the nodes need clsloc installed, not the model.
* Rows come back unordered; they are keyed by path.

Ray is an optional dependency (``pip install 'clsloc[ray]'``), imported only here.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clsloc.images import ImageError, check_file
from clsloc.manifest import MANIFEST_FILE, MODEL_FILE
from clsloc.serving.scoring.rows import OK, Scored
from clsloc.serving.scoring.work import score_items

_BOX = ("b0", "b1", "b2", "b3")
_API = ("x", "y", "w", "h")


@dataclass
class RaySettings:
    address: str | None = None  # None: RAY_ADDRESS, else a local Ray instance
    actors: int = 0  # 0: as many as the cluster's CPUs (or GPUs with gpu) allow
    cpus_per_actor: int = 1
    gpu: bool = False
    local_cpus: int | None = None  # CPUs of a local instance started here (None: all)


class RayScorer:
    """One actor: an Engine built from the model's files, scoring Ray batches of (path, bytes)."""

    def __init__(self, model_files: dict, threads: int, require_gpu: bool | None, max_bytes, max_pixels):
        from clsloc.serving.engine import Engine

        self._dir = tempfile.TemporaryDirectory(prefix="clsloc-model-")
        for name, data in model_files.items():
            Path(self._dir.name, name).write_bytes(data)
        self.engine = Engine(
            self._dir.name, threads=threads, require_gpu=require_gpu, max_bytes=max_bytes, max_pixels=max_pixels
        )
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def __call__(self, batch: dict) -> dict:
        items = [(str(path), bytes(data)) for path, data in zip(batch["path"], batch["bytes"])]
        return to_columns(score_items(self.engine, items, self.pool))


def to_columns(results: Sequence[Scored]) -> dict:
    """Scored results -> Ray batch columns (no None: '' for text, NaN for numbers, -1 for sizes)."""
    ok = [r.status == OK for r in results]
    columns = {
        "path": np.array([r.path for r in results], dtype=object),
        "status": np.array([r.status for r in results], dtype=object),
        "detail": np.array([r.detail or "" for r in results], dtype=object),
        "label": np.array([r.label or "" for r in results], dtype=object),
        "score": np.array([r.score if good else np.nan for r, good in zip(results, ok)], dtype=np.float64),
        "width": np.array([r.width if good else -1 for r, good in zip(results, ok)], dtype=np.int64),
        "height": np.array([r.height if good else -1 for r, good in zip(results, ok)], dtype=np.int64),
    }
    boxes = np.array([r.box if good else [np.nan] * 4 for r, good in zip(results, ok)], dtype=np.float32)
    for i, name in enumerate(_BOX):
        columns[name] = boxes[:, i] if len(results) else np.zeros(0, np.float32)
    for name in _API:
        columns[name] = np.array([r.api_box[name] if good else np.nan for r, good in zip(results, ok)])
    return columns


def from_columns(batch: dict) -> list[Scored]:
    """The inverse of :func:`to_columns` (float32 boxes and float64 numbers come back bit for bit)."""
    results = []
    for i, status in enumerate(batch["status"]):
        path = str(batch["path"][i])
        if status != OK:
            results.append(Scored(path, status=str(status), detail=str(batch["detail"][i])))
            continue
        results.append(
            Scored(
                path,
                detail=str(batch["detail"][i]) or None,  # what was odd about an image scored anyway
                label=str(batch["label"][i]),
                score=float(batch["score"][i]),
                api_box={name: float(batch[name][i]) for name in _API},
                box=np.array([batch[name][i] for name in _BOX], dtype=np.float32),
                width=int(batch["width"][i]),
                height=int(batch["height"][i]),
            )
        )
    return results


def precheck(paths: Sequence[str], max_bytes: int | None) -> tuple[list[str], list[Scored]]:
    """Split paths into files worth shipping to the actors and rows for those that cannot be read."""
    readable, failed = [], []
    for path in paths:
        try:
            check_file(path, max_bytes=max_bytes)
            path.encode("utf-8")
            readable.append(path)
        except ImageError as exc:
            failed.append(Scored(path, status=exc.kind, detail=exc.detail))
        except UnicodeEncodeError:  # Arrow's file systems take UTF-8 paths only
            detail = "the file name is not valid UTF-8, which Ray Data cannot read: rename it, or use --engine local"
            failed.append(Scored(path, status="missing", detail=detail))
    return readable, failed


def _connect(settings: RaySettings) -> bool:
    """ray.init unless already connected; -> whether this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
    if settings.address:
        ray.init(address=settings.address, **kwargs)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)  # ray.init connects to RAY_ADDRESS itself
    else:
        # A local instance, for this job only. Ray starts its workers at niceness 15 to keep its own
        # daemons responsive on a shared node; here the workers are the job itself, so they run at the
        # priority of the command that started them (on a busy machine niced workers starve).
        ray.init(num_cpus=settings.local_cpus, _system_config={"worker_niceness": 0}, **kwargs)
    return True


def _actors(settings: RaySettings) -> int:
    import ray

    if settings.actors:
        return settings.actors
    resources = ray.cluster_resources()
    if settings.gpu:
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1)) // settings.cpus_per_actor)


def run_ray(
    model_dir: str | Path,
    paths: Sequence[str],
    settings: RaySettings,
    *,
    batch_size: int,
    max_bytes: int | None,
    max_pixels: int | None,
) -> Iterator[list[Scored]]:
    """Score ``paths`` on Ray Data; yields batches of results as they arrive (in no particular order)."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    readable, failed = precheck(paths, max_bytes)
    if failed:
        yield failed
    if not readable:
        return
    started = _connect(settings)
    try:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        DataContext.get_current().enable_progress_bars = False  # clsloc shows its own
        model_dir = Path(model_dir)
        model_files = {name: (model_dir / name).read_bytes() for name in (MODEL_FILE, MANIFEST_FILE)}
        actors = _actors(settings)
        # Reading files is I/O, not compute: the read tasks reserve no CPU (the actors hold them all; a
        # reserved share would leave the reads unscheduled), so their number is capped instead, else Ray
        # starts a process for every one of them at once.
        dataset = ray.data.read_binary_files(list(readable), include_paths=True, num_cpus=0, concurrency=actors)
        scored = dataset.map_batches(
            RayScorer,
            fn_constructor_kwargs=dict(
                model_files=model_files,
                threads=settings.cpus_per_actor,
                require_gpu=True if settings.gpu else None,
                max_bytes=max_bytes,
                max_pixels=max_pixels,
            ),
            compute=ActorPoolStrategy(size=actors),
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=settings.cpus_per_actor,
            num_gpus=1 if settings.gpu else 0,
        )
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            yield from_columns(batch)
    finally:
        if started:
            ray.shutdown()

"""A scoring job: inputs -> engine (local or Ray) -> rows appended to the output -> a tally.

Used by ``clsloc score`` and ``clsloc evaluate``. The output's sidecar
``PATH.job.json`` names the model that wrote it, so ``--resume`` with another
model is refused instead of mixing two models' predictions in one file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clsloc.images import DEFAULT_MAX_PIXELS
from clsloc.manifest import Manifest, ManifestError
from clsloc.serving.engine import (
    CPU_BATCH,
    DEFAULT_MAX_BYTES,
    GPU_BATCH,
    Engine,
    EngineError,
    default_batch_size,
    default_threads,
)
from clsloc.serving.scoring.inputs import Inputs
from clsloc.serving.scoring.progress import Progress
from clsloc.serving.scoring.ray_runner import RaySettings
from clsloc.serving.scoring.rows import OK, Scored, columns, make_row, row_key
from clsloc.serving.scoring.sinks import OutputError, open_sink, sidecar
from clsloc.serving.scoring.summary import Tally, tally

JOB_SUFFIX = ".job.json"
METRICS_SUFFIX = ".metrics.json"


@dataclass
class ScoreOptions:
    out: Path
    resume: bool = False
    engine: str = "local"  # or "ray"
    batch_size: int = 0  # 0: CPU_BATCH, or GPU_BATCH on the CUDA provider
    workers: int = 0  # local: threads each decoding and running whole batches (0: CPUs / threads)
    threads: int = 1  # local: onnxruntime intra-op threads per worker
    gpu: bool = False  # require onnxruntime's CUDA provider (CLSLOC_REQUIRE_GPU does the same)
    max_bytes: int | None = DEFAULT_MAX_BYTES
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    quiet: bool = False
    desc: str = "scoring"
    ray: RaySettings = field(default_factory=RaySettings)


@dataclass
class JobResult:
    out: Path
    model: str  # NAME:VERSION of the manifest
    total: int  # inputs
    resumed: int  # rows already in the output when the job started
    written: int  # rows this run wrote
    seconds: float
    rate: float  # images/s of this run
    first_row_seconds: float | None  # when its first rows came: the start-up (Ray's, mostly)
    tally: Tally


def resolve_model_dir(ref: str) -> tuple[Path, str]:
    """MODEL argument -> (model directory, pinned reference), exactly as ``clsloc serve`` resolves it."""
    from clsloc.serving import store
    from clsloc.serving.cli import resolve_model

    pinned = resolve_model(ref)
    return store.resolve(pinned).resolve(), pinned


def _check_job(out: Path, manifest: Manifest, resume: bool) -> None:
    path = sidecar(out, JOB_SUFFIX)
    if not (resume and path.is_file()):
        return
    try:
        before = json.loads(path.read_text())["model"]
    except (ValueError, KeyError, TypeError):
        return  # unreadable job file: the columns check still guards the output
    if (before.get("name"), before.get("version")) != (manifest.name, manifest.version):
        raise OutputError(
            f"{out} was started with model {before.get('name')}:{before.get('version')}, this job runs "
            f"{manifest.tag}: resuming would mix two models' predictions (choose another --out)"
        )


def _write_job(out: Path, manifest: Manifest, pinned: str, model_dir: Path, options: ScoreOptions) -> None:
    record = {
        "model": {"name": manifest.name, "version": manifest.version, "ref": pinned, "dir": str(model_dir)},
        "engine": options.engine,
        "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    path = sidecar(out, JOB_SUFFIX)
    tmp = sidecar(out, JOB_SUFFIX + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def make_runner(model_dir: Path, options: ScoreOptions) -> Callable[[list[str]], Iterator[list[Scored]]]:
    """-> runner(paths) yielding batches of Scored. The local engine loads here, before any output is opened."""
    if options.engine == "ray":
        from clsloc.serving.scoring.ray_runner import run_ray

        return lambda paths: run_ray(
            model_dir,
            paths,
            options.ray,
            batch_size=options.batch_size or (GPU_BATCH if options.gpu else CPU_BATCH),
            max_bytes=options.max_bytes,
            max_pixels=options.max_pixels,
        )
    from clsloc.serving.scoring.local import run_local

    engine = Engine(
        model_dir,
        threads=options.threads,
        require_gpu=True if options.gpu else None,
        max_bytes=options.max_bytes,
        max_pixels=options.max_pixels,
    )
    workers = options.workers or max(1, default_threads() // options.threads)
    batch_size = options.batch_size or default_batch_size(engine.providers)
    return lambda paths: run_local(engine, paths, workers=workers, batch_size=batch_size)


def score(model_dir: Path, pinned: str, inputs: Inputs, options: ScoreOptions) -> JobResult:
    """Score every input not yet in ``options.out``; then tally the whole output for these inputs."""
    try:
        manifest = Manifest.load(model_dir)
    except ManifestError as exc:
        raise EngineError(str(exc)) from None
    with_truth = bool(inputs.truth)
    out = Path(options.out)
    _check_job(out, manifest, options.resume)
    runner = make_runner(model_dir, options)
    sink, done = open_sink(out, columns(with_truth), resume=options.resume)
    finished = False
    try:
        _write_job(out, manifest, pinned, model_dir, options)
        remaining = [path for path in inputs.paths if row_key(path) not in done]
        progress = Progress(
            len(inputs.paths), done=len(inputs.paths) - len(remaining), desc=options.desc, quiet=options.quiet
        )
        try:
            for results in runner(remaining) if remaining else ():
                sink.write([make_row(r, inputs.truth.get(r.path), with_truth=with_truth) for r in results])
                progress.update(len(results), errors=sum(r.status != OK for r in results))
        finally:
            progress.close()
        finished = True
    finally:
        sink.close(finish=finished)
    return JobResult(
        out=out,
        model=manifest.tag,
        total=len(inputs.paths),
        resumed=len(inputs.paths) - len(remaining),
        written=len(remaining),
        seconds=progress.elapsed(),
        rate=progress.rate(),
        first_row_seconds=progress.first_seconds,
        tally=tally(out, inputs, manifest.classes),
    )


def write_metrics(out: Path, result: JobResult, inputs: Inputs) -> Path | None:
    """``PATH.metrics.json``: the metrics report with the model and datasets it is about (ground truth only)."""
    if result.tally.metrics is None:
        return None
    path = sidecar(out, METRICS_SUFFIX)
    record = {"model": result.model, "datasets": inputs.datasets, **result.tally.metrics}
    tmp = sidecar(out, METRICS_SUFFIX + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path

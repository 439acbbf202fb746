"""``clsloc serve [MODEL] [--host H] [--port P] [--workers N]``.

MODEL is an exported model directory or a BentoML store tag (default
``clsloc-default``). A bare name is pinned to its newest version once, here,
and the workers get that exact tag: a running deployment never follows
``:latest``. When the store has no ``clsloc-default`` yet, one is made on
synthetic data (``clsloc data synth`` -> ``clsloc train`` -> ``clsloc export
--bentoml``), which is the only path here that needs torch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clsloc.serving.engine import DEFAULT_MAX_BYTES

DEFAULT_MODEL = "clsloc-default"
# The default model: small, quick to make on 2 CPU cores, trained on synthetic shapes (a placeholder:
# 2 cached views, not training's 8, keep the first start quick).
DEFAULT_RECIPE = {"images": 150, "classes": 3, "epochs": 8, "cache_views": 2}
DEFAULT_DESCRIPTION = (
    "Demo model made by `clsloc serve` on first use, trained on synthetic shapes: it knows circle, square and "
    "triangle, nothing else, so a photo of anything comes back as one of those."
)
OWN_MODEL_HINT = """to serve a model of your own:
  clsloc train DATASET... --out runs/mine                       (Pascal VOC, COCO, YOLO or CSV; see clsloc data check)
  clsloc export runs/mine --out models/mine --bentoml mine
  clsloc serve mine"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        metavar="MODEL",
        help=f"model directory or BentoML store tag NAME[:VERSION] (default {DEFAULT_MODEL}, made on first use)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=3000, help="port (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime threads per worker (default: CPUs / workers)"
    )
    parser.add_argument(
        "--max-bytes", type=int, default=0, help=f"largest accepted image in bytes (default {DEFAULT_MAX_BYTES})"
    )
    parser.add_argument("--no-access-log", action="store_true", help="no log line per request (CLSLOC_ACCESS_LOG=0)")
    parser.add_argument(
        "--max-queue",
        type=int,
        default=0,
        help="most API requests one worker holds at once; past it a fast 503 with Retry-After (default 32)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=0,
        help="most images in one onnxruntime run: /predict requests merged, /predict_batch chunks (default 4 on CPU, 32 on a GPU)",
    )


def _clsloc(*args: str) -> None:
    """Run one clsloc command in a child process, its progress shown as it goes."""
    command = [sys.executable, "-m", "clsloc.cli", *args]
    print(f"$ clsloc {' '.join(args)}", flush=True)
    subprocess.run(command, check=True)


def create_default_model(name: str = DEFAULT_MODEL, recipe: dict | None = None) -> str:
    """Synthetic data -> short training -> export into the store. Returns the pinned tag."""
    recipe = {**DEFAULT_RECIPE, **(recipe or {})}
    print(f"no {name!r} model in the BentoML store yet: making one on synthetic data (a few minutes on a small CPU)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clsloc-default-") as tmp:
        synth, run, out = Path(tmp, "synth"), Path(tmp, "run"), Path(tmp, "model")
        _clsloc("data", "synth", str(synth), "--images", str(recipe["images"]), "--classes", str(recipe["classes"]))
        train = [
            "train",
            str(synth),
            "--out",
            str(run),
            "--epochs",
            str(recipe["epochs"]),
            "--finetune-epochs",
            "0",
            "--cache-views",
            str(recipe["cache_views"]),
        ]
        if recipe.get("image_size"):
            train += ["--image-size", str(recipe["image_size"])]
        _clsloc(*train)
        _clsloc("export", str(run), "--out", str(out), "--bentoml", name, "--description", DEFAULT_DESCRIPTION)
    from clsloc.serving import store

    tag = store.latest_tag(name)
    if tag is None:
        raise RuntimeError(f"export finished but {name!r} is not in the BentoML store")
    print(f"made {tag} in {time.monotonic() - started:.0f}s")
    return tag


def resolve_model(ref: str, *, create_default: bool = True) -> str:
    """MODEL argument -> an absolute model directory or a pinned NAME:VERSION tag."""
    from clsloc.serving import store

    if store.is_model_dir(ref):
        return str(Path(ref).resolve())
    if not store.looks_like_tag(ref):
        raise store.ModelNotFound(f"{ref}: not a model directory (expected model.onnx and manifest.json)")
    name, version = store.split_tag(ref)
    if version and version != "latest":
        store.store_path(ref)  # raises ModelNotFound with the store's location
        return ref
    tag = store.latest_tag(name)
    if tag is not None:
        return tag
    if create_default and name == DEFAULT_MODEL:
        return create_default_model(name)
    raise store.ModelNotFound(
        f"no model {name!r} in the BentoML store ({store.store_home()}); "
        f"export one with: clsloc export RUN_DIR --out MODEL_DIR --bentoml {name}"
    )


def describe(model: str) -> None:
    """Say what the served model knows before serving it, and how to serve another."""
    from clsloc.manifest import Manifest, ManifestError
    from clsloc.serving import store

    try:
        manifest = Manifest.load(store.resolve(model))
    except (ManifestError, store.ModelNotFound) as exc:  # the service itself reports it in full
        print(f"clsloc serve: {exc}", file=sys.stderr)
        return
    print(manifest.summary(), flush=True)
    if model.split(":")[0] == DEFAULT_MODEL or manifest.name == DEFAULT_MODEL:
        print(OWN_MODEL_HINT, flush=True)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    from clsloc.serving.store import ModelNotFound

    try:
        model = resolve_model(args.model)
    except ModelNotFound as exc:
        print(f"clsloc serve: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"clsloc serve: making the default model failed ({exc})", file=sys.stderr)
        return 1
    if args.workers < 1:
        print(f"clsloc serve: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    describe(model)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["CLSLOC_MODEL"] = model  # pinned: a directory or NAME:VERSION
    os.environ["CLSLOC_WORKERS"] = str(args.workers)
    os.environ["CLSLOC_THREADS"] = str(args.threads or max(1, cpus // args.workers))
    if args.max_bytes:
        os.environ["CLSLOC_MAX_BYTES"] = str(args.max_bytes)
    if args.no_access_log:
        os.environ["CLSLOC_ACCESS_LOG"] = "0"
    if args.max_batch:
        os.environ["CLSLOC_MAX_BATCH"] = str(args.max_batch)
    if args.max_queue:
        os.environ["CLSLOC_MAX_QUEUE"] = str(args.max_queue)
    print(
        f"serving {model} on http://{args.host}:{args.port} ({args.workers} worker(s), "
        f"{os.environ['CLSLOC_THREADS']} onnxruntime thread(s) each)",
        flush=True,
    )

    import bentoml
    from bentoml.exceptions import BentoMLException

    import clsloc

    # The folder holding the `clsloc` package: the checkout, or site-packages when installed.
    working_dir = str(Path(clsloc.__file__).resolve().parent.parent)
    try:
        bentoml.serve(
            "clsloc.serving.service:Clsloc", working_dir=working_dir, host=args.host, port=args.port, blocking=True
        )
    except BentoMLException as exc:  # the service's start-up check refused the model: nothing was served
        print(f"clsloc serve: {exc}", file=sys.stderr)
        return 2
    return 0

"""Where a serving worker's memory goes, and what onnxruntime's and glibc's options change, side by side.

    .venv/bin/python benchmarks/memory.py MODEL_DIR [--json]

Part 1, in one process per variant, the steps of a worker with their RSS:
Python with numpy and Pillow; + onnxruntime; + BentoML, Starlette and the
service's modules; + the model's session; after one image; after batches of
8; after batches of 16 (the runs the service made before they were bounded by
CLSLOC_MAX_BATCH); after every batch size 1-16 (onnxruntime plans memory per
input shape, and the service runs every size up to its bound); after
a steady load (photos decoded on 4 threads, one onnxruntime run at a time, as
a worker does). Variants: onnxruntime's CPU memory arena on or off, its memory
patterns on or off.

Part 2, the real thing: ``clsloc serve MODEL_DIR`` with each combination of
``CLSLOC_ORT_ARENA``, ``CLSLOC_ORT_MEM_PATTERN`` and ``MALLOC_ARENA_MAX`` (16 is glibc's own bound on 2
cores), the worker's RSS when ready, after /predict at concurrency 8 and after
/predict_batch of 16 photos, and the img/s of each load, so a saving is never
bought with speed unnoticed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import add_json_flag, save  # noqa: E402 - benchmarks/results.py, beside this script

# name -> onnxruntime SessionOptions attributes (part 1)
VARIANTS = {
    "arena on, memory patterns on (onnxruntime's defaults)": {"enable_cpu_mem_arena": True, "enable_mem_pattern": True},
    "arena on, patterns off (clsloc's defaults)": {"enable_cpu_mem_arena": True, "enable_mem_pattern": False},
    "arena off": {"enable_cpu_mem_arena": False},
}
# name -> environment of `clsloc serve` (part 2)
SERVED = {
    "arena on, patterns on, MALLOC_ARENA_MAX=2": {"CLSLOC_ORT_MEM_PATTERN": "1", "MALLOC_ARENA_MAX": "2"},
    "arena on, patterns off, MALLOC_ARENA_MAX=16 (glibc's own bound)": {
        "CLSLOC_ORT_ARENA": "1",
        "MALLOC_ARENA_MAX": "16",
    },
    "arena on, patterns off, MALLOC_ARENA_MAX=2 (the defaults)": {"CLSLOC_ORT_ARENA": "1", "MALLOC_ARENA_MAX": "2"},
    "arena off, MALLOC_ARENA_MAX=16": {"CLSLOC_ORT_ARENA": "0", "MALLOC_ARENA_MAX": "16"},
    "arena off, MALLOC_ARENA_MAX=2": {"CLSLOC_ORT_ARENA": "0", "MALLOC_ARENA_MAX": "2"},
}


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def probe(model_dir: str, options: dict, threads: int, seconds: float) -> dict:
    """One worker's steps in this process -> {step: RSS MB, ..., "img_per_s_batch8": ...}."""
    steps = {}
    import numpy as np
    from PIL import Image  # noqa: F401

    steps["python + numpy + Pillow"] = rss_mb()
    import onnxruntime as ort

    steps["+ onnxruntime"] = rss_mb()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    import bentoml  # noqa: F401
    import starlette.applications  # noqa: F401

    from clsloc.serving import http, webapp  # noqa: F401 - what a worker imports beside the engine
    from clsloc.serving.engine import Engine, session_options

    steps["+ BentoML, Starlette, the service's modules"] = rss_mb()
    engine = Engine(model_dir, threads=threads)
    sess_options = session_options(threads)
    for name, value in options.items():
        setattr(sess_options, name, value)
    engine.session = ort.InferenceSession(str(Path(model_dir) / "model.onnx"), sess_options, providers=engine.providers)
    steps["+ the model's session"] = rss_mb()
    from serving import load_photos  # benchmarks/serving.py: the raccoon photos, or synthetic ones

    photos = load_photos(32)
    tensors = [engine.preprocessing(engine.open(p)) for p in photos]
    engine.run(np.stack(tensors[:1]))
    steps["after one image"] = rss_mb()
    for _ in range(3):
        engine.run(np.stack(tensors[:8]))
    steps["after batches of 8"] = rss_mb()
    for _ in range(3):
        engine.run(np.stack(tensors[:16]))
    steps["after batches of 16"] = rss_mb()

    run_lock = threading.Lock()  # one onnxruntime run at a time, as in a worker (clsloc.serving.batcher)

    def work(size: int) -> int:  # decode + preprocess on this thread, then run
        batch = np.stack([engine.preprocessing(engine.open(photos[(size + i) % len(photos)])) for i in range(size)])
        with run_lock:
            engine.run(batch)
        return size

    # Every batch size from 1 to past the service's bound (CLSLOC_MAX_BATCH), as a long-running worker meets them.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(1, 17)))
    steps["after every batch size 1-16"] = rss_mb()
    done, started = 0, time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        while time.perf_counter() - started < seconds:
            done += sum(pool.map(work, [8] * 4))
    steps["after a steady load (4 decoding threads, batch 8)"] = rss_mb()
    return {"rss_mb": steps, "img_per_s_batch8": done / (time.perf_counter() - started)}


def served(model_dir: str, env: dict, threads: int, requests: int, tmp: Path) -> dict:
    """A real worker's RSS when ready, after /predict at concurrency 8, after /predict_batch; img/s of each."""
    import asyncio

    import httpx

    from serving import closed_loop, free_port, load_photos, server, worker_rss_mb

    photos = load_photos(32)
    port = free_port()
    command = [sys.executable, "-m", "clsloc.cli", "serve", model_dir, "--port", str(port), "--threads", str(threads)]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(tmp / "bentoml"), **env}
    with server([*command, "--no-access-log"], port, env, tmp / "serve.log") as (url, process):
        result = {"ready_mb": worker_rss_mb(process.pid)}
        load = asyncio.run(closed_loop(url, photos, 8, requests, 600))
        result.update(
            predict_mb=worker_rss_mb(process.pid), predict_img_per_s=load["throughput"], errors=load["errors"]
        )
        files = [("images", (f"{i}.jpg", photos[i % len(photos)])) for i in range(16)]
        started = time.perf_counter()
        with httpx.Client(base_url=url, timeout=120) as http:
            for _ in range(max(1, requests // 32)):
                result["errors"] += http.post("/predict_batch", files=files).status_code != 200
        result["batch_img_per_s"] = 16 * max(1, requests // 32) / (time.perf_counter() - started)
        result["batch_mb"] = worker_rss_mb(process.pid)
    return result


def run_variant(model_dir: str, name: str, threads: int, seconds: float) -> dict:
    command = [sys.executable, __file__, model_dir, "--probe", json.dumps(VARIANTS[name]), "--threads", str(threads)]
    command += ["--seconds", str(seconds)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    print("\n" + "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported model directory (model.onnx + manifest.json)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=20, help="steady-state run per variant (part 1)")
    parser.add_argument("--requests", type=int, default=600, help="/predict requests per served variant")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.probe is not None:
        sys.path.insert(0, str(Path(__file__).parent))
        print(json.dumps(probe(args.model, json.loads(args.probe), args.threads, args.seconds)))
        return 0

    sys.path.insert(0, str(Path(__file__).parent))
    results: dict = {"model": args.model, "threads": args.threads, "in_process": {}, "served": {}}
    for name in VARIANTS:
        print(f"in-process, {name} ...", flush=True)
        results["in_process"][name] = run_variant(args.model, name, args.threads, args.seconds)
    with tempfile.TemporaryDirectory(prefix="clsloc-memory-") as tmp:
        for name, env in SERVED.items():
            print(f"served, {name} ...", flush=True)
            results["served"][name] = served(args.model, env, args.threads, args.requests, Path(tmp))

    names = list(VARIANTS)
    steps = list(results["in_process"][names[0]]["rss_mb"])
    rows = [("in-process RSS (MB) after", *names)]
    rows += [(step, *(f"{results['in_process'][n]['rss_mb'][step]:.0f}" for n in names)) for step in steps]
    rows.append(("img/s at batch 8", *(f"{results['in_process'][n]['img_per_s_batch8']:.1f}" for n in names)))
    print_table(rows)
    rows = [("served worker", "ready MB", "/predict c=8 MB", "img/s", "/predict_batch x16 MB", "img/s", "errors")]
    for name, r in results["served"].items():
        rows.append(
            (
                name,
                f"{r['ready_mb']:.0f}",
                f"{r['predict_mb']:.0f}",
                f"{r['predict_img_per_s']:.1f}",
                f"{r['batch_mb']:.0f}",
                f"{r['batch_img_per_s']:.1f}",
                r["errors"],
            )
        )
    print_table(rows)
    if args.json:
        save("memory", results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a serving worker's memory goes, and what onnxruntime's and glibc's options change, side by side.

    .venv/bin/python benchmarks/memory.py MODEL_DIR [--json]

Each variant runs in a fresh process that does what a worker does, in
steps, and reports its RSS after each step:

1. Python with numpy and Pillow; 2. + onnxruntime; 3. + BentoML and the
service module (what every worker imports); 4. + the model's session;
5. after one image; 6. after batches of 8 (/predict's micro-batches);
7. after batches of 16 (/predict_batch's chunks); 8. after every batch
size from 1 to 16 (onnxruntime plans memory per input shape); 9. after
decoding and running photos from 4 threads for a while (the steady state).

Variants: onnxruntime's CPU memory arena and memory pattern on or off, and
glibc's malloc arenas bounded (``MALLOC_ARENA_MAX=2``). Each also reports
img/s at batch 8, so a saving is never bought with speed unnoticed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import add_json_flag, save  # noqa: E402 - benchmarks/results.py, beside this script

# name -> (onnxruntime SessionOptions attributes, extra environment)
VARIANTS = {
    "arena on, pattern on (onnxruntime's defaults)": ({"enable_cpu_mem_arena": True, "enable_mem_pattern": True}, {}),
    "arena off, pattern on": ({"enable_cpu_mem_arena": False, "enable_mem_pattern": True}, {}),
    "arena off, pattern off": ({"enable_cpu_mem_arena": False, "enable_mem_pattern": False}, {}),
    "arena on + MALLOC_ARENA_MAX=2": (
        {"enable_cpu_mem_arena": True, "enable_mem_pattern": True},
        {"MALLOC_ARENA_MAX": "2"},
    ),
    "arena off + MALLOC_ARENA_MAX=2": (
        {"enable_cpu_mem_arena": False, "enable_mem_pattern": True},
        {"MALLOC_ARENA_MAX": "2"},
    ),
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

    def work(size: int) -> int:  # decode + preprocess + run, as the service's threads do
        batch = [engine.preprocessing(engine.open(photos[(size + i) % len(photos)])) for i in range(size)]
        engine.run(np.stack(batch))
        return len(batch)

    # Every batch size the service makes: /predict's micro-batches 1-8, /predict_batch's chunks 1-16.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(1, 17)))
    steps["after every batch size 1-16 from 4 threads"] = rss_mb()
    done, started = 0, time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        while time.perf_counter() - started < seconds:
            done += sum(pool.map(work, [8] * 4))
    steps["after a steady load at batch 8"] = rss_mb()
    return {"rss_mb": steps, "img_per_s_batch8": done / (time.perf_counter() - started)}


def run_variant(model_dir: str, name: str, threads: int, seconds: float) -> dict:
    options, env = VARIANTS[name]
    command = [sys.executable, __file__, model_dir, "--probe", json.dumps(options), "--threads", str(threads)]
    command += ["--seconds", str(seconds)]
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}  # only the variants that set it
    result = subprocess.run(command, env={**base, **env}, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported model directory (model.onnx + manifest.json)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=20, help="steady-state run per variant")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.probe is not None:
        sys.path.insert(0, str(Path(__file__).parent))
        print(json.dumps(probe(args.model, json.loads(args.probe), args.threads, args.seconds)))
        return 0

    results = {}
    for name in VARIANTS:
        print(f"{name} ...", flush=True)
        results[name] = run_variant(args.model, name, args.threads, args.seconds)
    steps = list(next(iter(results.values()))["rss_mb"])
    names = list(VARIANTS)
    rows = [("RSS (MB) after", *names)]
    rows += [(step, *(f"{results[n]['rss_mb'][step]:.0f}" for n in names)) for step in steps]
    rows.append(("img/s at batch 8 (4 threads)", *(f"{results[n]['img_per_s_batch8']:.1f}" for n in names)))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    print()
    print("\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows))
    if args.json:
        save("memory", {"model": args.model, "threads": args.threads, "variants": results}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

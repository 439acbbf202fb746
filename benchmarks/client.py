"""Client SDK benchmark, one run, side by side: predict_many vs a loop of predict, and the SDK's cost over httpx.

    BENTOML_HOME=... .venv/bin/python benchmarks/client.py --model clsloc-default
    .venv/bin/python benchmarks/client.py --model path/to/exported-model --json

All rows score the same photos (file paths from ``../shared/datasets/raccoon``)
with the same ``clsloc serve`` on loopback, interleaved in rounds, so a busy
moment of the shared machine hits every row alike:

1. baseline: a loop of ``Client.predict`` (one request at a time), what one writes without predict_many;
2. ``Client.predict_many(paths, concurrency=N)`` (threads over one pool);
3. ``AsyncClient.predict_many(paths, concurrency=N)`` (asyncio);
4. a loop of raw ``httpx.Client.post`` (pooled, reading each file), against row 1: what the SDK's
   typed results, error mapping and retry wrapper cost per request.

The client runs on the same cores as the server, so its own work is in every number.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from results import add_json_flag, save

from clsloc_client import AsyncClient, Client, Prediction
from serving import PHOTOS, free_port, server, table  # benchmarks/serving.py, beside this script


def timed(run: Callable[[], int]) -> float:
    """Images per second of one pass (``run`` returns how many images it scored)."""
    started = time.perf_counter()
    scored = run()
    return scored / (time.perf_counter() - started)


def passes(url: str, paths: list[Path], concurrency: int) -> dict[str, Callable[[], int]]:
    def sdk_loop() -> int:
        with Client(url) as client:
            return sum(isinstance(client.predict(p), Prediction) for p in paths)

    def sdk_many() -> int:
        with Client(url) as client:
            return sum(isinstance(r, Prediction) for r in client.predict_many(paths, concurrency=concurrency))

    def sdk_async() -> int:
        async def main() -> int:
            async with AsyncClient(url) as client:
                results = await client.predict_many(paths, concurrency=concurrency)
            return sum(isinstance(r, Prediction) for r in results)

        return asyncio.run(main())

    def httpx_loop() -> int:
        with httpx.Client(base_url=url, timeout=60) as http:
            answers = [http.post("/predict", files={"image": (p.name, p.read_bytes())}) for p in paths]
        return sum(a.status_code == 200 and "label" in a.json() for a in answers)

    return {
        "loop of predict": sdk_loop,
        f"predict_many c={concurrency}": sdk_many,
        f"async predict_many c={concurrency}": sdk_async,
        "loop of raw httpx.post": httpx_loop,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="clsloc-default", help="model to serve (a directory or store tag)")
    parser.add_argument("--photos", type=int, default=64, help="photos per pass (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="predict_many's concurrency (default %(default)s)")
    add_json_flag(parser)
    args = parser.parse_args(argv)

    paths = sorted(PHOTOS.glob("*.jpg"))[: args.photos]
    if not paths:
        raise SystemExit(f"no photos in {PHOTOS}")
    port = free_port()
    command = [sys.executable, "-m", "clsloc.cli", "serve", args.model, "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    log = Path("/tmp") / f"clsloc-client-bench-{port}.log"
    rates: dict[str, list[float]] = {}
    with server(command, port, env, log) as (url, _process):
        runs = passes(url, paths, args.concurrency)
        runs["loop of predict"]()  # warm-up: onnxruntime's first runs and the connection
        for _ in range(args.rounds):
            for name, run in runs.items():
                rates.setdefault(name, []).append(timed(run))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    base = medians["loop of predict"]
    rows = [("client", "img/s (median)", "per round", "vs loop of predict")]
    rows += [
        (name, f"{rate:.1f}", " ".join(f"{v:.1f}" for v in rates[name]), f"{rate / base:.2f}x")
        for name, rate in medians.items()
    ]
    print(f"{len(paths)} photos from {PHOTOS}, model {args.model}, {args.rounds} rounds\n{table(rows)}")
    if args.json:
        ratios = {name: rate / base for name, rate in medians.items()}
        save(
            "client",
            {"photos": len(paths), "model": args.model, "rates": rates, "medians": medians, "ratios": ratios},
            args,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

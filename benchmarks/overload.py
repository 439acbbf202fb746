"""Overload: 4x the sustainable rate against the bounded queue, and against an unbounded one, side by side.

    .venv/bin/python benchmarks/overload.py MODEL_DIR [--factor 4] [--seconds 15] [--json]

1. The sustainable rate R: img/s of ``clsloc serve`` at concurrency 8 (closed loop).
2. Open-loop arrivals at ``factor`` x R for ``seconds`` against the default
   server (``--max-queue`` at its default): the excess gets ``503`` with
   ``Retry-After`` at once; admitted requests keep a bounded p99.
3. The same arrivals against a server whose queue never refuses
   (``--max-queue`` 1,000,000), the behaviour without admission control:
   every request is admitted and waits behind all the earlier ones.

Rows: answered / refused / failed, admitted p50 and p99, refusal p50 and p99.
The load generator shares the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import add_json_flag, save

from serving import closed_loop, free_port, load_photos, server, table

UNBOUNDED = 1_000_000


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def open_loop(url: str, photos: list[bytes], rate: float, seconds: float) -> dict:
    """Requests sent at ``rate`` per second whatever the answers (as independent users do)."""
    import httpx

    outcomes: list[tuple[str, float]] = []
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one(data: bytes) -> None:
            started = time.perf_counter()
            try:
                response = await client.post("/predict", files={"image": ("photo.jpg", data, "image/jpeg")})
                outcome = str(response.status_code)
                if response.status_code == 503:
                    assert response.headers.get("retry-after") and response.json()["error"] == "overloaded"
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            outcomes.append((outcome, time.perf_counter() - started))

        tasks, started, n = [], time.perf_counter(), 0
        while (due := started + n / rate) < started + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(photos[n % len(photos)])))
            n += 1
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    admitted = [s for o, s in outcomes if o == "200"]
    refused = [s for o, s in outcomes if o == "503"]
    return {
        "offered_per_s": rate,
        "sent": len(outcomes),
        "answered": len(admitted),
        "refused": len(refused),
        "failed": len(outcomes) - len(admitted) - len(refused),
        "answered_per_s": len(admitted) / elapsed,
        "admitted_p50_ms": percentile(admitted, 0.50),
        "admitted_p99_ms": percentile(admitted, 0.99),
        "refused_p50_ms": percentile(refused, 0.50),
        "refused_p99_ms": percentile(refused, 0.99),
        "seconds_until_all_answered": elapsed,
    }


def serve_command(model: str, port: int, threads: int, max_queue: int | None) -> list[str]:
    command = [sys.executable, "-m", "clsloc.cli", "serve", model, "--port", str(port), "--threads", str(threads)]
    command += ["--no-access-log"]
    return command + (["--max-queue", str(max_queue)] if max_queue else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported model directory")
    parser.add_argument("--factor", type=float, default=4, help="offered load / sustainable rate (default 4)")
    parser.add_argument("--seconds", type=float, default=15, help="how long arrivals go on (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    add_json_flag(parser)
    args = parser.parse_args(argv)

    photos = load_photos(64)
    results: dict = {"model": args.model, "factor": args.factor, "seconds": args.seconds}
    with tempfile.TemporaryDirectory(prefix="clsloc-overload-") as tmp:
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(Path(tmp, "bentoml"))}
        for name, max_queue in (("bounded (default --max-queue)", None), ("unbounded queue", UNBOUNDED)):
            port = free_port()
            with server(
                serve_command(args.model, port, args.threads, max_queue), port, env, Path(tmp, "serve.log")
            ) as (
                url,
                _,
            ):
                asyncio.run(closed_loop(url, photos, 8, 32, 60))  # warm up
                if "sustainable" not in results:
                    print("sustainable rate: concurrency 8, closed loop ...", flush=True)
                    results["sustainable"] = asyncio.run(closed_loop(url, photos, 8, 10**9, args.seconds))
                rate = args.factor * results["sustainable"]["throughput"]
                print(f"{name}: {rate:.0f} requests/s for {args.seconds:.0f} s ...", flush=True)
                results[name] = asyncio.run(open_loop(url, photos, rate, args.seconds))

    rows = [
        ("server", "sent", "200", "503", "failed", "200/s", "admitted p50/p99 ms", "503 p50/p99 ms", "drained in s")
    ]
    for name in ("bounded (default --max-queue)", "unbounded queue"):
        r = results[name]
        rows.append(
            (
                name,
                r["sent"],
                r["answered"],
                r["refused"],
                r["failed"],
                f"{r['answered_per_s']:.1f}",
                f"{r['admitted_p50_ms']:.0f} / {r['admitted_p99_ms']:.0f}",
                f"{r['refused_p50_ms']:.1f} / {r['refused_p99_ms']:.1f}",
                f"{r['seconds_until_all_answered']:.1f}",
            )
        )
    print(
        f"\nsustainable: {results['sustainable']['throughput']:.1f} img/s at concurrency 8; offered {args.factor}x that"
    )
    print(table(rows))
    bounded, unbounded = results["bounded (default --max-queue)"], results["unbounded queue"]
    print(f"admitted p99, unbounded / bounded: {unbounded['admitted_p99_ms'] / bounded['admitted_p99_ms']:.1f}x")
    if args.json:
        save("overload", results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bounded soak: many requests at a steady concurrency on loopback; errors, latency, the worker's RSS.

    .venv/bin/python benchmarks/soak.py MODEL_DIR [--requests 20000] [--concurrency 16] [--json]

One ``clsloc serve MODEL_DIR`` (defaults), POST /predict of the photos in
rounds of ``--every`` requests at ``--concurrency``; the worker's RSS is
read after a warm-up and after each round, so growth shows as it happens.
Goals (issue 16): 0 errors, worker RSS <= 600 MB, growth <= 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import add_json_flag, save

from serving import closed_loop, free_port, load_photos, server, worker_rss_mb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an exported model directory")
    parser.add_argument("--requests", type=int, default=20_000, help="requests in all (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default %(default)s)")
    parser.add_argument("--every", type=int, default=2000, help="requests per round between RSS readings")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default %(default)s)")
    add_json_flag(parser)
    args = parser.parse_args(argv)

    photos = load_photos(64)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="clsloc-soak-") as tmp:
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(Path(tmp, "bentoml"))}
        port = free_port()
        command = [sys.executable, "-m", "clsloc.cli", "serve", args.model, "--port", str(port)]
        command += ["--threads", str(args.threads), "--no-access-log"]
        with server(command, port, env, Path(tmp, "serve.log")) as (url, process):
            asyncio.run(closed_loop(url, photos, args.concurrency, 200, 120))  # warm up
            rss_start = worker_rss_mb(process.pid)
            print(f"worker RSS after warm-up: {rss_start:.0f} MB", flush=True)
            started, sent = time.perf_counter(), 0
            while sent < args.requests:
                n = min(args.every, args.requests - sent)
                result = asyncio.run(closed_loop(url, photos, args.concurrency, n, 3600))
                sent += result["requests"]
                rounds.append({**result, "rss_mb": worker_rss_mb(process.pid), "done": sent})
                print(
                    f"{sent:>6} requests  errors {sum(r['errors'] for r in rounds)}  "
                    f"p50 {result['p50_ms']:.0f} ms  p99 {result['p99_ms']:.0f} ms  RSS {rounds[-1]['rss_mb']:.0f} MB",
                    flush=True,
                )
            elapsed = time.perf_counter() - started
    rss_end = rounds[-1]["rss_mb"]
    summary = {
        "requests": sent,
        "concurrency": args.concurrency,
        "errors": sum(r["errors"] for r in rounds),
        "seconds": elapsed,
        "throughput": sent / elapsed,
        # medians of the rounds' percentiles: each round is `every` requests
        "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
        "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
        "worst_round_p99_ms": max(r["p99_ms"] for r in rounds),
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "rss_max_mb": max(r["rss_mb"] for r in rounds),
        "growth": (rss_end - rss_start) / rss_start,
    }
    print(
        f"\n{sent} requests at concurrency {args.concurrency} in {elapsed:.0f} s ({summary['throughput']:.1f}/s): "
        f"{summary['errors']} errors, p50 {summary['p50_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms "
        f"(worst round {summary['worst_round_p99_ms']:.0f} ms); worker RSS {rss_start:.0f} -> {rss_end:.0f} MB "
        f"({100 * summary['growth']:+.1f}%, max {summary['rss_max_mb']:.0f} MB)"
    )
    if args.json:
        save("soak", {"model": args.model, "summary": summary, "rounds": rounds}, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

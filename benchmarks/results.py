"""Measurements as data: every benchmark's ``--json`` writes one file here, with the machine it ran on.

    from results import add_json_flag, save
    add_json_flag(parser)
    ...
    if args.json:
        save("batch", {"rows": rows, "ratios": ratios}, args)

writes ``benchmarks/results/NAME-YYYYMMDD-HHMMSS-COMMIT.json``. ``docs/benchmarks.md``
holds the tables made from these files and how to reproduce each one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help=f"also write the numbers to {RESULTS.relative_to(REPO)}/NAME-DATE-COMMIT.json",
    )


def commit() -> str:
    """The checkout's commit, with ``-dirty`` when files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=8", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True)
    except OSError:
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict:
    """CPU model, cores this process may use, memory, GPU (if any), Python and key package versions."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True
        )
        gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    versions = {}
    for name in ("numpy", "onnxruntime", "torch", "bentoml", "ray"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")),
        "memory_gb": memory_gb,
        "gpus": gpus,
        "python": platform.python_version(),
        "packages": versions,
    }


def save(name: str, data: dict, args: argparse.Namespace | None = None) -> Path:
    """Write ``data`` with when, where and how it was measured; returns the file written."""
    now = dt.datetime.now(dt.UTC)
    ref = commit()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{now:%Y%m%d-%H%M%S}-{ref}.json"
    record = {
        "benchmark": name,
        "when": now.isoformat(timespec="seconds"),
        "commit": ref,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "arguments": {k: v for k, v in vars(args).items() if k != "json"} if args is not None else {},
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"results written to {path.relative_to(REPO)}", file=sys.stderr)
    return path

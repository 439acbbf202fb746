"""Batch scoring benchmark, one run, side by side: ``clsloc score`` against its ceiling, Ray against local.

    .venv/bin/python benchmarks/batch.py --model MODEL_DIR [--int8-model DIR] [--json]
    .venv/bin/python benchmarks/batch.py                  # makes a quick model first (same network, 1 epoch)

Inputs: the shared labelled photos (``../shared/datasets/{raccoon,kangaroo}``,
real sizes, read in place) behind N symbolic links in a temporary folder, so
2,000 or 10,000 inputs are distinct paths without copying a photo. Without
the shared photos, synthetic JPEGs of the same sizes are written there.

1. Ceiling, measured in the same run just before and just after the local
   job (the machine is shared: the two bracket it): one thread's decode +
   preprocess time per photo (``Engine.open`` + the manifest's preprocessing)
   and one thread's onnxruntime time per image in batches of the job's size;
   ceiling = cores / (decode + model): every core busy with useful work and
   nothing else. Goal: local ``clsloc score`` >= 0.9x of it. Also reported:
   the job's CPU time per image against the ceiling's (pipeline overhead
   alone, whatever else runs on the machine) and the load average.
2. Peak RSS of ``clsloc score`` (its own VmHWM) on ``--rss`` 1,000 and 10,000
   images. Goal: <= 1.2x.
3. ``--engine ray`` on this machine (a local Ray instance started by the job)
   against local on the same inputs. Goal: >= 0.7x. Ray's start-up (ray.init,
   actors, the model shipped to them) is measured on a 16-image job and
   reported beside the steady-state rate.
4. With ``--int8-model`` (an int8 export), 1 and 3 again for it.
5. With ``--gpu`` (onnxruntime's CUDA provider required): the GPU's
   network-only images/s replaces the CPU model time in the ceiling, decoding
   stays on the CPU (``benchmarks/gpu_batch_check.sh``).

Every job runs as its own ``clsloc score`` process, as a user runs it.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results import add_json_flag, save  # noqa: E402 - benchmarks/results.py, beside this script

SHARED = REPO.parent / "shared" / "datasets"
DATASETS = [SHARED / "raccoon", SHARED / "kangaroo"]

# Runs `clsloc ARGS...` and prints its own peak RSS: VmHWM is this program's high-water mark since exec
# (getrusage's maxrss would carry over the parent it was forked from).
MEASURED = """
import re, sys
from clsloc.cli import main
code = main(sys.argv[1:])
print("VmHWM", re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
sys.exit(code)
"""


# -- inputs -------------------------------------------------------------------------------------------


def photo_files(work: Path) -> tuple[list[Path], str]:
    """The shared photos, or synthetic JPEGs of the same sizes when they are not here."""
    from clsloc.serving.scoring.inputs import walk_images

    found = [Path(p) for d in DATASETS if d.is_dir() for p in walk_images(d)]
    if found:
        return found, f"{len(found)} shared photos ({', '.join(d.name for d in DATASETS)})"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = work / "synthetic"
    folder.mkdir()
    sizes = [(500, 375), (640, 480), (450, 600), (1024, 768)]
    for i in range(200):
        w, h = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}.jpg", quality=90)
    return sorted(folder.glob("*.jpg")), "200 synthetic JPEGs (the shared photos are not here)"


def linked_inputs(photos: list[Path], n: int, work: Path) -> Path:
    """A list file of ``n`` distinct paths: symbolic links cycling through ``photos``."""
    folder = work / f"links-{n}"
    folder.mkdir()
    links = []
    for i in range(n):
        source = photos[i % len(photos)]
        link = folder / f"{i:06d}{source.suffix.lower()}"
        link.symlink_to(source)
        links.append(str(link))
    listed = work / f"inputs-{n}.txt"
    listed.write_text("\n".join(links) + "\n")
    return listed


# -- measurements -----------------------------------------------------------------------------------


def _per_image(engine, runner, photos: list[Path], batch_size: int, runs: int) -> dict:
    """One thread: decode + preprocess ``photos``, then ``runs`` model runs of a batch; seconds per image."""
    import numpy as np

    start, cpu = time.perf_counter(), time.thread_time()
    tensors = [engine.preprocessing(engine.open(path)) for path in photos]
    decode, decode_cpu = (time.perf_counter() - start) / len(photos), (time.thread_time() - cpu) / len(photos)
    batch = np.stack([tensors[i % len(tensors)] for i in range(batch_size)])
    runner.run(batch)
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.thread_time()
        runner.run(batch)
        walls.append((time.perf_counter() - start) / batch_size)
        cpus.append((time.thread_time() - cpu) / batch_size)
    return {
        "decode": decode,
        "decode_cpu": decode_cpu,
        "model": statistics.median(walls),
        "model_cpu": statistics.median(cpus),
    }


def ceiling(model: Path, photos: list[Path], batch_size: int, cores: int, gpu: bool) -> dict:
    """The per-image times, measured on one thread alone and on every core at once (the job's situation).

    Ceiling = cores / (decode + model) per image, from the all-cores times: each core doing only useful
    work, under whatever else shares the machine (memory bandwidth, other processes) at that moment.
    On a GPU: the slower of decoding on every core and the GPU's network-only rate.
    """
    from concurrent.futures import ThreadPoolExecutor

    from clsloc.serving.engine import Engine

    engine = Engine(model, threads=1)
    runner = Engine(model, require_gpu=True) if gpu else engine
    runs = max(6, 48 // batch_size)
    _per_image(engine, runner, photos[:50], batch_size, 2)  # warm the page cache, Pillow and onnxruntime
    alone = _per_image(engine, runner, photos[:200], batch_size, runs)
    with ThreadPoolExecutor(cores) as pool:
        shares = [photos[i:200:cores] for i in range(cores)]
        together = list(pool.map(lambda part: _per_image(engine, runner, part, batch_size, runs), shares))
    every = {key: statistics.mean(t[key] for t in together) for key in alone}
    if gpu:
        rate = min(cores / every["decode"], 1 / alone["model"])
    else:
        rate = cores / (every["decode"] + every["model"])
    return {
        "alone_ms": {key: 1000 * value for key, value in alone.items()},
        "all_cores_ms": {key: 1000 * value for key, value in every.items()},
        "cpu_ms_per_image": 1000 * (alone["decode_cpu"] + alone["model_cpu"]),
        "model_batch": batch_size,
        "cores": cores,
        "ceiling_img_s": rate,
        "ceiling_alone_img_s": cores / (alone["decode"] + alone["model"]),
        "gpu_network_img_s": 1 / alone["model"] if gpu else None,
        "load_average": os.getloadavg()[0],
    }


def score_job(model: Path, listed: Path, out_dir: Path, name: str, *flags: str) -> dict:
    """One ``clsloc score`` process: its own images/s line, the wall time, and its peak RSS."""
    out = out_dir / f"{name}.jsonl"
    command = [sys.executable, "-c", MEASURED, "score", str(model), str(listed), "--out", str(out), "--quiet", *flags]
    load_before = os.getloadavg()[0]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: clsloc score failed ({done.returncode}):\n{done.stderr[-3000:]}")
    scored = re.search(
        r"this run scored (\d+) image\(s\) in ([\d.]+) s \(([\d.]+) img/s, the first after ([\d.]+) s", done.stdout
    )
    images, seconds, rate, first = (float(v) for v in scored.groups())
    rss = int(re.search(r"VmHWM (\d+)", done.stdout).group(1)) / 1024
    errors = int(re.search(r"(\d+) could not be scored", done.stdout).group(1))
    out.unlink()
    return {
        "images": int(images),
        "errors": errors,
        "job_seconds": seconds,
        "img_s": rate,
        "first_row_seconds": first,  # start-up: model load, Ray and its actors
        "steady_img_s": images / max(seconds - first, 1e-9),
        "wall_seconds": wall,
        "cpu_seconds": cpu,  # the whole process: start-up and model load included
        "peak_rss_mb": rss,
        "load_average": [load_before, os.getloadavg()[0]],  # other work on the machine while it ran
    }


def ensure_model(args, work: Path) -> tuple[Path, str]:
    if args.model:
        return Path(args.model), f"given: {args.model}"
    run, model = work / "run", work / "model"
    clsloc = [sys.executable, "-m", "clsloc.cli"]
    datasets = [str(d) for d in DATASETS if d.is_dir()]
    if not datasets:
        subprocess.run([*clsloc, "data", "synth", str(work / "synth"), "--images", "60"], check=True)
        datasets = [str(work / "synth")]
    quick = ["--epochs", "1", "--finetune-epochs", "0", "--cache-views", "1", "--quiet"]
    subprocess.run([*clsloc, "train", *datasets, "--out", str(run), *quick], check=True)
    subprocess.run([*clsloc, "export", str(run), "--out", str(model)], check=True)
    return model, "made here: the default network and input size, trained 1 epoch (speed as the default model's)"


# -- the run -----------------------------------------------------------------------------------------


def _print_ceiling(c: dict) -> None:
    every, alone = c["all_cores_ms"], c["alone_ms"]
    print(
        f"ceiling: per image decode + preprocess {every['decode']:.1f} ms, model {every['model']:.1f} ms "
        f"(batch {c['model_batch']}) with all {c['cores']} cores busy -> {c['ceiling_img_s']:.1f} img/s; "
        f"one core alone {alone['decode']:.1f} + {alone['model']:.1f} ms (load average {c['load_average']:.1f})",
        flush=True,
    )


def _median_run(runs: list[dict]) -> dict:
    """The run with the median images/s (of an odd count; the slower middle one of an even count)."""
    return sorted(runs, key=lambda run: run["img_s"])[(len(runs) - 1) // 2]


def bench_model(label: str, model: Path, photos, inputs: dict[int, Path], work: Path, args, cores: int) -> dict:
    """Ceilings bracketing rounds of local and Ray jobs, run in turn (the machine is shared), and 1 worker."""
    from clsloc.serving.engine import CPU_BATCH, GPU_BATCH

    batch = args.batch_size or (GPU_BATCH if args.gpu else CPU_BATCH)
    flags = ["--batch-size", str(batch), *(["--gpu"] if args.gpu else [])]
    listed = inputs[args.images]
    print(f"\n== {label} model: {model}", flush=True)
    result: dict = {"model": str(model), "batch_size": batch, "ceiling": [], "local_runs": [], "ray_runs": []}
    for _ in range(args.rounds):
        result["ceiling"].append(ceiling(model, photos, batch, cores, args.gpu))
        _print_ceiling(result["ceiling"][-1])
        result["local_runs"].append(score_job(model, listed, work, "local", *flags))
        print(f"local  {args.images} images: {result['local_runs'][-1]['img_s']:.1f} img/s", flush=True)
        if not args.no_ray:
            result["ray_runs"].append(score_job(model, listed, work, "ray", *flags, "--engine", "ray"))
            run = result["ray_runs"][-1]
            print(
                f"ray    {args.images} images: {run['img_s']:.1f} img/s ({run['steady_img_s']:.1f} after its "
                f"{run['first_row_seconds']:.1f} s start-up)",
                flush=True,
            )
    result["ceiling"].append(ceiling(model, photos, batch, cores, args.gpu))
    _print_ceiling(result["ceiling"][-1])
    rate = statistics.mean(c["ceiling_img_s"] for c in result["ceiling"])
    alone = statistics.mean(c["ceiling_alone_img_s"] for c in result["ceiling"])
    cpu_per_image = statistics.mean(c["cpu_ms_per_image"] for c in result["ceiling"])
    result["local"] = local = _median_run(result["local_runs"])
    ratios = {
        "local_vs_ceiling": local["img_s"] / rate,
        "local_vs_ceiling_alone": local["img_s"] / alone,
        # CPU the job spent per image (start-up included) against the ceiling's: the pipeline's own overhead
        "cpu_efficiency": cpu_per_image / (1000 * local["cpu_seconds"] / local["images"]),
    }
    if result["ray_runs"]:
        result["ray"] = on_ray = _median_run(result["ray_runs"])
        ratios["ray_vs_local"] = on_ray["img_s"] / local["img_s"]
        ratios["ray_steady_vs_local"] = on_ray["steady_img_s"] / local["steady_img_s"]
    if not args.gpu:
        one = ["--workers", "1", "--threads", str(cores)]
        result["local_one_worker"] = score_job(model, listed, work, "one", *flags, *one)
        ratios["one_worker_vs_local"] = result["local_one_worker"]["img_s"] / local["img_s"]
        print(f"local, 1 worker x {cores} threads: {result['local_one_worker']['img_s']:.1f} img/s", flush=True)
    result.update(ceiling_img_s=rate, ceiling_alone_img_s=alone, ratios=ratios)
    return result


def bench_rss(model: Path, inputs: dict[int, Path], work: Path, args) -> dict:
    small, large = args.rss
    flags = ["--batch-size", str(args.batch_size)] if args.batch_size else []
    runs = {n: score_job(model, inputs[n], work, f"rss{n}", *flags) for n in (small, large)}
    for n, run in runs.items():
        print(f"peak RSS, {n} images: {run['peak_rss_mb']:.0f} MB ({run['img_s']:.1f} img/s)", flush=True)
    return {
        "runs": {str(n): run for n, run in runs.items()},
        "ratio": runs[large]["peak_rss_mb"] / runs[small]["peak_rss_mb"],
    }


def _model_rows(label: str, r: dict, args) -> list[str]:
    local, ratios = r["local"], r["ratios"]
    cores = r["ceiling"][0]["cores"]
    load = statistics.mean(c["load_average"] for c in r["ceiling"])
    rows = [
        f"| {label} | ceiling, all {cores} cores busy (one core alone x {cores}), batch {r['batch_size']} "
        f"| {r['ceiling_img_s']:.1f} ({r['ceiling_alone_img_s']:.1f}) | | |",
        f"| {label} | local `clsloc score`, {args.images} photos, median of {len(r['local_runs'])} "
        f"(load average {load:.1f}) | {local['img_s']:.1f} | {ratios['local_vs_ceiling']:.2f}x "
        f"({ratios['local_vs_ceiling_alone']:.2f}x); CPU per image {ratios['cpu_efficiency']:.2f}x | >= 0.9x |",
    ]
    if "ray" in r:
        ray = r["ray"]
        rows.append(
            f"| {label} | `--engine ray`, whole job / after its {ray['first_row_seconds']:.0f} s start-up "
            f"| {ray['img_s']:.1f} / {ray['steady_img_s']:.1f} | {ratios['ray_vs_local']:.2f}x / "
            f"{ratios['ray_steady_vs_local']:.2f}x local | >= 0.7x |"
        )
    if "local_one_worker" in r:
        rows.append(
            f"| {label} | local, 1 worker on all cores (instead of a worker per core) "
            f"| {r['local_one_worker']['img_s']:.1f} | {ratios['one_worker_vs_local']:.2f}x local | |"
        )
    return rows


def table(results: dict, args) -> str:
    rows = ["| model | what | images/s | vs | goal |", "|---|---|---|---|---|"]
    for label in ("fp32", "int8"):
        r = results.get(label)
        if r is not None and "unavailable" in r:
            rows.append(f"| {label} | not available | - | {r['unavailable']} | |")
        elif r is not None:
            rows += _model_rows(label, r, args)
    if "rss" in results:
        runs = results["rss"]["runs"]
        small, large = (runs[str(n)] for n in args.rss)
        rows.append(
            f"| fp32 | peak RSS {args.rss[0]} / {args.rss[1]} images | {small['peak_rss_mb']:.0f} / "
            f"{large['peak_rss_mb']:.0f} MB | {results['rss']['ratio']:.2f}x | <= 1.2x |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="exported model directory (default: make a quick one with the default network)")
    parser.add_argument("--int8-model", help="an int8 export of the same run, measured the same way")
    parser.add_argument("--images", type=int, default=2000, help="inputs of the throughput runs (default 2000)")
    parser.add_argument("--rss", type=int, nargs=2, default=[1000, 10000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--batch-size", type=int, default=0, help="default: clsloc score's own (CPU or GPU)")
    parser.add_argument("--rounds", type=int, default=2, help="local and Ray jobs run in turn, this many times each")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray runs")
    parser.add_argument("--no-rss", action="store_true", help="leave out the peak RSS runs")
    parser.add_argument("--gpu", action="store_true", help="require onnxruntime's CUDA provider (GPU variant)")
    add_json_flag(parser)
    args = parser.parse_args()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

    from clsloc.serving.engine import default_threads

    cores = default_threads()
    with tempfile.TemporaryDirectory(prefix="clsloc-batch-bench-") as tmp:
        work = Path(tmp)
        model, model_note = ensure_model(args, work)
        photos, photos_note = photo_files(work)
        print(f"model: {model_note}\nphotos: {photos_note}, {cores} cores", flush=True)
        counts = {args.images} | (set() if args.no_rss else set(args.rss))
        inputs = {n: linked_inputs(photos, n, work) for n in sorted(counts)}
        results: dict = {"model_note": model_note, "photos": photos_note, "cores": cores}
        results["fp32"] = bench_model("fp32", model, photos, inputs, work, args, cores)
        if args.int8_model:
            results["int8"] = bench_model("int8", Path(args.int8_model), photos, inputs, work, args, cores)
        else:
            results["int8"] = {"unavailable": "no --int8-model given (clsloc export --int8 must accept the run first)"}
        if not args.no_rss and not args.gpu:
            results["rss"] = bench_rss(model, inputs, work, args)
    print("\n" + table(results, args))
    if args.json:
        save("batch", results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

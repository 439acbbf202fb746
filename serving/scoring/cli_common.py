"""Options and printing shared by ``clsloc score`` and ``clsloc evaluate``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from clsloc.datasets import POLICIES
from clsloc.images import DEFAULT_MAX_PIXELS
from clsloc.serving.engine import DEFAULT_MAX_BYTES
from clsloc.serving.scoring.inputs import Inputs
from clsloc.serving.scoring.job import JobResult, ScoreOptions
from clsloc.serving.scoring.ray_runner import RaySettings

MODEL_HELP = "exported model directory or BentoML store tag NAME[:VERSION] (resolved and pinned as clsloc serve does)"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine, limits, resume and progress options."""
    parser.add_argument("--resume", action="store_true", help="continue an existing output: score only what it lacks")
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="where to run (default local)")
    parser.add_argument(
        "--batch-size", type=_positive, default=0, help="images per onnxruntime run (default: 4 on CPU, 32 on a GPU)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="local: threads decoding and running batches (default: CPUs / --threads)"
    )
    parser.add_argument(
        "--threads", type=_positive, default=1, help="local: onnxruntime threads per worker (default 1)"
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="require onnxruntime's CUDA provider (as CLSLOC_REQUIRE_GPU=1); error if none",
    )
    parser.add_argument(
        "--max-bytes", type=_positive, default=None, help=f"largest image file in bytes (default {DEFAULT_MAX_BYTES})"
    )
    parser.add_argument(
        "--max-pixels", type=_positive, default=None, help=f"most pixels per image (default {DEFAULT_MAX_PIXELS})"
    )
    parser.add_argument(
        "--policy",
        choices=[p for p in POLICIES if p != "skip"],
        default="largest",
        help="target object of a multi-object image in a labelled dataset (default: the largest box)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    ray = parser.add_argument_group("Ray (--engine ray)")
    ray.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray instance)")
    ray.add_argument(
        "--ray-actors", type=int, default=0, help="scoring actors (default: cluster CPUs / cpus per actor)"
    )
    ray.add_argument("--ray-cpus-per-actor", type=_positive, default=1, help="CPUs (onnxruntime threads) per actor")


def job_options(args: argparse.Namespace, out: Path, *, desc: str) -> ScoreOptions:
    options = ScoreOptions(
        out=out,
        resume=args.resume,
        engine=args.engine,
        batch_size=args.batch_size,
        workers=args.workers,
        threads=args.threads,
        gpu=args.gpu,
        quiet=args.quiet,
        desc=desc,
        ray=RaySettings(
            address=args.ray_address, actors=args.ray_actors, cpus_per_actor=args.ray_cpus_per_actor, gpu=args.gpu
        ),
    )
    if args.max_bytes:
        options.max_bytes = args.max_bytes
    if args.max_pixels:
        options.max_pixels = args.max_pixels
    return options


def run_reporting_errors(command: str, body: Callable[[], int], *, rows: Path | None) -> int:
    """``body()``, with the errors that end a job as one line on stderr and the exit status docs/scoring.md lists.

    2: nothing to do as asked (inputs, output, model not found, training run); 1: the model cannot run;
    130: interrupted (``rows``, when the user named an output, keeps what was written).
    """
    from clsloc.runs import RunError
    from clsloc.serving.engine import EngineError
    from clsloc.serving.scoring.inputs import InputError
    from clsloc.serving.scoring.sinks import OutputError
    from clsloc.serving.store import ModelNotFound

    try:
        return body()
    except (InputError, OutputError, ModelNotFound, RunError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"{command}: making the default model failed ({exc})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = f"; the rows written are in {rows}: add --resume to continue" if rows else ""
        print(f"{command}: interrupted{kept}", file=sys.stderr)
        return 130


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def print_inputs_warnings(inputs: Inputs) -> None:
    """Dataset problems that cost images their ground truth or their row, and repeated paths."""
    kinds = Counter(p.kind for p in inputs.problems if p.skipped)
    if kinds:
        listed = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
        example = next(p for p in inputs.problems if p.skipped)
        warn(f"dataset problems ({listed}), e.g. {example.file}: {example.detail} (clsloc data check lists them all)")
    if inputs.duplicates:
        warn(f"{inputs.duplicates} path(s) named more than once: each is scored once")


def print_result(result: JobResult, *, file=None, name: str | None = None) -> None:
    """What the job did: rows, ok / errors by kind (the first few named), images/s; ``name`` replaces the path."""
    file = file or sys.stdout
    t = result.tally
    errors = t.error_count
    print(
        f"{name or result.out}: {t.rows} row(s) for {result.total} input(s) from {result.model}: "
        f"{t.statuses.get('ok', 0)} ok, {errors} could not be scored",
        file=file,
    )
    first = f", the first after {result.first_row_seconds:.1f} s" if result.first_row_seconds is not None else ""
    print(
        f"this run scored {result.written} image(s) in {result.seconds:.1f} s ({result.rate:.1f} img/s{first})"
        + (f"; {result.resumed} were already in the output" if result.resumed else ""),
        file=file,
    )
    if errors:
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(t.statuses.items()) if kind != "ok")
        print(f"not scored, by reason: {kinds}", file=file)
        for row in t.errors:
            print(f"  {row['path']}: {row['status']}: {row['detail']}", file=file)
        if errors > len(t.errors):
            print(f"  ... and {errors - len(t.errors)} more (the rows with status != ok)", file=file)
    if t.missing:  # only when the output was edited by hand between runs
        warn(f"{len(t.missing)} input(s) have no row in {result.out}, e.g. {t.missing[0]}: run again with --resume")
    unknown = (t.metrics or {}).get("unknown_classes")
    if unknown:
        names = ", ".join(f"{name} ({n} image(s))" for name, n in unknown.items())
        warn(f"ground-truth classes the model does not know: {names}; counted as wrong (see the per-class table)")

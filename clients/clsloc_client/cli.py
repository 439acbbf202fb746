"""``clsloc-client``: score images and folders of images with a running clsloc service."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from clsloc_client.base import DEFAULT_URL
from clsloc_client.client import Client
from clsloc_client.errors import ClsLocError, Unauthorized, Unavailable
from clsloc_client.progress import Progress
from clsloc_client.protocol import Result

# What a folder is searched for; a file named on the command line is sent whatever its name.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def main(argv: Sequence[str] | None = None) -> int:
    command_line = parser()
    args = command_line.parse_args(argv)
    if args.concurrency < 1:
        command_line.error("--concurrency must be at least 1")
    try:
        return predict_command(args)
    except KeyboardInterrupt:
        print("clsloc-client: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="clsloc-client", description="Client of a clsloc service (clsloc serve).")
    commands = root.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict",
        help="label, score and box of each image",
        description=(
            "Send each image (folders: their image files, recursively, in name order) to the service's /predict. "
            "One result per image, in input order; a failed image is one line on stderr and the others are still "
            "scored. Stops sending after a 401, or once the service cannot be reached after retries (the images "
            "left are reported as not sent). Exit status 1 if any image failed."
        ),
    )
    predict.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument(
        "--url",
        default=os.environ.get("CLSLOC_URL", DEFAULT_URL),
        help="service URL (default: $CLSLOC_URL or %(default)s)",
    )
    predict.add_argument("--api-key", default=None, help="API key (default: $CLSLOC_API_KEY)")
    predict.add_argument(
        "--json", action="store_true", help="JSON lines on stdout ({'image': PATH, ...the service's answer or error})"
    )
    predict.add_argument(
        "--out", type=Path, metavar="FILE.jsonl", help="write the JSON lines to this file instead of stdout"
    )
    predict.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: %(default)s)")
    predict.add_argument("--timeout", type=float, default=60.0, help="seconds per attempt (default: %(default)s)")
    predict.add_argument(
        "--retries", type=int, default=3, help="retries of a request that may succeed later (default: %(default)s)"
    )
    return root


def predict_command(args: argparse.Namespace) -> int:
    total = sum(1 for _ in image_paths(args.paths))  # names only, for the progress bar
    if total == 0:
        suffixes = " ".join(sorted(IMAGE_SUFFIXES))
        print(f"clsloc-client: no image files ({suffixes}) in {' '.join(args.paths)}", file=sys.stderr)
        return 1
    progress = Progress(total, stream=sys.stderr, enabled=any(os.path.isdir(p) for p in args.paths))
    out: TextIO = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115 (closed below)
    started, failed = time.monotonic(), 0
    try:
        with Client(args.url, api_key=args.api_key, timeout=args.timeout, retries=args.retries) as client:
            for path, result in score(client, image_paths(args.paths), args.concurrency):
                failed += isinstance(result, ClsLocError)
                report(path, result, progress=progress, out=out, as_json=args.json or args.out is not None)
                progress.advance(failed=isinstance(result, ClsLocError))
    finally:
        progress.close()
        if out is not sys.stdout:
            out.close()
    elapsed = time.monotonic() - started
    print(
        f"clsloc-client: {total - failed} of {total} images scored, {failed} failed, {elapsed:.1f} s", file=sys.stderr
    )
    return 1 if failed else 0


def image_paths(arguments: Iterable[str]) -> Iterator[str]:
    """The files named, and the image files under the folders named (recursively, in name order), lazily."""
    for argument in arguments:
        if not os.path.isdir(argument):
            yield argument
            continue
        for root, dirs, files in os.walk(argument):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    yield os.path.join(root, name)


def score(client: Client, paths: Iterator[str], concurrency: int) -> Iterator[tuple[str, Result]]:
    """Each path with its result, in order.

    After a refusal that every later image would get too (401, or no
    connection after retries), no new image is handed to the client: those
    already handed over finish, and the rest are reported as not sent.
    """
    taken: deque[str] = deque()  # paths handed to the client whose results have not come back yet
    stop: list[ClsLocError] = []

    def feed() -> Iterator[str]:
        while not stop:  # asked before taking the next path, so none is taken and dropped
            path = next(paths, None)
            if path is None:
                return
            taken.append(path)
            yield path

    for result in client.predict_iter(feed(), concurrency=concurrency):
        yield taken.popleft(), result
        if not stop and isinstance(result, ClsLocError) and stops_the_run(result):
            stop.append(result)
    if stop:
        skipped = ClsLocError(
            None, "not_sent", f"not sent after an earlier failure ({stop[0].error}: {stop[0].detail})"
        )
        for path in paths:
            yield path, skipped


def stops_the_run(result: ClsLocError) -> bool:
    return isinstance(result, Unauthorized) or (isinstance(result, Unavailable) and result.status is None)


def report(path: str, result: Result, *, progress: Progress, out: TextIO, as_json: bool) -> None:
    if isinstance(result, ClsLocError):
        progress.write(f"clsloc-client: {path}: {result}", sys.stderr)
    if as_json:
        record: dict[str, Any] = {"image": path, **result.to_dict()}
        progress.write(json.dumps(record), out)
    elif not isinstance(result, ClsLocError):
        box = result.box
        progress.write(
            f"{path}  {result.label}  {result.score:.3f}  box x={box.x:.0f} y={box.y:.0f} w={box.w:.0f} h={box.h:.0f}",
            out,
        )

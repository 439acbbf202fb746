"""The local runner: every core decodes and runs batches, results come back in input order.

Each of ``workers`` threads takes a whole batch: it decodes and preprocesses
the batch's images, then runs them as one onnxruntime call (``threads``
intra-op threads, one by default). Pillow's decoders, the resize and
onnxruntime all release the GIL, so while one thread runs the network
another decodes: decoding runs in parallel with batched runs and every core
stays busy with no hand-off between stages. At most ``2 x workers`` batches
are in flight (running or queued), so memory does not grow with the number of
images.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from clsloc.serving.engine import Engine
from clsloc.serving.scoring.rows import Scored
from clsloc.serving.scoring.work import score_paths


def run_local(engine: Engine, paths: Sequence[str], *, workers: int, batch_size: int) -> Iterator[list[Scored]]:
    """Score ``paths``; yields each batch's results, batches in input order."""
    if workers < 1 or batch_size < 1:
        raise ValueError(f"workers and batch_size must be at least 1, got {workers} and {batch_size}")
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="clsloc-score") as pool:
        try:
            for start in range(0, len(paths), batch_size):
                pending.append(pool.submit(score_paths, engine, paths[start : start + batch_size]))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # stopped early (Ctrl-C, an error writing): drop the queued batches, finish the running ones
            for future in pending:
                future.cancel()

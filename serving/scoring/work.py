"""Scoring a batch of images with the engine: the step both runners (local, Ray) repeat.

Serving's steps, in serving's code: ``Engine.open`` (clsloc.images: EXIF,
colour modes, limits) -> ``engine.preprocessing`` (from the manifest) -> one
``Engine.run`` for the batch -> ``Engine.prediction``. An image that cannot be
decoded becomes a :class:`Scored` error with its ``ImageError`` kind; the
others in its batch are scored all the same. An image decoded despite
something odd (``clsloc.images.ImageWarning``, e.g. a bogus EXIF
orientation) is scored, and the warning goes into its row's ``detail``
instead of scrolling past on stderr.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np

from clsloc.images import ImageError, ImageWarning
from clsloc.serving.engine import Engine
from clsloc.serving.scoring.rows import Scored

_image_warnings: dict[str, str] = {}  # file -> the last ImageWarning about it, until its row takes it
_install_lock = threading.Lock()


def collect_image_warnings() -> None:
    """Route every ImageWarning (from any thread) to its image's row; other warnings show as before.

    ``warnings.catch_warnings`` is not thread-safe, so one process-wide hook
    keyed by file name does it: decoding threads never share a file. Checked
    on every batch: something may have restored the hooks meanwhile.
    """
    with _install_lock:
        if not getattr(warnings.showwarning, "clsloc_collector", False):
            shown = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if isinstance(message, ImageWarning) and message.file:
                    _image_warnings[message.file] = message.detail
                else:
                    shown(message, category, filename, lineno, file, line)

            show.clsloc_collector = True
            warnings.showwarning = show
        if not any(f[0] == "always" and f[2] is ImageWarning for f in warnings.filters[:1]):
            warnings.filterwarnings("always", category=ImageWarning)  # one per image, not one per process


def _prepare(engine: Engine, path: str, source) -> tuple[np.ndarray, int, int] | Scored:
    """Decode + preprocess one image -> (input tensor, width, height), or its error."""
    try:
        image = engine.open(source, name=path)
        width, height = image.size
        return engine.preprocessing(image), width, height
    except ImageError as exc:
        _image_warnings.pop(path, None)
        return Scored(path, status=exc.kind, detail=exc.detail)
    except Exception as exc:  # a decoder bug on a strange file must cost that file only, never the job
        _image_warnings.pop(path, None)
        return Scored(path, status="truncated", detail=f"cannot be decoded ({type(exc).__name__}: {exc})")


def score_items(engine: Engine, items: Sequence[tuple[str, object]], pool: Executor | None = None) -> list[Scored]:
    """``(path, source)`` pairs (source: the path itself, or the file's bytes) -> one Scored each, in order.

    With ``pool`` the images decode on its threads; the batch then runs as one onnxruntime call.
    """
    collect_image_warnings()
    if pool is None:
        prepared = [_prepare(engine, path, source) for path, source in items]
    else:
        prepared = list(pool.map(lambda item: _prepare(engine, *item), items))
    good = [(i, p) for i, p in enumerate(prepared) if not isinstance(p, Scored)]
    results: list[Scored] = [p if isinstance(p, Scored) else None for p in prepared]  # type: ignore[misc]
    if good:
        probs, boxes = engine.run(np.stack([tensor for _, (tensor, _, _) in good]))
        for (i, (_, width, height)), p, box in zip(good, probs, boxes):
            prediction = engine.prediction(p, box, width, height)
            results[i] = Scored(
                items[i][0],
                detail=_image_warnings.pop(items[i][0], None),
                label=prediction.label,
                score=prediction.score,
                api_box=prediction.box,
                box=box,
                width=width,
                height=height,
            )
    return results


def score_paths(engine: Engine, paths: Sequence[str]) -> list[Scored]:
    """Image files -> Scored, decoded on the calling thread (the local runner's unit of work)."""
    return score_items(engine, [(path, path) for path in paths])

"""Micro-batching inside one worker: concurrent /predict requests share onnxruntime runs.

Each request decodes and preprocesses its image in its own thread, queues the
(3, H, W) tensor, and then takes the run lock. Whoever holds the lock runs
everything queued so far (up to ``max_batch``) as one batch and hands each
waiting request its result; a request whose result was computed meanwhile just
returns it. So:

* a lone request runs in its own thread at once: no hand-off to another
  thread and no waiting for company (concurrency 1 stays as fast as before);
* under load, the requests that arrive while a batch runs go together in the
  next one, and onnxruntime runs batches faster per image than one by one;
* only one onnxruntime run is in flight per worker: it already uses every
  core it was given, a second would only contend for them.

BentoML's own adaptive batching serves /predict_batch; /predict is a lean
route (see clsloc.serving.webapp) that needs this small in-process batcher instead.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np
from PIL import Image

from clsloc.serving.engine import Engine, Prediction


class MicroBatcher:
    def __init__(self, engine: Engine, max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[np.ndarray, tuple[int, int], Future]] = queue.SimpleQueue()
        self._run_lock = threading.Lock()
        self.batches_run = 0  # how many onnxruntime runs served the requests (the tests read it)

    def predict(self, rgb: np.ndarray | Image.Image) -> Prediction:
        """Decoded RGB image (array or Pillow image) -> its Prediction; returns once a batch holding it has run."""
        tensor = self.engine.preprocessing(rgb)  # in the caller's thread, beside the running batch
        width, height = rgb.size if isinstance(rgb, Image.Image) else (rgb.shape[1], rgb.shape[0])
        done: Future = Future()
        self._queue.put((tensor, (int(height), int(width)), done))
        while not done.done():
            with self._run_lock:
                if not done.done():
                    self._run(self._take_batch())
        return done.result()

    def _take_batch(self) -> list:
        batch = []
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self, batch: list) -> None:
        if not batch:
            return
        try:
            probs, boxes = self.engine.run(np.stack([tensor for tensor, _, _ in batch]))
            self.batches_run += 1
            for (_, (height, width), done), p, box in zip(batch, probs, boxes):
                done.set_result(self.engine.prediction(p, box, width, height))
        except BaseException as exc:
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc)

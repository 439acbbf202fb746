"""Micro-batching inside one worker: concurrent /predict requests share onnxruntime runs.

Each request decodes and preprocesses its image in its own thread, then hands
the (3, H, W) tensor to ``MicroBatcher.predict``. One runner thread takes
whatever is waiting (up to ``max_batch``) and runs it as one batch, so:

* a lone request never waits for company: the runner starts as soon as one
  tensor is queued (no added latency at concurrency 1);
* under load, the requests that arrive while a batch runs go together in the
  next one, and onnxruntime runs batch 8 about 20% faster per image than
  batch 1 on this 2-core CPU (measured in benchmarks/serving.py);
* only one onnxruntime run is in flight per worker: it already uses every
  core it was given, a second would only contend for them.

BentoML's own adaptive batching serves /predict_batch; /predict is a lean
route (see serving.webapp) that needs this small in-process batcher instead.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np

from serving.engine import Engine, Prediction


class MicroBatcher:
    def __init__(self, engine: Engine, max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[np.ndarray, tuple[int, int], Future] | None] = queue.SimpleQueue()
        self.batches_run = 0  # for tests and logs: how many onnxruntime runs served the requests
        self._runner = threading.Thread(target=self._run_forever, name="clsloc-batcher", daemon=True)
        self._runner.start()

    def predict(self, rgb: np.ndarray) -> Prediction:
        """Decoded RGB image -> its Prediction; blocks until the batch holding it has run."""
        tensor = self.engine.preprocessing(rgb)  # in the caller's thread, beside the running batch
        done: Future = Future()
        self._queue.put((tensor, (int(rgb.shape[0]), int(rgb.shape[1])), done))
        return done.result()

    def close(self) -> None:
        self._queue.put(None)
        self._runner.join(timeout=10)

    def _take_batch(self) -> list | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # close() while requests wait: serve them, then stop
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _run_forever(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                probs, boxes = self.engine.run(np.stack([tensor for tensor, _, _ in batch]))
                self.batches_run += 1
                for (_, (height, width), done), p, box in zip(batch, probs, boxes):
                    done.set_result(self.engine.prediction(p, box, width, height))
            except BaseException as exc:  # noqa: BLE001 - the waiting requests get the error, the runner lives on
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)

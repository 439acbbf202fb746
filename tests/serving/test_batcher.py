"""The in-worker micro-batcher: same answers as the engine, fewer onnxruntime runs under concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import oracle
import pytest

from clsloc.serving.batcher import MicroBatcher
from clsloc.serving.engine import Engine

CASES = [("red", (40, 30, 50, 40)), ("green", (5, 60, 100, 50)), ("blue", (100, 10, 55, 100))] * 4


@pytest.fixture(scope="module")
def engine(oracle_dir):
    return Engine(oracle_dir, threads=1)


class SpyEngine:
    """The real engine, with ``run`` replaced by ``run(batch, real_run)`` to watch or disturb batches."""

    def __init__(self, engine: Engine, run):
        self.preprocessing, self.prediction = engine.preprocessing, engine.prediction
        self._engine, self._run = engine, run

    def run(self, batch):
        return self._run(batch, self._engine.run)


def test_answers_equal_the_engine_one_by_one(engine):
    batcher = MicroBatcher(engine, max_batch=4)
    images = [engine.decode(oracle.object_image(label, box)) for label, box in CASES]
    with ThreadPoolExecutor(len(images)) as pool:
        batched = list(pool.map(batcher.predict, images))
    alone = [engine.predict_arrays([rgb])[0] for rgb in images]
    # The service hands over Pillow images (engine.open): same answers as arrays.
    opened = [batcher.predict(engine.open(oracle.object_image(label, box))) for label, box in CASES]
    assert [p.label for p in batched] == [label for label, _ in CASES]
    assert opened == alone  # one at a time both ways: the same onnxruntime call on the same numbers
    for b, a in zip(batched, alone):
        assert b.label == a.label and b.width == a.width and b.height == a.height
        assert b.score == pytest.approx(a.score, abs=1e-5)
        assert all(b.box[k] == pytest.approx(a.box[k], abs=1e-3) for k in "xywh")


def test_waiting_requests_share_runs_and_a_lone_request_runs_at_once(engine):
    gate = threading.Event()
    sizes: list[int] = []
    ran_in: list[int] = []

    def slow_first_run(batch, real_run):
        """The first run waits until every request is queued behind it."""
        sizes.append(len(batch))
        ran_in.append(threading.get_ident())
        if len(sizes) == 1:
            gate.wait(10)
        return real_run(batch)

    batcher = MicroBatcher(SpyEngine(engine, slow_first_run), max_batch=4)
    images = [engine.decode(oracle.object_image(label, box)) for label, box in CASES[:9]]
    caller = threading.get_ident()
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(batcher.predict, images[0])
        while not sizes:  # the first request ran alone: nothing else was waiting
            threading.Event().wait(0.01)
        rest = [pool.submit(batcher.predict, rgb) for rgb in images[1:]]
        while batcher._queue.qsize() < 8:
            threading.Event().wait(0.01)
        gate.set()
        results = [first.result(10)] + [f.result(10) for f in rest]
    assert sizes == [1, 4, 4]  # 8 waiting requests -> two runs of max_batch
    assert batcher.batches_run == 3
    assert [p.label for p in results] == [label for label, _ in CASES[:9]]
    # and with nobody else around, a request runs in its own thread (no hand-off)
    assert batcher.predict(images[0]).label == CASES[0][0]
    assert ran_in[-1] == caller


def test_a_failing_run_fails_its_requests_and_the_next_run_works(engine):
    calls = []

    def first_run_fails(batch, real_run):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("onnxruntime exploded")
        return real_run(batch)

    batcher = MicroBatcher(SpyEngine(engine, first_run_fails), max_batch=2)
    rgb = engine.decode(oracle.object_image("red", (10, 10, 40, 40)))
    with pytest.raises(RuntimeError, match="exploded"):
        batcher.predict(rgb)
    assert batcher.predict(rgb).label == "red"


def test_max_batch_must_be_positive(engine):
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(engine, max_batch=0)

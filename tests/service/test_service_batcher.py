"""Batcher: same-shape batching, bounded queue, cancellation, error and OOM handling (numpy only)."""

from __future__ import annotations

import threading
import time
from contextlib import closing

import numpy as np
import pytest

from pixforge.service.batcher import Batcher
from pixforge.service.errors import InferenceError, OutOfMemoryError, QueueFullError, ShuttingDownError


class FakeModel:
    """Doubles every pixel; optionally blocks on a gate and fails on demand."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_with: Exception | None = None
        self.oom_above = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        if self.oom_above is not None and batch.shape[0] > self.oom_above:
            raise OutOfMemoryError("fake OOM")
        return (batch.astype(np.uint16) * 2 % 256).astype(np.uint8)


def img(h=4, w=4, value=1):
    return np.full((h, w, 3), value, np.uint8)


@pytest.fixture
def model():
    return FakeModel()


def hold(model: FakeModel, batcher: Batcher):
    """Occupy the inference thread so later submissions queue up."""
    model.gate = threading.Event()
    first = batcher.submit(img(1, 1))
    assert model.entered.wait(5)
    return first


def test_queued_same_shape_items_share_a_call(model):
    with closing(Batcher(model, max_batch_size=4, max_queue_delay_ms=50, capacity=32, name="t")) as b:
        first = hold(model, b)
        futures = [b.submit(img(value=i)) for i in range(6)]
        model.gate.set()
        results = [f.result(5) for f in futures]
        first.result(5)
    assert [c[0] for c in model.calls] == [1, 4, 2]
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r.output, img(value=2 * i))
    assert results[0].batch_size == 4 and results[-1].batch_size == 2
    assert b.stats.calls == 3 and b.stats.items == 7 and b.stats.batch_sizes == {1: 1, 4: 1, 2: 1}


def test_different_shapes_are_never_mixed(model):
    with closing(Batcher(model, max_batch_size=8, max_queue_delay_ms=20, capacity=32)) as b:
        first = hold(model, b)
        small = [b.submit(img(4, 4)) for _ in range(3)]
        large = [b.submit(img(8, 8)) for _ in range(2)]
        model.gate.set()
        assert all(f.result(5).output.shape == (4, 4, 3) for f in small)
        assert all(f.result(5).output.shape == (8, 8, 3) for f in large)
        first.result(5)
    assert sorted(model.calls[1:]) == [(2, 8, 8, 3), (3, 4, 4, 3)]


def test_full_queue_raises_and_closed_batcher_refuses(model):
    b = Batcher(model, max_batch_size=2, max_queue_delay_ms=0, capacity=2)
    first = hold(model, b)
    queued = [b.submit(img()), b.submit(img())]
    with pytest.raises(QueueFullError, match="full"):
        b.submit(img())
    model.gate.set()
    first.result(5)
    [f.result(5) for f in queued]
    b.close()
    with pytest.raises(ShuttingDownError):
        b.submit(img())


def test_cancelled_items_are_skipped(model):
    with closing(Batcher(model, max_batch_size=4, max_queue_delay_ms=0, capacity=8)) as b:
        first = hold(model, b)
        doomed = b.submit(img(value=3))
        kept = b.submit(img(value=4))
        assert doomed.cancel()
        model.gate.set()
        np.testing.assert_array_equal(kept.result(5).output, img(value=8))
        first.result(5)
    assert b.stats.cancelled == 1 and b.stats.items == 2


def test_errors_reach_every_caller_and_thread_survives(model):
    with closing(Batcher(model, max_batch_size=4, max_queue_delay_ms=0, capacity=8)) as b:
        model.fail_with = InferenceError("boom")
        with pytest.raises(InferenceError, match="boom"):
            b.submit(img()).result(5)
        model.fail_with = None
        assert b.submit(img(value=5)).result(5).output[0, 0, 0] == 10


def test_out_of_memory_splits_the_batch(model):
    with closing(Batcher(model, max_batch_size=4, max_queue_delay_ms=0, capacity=8)) as b:
        first = hold(model, b)
        futures = [b.submit(img(value=i)) for i in range(4)]
        model.oom_above = 1  # only single images "fit"
        model.gate.set()
        first.result(5)
        assert [f.result(5).output[0, 0, 0] for f in futures] == [0, 2, 4, 6]
        assert b.stats.oom_splits >= 1
        model.oom_above = 0  # nothing fits: a single image fails with the OOM error
        with pytest.raises(OutOfMemoryError):
            b.submit(img()).result(5)


def test_close_without_drain_fails_queued_work(model):
    b = Batcher(model, max_batch_size=1, max_queue_delay_ms=0, capacity=8)
    first = hold(model, b)
    queued = b.submit(img())
    closer = threading.Thread(target=b.close, kwargs={"drain": False})
    closer.start()
    with pytest.raises(ShuttingDownError):
        queued.result(5)
    model.gate.set()
    first.result(5)
    closer.join(5)
    assert not closer.is_alive()


def test_observer_sees_each_batch(model):
    seen = []

    def observe(n, queued, seconds):
        seen.append((n, len(queued), seconds >= 0))

    with closing(Batcher(model, max_batch_size=2, max_queue_delay_ms=0, capacity=8, on_batch=observe)) as b:
        b.submit(img()).result(5)
    assert seen == [(1, 1, True)]


# -- adaptive batching: wait for company only when the engine is busy


class SlowModel:
    """Identity model that sleeps per call (a busy engine) and records every batch size."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(batch.shape[0])
        time.sleep(self.seconds)
        return batch.copy()


def test_idle_engine_runs_a_lone_request_without_waiting(model):
    # Old policy: every request waited the full 2 s delay for company that never came.
    with closing(Batcher(model, max_batch_size=8, max_queue_delay_ms=2000, capacity=8)) as b:
        start = time.perf_counter()
        # Closed loop, like one client: each request arrives after the previous call returned.
        results = [b.submit(img(value=i)).result(5) for i in range(5)]
        elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"5 lone requests took {elapsed:.2f} s with a 2 s delay: they waited"
    assert all(r.queue_ms < 1000 and r.batch_size == 1 for r in results)
    assert [r.output[0, 0, 0] for r in results] == [0, 2, 4, 6, 8]


def test_submit_many_on_an_idle_engine_forms_one_batch_at_once(model):
    with closing(Batcher(model, max_batch_size=8, max_queue_delay_ms=2000, capacity=8)) as b:
        start = time.perf_counter()
        results = [f.result(5) for f in b.submit_many([img(value=i) for i in range(3)])]
        elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert model.calls == [(3, 4, 4, 3)] and [r.batch_size for r in results] == [3, 3, 3]
    assert [r.output[0, 0, 0] for r in results] == [0, 2, 4]


def test_submit_many_is_all_or_nothing_on_a_full_queue(model):
    with closing(Batcher(model, max_batch_size=4, max_queue_delay_ms=0, capacity=3)) as b:
        first = hold(model, b)
        kept = b.submit_many([img(), img()])
        with pytest.raises(QueueFullError):
            b.submit_many([img(), img()])
        assert b.queue_depth == 2
        model.gate.set()
        first.result(5)
        assert [f.result(5).batch_size for f in kept] == [2, 2]


def test_requests_arriving_while_busy_still_wait_for_company(model):
    with closing(Batcher(model, max_batch_size=4, max_queue_delay_ms=2000, capacity=8)) as b:
        first = hold(model, b)
        early = [b.submit(img()) for _ in range(2)]  # queued while the engine is busy
        model.gate.set()
        first.result(5)
        time.sleep(0.05)  # well inside the 2 s delay: the early pair is still waiting
        late = [b.submit(img()) for _ in range(2)]
        assert all(f.result(5).batch_size == 4 for f in early + late)
    assert [c[0] for c in model.calls] == [1, 4]


def test_concurrent_clients_on_a_slow_engine_share_batches():
    slow = SlowModel(0.02)
    b = Batcher(slow, max_batch_size=4, max_queue_delay_ms=5, capacity=64)
    errors: list[BaseException] = []

    def client(value: int) -> None:
        try:
            for _ in range(4):
                out = b.submit(img(value=value)).result(5).output
                assert out[0, 0, 0] == value
        except BaseException as exc:  # surfaced to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(v,)) for v in range(6)]
    with closing(b):
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert not errors and not any(t.is_alive() for t in threads)
    assert sum(slow.sizes) == 24 and max(slow.sizes) > 1
    assert b.stats.items == 24 and max(b.stats.batch_sizes) > 1


def test_statistics_runs_batch_by_mode_and_pooled_runs_never_share_a_call():
    from pixforge.service.batcher import TileFeed

    calls = []

    def run_norm(batch, modes, stats, cores):
        calls.append((len(batch), tuple(modes)))
        return batch, np.zeros((len(batch), 3), np.float32)

    gate = threading.Event()

    def run(batch):
        gate.wait(5)
        return batch

    b = Batcher(run, run_norm=run_norm, max_batch_size=8, max_queue_delay_ms=0)
    try:
        blocker = b.submit(np.zeros((4, 4, 3), np.uint8))  # keeps the engine busy while we queue
        tile = np.zeros((4, 4, 3), np.uint8)
        frozen = TileFeed(np.ones(2, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32))
        pooled = TileFeed(np.full(2, 2.0, np.float32), np.zeros(4, np.float32), np.zeros(4, np.float32))
        futures = b.submit_many([tile] * 3, [frozen] * 3)
        futures += b.submit_many([tile], [pooled]) + b.submit_many([tile], [pooled])
        gate.set()
        blocker.result(5)
        results = [f.result(5) for f in futures]
        assert all(r.sums is not None and r.sums.shape == (3,) for r in results)
        assert sorted(calls) == [(1, (2.0, 2.0)), (1, (2.0, 2.0)), (3, (1.0, 1.0))]
        with closing(Batcher(run)) as plain, pytest.raises(ValueError, match="no normalisation statistics"):
            plain.submit_many([tile], [frozen])
    finally:
        gate.set()
        b.close()

"""Dynamic batching (Triton style) for one model version, with its own inference thread.

Callers :meth:`Batcher.submit` one uint8 HWC array (a whole image or one tile) and get a
``concurrent.futures.Future``. A dedicated thread takes the oldest queued array, waits up to
``max_queue_delay_ms`` for more arrays *of the same shape* (the shape is the bucket: the pipeline
pads images to a few bucket sizes so that unrelated requests can share a batch), stacks up to
``max_batch_size`` of them, runs the model once and hands each caller its slice.

Running the model on this thread keeps onnxruntime off the gRPC threads (ORT releases the GIL, so
decode/encode on the RPC threads overlap with inference) and gives the GPU one ordered stream of
work per model. The queue is bounded: a full queue raises :class:`QueueFullError` at once instead
of letting latency grow without limit. Cancelled futures (deadline passed, client gone) are
skipped when a batch is formed, so abandoned work is never run.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from .errors import OutOfMemoryError, QueueFullError, ShuttingDownError

log = logging.getLogger("pixforge.service.batcher")


@dataclass(frozen=True)
class ItemResult:
    """What a submitted array's future resolves to.

    Attributes:
        output: the model output for this array, uint8 (H*s, W*s, C').
        queue_ms: time from submit to the start of its inference call.
        inference_ms: duration of the inference call it was part of.
        batch_size: how many arrays shared that call.
    """

    output: np.ndarray
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class BatcherStats:
    """Counters for tests, metrics and benchmarks (written by the inference thread only)."""

    calls: int = 0  # inference calls made (one per batch)
    items: int = 0  # arrays processed
    cancelled: int = 0  # queued arrays dropped because their future was cancelled
    oom_splits: int = 0  # batches split in two after an out-of-memory error
    batch_sizes: collections.Counter = None  # batch size -> number of calls

    def __post_init__(self):
        self.batch_sizes = collections.Counter()


class _Item:
    __slots__ = ("array", "future", "enqueued", "key")

    def __init__(self, array: np.ndarray):
        self.array = array
        self.future: Future = Future()
        self.enqueued = time.perf_counter()
        self.key = (array.shape, array.dtype.str)


# on_batch(batch_size, queue_seconds_per_item, inference_seconds)
BatchObserver = Callable[[int, list, float], None]


class Batcher:
    """Bounded queue + inference thread for one model version.

    Args:
        run: the model call, uint8 (N, H, W, C) -> uint8 (N, H', W', C'); only ever called from
            this batcher's thread.
        max_batch_size: most arrays per call.
        max_queue_delay_ms: how long the oldest array waits for company.
        capacity: most arrays queued (not yet running); more raise QueueFullError.
        name: used for the thread name and log lines.
        on_batch: optional observer called after each successful call (metrics).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 5.0,
        capacity: int = 512,
        name: str = "model",
        on_batch: BatchObserver | None = None,
    ):
        if max_batch_size < 1 or capacity < 1:
            raise ValueError("max_batch_size and capacity must be >= 1")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay_ms / 1000.0
        self.capacity = capacity
        self.name = name
        self._on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BatcherStats()
        self._thread = threading.Thread(target=self._loop, name=f"pixforge-infer-{name}", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Arrays waiting for an inference call (running ones excluded)."""
        return len(self._queue)

    def submit(self, array: np.ndarray) -> Future:
        """Queue one uint8 (H, W, C) array for inference.

        Returns:
            A Future resolving to an :class:`ItemResult`; cancel it to drop the work if still queued.

        Raises:
            QueueFullError: ``capacity`` arrays are already waiting.
            ShuttingDownError: the batcher was closed.
        """
        item = _Item(np.ascontiguousarray(array))
        with self._cond:
            if self._closed:
                raise ShuttingDownError(f"model {self.name} is shutting down")
            if len(self._queue) >= self.capacity:
                raise QueueFullError(f"model {self.name}: inference queue is full ({self.capacity} waiting)")
            self._queue.append(item)
            self._cond.notify()
        return item.future

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting work; finish (drain=True) or fail the queued arrays; join the thread."""
        with self._cond:
            self._closed = True
            if not drain:
                dropped = list(self._queue)
                self._queue.clear()
            else:
                dropped = []
            self._cond.notify_all()
        for item in dropped:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(ShuttingDownError(f"model {self.name} is shutting down"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- inference thread

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None  # closed and drained
            first = self._queue[0]
            deadline = first.enqueued + self.max_queue_delay
            while not self._closed:
                same = sum(1 for it in self._queue if it.key == first.key)
                remaining = deadline - time.perf_counter()
                if same >= self.max_batch_size or remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, rest = [], collections.deque()
            for it in self._queue:
                if it.key == first.key and len(batch) < self.max_batch_size:
                    batch.append(it)
                else:
                    rest.append(it)
            self._queue = rest
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]
            self.stats.cancelled += len(batch) - len(live)
            if live:
                try:
                    self._execute(live)
                except Exception as exc:  # never let one bad batch kill the model's only thread
                    log.exception("model %s: batch failed unexpectedly", self.name)
                    for it in live:
                        if not it.future.done():
                            it.future.set_exception(exc)

    def _execute(self, items: list[_Item]) -> None:
        start = time.perf_counter()
        try:
            out = self._run(np.stack([it.array for it in items]))
        except OutOfMemoryError as exc:
            if len(items) > 1:
                # A smaller batch may fit: retry both halves before failing anyone.
                self.stats.oom_splits += 1
                half = len(items) // 2
                self._execute(items[:half])
                self._execute(items[half:])
                return
            items[0].future.set_exception(exc)
            return
        except Exception as exc:
            for it in items:
                it.future.set_exception(exc)
            return
        infer_s = time.perf_counter() - start
        n = len(items)
        self.stats.calls += 1
        self.stats.items += n
        self.stats.batch_sizes[n] += 1
        queue_s = [start - it.enqueued for it in items]
        for i, it in enumerate(items):
            it.future.set_result(ItemResult(out[i], queue_s[i] * 1000.0, infer_s * 1000.0, n))
        if self._on_batch is not None:
            try:
                self._on_batch(n, queue_s, infer_s)
            except Exception:  # metrics must never break inference
                log.exception("model %s: batch observer failed", self.name)

"""Dynamic batching (Triton style) for one model version, with its own inference thread.

Callers :meth:`Batcher.submit` one uint8 HWC array (a whole image or one tile), or
:meth:`Batcher.submit_many` several at once, and get ``concurrent.futures.Future`` objects. A
dedicated thread takes the oldest queued array, gathers the queued arrays *of the same shape* (the
shape is the bucket: the pipeline pads images to a few bucket sizes so that unrelated requests can
share a batch), stacks up to ``max_batch_size`` of them, runs the model once and hands each caller
its slice.

When to wait for company (adaptive batching): waiting only helps when more work is on its way, and
the one sign of that the batcher can see is load. So an array that arrived while the engine was
idle (after the previous inference call had finished) runs at once, with whatever same-shape
arrays are already queued: a lone client never pays ``max_queue_delay_ms``. An array that arrived
while a call was running - the engine is busy, other clients are active - waits up to
``max_queue_delay_ms`` from its arrival for the batch to fill, as in Triton's dynamic batcher.
Under load, arrays that queue up during one call form the next batch anyway.

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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

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
    sums: np.ndarray | None = None  # norm_sums row of a statistics run (None otherwise)


@dataclass
class BatcherStats:
    """Counters for tests, metrics and benchmarks (written by the inference thread only)."""

    calls: int = 0  # inference calls made (one per batch)
    items: int = 0  # arrays processed
    cancelled: int = 0  # queued arrays dropped because their future was cancelled
    oom_splits: int = 0  # batches split in two after an out-of-memory error
    # batch size -> number of calls
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class _Item:
    __slots__ = ("array", "future", "enqueued", "key", "feed")

    def __init__(self, array: np.ndarray, feed: TileFeed | None = None):
        self.array = array
        self.feed = feed
        self.future: Future = Future()
        self.enqueued = time.perf_counter()
        # Statistics runs batch only with tiles of the same per-layer modes (one graph input), and
        # a run whose statistics are pooled over its batch (mode 2) only with itself: pooling two
        # requests' images together would mix their statistics.
        group: tuple[str, int] | bytes | None
        if feed is None:
            group = None
        elif bool((feed.modes > 1.5).any()):
            group = ("pooled", id(self))
        else:
            group = feed.modes.tobytes()
        self.key = (array.shape, array.dtype.str, group)


@dataclass(frozen=True, eq=False)
class TileFeed:
    """A tile's tiling-statistics inputs: per-layer modes (shared by its batch), its frozen
    statistics (S,) and its core (4,). See Engine.run_norm."""

    modes: np.ndarray
    stats: np.ndarray
    core: np.ndarray


# run_norm(batch, modes, stats (N, S), cores (N, 4)) -> (outputs, norm_sums (N, T))
NormRun = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# on_batch(batch_size, queue_seconds_per_item, inference_seconds)
BatchObserver = Callable[[int, list, float], None]


class Batcher:
    """Bounded queue + inference thread for one model version.

    Args:
        run: the model call, uint8 (N, H, W, C) -> uint8 (N, H', W', C'); only ever called from
            this batcher's thread.
        max_batch_size: most arrays per call.
        max_queue_delay_ms: how long the oldest array waits for company when it arrived while the
            engine was busy; an array arriving at an idle engine never waits.
        capacity: most arrays queued (not yet running); more raise QueueFullError.
        name: used for the thread name and log lines.
        on_batch: optional observer called after each successful call (metrics).
        run_norm: the model call with tiling-statistics inputs, for arrays submitted with a
            TileFeed (models with per-image normalisation; None: such submissions are refused).
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
        run_norm: NormRun | None = None,
    ):
        if max_batch_size < 1 or capacity < 1:
            raise ValueError("max_batch_size and capacity must be >= 1")
        self._run = run
        self._run_norm = run_norm
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay_ms / 1000.0
        self.capacity = capacity
        self.name = name
        self._on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        # perf_counter() when the last inference call returned; written and read by the inference
        # thread only. Set before results are handed out, so a client's next request counts as idle.
        self._last_run_end = float("-inf")
        self.stats = BatcherStats()
        self._thread = threading.Thread(target=self._loop, name=f"pixforge-infer-{name}", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Arrays waiting for an inference call (running ones excluded)."""
        return len(self._queue)

    def submit(self, array: np.ndarray) -> Future:
        """Queue one uint8 (H, W, C) array for inference.

        Args:
            array: uint8 (H, W, C) image or tile.

        Returns:
            A Future resolving to an :class:`ItemResult`; cancel it to drop the work if still queued.

        Raises:
            QueueFullError: ``capacity`` arrays are already waiting.
            ShuttingDownError: the batcher was closed.
        """
        return self.submit_many([array])[0]

    def submit_many(
        self, arrays: Sequence[np.ndarray], feeds: Sequence[TileFeed] | None = None
    ) -> list[Future]:
        """Queue several uint8 (H, W, C) arrays at once (e.g. the tiles of one image).

        They enter the queue together, so an idle engine sees all of them when it forms the next
        batch instead of starting on the first one alone.

        Args:
            arrays: uint8 (H, W, C) images or tiles.
            feeds: optional tiling-statistics inputs, one per array (their results carry ``sums``).

        Returns:
            One Future per array, in order, each resolving to an :class:`ItemResult`.

        Raises:
            QueueFullError: fewer than ``len(arrays)`` places are left; nothing was queued.
            ShuttingDownError: the batcher was closed.
        """
        if feeds is not None and self._run_norm is None:
            raise ValueError(f"model {self.name} takes no normalisation statistics")
        item_feeds: list[TileFeed | None] = list(feeds) if feeds is not None else [None] * len(arrays)
        items = [_Item(np.ascontiguousarray(a), f) for a, f in zip(arrays, item_feeds, strict=True)]
        with self._cond:
            if self._closed:
                raise ShuttingDownError(f"model {self.name} is shutting down")
            if len(self._queue) + len(items) > self.capacity:
                raise QueueFullError(f"model {self.name}: inference queue is full ({self.capacity} waiting)")
            self._queue.extend(items)
            self._cond.notify()
        return [it.future for it in items]

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
            # Only an array that arrived while a call was running (engine busy, other clients
            # active) waits for company. One that found the engine idle runs at once with what is
            # queued: nobody else is known to be coming, so waiting could only add latency.
            busy = first.enqueued < self._last_run_end
            while busy and not self._closed:
                same = sum(1 for it in self._queue if it.key == first.key)
                remaining = deadline - time.perf_counter()
                if same >= self.max_batch_size or remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Item] = []
            rest: collections.deque[_Item] = collections.deque()
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
        sums = None
        try:
            try:
                batch = np.stack([it.array for it in items])
                feed = items[0].feed
                if feed is None:
                    out = self._run(batch)
                else:
                    # submit() queues feeds only with run_norm, and a batch shares one key (feed
                    # modes included), so every item of this batch has a feed.
                    feeds = [it.feed for it in items if it.feed is not None]
                    assert self._run_norm is not None and len(feeds) == len(items)
                    stats = np.stack([f.stats for f in feeds])
                    cores = np.stack([f.core for f in feeds])
                    out, sums = self._run_norm(batch, feed.modes, stats, cores)
            finally:
                self._last_run_end = time.perf_counter()
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
        infer_s = self._last_run_end - start
        n = len(items)
        self.stats.calls += 1
        self.stats.items += n
        self.stats.batch_sizes[n] += 1
        queue_s = [start - it.enqueued for it in items]
        for i, it in enumerate(items):
            row = None if sums is None else sums[i]
            it.future.set_result(ItemResult(out[i], queue_s[i] * 1000.0, infer_s * 1000.0, n, row))
        if self._on_batch is not None:
            try:
                self._on_batch(n, queue_s, infer_s)
            except Exception:  # metrics must never break inference
                log.exception("model %s: batch observer failed", self.name)

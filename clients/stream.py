"""`translate_many` for the sync client: the threaded front end of stream_core.BatchCore.

The algorithm (bounded window, retries, stream rotation, ordering) lives in stream_core.py and is
shared with the asyncio client; this module only does the blocking I/O around it: one thread per
TranslateStream call pulls from the caller's iterable, reads and encodes images, and reads the
call's responses, and the caller's thread waits on a queue for results. One more thread, the
watchdog, wakes at the earliest per-item deadline and cancels the calls BatchCore.watch names.
Every BatchCore call is made under one threading.Condition, which is notified after each so that
waiting senders (and the watchdog) re-ask.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

import grpc

from pixforge.v1 import translation_pb2 as pb

from .errors import ClientError, error_from_rpc
from .images import ImageInputError, image_bytes
from .stream_core import IDLE_WAIT_S, BatchCore, BatchItem, Pull, StreamState, Wait
from .types import TranslateResult

P = ParamSpec("P")
T = TypeVar("T")


class StreamBatch:
    """Runs one `Client.translate_many` call; iterate it to get TranslateResults.

    Args:
        stub: an ImageTranslationStub on the client's channel.
        core: the batch's BatchCore (settings, window, retries).
        images: the lazy input iterable (bytes, paths or arrays).
        metadata: call metadata (the bearer token).
    """

    def __init__(self, stub, core: BatchCore, images: Iterable[Any], metadata: tuple[tuple[str, str], ...]):
        self._stub = stub
        self._core = core
        self._source = iter(images)
        self._metadata = metadata
        self._cond = threading.Condition()
        self._calls: dict[StreamState, Any] = {}  # the live gRPC call of each stream
        # Results, plus a None wake-up when the batch may be over (input exhausted and nothing in
        # flight, or a fatal error): the caller then re-checks the state.
        self._results: queue.SimpleQueue[TranslateResult | None] = queue.SimpleQueue()

    def _event(self, handler: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one BatchCore event under the lock, queue what it delivered and wake everyone."""
        with self._cond:
            value = handler(*args, **kwargs)
            self._publish()
        return value

    def _publish(self) -> None:
        """Under the lock: queue what the core delivered and wake everyone."""
        for result in self._core.drain():
            self._results.put(result)
        if self._core.finished:
            self._results.put(None)  # after the results, so the caller sees them first
        self._cond.notify_all()

    # ------------------------------------------------------------------ caller side

    def __iter__(self) -> Generator[TranslateResult, None, None]:
        workers = [
            threading.Thread(target=self._worker, name=f"pixforge-stream-{i}", daemon=True)
            for i in range(self._core.streams)  # capped (stream_core.MAX_STREAMS)
        ]
        workers.append(threading.Thread(target=self._watchdog, name="pixforge-stream-deadlines", daemon=True))
        for worker in workers:
            worker.start()
        try:
            while True:
                try:
                    result = self._results.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive
                except queue.Empty:
                    result = None
                if result is None:
                    with self._cond:
                        if self._core.fatal is not None:
                            raise self._core.fatal from None
                        if self._core.finished and self._results.empty():
                            break
                    continue
                for ready in self._event(self._core.arrived, result):
                    self._event(self._core.release)
                    yield ready
        finally:
            self._shutdown(workers)

    def _shutdown(self, workers: list[threading.Thread]) -> None:
        with self._cond:
            self._core.stop()
            calls = list(self._calls.values())
            self._cond.notify_all()
        for call in calls:
            call.cancel()
        for worker in workers:
            worker.join(timeout=5.0)

    # ------------------------------------------------------------------ feeding

    def _take(self, stream: StreamState) -> BatchItem | None:
        """Next item to send on `stream`, or None when the stream should half-close."""
        while True:
            with self._cond:
                step = self._core.next_step(stream, time.monotonic())
                while isinstance(step, Wait):
                    self._cond.wait(step.seconds)
                    step = self._core.next_step(stream, time.monotonic())
                if isinstance(step, BatchItem):
                    self._cond.notify_all()  # a new deadline: the watchdog re-computes its wait
            if not isinstance(step, Pull):
                return step  # an item to send, or None: half-close
            # Pull and encode outside the lock: the input may walk folders or read files.
            try:
                source = next(self._source)
            except StopIteration:
                self._event(self._core.source_ended)
                continue
            except BaseException as exc:  # the caller's iterable failed: surface it to the caller
                self._event(self._core.source_failed, exc)
                return None
            index = self._event(self._core.pulled)
            try:
                data = image_bytes(source)
            except ImageInputError as exc:
                self._event(self._core.unreadable, index, source, exc)
                continue
            if self._event(self._core.oversized, index, source, data):
                continue
            return self._event(self._core.admit, stream, index, source, data, time.monotonic())

    def _requests(self, stream: StreamState, first: BatchItem) -> Iterator[pb.TranslateStreamRequest]:
        item: BatchItem | None = first
        while item is not None:
            yield self._core.request(item)
            item = self._take(stream)

    # ------------------------------------------------------------------ streams

    def _watchdog(self) -> None:
        """Cancel the calls of streams holding an item past its deadline (BatchCore.watch)."""
        try:
            while True:
                with self._cond:
                    cancel, wait = self._core.watch(time.monotonic())
                    while not cancel and wait is not None:
                        self._cond.wait(wait)
                        cancel, wait = self._core.watch(time.monotonic())
                    calls = [self._calls[stream] for stream in cancel if stream in self._calls]
                    if cancel:
                        self._publish()  # the expired items' results; senders re-ask
                # A stream with no call yet is cancelled by its worker as soon as it has one.
                for call in calls:
                    call.cancel()
                if wait is None:
                    return
        except BaseException as exc:  # a bug must not hang the caller: hand it over
            self._event(self._core.crashed, exc)

    def _worker(self) -> None:
        try:
            while True:
                stream = StreamState()
                first = self._take(stream)
                if first is None:
                    with self._cond:
                        if self._core.senders_done:
                            return
                        # Items in flight on other streams may come back for a retry.
                        self._cond.wait(IDLE_WAIT_S)
                    continue
                self._event(self._core.start_stream, stream, time.monotonic())
                self._run_stream(stream, first)
        except BaseException as exc:  # a bug must not hang the caller: hand it over
            self._event(self._core.crashed, exc)

    def _run_stream(self, stream: StreamState, first: BatchItem) -> None:
        call = self._stub.TranslateStream(
            self._requests(stream, first), timeout=self._core.call_timeout, metadata=self._metadata
        )
        with self._cond:
            self._calls[stream] = call
            if self._core.stopping or stream.cancelled:
                call.cancel()
        error: ClientError | None = None
        try:
            for response in call:
                item = self._event(self._core.match, stream, response.request_id)
                if item is not None:
                    result, retryable = self._core.result_for(item, response)  # may decode: unlocked
                    self._event(self._core.settle, item, result, retryable, time.monotonic())
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, self._core.target)
        finally:
            with self._cond:
                self._calls.pop(stream, None)
            self._event(self._core.end_stream, stream, error, time.monotonic())

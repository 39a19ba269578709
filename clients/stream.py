"""`translate_many` for the sync client: TranslateStream calls fed lazily, with a bounded window.

One shared input iterator feeds `streams` concurrent TranslateStream calls (with round_robin each
call may land on a different server). At most `concurrency` items are "outstanding" (taken from
the input and not yet handed to the caller), so memory stays flat whatever the input size and a
slow consumer throttles the senders instead of piling up results.

Failure handling, per item: a stream item answered with an error is delivered as a failed
result; UNAVAILABLE / RESOURCE_EXHAUSTED (on the item or on the whole stream) re-queue the
unanswered items with backoff until `retry.max_attempts`, then deliver them as failed. A stream
is fed for `stream_duration` seconds and then half-closed, and a fresh one takes over, so every
stream has a finite deadline (stream_duration + timeout) yet each item gets at least `timeout`.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from pixforge.errors import PixforgeError
from pixforge.v1 import translation_pb2 as pb

from .errors import ClientError, InternalError, InvalidArgumentError, error_from_code, error_from_rpc
from .images import ImageInputError, image_bytes
from .retry import RETRYABLE_CODES, RetryPolicy
from .types import TranslateParams, TranslateResult, fill_result


@dataclass
class BatchItem:
    """One input item on its way through a stream (kept until answered, to be re-sent on retry)."""

    index: int
    source: Any
    request_id: str
    data: bytes
    attempts: int = 0
    not_before: float = 0.0
    first_failure: float = 0.0  # monotonic time of its first retryable failure (0: none yet)
    pushback_ms: int = 0  # the server's advice on its last failure (-1: never retry)


def retry_at(item: BatchItem, error: ClientError, retry: RetryPolicy, stopping: bool) -> float | None:
    """When to send a failed item again (a monotonic time), or None to deliver the failure.

    An item is retried when its error is retryable, the server did not say "never" (pushback -1:
    over a limit, it would fail again) and the policy allows another try: fewer than
    ``max_attempts`` tries, or still within ``retry_seconds`` of its first failure (a server
    restart or reload). The wait is the policy's backoff, at least the server's pushback.
    """
    if stopping or error.code not in RETRYABLE_CODES or item.pushback_ms < 0:
        return None
    now = time.monotonic()
    if not item.first_failure:
        item.first_failure = now
    within_time = retry.retry_seconds > 0 and now - item.first_failure < retry.retry_seconds
    if item.attempts >= retry.max_attempts and not within_time:
        return None
    return now + max(retry.backoff(item.attempts), item.pushback_ms / 1000.0)


@dataclass
class _Stream:
    """Book-keeping of one TranslateStream call."""

    feed_until: float = float("inf")
    closing: bool = False
    pending: OrderedDict[str, BatchItem] = field(default_factory=OrderedDict)


def result_for_error(item: BatchItem, error: ClientError) -> TranslateResult:
    """A failed TranslateResult for an item."""
    return TranslateResult(
        index=item.index, source=item.source, error=error, request_id=item.request_id, attempts=item.attempts
    )


def result_for_response(
    item: BatchItem, response: pb.TranslateStreamResponse, params: TranslateParams, target: str
) -> tuple[TranslateResult, bool]:
    """Turn a stream response into (result, retryable): retryable failures go back in the queue."""
    if response.error_code:
        error = error_from_code(response.error_code, response.error_message, target)
        item.pushback_ms = int(response.retry_pushback_ms)
        retryable = error.code in RETRYABLE_CODES and item.pushback_ms >= 0
        return result_for_error(item, error), retryable
    result = TranslateResult(
        index=item.index, source=item.source, request_id=item.request_id, attempts=item.attempts
    )
    try:
        fill_result(result, response.response, params)
    except PixforgeError as exc:  # as_array and the server sent bytes the codec cannot read
        result.image = None
        result.error = InternalError(
            grpc.StatusCode.DATA_LOSS, f"cannot decode the server's output: {exc}", target
        )
    return result, False


def input_error(index: int, source: Any, exc: ImageInputError) -> TranslateResult:
    """A failed result for an input the client could not even read or encode."""
    return TranslateResult(
        index=index, source=source, error=InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    )


class StreamBatch:
    """Runs one `translate_many` call; iterate it to get TranslateResults.

    Args:
        stub: an ImageTranslationStub on the client's channel.
        params: validated translation settings shared by every item.
        images: the lazy input iterable (bytes, paths or arrays).
        concurrency: the most items taken from the input and not yet yielded.
        streams: how many TranslateStream calls run at once.
        ordered: yield in input order (True) or as completed (False).
        timeout: per-item deadline budget in seconds.
        stream_duration: seconds a stream is fed before it is rotated.
        retry: backoff policy for retryable failures.
        metadata: call metadata (the bearer token).
        target: server target, for error messages.
    """

    def __init__(
        self,
        stub,
        params: TranslateParams,
        images: Iterable[Any],
        *,
        concurrency: int,
        streams: int,
        ordered: bool,
        timeout: float,
        stream_duration: float,
        retry: RetryPolicy,
        metadata: tuple[tuple[str, str], ...],
        target: str,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._stub = stub
        self._params = params
        self._source = enumerate(images)
        self._concurrency = concurrency
        self._streams = max(1, min(streams, concurrency))
        self._ordered = ordered
        self._timeout = timeout
        self._stream_duration = stream_duration
        self._retry = retry
        self._metadata = metadata
        self._target = target
        self._prefix = uuid.uuid4().hex[:12]

        self._cond = threading.Condition()
        self._outstanding = 0  # taken from the input, not yet yielded to the caller
        self._in_flight = 0  # taken from the input, no result delivered yet
        self._exhausted = False
        self._source_busy = False
        self._retry_queue: list[BatchItem] = []
        self._stop = False
        self._fatal: BaseException | None = None
        self._calls: set = set()
        # Results, plus a None wake-up when the batch may be over (input exhausted and nothing in
        # flight, or a fatal error): the caller then re-checks the state.
        self._results: queue.SimpleQueue[TranslateResult | None] = queue.SimpleQueue()

    # ------------------------------------------------------------------ caller side

    def __iter__(self) -> Generator[TranslateResult, None, None]:
        workers = [
            threading.Thread(target=self._worker, name=f"pixforge-stream-{i}", daemon=True)
            for i in range(self._streams)
        ]
        for worker in workers:
            worker.start()
        buffer: dict[int, TranslateResult] = {}
        next_index = 0
        try:
            while True:
                try:
                    result = self._results.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive
                except queue.Empty:
                    result = None
                if result is None:
                    with self._cond:
                        if self._fatal is not None:
                            raise self._fatal from None
                        if self._exhausted and self._in_flight == 0 and self._results.empty():
                            break
                    continue
                if not self._ordered:
                    self._release()
                    yield result
                    continue
                buffer[result.index] = result
                while next_index in buffer:
                    ready = buffer.pop(next_index)
                    next_index += 1
                    self._release()
                    yield ready
        finally:
            self._shutdown(workers)

    def _release(self) -> None:
        with self._cond:
            self._outstanding -= 1
            self._cond.notify_all()

    def _shutdown(self, workers: list[threading.Thread]) -> None:
        with self._cond:
            self._stop = True
            calls = list(self._calls)
            self._cond.notify_all()
        for call in calls:
            call.cancel()
        for worker in workers:
            worker.join(timeout=5.0)

    # ------------------------------------------------------------------ feeding

    def _deliver(self, result: TranslateResult) -> None:
        self._results.put(result)  # before the count drops, so the end marker comes after it
        with self._cond:
            self._in_flight -= 1
            self._wake_if_done()
            self._cond.notify_all()

    def _wake_if_done(self) -> None:
        # Called with the lock held whenever in_flight drops, the input ends or a fatal error hits.
        if self._fatal is not None or (self._exhausted and self._in_flight == 0):
            self._results.put(None)

    def _pop_ready_retry(self, now: float) -> BatchItem | None:
        for i, item in enumerate(self._retry_queue):
            if item.not_before <= now:
                return self._retry_queue.pop(i)
        return None

    def _register(self, stream: _Stream, item: BatchItem) -> BatchItem:
        # Called with the lock held: an item is either in a live stream's pending map or elsewhere.
        item.attempts += 1
        stream.pending[item.request_id] = item
        return item

    def _take(self, stream: _Stream) -> BatchItem | None:
        """Next item to send on `stream`, or None when the stream should half-close."""
        while True:
            with self._cond:
                while True:
                    if self._stop or stream.closing:
                        return None
                    now = time.monotonic()
                    if now >= stream.feed_until:
                        return None
                    ready = self._pop_ready_retry(now)
                    if ready is not None:
                        return self._register(stream, ready)
                    if (
                        not self._exhausted
                        and not self._source_busy
                        and self._outstanding < self._concurrency
                    ):
                        self._source_busy = True
                        self._outstanding += 1
                        self._in_flight += 1
                        break
                    if self._exhausted and not self._retry_queue:
                        return None
                    wait = 0.25
                    if self._retry_queue:
                        wait = min(wait, max(0.0, min(i.not_before for i in self._retry_queue) - now))
                    self._cond.wait(min(wait, max(0.0, stream.feed_until - now)) or 0.001)
            # Pull outside the lock: the input may walk folders or read files.
            try:
                index, source = next(self._source)
            except StopIteration:
                with self._cond:
                    self._exhausted = True
                    self._source_busy = False
                    self._outstanding -= 1
                    self._in_flight -= 1
                    self._wake_if_done()
                    self._cond.notify_all()
                continue
            except BaseException as exc:  # the caller's iterable failed: surface it to the caller
                with self._cond:
                    self._fatal = exc
                    self._stop = True
                    self._source_busy = False
                    self._outstanding -= 1
                    self._in_flight -= 1
                    self._wake_if_done()
                    self._cond.notify_all()
                return None
            with self._cond:
                self._source_busy = False
                self._cond.notify_all()
            try:
                data = image_bytes(source)
            except ImageInputError as exc:
                self._deliver(input_error(index, source, exc))
                continue
            item = BatchItem(index=index, source=source, request_id=f"{self._prefix}-{index}", data=data)
            with self._cond:
                if stream.closing or self._stop:
                    self._retry_queue.append(item)  # another stream sends it
                    self._cond.notify_all()
                    return None
                return self._register(stream, item)

    def _requests(self, stream: _Stream, first: BatchItem) -> Iterator[pb.TranslateStreamRequest]:
        item: BatchItem | None = first
        while item is not None:
            yield pb.TranslateStreamRequest(request=self._params.request(item.data, item.request_id))
            item = self._take(stream)

    # ------------------------------------------------------------------ streams

    def _worker(self) -> None:
        try:
            while True:
                stream = _Stream()
                first = self._take(stream)
                if first is None:
                    with self._cond:
                        if self._stop or (self._exhausted and self._in_flight == 0):
                            return
                        # Items in flight on other streams may come back for a retry.
                        self._cond.wait(0.25)
                    continue
                stream.feed_until = time.monotonic() + self._stream_duration
                self._run_stream(stream, first)
        except BaseException as exc:  # a bug must not hang the caller: hand it over
            with self._cond:
                self._fatal = exc
                self._stop = True
                self._wake_if_done()
                self._cond.notify_all()

    def _run_stream(self, stream: _Stream, first: BatchItem) -> None:
        call = self._stub.TranslateStream(
            self._requests(stream, first),
            timeout=self._stream_duration + self._timeout,
            metadata=self._metadata,
        )
        with self._cond:
            self._calls.add(call)
            if self._stop:
                call.cancel()
        error: ClientError | None = None
        try:
            for response in call:
                with self._cond:
                    item = stream.pending.pop(response.request_id, None)
                    if item is None and stream.pending:
                        # No/unknown id: responses come in request order, so it answers the oldest.
                        _, item = stream.pending.popitem(last=False)
                if item is None:
                    continue
                result, retryable = result_for_response(item, response, self._params, self._target)
                if retryable:
                    self._fail_or_retry(item, result.error)
                else:
                    self._deliver(result)
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, self._target)
        finally:
            with self._cond:
                self._calls.discard(call)
                stream.closing = True
                leftovers = list(stream.pending.values())
                stream.pending.clear()
                self._cond.notify_all()
        if leftovers:
            error = error or InternalError(
                grpc.StatusCode.INTERNAL,
                "the server ended the stream without answering every item",
                self._target,
            )
            for item in leftovers:
                self._fail_or_retry(item, error)

    def _fail_or_retry(self, item: BatchItem, error: ClientError | None) -> None:
        assert error is not None
        with self._cond:
            when = retry_at(item, error, self._retry, self._stop)
            if when is not None:
                item.not_before = when
                self._retry_queue.append(item)
                self._cond.notify_all()
                return
        self._deliver(result_for_error(item, error))


ITEMS_PER_STREAM = 4
"""Default items in flight per stream: the server's default stream.max_in_flight (it reads no
further ahead on one stream), so a bigger window is spread over more streams."""


def count_streams(requested: int | None, concurrency: int, listed_servers: int) -> int:
    """How many TranslateStream calls one translate_many runs.

    Args:
        requested: the caller's explicit choice, or None for the default.
        concurrency: the in-flight window.
        listed_servers: servers named in the target (a list gives one stream per server at least).

    Returns:
        requested (capped at concurrency), or max(listed_servers, ceil(concurrency /
        ITEMS_PER_STREAM)) capped at concurrency.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"streams must be >= 1, got {requested}")
        return min(requested, concurrency)
    wanted = max(listed_servers, -(-concurrency // ITEMS_PER_STREAM))
    return max(1, min(concurrency, wanted))


def make_batch(
    batch_cls,
    client,
    images,
    model: str,
    output_format: str,
    *,
    concurrency: int,
    ordered: bool,
    streams: int | None,
    as_array: bool,
    version: int,
    quality: int,
    tile_size: int,
    tile_overlap: int,
    render_size: int,
    timeout: float | None,
):
    """Validate translate_many's options and build its batch (sync StreamBatch or AsyncStreamBatch).

    `client` is a Client or AsyncClient: its stub, config, metadata, target and listed-server count
    feed the batch, so both clients share one place for these checks and wiring.

    Raises:
        InvalidArgumentError: bad options (before any traffic).
    """
    params = TranslateParams.build(
        model,
        output_format,
        version=version,
        quality=quality,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        render_size=render_size,
        as_array=as_array,
    )
    if concurrency < 1:
        raise InvalidArgumentError(
            grpc.StatusCode.INVALID_ARGUMENT, f"concurrency must be >= 1, got {concurrency}"
        )
    return batch_cls(
        client._stub,
        params,
        images,
        concurrency=concurrency,
        streams=count_streams(streams, concurrency, client._listed),
        ordered=ordered,
        timeout=timeout or client.config.timeout,
        stream_duration=client.config.stream_duration,
        retry=client.config.retry,
        metadata=client._metadata,
        target=client._target,
    )

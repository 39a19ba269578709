"""The I/O-free core of `translate_many`, shared by the sync (stream.py) and asyncio (aio.py) clients.

The algorithm: one shared input iterator feeds `streams` concurrent TranslateStream calls (with
round_robin each call may land on a different server). At most `concurrency` items are
"outstanding" (taken from the input and not yet handed to the caller), so memory stays flat
whatever the input size and a slow consumer throttles the senders instead of piling up results.

Deadlines, per item: every item gets `timeout` seconds (params.timeout, else config.timeout)
from the moment it is sent, that is handed to a stream's call (its request may still sit in the
transport or in the server's queue: that time counts; so does the time the call takes to
connect). When the clock passes the deadline of an unanswered item, the core answers "cancel this
stream": the item is delivered as failed with DEADLINE_EXCEEDED (not retried, like a unary call
past its deadline), and the stream's other unanswered items, not yet past their own deadline,
are re-queued at once (no backoff, not a failure) to be sent again, each with a fresh `timeout`,
on another stream. A stream cannot drop one item, hence the cancel; a frozen server (even one
that accepted the TCP connection but never answers) therefore fails each item after `timeout`
rather than stalling the batch. The front ends run a watchdog that waits until the earliest
deadline (BatchCore.watch).

Failure handling, per item: a stream item answered with an error is delivered as a failed
result; UNAVAILABLE / RESOURCE_EXHAUSTED (on the item or on the whole stream) re-queue the
unanswered items with backoff until the retry policy gives up, then deliver them as failed. An
item over a message-size limit is never re-sent (ClientError.retryable): one over the client's
own send limit is not even sent, and when a stream dies of an item over the server's limit, only
the unanswered items over that limit fail; the others are re-sent on a new stream. A
stream is fed for `stream_duration` seconds and then half-closed, and a fresh one takes over, so
every call also has a finite deadline of its own (stream_duration + timeout, a backstop: the
per-item deadlines end it first).

Streams: at most MAX_STREAMS calls run at once (one OS thread each in the threaded front end),
whatever `concurrency` is; nothing is allocated per unit of concurrency, so a huge window costs
no more than the items actually taken from the input.

`BatchCore` holds every counter, queue and per-stream map of that algorithm and takes every
decision, but does no I/O: it never blocks, sleeps, reads the clock, touches gRPC or pulls from
the input. A front end (StreamBatch on threads, AsyncStreamBatch on asyncio tasks) feeds it events
(an input item was pulled, a response came, a stream ended with error E, the time is now T), does
what it answers (send this item, pull the next input, wait this long, half-close the stream,
cancel these streams) and
hands the caller the results it collects in its outbox. So the two front ends only do I/O and
waiting, and the tests drive the algorithm with fake events and a fake clock.

Not thread-safe: the threaded front end calls it with its lock held, the asyncio one from the
event loop only.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import grpc

from pixforge.errors import PixforgeError
from pixforge.v1 import translation_pb2 as pb

from .config import ClientConfig
from .errors import (
    ClientError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    RequestTooLargeError,
    UnavailableError,
    error_from_code,
)
from .images import ImageInputError
from .retry import RetryPolicy
from .types import TranslateParams, TranslateResult, fill_result

IDLE_WAIT_S = 0.25
"""Longest single wait of a sender with nothing to send: items in flight on other streams may
come back for a retry, and a shutdown must be noticed."""

MIN_WAIT_S = 0.001
"""Shortest wait: a zero timeout would spin (threading) or not yield to other tasks (asyncio)."""

ITEMS_PER_STREAM = 4
"""Default items in flight per stream: the server's default stream.max_in_flight (it reads no
further ahead on one stream), so a bigger window is spread over more streams."""

MAX_STREAMS = 64
"""Most TranslateStream calls of one translate_many (more only when more servers are listed: one
each). 64 streams x ITEMS_PER_STREAM = 256 items processed at once, well past what a server runs
in parallel (its default admission.max_queued is 64 plus its worker threads) and what one client
needs to keep a GPU busy; each stream costs an OS thread in the threaded front end, so without a
cap a huge `concurrency` (10**7) meant millions of threads started before the first result."""


def count_streams(requested: int | None, concurrency: int, listed_servers: int) -> int:
    """How many TranslateStream calls one translate_many runs.

    Args:
        requested: the caller's explicit choice, or None for the default.
        concurrency: the in-flight window.
        listed_servers: servers named in the target (a list gives one stream per server at least).

    Returns:
        requested, or max(listed_servers, ceil(concurrency / ITEMS_PER_STREAM)); either capped at
        concurrency and at max(MAX_STREAMS, listed_servers).
    """
    cap = max(MAX_STREAMS, listed_servers)
    if requested is not None:
        if requested < 1:
            raise ValueError(f"streams must be >= 1, got {requested}")
        return min(requested, concurrency, cap)
    wanted = max(listed_servers, -(-concurrency // ITEMS_PER_STREAM))
    return max(1, min(concurrency, wanted, cap))


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
    deadline: float = float("inf")  # monotonic time its current send must be answered by


@dataclass(eq=False)  # compared and hashed by identity: the front ends map streams to calls
class StreamState:
    """Book-keeping of one TranslateStream call (the front end keeps the call itself)."""

    feed_until: float = float("inf")  # set when the call starts: rotate after stream_duration
    closing: bool = False  # half-closed or ended: send nothing more on it
    cancelled: bool = False  # an item passed its deadline: the front end cancels the call
    # Sent, unanswered, in send order (so their deadlines are in order too: see _register).
    pending: OrderedDict[str, BatchItem] = field(default_factory=OrderedDict)


class Pull:
    """The decision "pull the next input item": see BatchCore.next_step."""

    def __repr__(self) -> str:
        return "PULL"


PULL = Pull()


@dataclass(frozen=True)
class Wait:
    """The decision "nothing to send yet: wait (for a notification) at most `seconds`"."""

    seconds: float


Step = BatchItem | Pull | Wait | None
"""What a stream's sender does next: send the item, pull an input, wait, or half-close (None)."""


def retry_at(
    item: BatchItem, error: ClientError, retry: RetryPolicy, stopping: bool, now: float
) -> float | None:
    """When to send a failed item again (a monotonic time), or None to deliver the failure.

    An item is retried when its error is retryable, the server did not say "never" (pushback -1:
    over a limit, it would fail again) and the policy allows another try: fewer than
    ``max_attempts`` tries, or still within ``retry_seconds`` of its first failure (a server
    restart or reload). The wait is the policy's backoff, at least the server's pushback.
    """
    if stopping or not error.retryable or item.pushback_ms < 0:
        return None
    if not item.first_failure:
        item.first_failure = now
    within_time = retry.retry_seconds > 0 and now - item.first_failure < retry.retry_seconds
    if item.attempts >= retry.max_attempts and not within_time:
        return None
    return now + max(retry.backoff(item.attempts), item.pushback_ms / 1000.0)


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
        item.pushback_ms = int(response.retry_pushback_ms)
        error = error_from_code(response.error_code, response.error_message, target, item.pushback_ms)
        return result_for_error(item, error), error.retryable
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
    error = InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    error.__cause__ = exc  # the ImageInputError (its cause: an OSError when the file is unreadable)
    return TranslateResult(index=index, source=source, error=error)


class BatchCore:
    """State and decisions of one translate_many run (see the module docstring).

    Args:
        params: validated translation settings shared by every item (params.timeout: the
            per-item deadline, from when the item is sent; None or 0 for config.timeout).
        config: the client's settings: timeout, stream_duration and retry are used.
        concurrency: the most items taken from the input and not yet handed to the caller.
        streams: how many TranslateStream calls run at once (capped at concurrency).
        ordered: hand results out in input order (True) or as completed (False).
        target: server target, for error messages.
        prefix: request-id prefix (default: random, so ids are unique across batches).

    Attributes:
        outstanding: items taken from the input and not yet handed to the caller (the window).
        in_flight: items taken from the input with no result delivered yet.
        exhausted: the input has ended. stopping: the batch is being torn down.
        fatal: an exception for the caller (its iterable failed, or a front end crashed).
    """

    def __init__(
        self,
        params: TranslateParams,
        config: ClientConfig,
        *,
        concurrency: int,
        streams: int,
        ordered: bool,
        target: str,
        prefix: str | None = None,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.params = params
        self.concurrency = concurrency
        self.streams = max(1, min(streams, concurrency))
        self.ordered = ordered
        self.target = target
        self.retry = config.retry
        self.max_message_bytes = config.max_message_bytes
        self.stream_duration = config.stream_duration
        self.item_timeout = params.timeout or config.timeout
        # A stream is fed for stream_duration; its last item still needs the per-item budget.
        # A backstop only: the per-item deadlines (expire) end a stalled call first.
        self.call_timeout = config.stream_duration + self.item_timeout
        self.prefix = prefix if prefix is not None else uuid.uuid4().hex[:12]

        self.outstanding = 0
        self.in_flight = 0
        self.exhausted = False
        self.stopping = False
        self.fatal: BaseException | None = None
        self._source_busy = False  # one sender pulls from the input at a time
        self._pulled = 0  # the index of the next input item
        self._retry_queue: list[BatchItem] = []
        self._outbox: list[TranslateResult] = []  # delivered, not yet collected by the front end
        self._buffer: dict[int, TranslateResult] = {}  # ordered: results waiting for earlier ones
        self._next_index = 0  # ordered: the index the caller gets next
        # Streams with items registered and not yet ended (at most `streams` + the few ending).
        self._live: dict[int, StreamState] = {}

    # ------------------------------------------------------------------ state

    @property
    def finished(self) -> bool:
        """Nothing more will be delivered: the input ended and every item has a result, or fatal."""
        return self.fatal is not None or (self.exhausted and self.in_flight == 0)

    @property
    def senders_done(self) -> bool:
        """A sender with nothing to send may exit (else items in flight may come back for a retry)."""
        return self.stopping or (self.exhausted and self.in_flight == 0)

    def drain(self) -> list[TranslateResult]:
        """Take the results delivered since the last drain, in delivery order."""
        results, self._outbox = self._outbox, []
        return results

    def stop(self) -> None:
        """The caller is done (or gone): senders half-close, failures are no longer retried."""
        self.stopping = True

    def crashed(self, exc: BaseException) -> None:
        """A front end hit a bug: hand it to the caller rather than hang."""
        self.fatal = exc
        self.stopping = True

    def _deliver(self, result: TranslateResult) -> None:
        self.in_flight -= 1
        self._outbox.append(result)

    def _register(self, stream: StreamState, item: BatchItem, now: float) -> BatchItem:
        # An item is either in one live stream's pending map, in the retry queue, or delivered.
        item.attempts += 1
        item.deadline = now + self.item_timeout
        if stream.pending:
            # Keep deadlines in send order (front ends may read the clock just before the lock),
            # so a stream's first pending item always has its earliest deadline.
            item.deadline = max(item.deadline, next(reversed(stream.pending.values())).deadline)
        stream.pending[item.request_id] = item
        self._live[id(stream)] = stream
        return item

    # ------------------------------------------------------------------ feeding a stream

    def next_step(self, stream: StreamState, now: float) -> Step:
        """What the sender of `stream` does next, at monotonic time `now`.

        Returns:
            A BatchItem to send (a due retry, already registered on the stream); PULL: pull the
            next input item (a window slot is reserved: report pulled / source_ended /
            source_failed); Wait(s): wait for a notification or s seconds, then ask again; None:
            half-close the stream (stopping, stream_duration is over, or nothing is left to send).
        """
        if self.stopping or stream.closing or now >= stream.feed_until:
            return None
        for i, queued in enumerate(self._retry_queue):
            if queued.not_before <= now:
                return self._register(stream, self._retry_queue.pop(i), now)
        if not self.exhausted and not self._source_busy and self.outstanding < self.concurrency:
            self._source_busy = True
            self.outstanding += 1
            self.in_flight += 1
            return PULL
        if self.exhausted and not self._retry_queue:
            return None
        wait = min(IDLE_WAIT_S, stream.feed_until - now)
        if self._retry_queue:
            wait = min(wait, min(item.not_before for item in self._retry_queue) - now)
        return Wait(max(wait, MIN_WAIT_S))

    def pulled(self) -> int:
        """After PULL: the input gave an item; returns its index."""
        self._source_busy = False
        index = self._pulled
        self._pulled += 1
        return index

    def _unreserve(self) -> None:
        self._source_busy = False
        self.outstanding -= 1
        self.in_flight -= 1

    def source_ended(self) -> None:
        """After PULL: the input is exhausted (the reserved slot is given back)."""
        self.exhausted = True
        self._unreserve()

    def source_failed(self, exc: BaseException) -> None:
        """After PULL: the caller's iterable raised; the batch stops and re-raises it to the caller."""
        self.fatal = exc
        self.stopping = True
        self._unreserve()

    def unreadable(self, index: int, source: Any, exc: ImageInputError) -> None:
        """The pulled item could not be read or encoded: deliver it as failed."""
        self._deliver(input_error(index, source, exc))

    def oversized(self, index: int, source: Any, data: bytes) -> bool:
        """Whether the pulled, encoded item is over this client's send limit, and then delivered
        as failed: gRPC would end the whole stream (failing the items in flight with it) and the
        item would never fit on a new one. The front end then pulls the next item."""
        item = BatchItem(index=index, source=source, request_id=f"{self.prefix}-{index}", data=data)
        size = self.request(item).ByteSize()
        if size <= self.max_message_bytes:
            return False
        reason = (
            f"request message is {size} bytes, over this client's send limit of {self.max_message_bytes} "
            "bytes (max_message_bytes; not sent, not retried)"
        )
        error = RequestTooLargeError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, reason, self.target, -1, self.max_message_bytes
        )
        self._deliver(result_for_error(item, error))
        return True

    def admit(
        self, stream: StreamState, index: int, source: Any, data: bytes, now: float
    ) -> BatchItem | None:
        """The pulled item is encoded, at time `now`: the item to send on `stream` (its deadline
        runs from now), or None to half-close it (it closed meanwhile: the item waits in the
        retry queue for another stream)."""
        item = BatchItem(index=index, source=source, request_id=f"{self.prefix}-{index}", data=data)
        if stream.closing or self.stopping:
            self._retry_queue.append(item)
            return None
        return self._register(stream, item, now)

    def request(self, item: BatchItem) -> pb.TranslateStreamRequest:
        """The stream message that sends `item`."""
        return pb.TranslateStreamRequest(request=self.params.request(item.data, item.request_id))

    # ------------------------------------------------------------------ a stream's lifetime

    def start_stream(self, stream: StreamState, now: float) -> None:
        """Its call starts now (its first item is taken): it is fed for stream_duration."""
        stream.feed_until = now + self.stream_duration

    def match(self, stream: StreamState, request_id: str) -> BatchItem | None:
        """The pending item a response answers (None: a stray response, to be ignored)."""
        item = stream.pending.pop(request_id, None)
        if item is None and stream.pending:
            # No/unknown id: responses come in request order, so it answers the oldest.
            _, item = stream.pending.popitem(last=False)
        return item

    def result_for(
        self, item: BatchItem, response: pb.TranslateStreamResponse
    ) -> tuple[TranslateResult, bool]:
        """(result, retryable) for a matched response; may decode an image (as_array), so the
        front end calls it outside its lock / off the event loop."""
        return result_for_response(item, response, self.params, self.target)

    def settle(self, item: BatchItem, result: TranslateResult, retryable: bool, now: float) -> None:
        """An answered item: deliver its result, or re-queue it when its failure is retryable."""
        if retryable:
            assert result.error is not None
            self.fail_or_retry(item, result.error, now)
        else:
            self._deliver(result)

    def fail_or_retry(self, item: BatchItem, error: ClientError, now: float) -> None:
        """A failed item: into the retry queue (with backoff) or delivered as failed (see retry_at)."""
        when = retry_at(item, error, self.retry, self.stopping, now)
        if when is None:
            self._deliver(result_for_error(item, error))
            return
        item.not_before = when
        self._retry_queue.append(item)

    def close_stream(self, stream: StreamState) -> None:
        """Send nothing more on `stream` (its sender half-closes on its next step)."""
        stream.closing = True

    def end_stream(self, stream: StreamState, error: ClientError | None, now: float) -> None:
        """The call is over (error: why it failed, None: it ended cleanly): its unanswered items
        fail with that error (or INTERNAL when it ended cleanly) and are retried when allowed."""
        stream.closing = True
        self._live.pop(id(stream), None)
        leftovers = list(stream.pending.values())
        stream.pending.clear()
        if not leftovers:
            return
        error = error or InternalError(
            grpc.StatusCode.INTERNAL, "the server ended the stream without answering every item", self.target
        )
        for item in leftovers:
            self.fail_or_retry(item, self._leftover_error(item, error), now)

    def _leftover_error(self, item: BatchItem, error: ClientError) -> ClientError:
        """What an unanswered item of a stream that ended with `error` failed of.

        A stream killed by one request over the server's limit (gRPC ends the whole call) fails
        every unanswered item with that error; an item within the limit was only a bystander, so
        it fails as UNAVAILABLE instead, and is re-sent on a new stream.
        """
        if not isinstance(error, RequestTooLargeError) or not error.limit:
            return error
        if self.request(item).ByteSize() > error.limit:
            return error
        reason = f"its stream ended because another request was over the server's limit ({error.message})"
        return UnavailableError(grpc.StatusCode.UNAVAILABLE, reason, self.target)

    # ------------------------------------------------------------------ per-item deadlines

    def next_deadline(self) -> float:
        """The earliest deadline of an item sent and unanswered (inf: none)."""
        return min(
            (next(iter(s.pending.values())).deadline for s in self._live.values() if s.pending),
            default=float("inf"),
        )

    def expire(self, now: float) -> list[StreamState]:
        """The time is `now`: the streams whose calls the front end must cancel.

        Each stream holding an unanswered item past its deadline is marked closing and
        cancelled; its items past their deadline are delivered as failed (DEADLINE_EXCEEDED, not
        retried) and its other unanswered items go back to the queue, due at once, to be sent
        again on another stream (they did not fail: no backoff, the retry policy is not asked;
        `attempts` still counts the new send, as it counts every send).
        """
        if self.stopping:
            return []
        cancel = []
        for key, stream in list(self._live.items()):
            if not stream.pending or next(iter(stream.pending.values())).deadline > now:
                continue
            del self._live[key]
            stream.closing = stream.cancelled = True
            items = list(stream.pending.values())
            stream.pending.clear()
            for item in items:
                if item.deadline <= now:
                    self._deliver(result_for_error(item, self._deadline_error()))
                else:
                    item.not_before = now
                    self._retry_queue.append(item)
            cancel.append(stream)
        return cancel

    def _deadline_error(self) -> DeadlineExceededError:
        reason = (
            f"no answer within the per-item timeout of {self.item_timeout:g} s (counted from when "
            "the item was sent, server queueing included; not retried)"
        )
        return DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, reason, self.target)

    def watch(self, now: float) -> tuple[list[StreamState], float | None]:
        """The front end's deadline watchdog, at time `now`: (streams to cancel, see expire; how
        long to wait before asking again, at most IDLE_WAIT_S and no later than the earliest
        deadline, or None: the batch is over, the watchdog may exit)."""
        cancel = self.expire(now)
        if self.stopping or self.finished:
            return cancel, None
        wait = min(IDLE_WAIT_S, self.next_deadline() - now)
        return cancel, max(wait, MIN_WAIT_S)

    # ------------------------------------------------------------------ the caller's side

    def arrived(self, result: TranslateResult) -> list[TranslateResult]:
        """A delivered result reached the caller's side: the results it may now yield, in order.

        The front end calls release() right before yielding each one, so the window frees a slot
        only once the caller has the result.
        """
        if not self.ordered:
            return [result]
        self._buffer[result.index] = result
        ready = []
        while self._next_index in self._buffer:
            ready.append(self._buffer.pop(self._next_index))
            self._next_index += 1
        return ready

    def release(self) -> None:
        """One result is handed to the caller: a window slot frees up."""
        self.outstanding -= 1

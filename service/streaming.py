"""Ordered, back-pressured processing of a gRPC request stream on the event loop (no gRPC import).

Both streaming RPCs (pixforge.v1 TranslateStream and KServe v2 ModelStreamInfer) share it. Each
stream has a window of ``max_in_flight`` items: an item takes its place in the window when it is
read and gives it back only once its response is *written* (gRPC asks the handler for the next
response after the previous one went out), so the items being processed and the responses waiting
for a client that reads slowly, or not at all, are counted together. The next request is read only
while the window has room: a fast sender is slowed by HTTP/2 flow control, and a client that stops
reading stops the server from reading and computing for it. The requests run concurrently as tasks
and the responses go out in request order. An idle stream is a coroutine waiting on its reader: it
holds no thread and no worker.

:class:`StreamControl` is what the streams of one server share: the window size, a budget of
response bytes computed but not yet written, all streams together (``stream.max_unsent_bytes``:
while the responses waiting for their clients reach it, no stream reads a new item, so many
clients that do not read cannot pile up responses either; a request that was already awaited when
the budget filled is refused, RESOURCE_EXHAUSTED, see :meth:`StreamControl.check_unsent`), and the
drain signal: once graceful shutdown begins a stream reads no new item, delivers the items it
holds and ends with :class:`~pixforge.service.errors.ShuttingDownError` (UNAVAILABLE), so the
shutdown waits only for the work in flight, and an idle stream ends at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from .admission import AdmissionRejected
from .errors import ShuttingDownError
from .pipeline import CancelToken

log = logging.getLogger("pixforge.service.streaming")

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

# How often a server's streams look whether graceful shutdown began (one poller for all of them,
# running only while a stream waits for its next item).
DRAIN_POLL_S = 0.05
# The retry advice of a request refused over the unsent budget (responses drain as clients read).
UNSENT_PUSHBACK_MS = 1000
# What a stream ends with once the server drains (the drain interceptor's words for new calls).
DRAIN_MESSAGE = "server is shutting down; retry on another replica"


class UnsentBudgetExceeded(AdmissionRejected):
    """A stream request refused because the server holds ``stream.max_unsent_bytes`` of responses
    that their clients have not read yet (RESOURCE_EXHAUSTED with a retry pushback)."""


class StreamControl:
    """What the stream RPCs of one server share (both protocols).

    Args:
        max_in_flight: each stream's window: items read and not yet answered plus responses not
            yet written.
        max_unsent_bytes: most bytes of responses computed and not yet written, all streams
            together; None: no limit.
        draining: returns True once graceful shutdown began.
        poll_s: how often the drain signal is polled while streams wait for a request.
    """

    def __init__(
        self,
        max_in_flight: int,
        max_unsent_bytes: int | None = None,
        draining: Callable[[], bool] = lambda: False,
        *,
        poll_s: float = DRAIN_POLL_S,
    ):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.max_unsent_bytes = max_unsent_bytes
        self._draining = draining
        self._poll_s = poll_s
        self.unsent_bytes = 0  # responses computed and not yet written, all streams
        self._room: asyncio.Event | None = None  # set when unsent_bytes falls below the budget
        self._drained: asyncio.Event | None = None
        self._poller: asyncio.Future | None = None
        self._drain_waiters = 0

    # -- the unsent budget

    @property
    def has_room(self) -> bool:
        """Whether the responses waiting to be written are below the budget (a stream may read)."""
        limit = self.max_unsent_bytes
        return limit is None or self.unsent_bytes < limit

    def check_unsent(self) -> None:
        """Refuse a request that arrives while the unwritten responses reach the budget.

        A stream waits for room before it reads (:func:`ordered_responses`), but a stream already
        waiting for its next request when the budget filled reads one more: without this check
        every open stream could add a response over the budget.

        Raises:
            UnsentBudgetExceeded: at or over ``max_unsent_bytes`` (RESOURCE_EXHAUSTED, retry later).
        """
        if not self.has_room:
            raise UnsentBudgetExceeded(
                f"the server holds {self.unsent_bytes / (1 << 20):.1f} MiB of stream responses that "
                f"their clients have not read yet (stream.max_unsent_bytes: "
                f"{(self.max_unsent_bytes or 0) / (1 << 20):.1f} MiB); retry later",
                UNSENT_PUSHBACK_MS,
            )

    async def wait_room(self) -> None:
        """Return once the responses waiting to be written are below the budget."""
        while not self.has_room:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    def hold(self, nbytes: int) -> None:
        """A response of ``nbytes`` was computed and waits to be written."""
        self.unsent_bytes += nbytes

    def release(self, nbytes: int) -> None:
        """Responses of ``nbytes`` were written (or dropped with their stream)."""
        self.unsent_bytes -= nbytes
        if self._room is not None and self.has_room:
            self._room.set()

    # -- the drain signal

    @property
    def draining(self) -> bool:
        """Whether graceful shutdown began."""
        return self._draining()

    async def wait_draining(self) -> None:
        """Return once graceful shutdown began (one poller serves every waiting stream)."""
        if self._draining():
            return
        if self._drained is None:
            self._drained = asyncio.Event()
        self._drain_waiters += 1
        try:
            if self._poller is None or self._poller.done():
                self._poller = asyncio.ensure_future(self._poll(self._drained))
            await self._drained.wait()
        finally:
            self._drain_waiters -= 1
            if self._drain_waiters == 0 and self._poller is not None:
                self._poller.cancel()  # no stream waits: nothing to poll for
                self._poller = None

    async def _poll(self, drained: asyncio.Event) -> None:
        while not self._draining():
            await asyncio.sleep(self._poll_s)
        drained.set()


async def _next(source: AsyncIterator[RequestT]) -> RequestT:
    # A coroutine of our own: the iterator's awaitable is made only when the task runs, so a
    # read cancelled before it started leaves no never-awaited awaitable of gRPC's behind.
    return await anext(source)


_END = object()  # the client half-closed (or went away): end the stream when its items are written
_DRAINED = object()  # the server drains: end the stream with ShuttingDownError after its items


async def ordered_responses(
    requests: AsyncIterable[RequestT],
    process: Callable[[RequestT, int], Awaitable[ResponseT]],
    *,
    control: StreamControl,
    size: Callable[[ResponseT], int],
    cancel: CancelToken,
) -> AsyncIterator[ResponseT]:
    """Run ``process`` over a request stream concurrently and yield its results in request order.

    The consumer (gRPC) must ask for the next response only once the previous one is written: an
    item's place in the window, and its bytes in ``control``'s unsent budget, are given back then.

    Args:
        requests: the stream's requests (ends when the client half-closes).
        process: ``async (request, index) -> response`` with index counting from 1; it must turn
            its own failures into responses (an exception ends the stream), and call
            ``control.check_unsent()`` before it starts the work (refusing the request when that
            raises).
        control: the server's stream settings, budget and drain signal.
        size: a response's size in bytes (what it holds until written).
        cancel: the stream's token; set when the consumer stops early (client gone), which
            cancels the work of every request still in flight.

    Yields:
        One response per request read, in request order.

    Raises:
        ShuttingDownError: after the last response of the items read, when the stream stopped
            reading because the server began shutting down.
    """
    window = asyncio.Semaphore(control.max_in_flight)
    pending: asyncio.Queue[Any] = asyncio.Queue()
    held = 0  # this stream's share of control.unsent_bytes

    async def run(item: RequestT, index: int) -> tuple[ResponseT, int]:
        nonlocal held
        response = await process(item, index)
        nbytes = size(response)
        control.hold(nbytes)  # from the moment it exists until it is written
        held += nbytes
        return response, nbytes

    async def reader() -> None:
        outcome = _END
        index = 0
        source: AsyncIterator[RequestT] | None = None
        drained = asyncio.ensure_future(control.wait_draining())
        receive: asyncio.Future | None = None
        try:
            while True:
                # Back-pressure: a place in the window *before* reading on, so at most
                # max_in_flight items of this stream are in the server, answers not yet written
                # included; and room in the server's budget of unwritten responses.
                await window.acquire()
                if not control.has_room and not drained.done():
                    room = asyncio.ensure_future(control.wait_room())
                    try:
                        await asyncio.wait((room, drained), return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        room.cancel()
                if drained.done() or control.draining:
                    outcome = _DRAINED
                    return
                if source is None:  # only now: gRPC's iterator complains if made and never read
                    source = aiter(requests)
                receive = asyncio.ensure_future(_next(source))
                await asyncio.wait((receive, drained), return_when=asyncio.FIRST_COMPLETED)
                # Shutdown (the poller wakes idle streams; a request that arrives first sees the
                # flag itself): take nothing new; what was read is not answered.
                if drained.done() or control.draining:
                    outcome = _DRAINED
                    return
                try:
                    item = receive.result()
                except StopAsyncIteration:
                    return
                receive = None
                index += 1
                pending.put_nowait(asyncio.ensure_future(run(item, index)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away mid-stream
            if not cancel.cancelled:
                log.info("stream reader stopped: %s", exc)
        finally:
            drained.cancel()
            if receive is not None:
                receive.cancel()
            pending.put_nowait(outcome)

    read = asyncio.ensure_future(reader())
    in_flight: list[asyncio.Future] = []
    try:
        while True:
            task = await pending.get()
            if task is _END:
                return
            if task is _DRAINED:
                raise ShuttingDownError(DRAIN_MESSAGE)
            in_flight.append(task)
            response, nbytes = await task
            in_flight.remove(task)
            yield response
            # Written: gRPC asks for the next response only once this one went out.
            control.release(nbytes)
            held -= nbytes
            window.release()
    finally:
        cancel.cancel()  # consumer gone or done: drop the work still queued
        read.cancel()
        while not pending.empty():
            task = pending.get_nowait()
            if isinstance(task, asyncio.Future):
                in_flight.append(task)
        for task in in_flight:
            task.cancel()
        control.release(held)  # responses computed and never written (the stream ended early)
        held = 0

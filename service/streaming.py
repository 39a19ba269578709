"""Ordered, back-pressured processing of a gRPC request stream on the event loop (no gRPC import).

Both streaming RPCs (pixforge.v1 TranslateStream and KServe v2 ModelStreamInfer) share it. The
next request is read only while fewer than ``max_in_flight`` requests of the stream are being
processed, so a fast sender is slowed by HTTP/2 flow control instead of filling server memory; the
requests run concurrently as tasks and the responses go out in request order. An idle stream is a
coroutine waiting on its reader: it holds no thread and no worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

from .pipeline import CancelToken

log = logging.getLogger("pixforge.service.streaming")

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


async def ordered_responses(
    requests: AsyncIterable[RequestT],
    process: Callable[[RequestT, int], Awaitable[ResponseT]],
    *,
    max_in_flight: int,
    cancel: CancelToken,
) -> AsyncIterator[ResponseT]:
    """Run ``process`` over a request stream concurrently and yield its results in request order.

    Args:
        requests: the stream's requests (ends when the client half-closes).
        process: ``async (request, index) -> response`` with index counting from 1; it must turn
            its own failures into responses (an exception ends the stream).
        max_in_flight: most requests of this stream read but not yet answered.
        cancel: the stream's token; set when the consumer stops early (client gone), which
            cancels the work of every request still in flight.

    Yields:
        One response per request, in request order.
    """
    slots = asyncio.Semaphore(max_in_flight)
    pending: asyncio.Queue = asyncio.Queue()
    end = object()

    async def reader() -> None:
        index = 0
        try:
            async for item in requests:
                index += 1
                pending.put_nowait(asyncio.ensure_future(process(item, index)))
                # Back-pressure: take the next slot *before* reading on, so at most
                # max_in_flight items of this stream are in the server at any time.
                await slots.acquire()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away mid-stream
            if not cancel.cancelled:
                log.info("stream reader stopped: %s", exc)
        finally:
            pending.put_nowait(end)

    await slots.acquire()  # the first item's slot
    read = asyncio.ensure_future(reader())
    in_flight: list[asyncio.Future] = []
    try:
        while True:
            task = await pending.get()
            if task is end:
                return
            in_flight.append(task)
            response = await task
            in_flight.remove(task)
            slots.release()
            yield response
    finally:
        cancel.cancel()  # consumer gone or done: drop the work still queued
        read.cancel()
        while not pending.empty():
            task = pending.get_nowait()
            if task is not end:
                in_flight.append(task)
        for task in in_flight:
            task.cancel()

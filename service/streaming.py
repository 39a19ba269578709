"""Ordered, back-pressured processing of a gRPC request stream (no gRPC import here).

Both streaming RPCs (pixforge.v1 TranslateStream and KServe v2 ModelStreamInfer) share it: a reader
thread pulls the next request only while fewer than ``max_in_flight`` requests of the stream are
being processed, so a fast sender is slowed by HTTP/2 flow control instead of filling server
memory; the requests run concurrently on a worker pool and the responses go out in request order.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

from .pipeline import CancelToken

log = logging.getLogger("pixforge.service.streaming")

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


def ordered_responses(
    requests: Iterable[RequestT],
    process: Callable[[RequestT, int], ResponseT],
    *,
    executor: Executor,
    max_in_flight: int,
    cancel: CancelToken,
) -> Iterator[ResponseT]:
    """Run ``process`` over a request stream concurrently and yield its results in request order.

    Args:
        requests: the stream's request iterator (blocking; ends when the client half-closes).
        process: ``(request, index) -> response`` with index counting from 1; runs on ``executor``
            and must turn its own failures into responses (an exception ends the stream).
        executor: worker pool for ``process``.
        max_in_flight: most requests of this stream read but not yet answered.
        cancel: the stream's token; reading stops once it is set, and it is set when the consumer
            stops early (client gone), which drops the work still queued.

    Yields:
        One response per request, in request order.
    """
    slots = threading.Semaphore(max_in_flight)
    pending: queue.Queue = queue.Queue()
    end = object()

    def reader() -> None:
        index = 0
        items = iter(requests)
        try:
            while True:
                # Back-pressure: take a slot *before* reading the next item, so at most
                # max_in_flight items of this stream are in the server at any time.
                while not slots.acquire(timeout=0.2):
                    if cancel.cancelled:
                        return
                if cancel.cancelled:
                    return
                item = next(items, None)
                if item is None:
                    return
                index += 1
                pending.put(executor.submit(process, item, index))
        except Exception as exc:  # the client went away mid-stream
            if not cancel.cancelled:
                log.info("stream reader stopped: %s", exc)
        finally:
            pending.put(end)

    threading.Thread(target=reader, name="pixforge-stream-reader", daemon=True).start()
    try:
        while True:
            future = pending.get()
            if future is end:
                return
            response = future.result()
            slots.release()
            yield response
    finally:
        cancel.cancel()  # generator closed early (client gone): drop what is still queued

"""Run one admitted request's blocking work on a worker thread, bound to the caller's deadline.

:class:`RequestRunner` is the bridge between the asyncio servicers and the blocking pipeline
(decode, batchers, encode): it takes a place from :class:`~pixforge.service.admission.Admission`,
runs the work on a pool of exactly ``max_running`` threads, and ties the work's
:class:`~pixforge.service.pipeline.CancelToken` to the RPC:

* the caller cancels or its deadline passes -> the token is cancelled: work that has not started is
  never started (the worker checks the token first), queued tiles are dropped from the batchers and
  running work stops at its next tile;
* the worker is given back to admission only when the thread has really finished, so a cancelled
  request whose thread is still finishing a tile keeps counting against ``max_running``.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .admission import Admission, Ticket
from .errors import RequestExpiredError
from .pipeline import CancelToken

T = TypeVar("T")

# How close to its deadline a cancelled call counts as expired (see interrupted_code).
DEADLINE_SLACK_S = 0.1


class RequestRunner:
    """Admission + worker pool + deadline for the servicers.

    Args:
        admission: the server's admission controller (same event loop as the callers).
        workers: threads running admitted work; at least ``admission.max_running``.
    """

    def __init__(self, admission: Admission, workers: int):
        self.admission = admission
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pixforge-worker")

    async def run(
        self,
        model: str,
        pixels: int,
        time_remaining: float | None,
        work: Callable[[CancelToken], T],
        cancel: CancelToken | None = None,
    ) -> tuple[T, float]:
        """Admit, then run ``work(token)`` on a worker; returns (its result, ms waited for admission).

        Args:
            model: the model name (admission's cost estimate).
            pixels: input + output pixels.
            time_remaining: seconds until the caller's deadline; None without one.
            work: the blocking work; it must check the token it is given.
            cancel: a parent token (a stream's) whose cancellation also cancels this work.

        Raises:
            AdmissionRejected: refused by admission.
            RequestExpiredError: the deadline passed before the work finished (or on arrival).
            RequestCancelledError: the caller went away before the work finished.
            asyncio.CancelledError: the RPC was cancelled while waiting (the work was cancelled too).
            Whatever ``work`` raises.
        """
        if time_remaining is not None and time_remaining <= 0:
            # Expired on arrival: say so, rather than let admission refuse it as too slow.
            raise RequestExpiredError("the request's deadline had passed when it arrived")
        loop = asyncio.get_running_loop()
        token = CancelToken()
        unlink = token.follow(cancel) if cancel is not None else (lambda: None)
        deadline_timer = None
        if time_remaining is not None:
            # Fires even when nothing polls the token, so tiles queued in a batcher are dropped.
            deadline_timer = loop.call_later(time_remaining, token.expire)
        try:
            ticket = await self.admission.acquire(model, pixels, time_remaining)
            context = contextvars.copy_context()  # keeps the request id on the worker's log lines
            future = self.pool.submit(context.run, self._guarded, work, token)
            future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finished, ticket, f))
            result = await asyncio.wrap_future(future)
            return result, ticket.waited_ms
        except asyncio.CancelledError:
            token.cancel()
            raise
        finally:
            if deadline_timer is not None:
                deadline_timer.cancel()
            unlink()

    def _guarded(self, work: Callable[[CancelToken], T], token: CancelToken) -> T:
        token.check()  # never start work whose caller is gone
        return work(token)

    def _finished(self, ticket: Ticket, future) -> None:
        ok = not future.cancelled() and future.exception() is None
        self.admission.release(ticket, measure=ok)

    def close(self) -> None:
        """Stop the worker threads (running work finishes)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def time_remaining(context) -> float | None:
    """Seconds until a grpc.aio context's deadline, None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining)


def interrupted_code(time_remaining: float | None, started: float) -> str:
    """The status name for a request whose RPC was cancelled under it (asyncio.CancelledError).

    gRPC cancels the handler both when the client cancels and when the deadline passes; the clock
    tells which, so metrics and logs say DEADLINE_EXCEEDED as the caller's status does. A client
    enforces its own deadline and cancels the call a transit time before the server's copy of it
    runs out, so a cancel within :data:`DEADLINE_SLACK_S` of the deadline counts as the deadline.

    Args:
        time_remaining: seconds to the deadline when the request began (None: no deadline).
        started: ``time.perf_counter()`` when the request began.
    """
    if time_remaining is None:
        return "CANCELLED"
    expired = time.perf_counter() - started >= time_remaining - DEADLINE_SLACK_S
    return "DEADLINE_EXCEEDED" if expired else "CANCELLED"

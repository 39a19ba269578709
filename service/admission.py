"""Admission control: how many requests run at once, how much work may wait, who is refused.

Every inference request (pixforge.v1 Translate and stream items, KServe ModelInfer and stream
items) passes through one :class:`Admission` before any worker thread touches it. It lives on the
server's event loop, so it needs no locks: idle or slow RPCs hold nothing but a coroutine.

* **Running**: at most ``max_running`` requests are being decoded, run through the batchers and
  encoded at any time (the worker pool has exactly that many threads, so it never queues).
* **Waiting**: a request that finds every worker busy waits in its model's FIFO queue; a freed
  worker takes the next request from the models' queues in turn (round robin, as Triton gives each
  model its own scheduler), so a client keeping one model's queue full delays a request for another
  model by at most one of its own per round instead of all of them. Everything waiting is bounded
  twice: by count (``max_queued``) and by *cost*, the estimated seconds of work already waiting
  (``max_queued_seconds``). A request over either bound is refused at once with
  :class:`QueueFullError` (RESOURCE_EXHAUSTED) carrying a retry pushback, unless another model's
  queue holds more than a fair share: then that queue's newest request is refused instead
  (longest-queue drop), so one busy model cannot take every place.
* **Deadlines**: a request that is not expected to *finish* before its deadline (the work ahead of
  it in the round-robin order, waiting and running, plus its own) is refused at once instead of
  expiring later, having
  held a place and CPU; one that waits and expires anyway, or whose caller cancels, leaves the
  queue without ever starting.

Cost: a request's estimated seconds = its pixels (input + output) x the model's measured seconds
per pixel. The estimate is learnt from finished requests as *CPU/GPU share*: a request's run time
divided by how many requests ran alongside it on average (the integral of the running count over
its run), so the figure does not grow with load. Until a model has finished a request its cost is
the average of the known models (0 before any request finished: the count bound still holds).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import QueueFullError

EWMA_WEIGHT = 0.2  # weight of the newest measurement in a model's seconds-per-pixel estimate
# Admit a request that must wait only if it is expected to finish within this fraction of the time
# its caller has left: the estimate is an average, and work that finishes just too late is all
# wasted (measured with `pixforge bench overload`: at 1.0, a third of the admitted large requests
# expired at 2x overload and goodput fell to 26 % of capacity).
DEADLINE_MARGIN = 0.7


class AdmissionRejected(QueueFullError):
    """Refused by admission control; ``pushback_ms`` is when a retry is worth trying."""

    def __init__(self, message: str, pushback_ms: int):
        super().__init__(message)
        self.pushback_ms = pushback_ms


@dataclass(eq=False)
class Ticket:
    """One admitted (or waiting) request."""

    model: str
    pixels: int
    cost_s: float
    arrived: float
    started: float = 0.0
    running_integral: float = 0.0  # the admission's integral of the running count at start
    _waiter: asyncio.Future | None = None

    @property
    def waited_ms(self) -> float:
        """Time spent in the admission queue."""
        return max(0.0, self.started - self.arrived) * 1000.0


# observer(queued_requests, queued_seconds, running)
QueueObserver = Callable[[int, float, int], None]


class Admission:
    """Per-model FIFO queues served in turn, with a worker bound, a count bound and a cost bound
    (event-loop only).

    Args:
        max_running: requests processed at once (the worker pool's size).
        max_queued: most requests waiting for a worker.
        max_queued_seconds: most estimated seconds of work waiting.
        observer: called after every change (metrics gauges).
        clock: monotonic clock (tests).
    """

    def __init__(
        self,
        max_running: int,
        max_queued: int,
        max_queued_seconds: float,
        observer: QueueObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_running < 1 or max_queued < 0 or max_queued_seconds <= 0:
            raise ValueError("max_running >= 1, max_queued >= 0 and max_queued_seconds > 0 required")
        self.max_running = max_running
        self.max_queued = max_queued
        self.max_queued_seconds = max_queued_seconds
        self._observer = observer
        self._clock = clock
        # model -> its waiting tickets (FIFO); a model's queue exists only while it holds tickets
        self._lanes: dict[str, collections.deque[Ticket]] = {}
        # models with waiting tickets, in the order a freed worker serves them (round robin)
        self._turns: collections.deque[str] = collections.deque()
        self._waiting = 0
        self._running: set[Ticket] = set()
        self._queued_cost = 0.0
        self._seconds_per_pixel: dict[str, float] = {}
        # Integral over time of the running count: a request's average concurrency is the
        # integral's growth over its run divided by its duration.
        self._integral = 0.0
        self._integral_at = clock()
        self.rejected = 0

    # -- state

    @property
    def running(self) -> int:
        """Requests holding a worker."""
        return len(self._running)

    @property
    def queued(self) -> int:
        """Requests waiting for a worker."""
        return self._waiting

    @property
    def queued_seconds(self) -> float:
        """Estimated seconds of work waiting."""
        return self._queued_cost

    def estimate(self, model: str, pixels: int) -> float:
        """Estimated seconds of work for ``pixels`` (input + output) on ``model``."""
        spp = self._seconds_per_pixel.get(model)
        if spp is None:
            known = self._seconds_per_pixel.values()
            spp = sum(known) / len(known) if known else 0.0
        return spp * pixels

    def expected_wait(self, model: str | None = None) -> float:
        """Machine-seconds of work ahead of a request arriving now: what is left of the running work
        (its estimate minus its share of the time it has run so far) plus the waiting work served
        before it. For ``model``, that is the k requests already in its queue and, from every other
        queue, the k + 1 first (queues ahead of it in this round) or k first (queues after it);
        without a model, everything waiting."""
        now = self._clock()
        share = 1.0 / max(1, len(self._running))
        left = sum(max(0.25 * t.cost_s, t.cost_s - (now - t.started) * share) for t in self._running)
        if model is None:
            return self._queued_cost + left
        own = self._lanes.get(model, ())
        k = len(own)
        ahead = sum(t.cost_s for t in own)
        seen_own = False  # a new queue joins the round at its end, after every queue there is
        for name in self._turns:
            if name == model:
                seen_own = True
                continue
            lane = self._lanes[name]
            take = k if seen_own else k + 1
            ahead += sum(lane[i].cost_s for i in range(min(take, len(lane))))
        return ahead + left

    # -- acquire / release

    async def acquire(self, model: str, pixels: int, time_remaining: float | None = None) -> Ticket:
        """Wait for a worker; returns the ticket to :meth:`release` when the work has finished.

        Args:
            model: the model the work runs on (its cost estimate).
            pixels: input + output pixels of the request.
            time_remaining: seconds until the caller's deadline (None: no deadline).

        Raises:
            AdmissionRejected: too much is waiting, or the request could not start before its deadline.
            asyncio.CancelledError: the caller went away while waiting (the ticket is dropped).
        """
        now = self._clock()
        ticket = Ticket(model, pixels, self.estimate(model, pixels), now)
        if not self._waiting and len(self._running) < self.max_running:
            self._start(ticket)
            return ticket
        pushback = int(1000 * max(0.05, self.expected_wait()))
        while self._waiting >= self.max_queued and self._shed_for(model, ticket.cost_s, by_cost=False):
            pass
        if self._waiting >= self.max_queued:
            self._reject(
                f"server busy: {self._waiting} requests are waiting (admission.max_queued); "
                f"retry in {pushback} ms",
                pushback,
            )
        while (
            self._waiting
            and self._queued_cost + ticket.cost_s > self.max_queued_seconds
            and self._shed_for(model, ticket.cost_s, by_cost=True)
        ):
            pass
        if self._waiting and self._queued_cost + ticket.cost_s > self.max_queued_seconds:
            self._reject(
                f"server busy: {self._queued_cost:.1f} s of work is waiting, over "
                f"admission.max_queued_seconds {self.max_queued_seconds:g}; retry in {pushback} ms",
                pushback,
            )
        wait = self.expected_wait(model)
        if time_remaining is not None and wait + ticket.cost_s > DEADLINE_MARGIN * time_remaining:
            # The machine works through what is ahead at about one machine-second per second, so
            # this request would finish after its caller has gone: refuse now, not at the deadline.
            self._reject(
                f"server busy: the work ahead ({wait:.2f} s) and this request ({ticket.cost_s:.2f} s) "
                f"would not finish before its deadline ({max(0.0, time_remaining):.2f} s left)",
                pushback,
            )
        ticket._waiter = asyncio.get_running_loop().create_future()
        lane = self._lanes.get(model)
        if lane is None:
            lane = self._lanes[model] = collections.deque()
            self._turns.append(model)
        lane.append(ticket)
        self._waiting += 1
        self._queued_cost += ticket.cost_s
        self._notify()
        try:
            await ticket._waiter
        except BaseException:
            if ticket in self._running:  # woken and cancelled in the same loop turn
                self.release(ticket, measure=False)
            elif self._unqueue(ticket):
                self._notify()
            raise
        return ticket

    def release(self, ticket: Ticket, measure: bool = True) -> None:
        """Give the worker back (the work finished, failed or stopped); wakes the next waiter.

        Args:
            ticket: from :meth:`acquire`.
            measure: learn the model's cost from this run (False for failed or cancelled work).
        """
        if ticket not in self._running:
            return
        now = self._clock()
        self._advance(now)
        self._running.discard(ticket)
        duration = now - ticket.started
        if measure and ticket.pixels > 0 and duration > 0:
            concurrency = max(1.0, (self._integral - ticket.running_integral) / duration)
            spp = duration / concurrency / ticket.pixels
            old = self._seconds_per_pixel.get(ticket.model)
            self._seconds_per_pixel[ticket.model] = (
                spp if old is None else (1 - EWMA_WEIGHT) * old + EWMA_WEIGHT * spp
            )
        while self._waiting and len(self._running) < self.max_running:
            nxt = self._next_turn()
            if nxt._waiter is not None and nxt._waiter.done():  # cancelled meanwhile
                continue
            self._start(nxt)
            if nxt._waiter is not None:
                nxt._waiter.set_result(None)
        self._notify()

    # -- internals

    def _next_turn(self) -> Ticket:
        """Take the head of the queue whose turn it is; that queue goes to the end of the round."""
        model = self._turns.popleft()
        lane = self._lanes[model]
        ticket = lane.popleft()
        if lane:
            self._turns.append(model)
        else:
            del self._lanes[model]
        self._waiting -= 1
        self._queued_cost = max(0.0, self._queued_cost - ticket.cost_s)
        return ticket

    def _unqueue(self, ticket: Ticket) -> bool:
        """Remove a waiting ticket (its caller left, or it was shed); False if it was not waiting."""
        lane = self._lanes.get(ticket.model)
        if lane is None or ticket not in lane:
            return False
        lane.remove(ticket)
        if not lane:
            del self._lanes[ticket.model]
            self._turns.remove(ticket.model)
        self._waiting -= 1
        self._queued_cost = max(0.0, self._queued_cost - ticket.cost_s)
        return True

    def _shed_for(self, model: str, cost_s: float, by_cost: bool) -> bool:
        """Make room for a request of ``cost_s`` on ``model`` by refusing the newest request of the
        queue that holds the most (requests, or estimated seconds with ``by_cost``), when that is
        another model's queue and it holds more than ``model``'s would with the newcomer.

        Returns:
            False when no other queue is over that share (the newcomer is the one refused).
        """

        def weight(lane: collections.deque[Ticket]) -> float:
            return sum(t.cost_s for t in lane) if by_cost else len(lane)

        own = self._lanes.get(model)
        own_after = (weight(own) if own else 0.0) + (cost_s if by_cost else 1)
        others = [(name, lane) for name, lane in self._lanes.items() if name != model]
        if not others:
            return False
        name, lane = max(others, key=lambda item: weight(item[1]))
        if weight(lane) <= own_after:
            return False
        victim = lane[-1]
        held = len(lane)
        self._unqueue(victim)
        self.rejected += 1
        if victim._waiter is not None and not victim._waiter.done():
            pushback = int(1000 * max(0.05, self.expected_wait()))
            bound = "admission.max_queued_seconds" if by_cost else "admission.max_queued"
            victim._waiter.set_exception(
                AdmissionRejected(
                    f"server busy: model {name!r} held {held} of the {self._waiting + 1} waiting requests, "
                    f"more than its share of {bound} with other models waiting; retry in {pushback} ms",
                    pushback,
                )
            )
        self._notify()
        return True

    def _advance(self, now: float) -> None:
        self._integral += len(self._running) * (now - self._integral_at)
        self._integral_at = now

    def _start(self, ticket: Ticket) -> None:
        now = self._clock()
        self._advance(now)
        ticket.started = now
        ticket.running_integral = self._integral
        self._running.add(ticket)
        self._notify()

    def _reject(self, message: str, pushback_ms: int) -> None:
        self.rejected += 1
        raise AdmissionRejected(message, pushback_ms)

    def _notify(self) -> None:
        if self._observer is not None:
            self._observer(self._waiting, self._queued_cost, len(self._running))

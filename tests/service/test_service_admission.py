"""Admission control in isolation (service/admission.py): FIFO, count and cost bounds, deadlines,
cancellation while waiting, and the cost model learnt from finished requests. A fake clock keeps
the learnt figures exact."""

from __future__ import annotations

import asyncio

import pytest

from pixforge.service.admission import Admission, AdmissionRejected


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(coro)


def test_runs_at_once_while_workers_are_free_then_queues_fifo():
    async def main():
        adm = Admission(max_running=2, max_queued=4, max_queued_seconds=10)
        a = await adm.acquire("m", 100)
        b = await adm.acquire("m", 100)
        assert adm.running == 2
        order = []

        async def waiter(tag):
            ticket = await adm.acquire("m", 100)
            order.append(tag)
            return ticket

        tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert adm.queued == 3
        adm.release(a)
        adm.release(b)
        await asyncio.sleep(0)
        assert order == [0, 1] and adm.queued == 1
        adm.release(tasks[0].result())
        await asyncio.sleep(0)
        assert order == [0, 1, 2]

    run(main())


def test_count_bound_rejects_at_once_with_pushback():
    async def main():
        adm = Admission(max_running=1, max_queued=1, max_queued_seconds=10)
        await adm.acquire("m", 1)
        waiting = asyncio.ensure_future(adm.acquire("m", 1))
        await asyncio.sleep(0)
        with pytest.raises(AdmissionRejected) as info:
            await adm.acquire("m", 1)
        assert "max_queued" in str(info.value) and info.value.pushback_ms >= 50
        assert adm.rejected == 1
        waiting.cancel()

    run(main())


def test_cost_is_learnt_as_a_share_of_the_machine_and_bounds_the_queue():
    async def main():
        clock = Clock()
        adm = Admission(max_running=2, max_queued=100, max_queued_seconds=5.0, clock=clock)
        # Two requests of 1000 pixels run side by side for 2 s: each is 1 s of the machine.
        a = await adm.acquire("big", 1000)
        b = await adm.acquire("big", 1000)
        clock.now += 2.0
        adm.release(a)
        adm.release(b)
        assert adm.estimate("big", 1000) == pytest.approx(1.0)
        # Unknown models borrow the known average.
        assert adm.estimate("new", 1000) == pytest.approx(adm.estimate("big", 1000))
        held = [await adm.acquire("big", 1000) for _ in range(2)]
        queued = [asyncio.ensure_future(adm.acquire("big", 2000)) for _ in range(2)]
        await asyncio.sleep(0)
        assert adm.queued == 2 and adm.queued_seconds == pytest.approx(4.0, rel=0.3)
        with pytest.raises(AdmissionRejected) as info:
            await adm.acquire("big", 2000)  # 4 s waiting + 2 s > 5 s
        assert "max_queued_seconds" in str(info.value)
        for t in queued:
            t.cancel()
        await asyncio.sleep(0)
        assert adm.queued == 0 and adm.queued_seconds == 0
        for t in held:
            adm.release(t)

    run(main())


def test_request_that_cannot_start_before_its_deadline_is_refused():
    async def main():
        clock = Clock()
        adm = Admission(max_running=1, max_queued=100, max_queued_seconds=100, clock=clock)
        t = await adm.acquire("m", 100)
        clock.now += 1.0
        adm.release(t)  # learnt: 0.01 s per pixel
        running = await adm.acquire("m", 100)  # ~1 s of work holding the only worker
        queued = asyncio.ensure_future(adm.acquire("m", 100))
        await asyncio.sleep(0)
        with pytest.raises(AdmissionRejected) as info:
            await adm.acquire("m", 100, time_remaining=0.5)
        assert "deadline" in str(info.value)
        later = asyncio.ensure_future(adm.acquire("m", 100, time_remaining=60))
        await asyncio.sleep(0)
        assert adm.queued == 2
        adm.release(running)
        await asyncio.sleep(0)
        adm.release(queued.result())
        await asyncio.sleep(0)
        adm.release(later.result())
        assert adm.running == 0

    run(main())


def test_cancelled_waiter_never_runs_and_frees_its_place():
    async def main():
        adm = Admission(max_running=1, max_queued=1, max_queued_seconds=10)
        holder = await adm.acquire("m", 1)
        waiter = asyncio.ensure_future(adm.acquire("m", 1))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        assert adm.queued == 0
        nxt = asyncio.ensure_future(adm.acquire("m", 1))  # the place is free again
        await asyncio.sleep(0)
        adm.release(holder)
        await asyncio.sleep(0)
        assert nxt.done() and adm.running == 1
        adm.release(nxt.result())

    run(main())

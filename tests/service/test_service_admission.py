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


async def teach(adm: Admission, clock: Clock, model: str, pixels: int, seconds: float) -> None:
    """Let ``model`` learn its cost: one request of ``pixels`` that runs alone for ``seconds``."""
    ticket = await adm.acquire(model, pixels)
    clock.now += seconds
    adm.release(ticket)


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
        await teach(adm, clock, "m", 100, 1.0)  # learnt: 0.01 s per pixel
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


# -- fairness between models: one queue per model, served in turn


def test_a_freed_worker_serves_the_models_in_turn():
    async def main():
        adm = Admission(max_running=1, max_queued=10, max_queued_seconds=10)
        holder = await adm.acquire("heavy", 1)
        order = []

        async def waiter(model, tag):
            ticket = await adm.acquire(model, 1)
            order.append(tag)
            return ticket

        tasks = [asyncio.ensure_future(waiter("heavy", f"h{i}")) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.ensure_future(waiter("light", "l0")))
        await asyncio.sleep(0)
        assert adm.queued == 4
        adm.release(holder)
        for _ in range(4):
            await asyncio.sleep(0)
            running = next(t for t in tasks if t.done() and t.result() in adm._running)
            adm.release(running.result())
        await asyncio.sleep(0)
        # FIFO would have served the light request last, behind every heavy one.
        assert order == ["h0", "l0", "h1", "h2"]

    run(main())


def test_the_deadline_check_counts_only_the_work_served_before_the_request():
    async def main():
        clock = Clock()
        adm = Admission(max_running=1, max_queued=100, max_queued_seconds=100, clock=clock)
        await teach(adm, clock, "heavy", 100, 1.0)  # heavy: 1 s per 100 pixels
        await teach(adm, clock, "light", 100, 0.01)  # light: 0.01 s per 100 pixels
        running = await adm.acquire("heavy", 100)
        heavy = [asyncio.ensure_future(adm.acquire("heavy", 100)) for _ in range(5)]
        await asyncio.sleep(0)
        assert adm.expected_wait() == pytest.approx(6.0)
        assert adm.expected_wait("light") == pytest.approx(2.0)  # the running one and one turn of heavy
        # 4 s left: FIFO would count all 6 s of heavy work ahead and refuse it.
        light = asyncio.ensure_future(adm.acquire("light", 100, time_remaining=4.0))
        await asyncio.sleep(0)
        assert not light.done() and adm.queued == 6
        with pytest.raises(AdmissionRejected, match="deadline"):
            await adm.acquire("heavy", 100, time_remaining=4.0)  # its own queue: 5 s + 1 s running
        for task in [light, *heavy]:
            task.cancel()
        await asyncio.sleep(0)
        adm.release(running)

    run(main())


def test_a_full_queue_refuses_the_newest_request_of_the_model_over_its_share():
    async def main():
        adm = Admission(max_running=1, max_queued=3, max_queued_seconds=10)
        holder = await adm.acquire("heavy", 1)
        heavy = [asyncio.ensure_future(adm.acquire("heavy", 1)) for _ in range(3)]
        await asyncio.sleep(0)
        light = asyncio.ensure_future(adm.acquire("light", 1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the refused waiter's task sees its exception
        # The light request takes the place of heavy's newest, which is refused with a pushback.
        assert heavy[2].done() and not light.done()
        with pytest.raises(AdmissionRejected, match="more than its share") as info:
            heavy[2].result()
        assert info.value.pushback_ms >= 50 and adm.rejected == 1 and adm.queued == 3
        # Now 2 heavy and 1 light wait: a third model's request still displaces heavy's newest,
        # but another heavy request, its model holding the most places, is refused itself.
        with pytest.raises(AdmissionRejected, match=r"admission.max_queued\)"):
            await adm.acquire("heavy", 1)
        other = asyncio.ensure_future(adm.acquire("other", 1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert heavy[1].done() and isinstance(heavy[1].exception(), AdmissionRejected)
        assert adm.queued == 3 and adm.rejected == 3
        for task in (heavy[0], light, other):
            task.cancel()
        await asyncio.sleep(0)
        assert adm.queued == 0 and adm.queued_seconds == 0
        adm.release(holder)

    run(main())


def test_the_cost_bound_also_refuses_the_model_over_its_share():
    async def main():
        clock = Clock()
        adm = Admission(max_running=1, max_queued=100, max_queued_seconds=3.0, clock=clock)
        await teach(adm, clock, "m", 100, 1.0)  # 1 s per 100 pixels, for every model
        holder = await adm.acquire("heavy", 100)
        heavy = [asyncio.ensure_future(adm.acquire("heavy", 100)) for _ in range(3)]
        await asyncio.sleep(0)
        assert adm.queued_seconds == pytest.approx(3.0)
        light = asyncio.ensure_future(adm.acquire("light", 100))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not light.done() and isinstance(heavy[2].exception(), AdmissionRejected)
        assert "max_queued_seconds" in str(heavy[2].exception())
        for task in (heavy[0], heavy[1], light):
            task.cancel()
        await asyncio.sleep(0)
        adm.release(holder)

    run(main())

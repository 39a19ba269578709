"""The stream engine of both stream RPCs (service/streaming.py), driven without gRPC.

A fake consumer stands in for gRPC: it takes a response and asks for the next one only when the
test says the previous one was written, which is how grpc.aio drives a handler's async generator.
Everything runs on one event loop with no threads and no clocks, so "the server is idle" is exact:
:func:`settle` runs the loop until nothing is left to run, and the counts are then final.
"""

from __future__ import annotations

import asyncio

import pytest

from pixforge.service.errors import ShuttingDownError
from pixforge.service.pipeline import CancelToken
from pixforge.service.streaming import (
    DRAIN_MESSAGE,
    StreamControl,
    UnsentBudgetExceeded,
    ordered_responses,
)

RESPONSE_BYTES = 1000


async def settle() -> None:
    """Run the event loop until every task waits on something only the test can give."""
    for _ in range(200):
        await asyncio.sleep(0)


class Client:
    """One stream's client: sends the items the test gives it; counts what the server took."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.read = 0  # items the server took from the stream

    def send(self, *items) -> None:
        for item in items:
            self.queue.put_nowait(item)

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def requests(self):
        while True:
            item = await self.queue.get()
            if item is None:
                return
            self.read += 1
            yield item


class Server:
    """Counts what ``process`` computed; ``gate`` holds the work until the test opens it."""

    def __init__(self, control: StreamControl) -> None:
        self.control = control
        self.computed = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def process(self, item, index: int) -> tuple:
        try:
            self.control.check_unsent()  # as the servicers do before they start an item
        except UnsentBudgetExceeded:
            return ("refused", index)
        await self.gate.wait()
        self.computed += 1
        return (item, index)


def stream(control: StreamControl, client: Client, server: Server | None = None):
    return ordered_responses(
        client.requests(),
        (server or Server(control)).process,
        control=control,
        size=lambda response: RESPONSE_BYTES,
        cancel=CancelToken(),
    )


def run(coro) -> None:
    asyncio.run(coro)


def test_a_client_that_does_not_read_gets_no_more_computed_than_the_window():
    async def scenario():
        control = StreamControl(max_in_flight=3)
        client, server = Client(), Server(control)
        client.send(*range(20))
        responses = stream(control, client, server)
        assert await anext(responses) == (0, 1)  # gRPC writes it ... and the write never ends
        await settle()
        # The response being written counts in the window: 3 items in the server, not 3 more.
        assert client.read == 3
        assert server.computed == 3
        assert control.unsent_bytes == 3 * RESPONSE_BYTES
        # The write ends: one more item is read and computed, and so on.
        assert await anext(responses) == (1, 2)
        await settle()
        assert (client.read, server.computed) == (4, 4)
        await responses.aclose()  # the client goes away
        assert control.unsent_bytes == 0

    run(scenario())


def test_responses_keep_request_order_and_every_item_is_answered():
    async def scenario():
        control = StreamControl(max_in_flight=2)
        client, server = Client(), Server(control)
        client.send(*"abcde")
        client.close()
        got = [response async for response in stream(control, client, server)]
        assert got == [(c, i) for i, c in enumerate("abcde", 1)]
        assert control.unsent_bytes == 0

    run(scenario())


def test_no_stream_reads_on_while_unwritten_responses_fill_the_budget():
    async def scenario():
        # Room for two unwritten responses, all streams together.
        control = StreamControl(max_in_flight=4, max_unsent_bytes=2 * RESPONSE_BYTES)
        stuck, stuck_server = Client(), Server(control)
        stuck_responses = stream(control, stuck, stuck_server)
        stuck.send(0)
        await anext(stuck_responses)  # its client never reads: the write stays pending
        for item in range(1, 4):  # one at a time, each computed before the next arrives
            stuck.send(item)
            await settle()
        # Item 2 was awaited before item 1 filled the budget: it is read but refused, and nothing
        # more is read: the stream stopped at the budget, not at its window of 4.
        assert (stuck.read, stuck_server.computed) == (3, 2)
        assert control.unsent_bytes == 3 * RESPONSE_BYTES  # two results and a refusal unwritten
        with pytest.raises(UnsentBudgetExceeded, match="max_unsent_bytes"):
            control.check_unsent()

        other, other_server = Client(), Server(control)
        other.send("x")
        other_responses = stream(control, other, other_server)
        reply = asyncio.ensure_future(anext(other_responses))
        await settle()
        assert other.read == 0 and not reply.done()  # waits for room, computes nothing

        await stuck_responses.aclose()  # the stuck client is gone: its responses are dropped
        await settle()
        assert reply.done() and reply.result() == ("x", 1)
        await other_responses.aclose()
        assert control.unsent_bytes == 0

    run(scenario())


def test_drain_ends_an_idle_stream_at_once():
    async def scenario():
        draining = [False]
        control = StreamControl(max_in_flight=4, draining=lambda: draining[0], poll_s=0.001)
        client, server = Client(), Server(control)
        responses = stream(control, client, server)
        first = asyncio.ensure_future(anext(responses))
        await settle()
        assert not first.done()  # idle: waits for a request
        draining[0] = True
        with pytest.raises(ShuttingDownError, match=DRAIN_MESSAGE):
            await asyncio.wait_for(first, 10)
        assert client.read == 0

    run(scenario())


def test_drain_delivers_the_items_in_flight_then_ends_and_takes_nothing_new():
    async def scenario():
        draining = [False]
        control = StreamControl(max_in_flight=4, draining=lambda: draining[0], poll_s=3600)
        client, server = Client(), Server(control)
        server.gate.clear()  # the first two items are being computed
        client.send("a", "b")
        responses = stream(control, client, server)
        first = asyncio.ensure_future(anext(responses))
        await settle()
        assert client.read == 2 and not first.done()

        draining[0] = True  # shutdown begins (the poller is far off: the reader sees the flag)
        client.send("c")  # arrives after: not taken
        server.gate.set()
        assert await first == ("a", 1)
        assert await anext(responses) == ("b", 2)
        with pytest.raises(ShuttingDownError):
            await anext(responses)
        assert server.computed == 2
        assert control.unsent_bytes == 0

    run(scenario())


def test_one_poller_serves_every_idle_stream_and_stops_with_them():
    async def scenario():
        control = StreamControl(max_in_flight=1, draining=lambda: False, poll_s=0.001)
        clients = [Client() for _ in range(50)]
        streams = [stream(control, client) for client in clients]
        firsts = [asyncio.ensure_future(anext(s)) for s in streams]
        await settle()
        assert control._drain_waiters == 50
        poller = control._poller
        assert poller is not None and not poller.done()
        for client in clients:
            client.close()
        for first in firsts:
            with pytest.raises(StopAsyncIteration):
                await first
        await settle()
        assert control._drain_waiters == 0 and control._poller is None and poller.done()

    run(scenario())

"""translate_many's per-item deadline through both front ends, against misbehaving servers.

* a server that never answers one item (the others on its stream are stuck behind it): that item
  fails with DEADLINE_EXCEEDED after `timeout`, the others are re-sent on a new stream;
* a frozen server that accepted the TCP connection but never speaks HTTP/2: every item fails
  after `timeout` instead of waiting for the whole call's deadline (or gRPC's connect timeout).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

from pixforge.client import AsyncClient, Client, DeadlineExceededError, RetryPolicy
from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

# Long enough that the old behaviour (only the call's deadline, stream_duration + timeout) shows.
STREAM_DURATION = 5.0
ITEM_TIMEOUT = 0.5


class HangOnServicer(pb_grpc.ImageTranslationServicer):
    """Echoes every stream item back at once, except the item whose request id ends with
    `-<hang>`: it is never answered (the handler waits until the client cancels), so the items
    sent after it on the same stream are stuck behind it."""

    def __init__(self, hang: int):
        self.hang = f"-{hang}"
        self.streams = 0
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def TranslateStream(self, request_iterator, context):
        with self.lock:
            self.streams += 1
        for item in request_iterator:
            request_id = item.request.request_id
            with self.lock:
                self.seen.append(request_id)
            if request_id.endswith(self.hang):
                while context.is_active():
                    time.sleep(0.01)
                return
            response = pb.TranslateResponse(image=item.request.image, width=1, height=1, model="m")
            yield pb.TranslateStreamResponse(request_id=request_id, response=response)


@pytest.fixture
def hang_server():
    servicer = HangOnServicer(hang=1)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ImageTranslationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0).wait()


@pytest.fixture
def frozen_address():
    """A port whose kernel completes TCP handshakes but where nothing ever reads or answers
    (what a server stopped with SIGSTOP looks like to a client)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


ITEMS = [b"item-%d" % i for i in range(8)]
LAG = 0.25  # items 2.. are sent this long after item 1, so their deadlines come later


def lagging_items():
    for i, item in enumerate(ITEMS):
        if i == 2:
            time.sleep(LAG)
        yield item


async def async_lagging_items():
    for i, item in enumerate(ITEMS):
        if i == 2:
            await asyncio.sleep(LAG)
        yield item


def check_hang_results(results, elapsed: float, servicer: HangOnServicer) -> None:
    assert [r.index for r in results] == list(range(8))
    assert [r.ok for r in results] == [True, False] + [True] * 6
    late = results[1]
    assert isinstance(late.error, DeadlineExceededError) and late.attempts == 1
    assert "per-item timeout of 0.5 s" in late.error.message
    assert all(r.image == ITEMS[r.index] for r in results if r.ok)
    # Items 2 and 3 were stuck behind item 1 on the cancelled stream, within their own timeout:
    # re-sent (on a fresh stream, with a fresh timeout), not failed.
    assert results[2].attempts == results[3].attempts == 2
    assert servicer.streams >= 2
    assert elapsed < STREAM_DURATION - 1, elapsed  # the old code waited for the call's deadline


def test_an_unanswered_item_fails_after_its_timeout_and_its_stream_mates_are_resent(hang_server):
    address, servicer = hang_server
    with Client(address, timeout=30, stream_duration=STREAM_DURATION) as client:
        start = time.monotonic()
        batch = client.translate_many(lagging_items(), "m", concurrency=4, streams=1, timeout=ITEM_TIMEOUT)
        results = list(batch)
        elapsed = time.monotonic() - start
    check_hang_results(results, elapsed, servicer)


def test_async_an_unanswered_item_fails_after_its_timeout_and_its_stream_mates_are_resent(hang_server):
    address, servicer = hang_server

    async def main():
        async with AsyncClient(address, timeout=30, stream_duration=STREAM_DURATION) as client:
            start = time.monotonic()
            batch = client.translate_many(
                async_lagging_items(), "m", concurrency=4, streams=1, timeout=ITEM_TIMEOUT
            )
            results = [r async for r in batch]
            return results, time.monotonic() - start

    results, elapsed = asyncio.run(main())
    check_hang_results(results, elapsed, servicer)


def check_frozen_results(results, elapsed: float) -> None:
    assert [r.index for r in results] == [0, 1, 2]
    assert all(isinstance(r.error, DeadlineExceededError) and r.attempts == 1 for r in results)
    assert elapsed < STREAM_DURATION - 1, elapsed


def test_a_frozen_server_fails_each_item_after_its_timeout(frozen_address):
    # No retry budget would help: DEADLINE_EXCEEDED is final, like a unary call's.
    with Client(frozen_address, timeout=30, stream_duration=STREAM_DURATION, retry=RetryPolicy()) as client:
        start = time.monotonic()
        results = list(client.translate_many(ITEMS[:3], "m", concurrency=4, timeout=ITEM_TIMEOUT))
        elapsed = time.monotonic() - start
    check_frozen_results(results, elapsed)


def test_async_a_frozen_server_fails_each_item_after_its_timeout(frozen_address):
    async def main():
        async with AsyncClient(frozen_address, timeout=30, stream_duration=STREAM_DURATION) as client:
            start = time.monotonic()
            results = [
                r async for r in client.translate_many(ITEMS[:3], "m", concurrency=4, timeout=ITEM_TIMEOUT)
            ]
            return results, time.monotonic() - start

    results, elapsed = asyncio.run(main())
    check_frozen_results(results, elapsed)

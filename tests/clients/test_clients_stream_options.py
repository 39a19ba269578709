"""translate_many options at their extremes: a huge concurrency, integer settings past their
proto field's range."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from clients_helpers import png

from pixforge.client import AsyncClient, Client, InvalidArgumentError, TranslateParams
from pixforge.clients.stream_core import MAX_STREAMS

HUGE = 10**6


def test_a_huge_concurrency_runs_on_capped_streams_and_answers_at_once(real_server):
    threads_before = threading.active_count()
    seen_threads = []

    def source():
        for i in range(6):
            seen_threads.append(threading.active_count())  # pulled by the stream threads
            yield png(i)

    with Client(real_server.address, timeout=30) as client:
        start = time.monotonic()
        results = client.translate_many(source(), "invert", concurrency=HUGE)
        first = next(results)
        first_after = time.monotonic() - start
        rest = list(results)
        elapsed = time.monotonic() - start
    # One thread per stream (and a gRPC request feeder per call) plus the watchdog.
    assert max(seen_threads) - threads_before <= 2 * MAX_STREAMS + 2, seen_threads
    assert first.ok and all(r.ok for r in rest) and [r.index for r in [first, *rest]] == list(range(6))
    assert first_after < 5.0 and elapsed < 10.0, (first_after, elapsed)


def test_async_a_huge_concurrency_runs_on_capped_streams(real_server):
    seen_tasks = []

    async def source():
        for i in range(6):
            seen_tasks.append(len(asyncio.all_tasks()))  # pulled by the stream tasks
            yield png(i)

    async def main():
        async with AsyncClient(real_server.address, timeout=30) as client:
            tasks_before = len(asyncio.all_tasks())
            start = time.monotonic()
            results = [r async for r in client.translate_many(source(), "invert", concurrency=HUGE)]
            return results, tasks_before, time.monotonic() - start

    results, tasks_before, elapsed = asyncio.run(main())
    # A task and a writer task per stream, the watchdog and the batch's closer.
    assert max(seen_tasks) - tasks_before <= 2 * MAX_STREAMS + 3, seen_tasks
    assert [r.index for r in results] == list(range(6)) and all(r.ok for r in results)
    assert elapsed < 10.0, elapsed


@pytest.mark.parametrize("name", ["tile_size", "tile_overlap", "render_size"])
def test_uint32_options_are_range_checked(name):
    assert getattr(TranslateParams("m", **{name: 2**32 - 1}), name) == 2**32 - 1
    for bad in (2**32, 99_999_999_999, -1):
        with pytest.raises(InvalidArgumentError, match=name):
            TranslateParams("m", **{name: bad})
    with pytest.raises(InvalidArgumentError, match=f"{name} must be an integer"):
        TranslateParams("m", **{name: 1.5})


def test_version_and_quality_are_range_checked():
    assert TranslateParams("m", version=2**63 - 1).version == 2**63 - 1
    for field, bad in (("version", 2**63), ("version", -1), ("quality", 2**32), ("quality", 101)):
        with pytest.raises(InvalidArgumentError, match=field):
            TranslateParams("m", **{field: bad})
    with pytest.raises(InvalidArgumentError, match="version must be an integer"):
        TranslateParams("m", version="2")


def test_an_out_of_range_option_fails_before_any_traffic(fake_server):
    with Client(fake_server.address, timeout=10) as client:
        with pytest.raises(InvalidArgumentError, match="tile_size must be <= 4294967295"):
            client.translate_many([png(0)], "invert", tile_size=99_999_999_999)
        with pytest.raises(InvalidArgumentError, match="tile_overlap"):
            client.translate(png(0), "invert", tile_overlap=2**32)
    assert sum(fake_server.servicer.calls.values()) == 0

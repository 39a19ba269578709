"""translate_many mechanics: lazy input, bounded window, order, per-item errors, early exit."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import numpy as np
import pytest
from clients_helpers import make_image, png

from pixforge.client import AsyncClient, Client, InvalidArgumentError
from pixforge.codec import decode_image


class CountingSource:
    """A lazy input that records how far ahead of the consumer it has been pulled."""

    def __init__(self, n: int):
        self.n = n
        self.pulled = 0
        self.lock = threading.Lock()

    def __iter__(self):
        for i in range(self.n):
            with self.lock:
                self.pulled += 1
            yield png(i % 7)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_the_input_is_pulled_lazily_within_the_window(fake_server, concurrency):
    source = CountingSource(200)
    with Client(fake_server.address, timeout=10) as client:
        results = client.translate_many(source, "invert", concurrency=concurrency)
        first = next(results)
        # Hold the consumer: the senders must stop at the window, not run through 200 items.
        threading.Event().wait(0.3)
        assert source.pulled <= concurrency + 1
        rest = list(results)
    assert first.index == 0 and len(rest) == 199 and source.pulled == 200


def test_ordered_results_match_unary_calls_and_carry_metadata(fake_server):
    images = [make_image(i, 8 + i, 16) for i in range(12)]
    with Client(fake_server.address, timeout=10) as client:
        results = list(client.translate_many(iter(images), "invert", "jpeg", concurrency=5, as_array=True))
        single = client.translate(images[3], "invert", "jpeg", as_array=True)
    assert [r.index for r in results] == list(range(12))
    assert all(r.ok and r.output_format == "jpeg" and r.model == "invert" for r in results)
    assert (results[3].image == single).all()
    assert results[5].height == 13 and results[5].width == 16
    assert results[0].source is images[0]


def test_bad_items_fail_alone_with_the_servers_reason(fake_server, tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(png(1))
    items = [png(0), b"not an image", str(tmp_path / "missing.png"), good, 42, np.zeros((4, 4), np.float32)]
    with Client(fake_server.address, timeout=10) as client:
        results = list(client.translate_many(items, "invert", concurrency=2))
    assert [r.ok for r in results] == [True, False, False, True, False, False]
    assert isinstance(results[1].error, InvalidArgumentError)
    assert "unknown file signature" in results[1].error.message  # the server's words
    assert "cannot read image file" in results[2].error.message  # the client's words
    assert "uint8" in results[5].error.message


def test_as_completed_yields_every_item_once(fake_server):
    with Client(fake_server.address, timeout=10) as client:
        results = list(
            client.translate_many((png(i) for i in range(30)), "invert", concurrency=6, ordered=False)
        )
    assert sorted(r.index for r in results) == list(range(30))


def test_breaking_out_cancels_the_rest(fake_server):
    source = CountingSource(10_000)
    with Client(fake_server.address, timeout=10) as client:
        results = client.translate_many(source, "invert", concurrency=4)
        for result in results:
            if result.index == 5:
                break
        results.close()
        pulled = source.pulled
        threading.Event().wait(0.2)
        assert source.pulled == pulled < 20
        # The channel is still usable afterwards.
        assert client.translate(png(1), "invert")


def test_an_exception_in_the_callers_iterable_is_raised_to_the_caller(fake_server):
    def broken():
        yield png(0)
        raise RuntimeError("disk on fire")

    with Client(fake_server.address, timeout=10) as client, pytest.raises(RuntimeError, match="disk on fire"):
        list(client.translate_many(broken(), "invert"))


def test_bad_options_fail_before_any_traffic(fake_server):
    with Client(fake_server.address, timeout=10) as client:
        with pytest.raises(InvalidArgumentError, match="unknown output format"):
            client.translate_many([png(0)], "invert", "gif")
        with pytest.raises(InvalidArgumentError, match="quality"):
            client.translate(png(0), "invert", quality=101)
        with pytest.raises(InvalidArgumentError, match="concurrency"):
            client.translate_many([png(0)], "invert", concurrency=0)
    assert sum(fake_server.servicer.calls.values()) == 0


def test_stream_rotation_keeps_every_stream_deadline_finite(fake_server):
    # A tiny stream_duration forces many short streams; nothing is lost or duplicated.
    with Client(fake_server.address, timeout=10, stream_duration=0.01) as client:
        results = list(client.translate_many((png(i) for i in range(40)), "invert", concurrency=2))
    assert [r.index for r in results] == list(range(40)) and all(r.ok for r in results)
    assert fake_server.servicer.stream_items == 40
    assert fake_server.servicer.calls["TranslateStream"] > 1
    # Each stream carries its own deadline: stream_duration + the per-item timeout from its start
    # (10.01 s; gRPC sends the timeout rounded up to three significant digits: 10.1 s).
    deadlines = fake_server.servicer.stream_deadlines
    assert len(deadlines) == fake_server.servicer.calls["TranslateStream"]
    assert all(d is not None and 9.0 < d <= 10.2 for d in deadlines), deadlines


def test_async_translate_many_with_a_sync_or_async_source(fake_server):
    images = [make_image(i) for i in range(15)]

    async def agen():
        for image in images:
            await asyncio.sleep(0)
            yield image

    async def main():
        async with AsyncClient(fake_server.address, timeout=10) as client:
            ordered = [r async for r in client.translate_many(images, "invert", concurrency=4, as_array=True)]
            unordered = [
                r async for r in client.translate_many(agen(), "invert", concurrency=4, ordered=False)
            ]
            async with contextlib.aclosing(client.translate_many(iter(images), "invert")) as results:
                result = await anext(results)
            bad = [r async for r in client.translate_many([b"junk", images[0]], "invert")]
            return ordered, unordered, result, bad

    ordered, unordered, first, bad = asyncio.run(main())
    assert [r.index for r in ordered] == list(range(15))
    assert all((r.image == 255 - images[r.index]).all() for r in ordered)
    assert sorted(r.index for r in unordered) == list(range(15))
    assert all((decode_image(r.image).pixels == 255 - images[r.index]).all() for r in unordered)
    assert first.index == 0
    assert isinstance(bad[0].error, InvalidArgumentError) and bad[1].ok


def test_async_broken_stream_is_resent(fake_server):
    fake_server.servicer.stream_break_after = 3
    from pixforge.client import RetryPolicy

    async def main():
        async with AsyncClient(
            fake_server.address, timeout=10, retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.02)
        ) as client:
            return [
                r async for r in client.translate_many([png(i) for i in range(10)], "invert", concurrency=4)
            ]

    results = asyncio.run(main())
    assert [r.index for r in results] == list(range(10)) and all(r.ok for r in results)
    assert max(r.attempts for r in results) == 2

"""Client-side load balancing: a list of servers shares unary calls and streams (round_robin)."""

from __future__ import annotations

import asyncio

from clients_helpers import free_port, png

from pixforge.client import AsyncClient, Client, RetryPolicy

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)


def test_unary_calls_are_spread_over_a_list_of_servers(fake_server_pair):
    a, b = fake_server_pair
    with Client([a.address, b.address], timeout=10) as client:
        assert client.target == f"ipv4:{a.address},{b.address}"
        client.wait_ready(10)
        for _ in range(200):
            client.translate(png(0), "invert")
            if a.servicer.calls["Translate"] >= 3 and b.servicer.calls["Translate"] >= 3:
                break
    assert a.servicer.calls["Translate"] >= 3 and b.servicer.calls["Translate"] >= 3


def test_streams_of_one_batch_land_on_different_servers(fake_server_pair):
    a, b = fake_server_pair
    images = [png(i) for i in range(40)]
    with Client(f"{a.address},{b.address}", timeout=10) as client:
        client.wait_ready(10)
        results = list(client.translate_many(images, "invert", concurrency=4))
    assert [r.index for r in results] == list(range(40)) and all(r.ok for r in results)
    assert a.servicer.calls["TranslateStream"] >= 1 and b.servicer.calls["TranslateStream"] >= 1
    assert a.servicer.stream_items + b.servicer.stream_items == 40


def test_a_dead_server_in_the_list_is_skipped(fake_server):
    dead = f"127.0.0.1:{free_port()}"
    with Client([dead, fake_server.address], timeout=10, retry=FAST) as client:
        for i in range(10):
            assert client.translate(png(i), "invert")
        assert all(r.ok for r in client.translate_many([png(i) for i in range(10)], "invert"))


def test_async_client_balances_too(fake_server_pair):
    a, b = fake_server_pair

    async def main():
        async with AsyncClient([a.address, b.address], timeout=10) as client:
            for _ in range(200):
                await client.translate(png(0), "invert")
                if a.servicer.calls["Translate"] and b.servicer.calls["Translate"]:
                    return

    asyncio.run(main())
    assert a.servicer.calls["Translate"] and b.servicer.calls["Translate"]


def test_several_servers_all_get_the_token(fake_server_pair):
    a, b = fake_server_pair
    with Client([a.address, b.address], token="s3cret", timeout=10) as client:
        for _ in range(100):
            client.list_models()
            if a.servicer.calls["ListModels"] and b.servicer.calls["ListModels"]:
                break
    assert a.servicer.seen_metadata["authorization"] == "Bearer s3cret"
    assert b.servicer.seen_metadata["authorization"] == "Bearer s3cret"

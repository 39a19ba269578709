"""``grpc.health.v1.Health/Watch``: every watcher of a service hears each change however many other
watchers of it came and went (grpcio-health-checking's asyncio servicer deleted the condition they
shared when one left, so the others never heard NOT_SERVING on shutdown); a watcher that does not
read cannot hold up health updates or the shutdown; Watch streams are capped
(``max_health_watches``) while Check keeps working."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from h2_raw import HEADERS, SETTINGS_INITIAL_WINDOW_SIZE, RawH2
from service_helpers import build_invert, test_config, wait_for

from pixforge.service import server as server_module

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
API = "pixforge.v1.ImageTranslation"


def repo(path: Path) -> Path:
    build_invert(path / "invert" / "1" / "model.onnx")
    return path


class Aborted(Exception):
    pass


class FakeContext:
    """What Watch uses of a grpc.aio servicer context: each write lands in a queue."""

    def __init__(self) -> None:
        self.writes: asyncio.Queue = asyncio.Queue()

    async def write(self, response) -> None:
        await self.writes.put(response.status)

    async def abort(self, code, details="", trailing_metadata=()) -> None:
        raise Aborted(code, details)


async def _next(context: FakeContext) -> int:
    return await asyncio.wait_for(context.writes.get(), 5)


def test_a_watcher_hears_changes_after_a_sibling_watcher_left():
    # The servicer the server runs (server.py's HealthServicer), driven directly: deterministic.
    async def scenario():
        health = server_module.HealthServicer()
        await health.set("svc", SERVING)
        request = health_pb2.HealthCheckRequest(service="svc")
        a, b = FakeContext(), FakeContext()
        watch_a = asyncio.create_task(health.Watch(request, a))
        watch_b = asyncio.create_task(health.Watch(request, b))
        assert await _next(a) == SERVING and await _next(b) == SERVING
        watch_a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch_a  # a has left, its cleanup done
        await health.set("svc", NOT_SERVING)
        assert await _next(b) == NOT_SERVING  # upstream: b waited on a deleted condition forever
        c = FakeContext()  # a newcomer shares b's condition
        watch_c = asyncio.create_task(health.Watch(request, c))
        assert await _next(c) == NOT_SERVING
        await health.set("svc", SERVING)
        assert await _next(b) == SERVING and await _next(c) == SERVING
        await health.enter_graceful_shutdown()
        assert await _next(b) == NOT_SERVING and await _next(c) == NOT_SERVING
        for task in (watch_b, watch_c):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert health._server_watchers == {}  # the last watcher of a service takes its condition along

    asyncio.run(scenario())


def test_watch_behaves_as_upstream_otherwise():
    async def scenario():
        health = server_module.HealthServicer()
        unknown = FakeContext()
        task = asyncio.create_task(health.Watch(health_pb2.HealthCheckRequest(service="nope"), unknown))
        assert await _next(unknown) == SERVICE_UNKNOWN  # an unknown service is watched, not refused
        await health.set("nope", SERVING)
        assert await _next(unknown) == SERVING
        await health.set("nope", SERVING)  # no change: nothing is sent
        await health.set("nope", NOT_SERVING)
        assert await _next(unknown) == NOT_SERVING
        assert unknown.writes.empty()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def watch(address: str, service: str):
    channel = grpc.insecure_channel(address)
    return channel, health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))


def test_remaining_watcher_hears_not_serving_on_shutdown(start_server, tmp_path):
    # The audit's case, on a real server: one of two watchers leaves, then SIGTERM's drain.
    handle, _ = start_server(test_config(repo(tmp_path)))
    channel_a, a = watch(handle.address, API)
    channel_b, b = watch(handle.address, API)
    try:
        assert next(a).status == SERVING and next(b).status == SERVING
        a.cancel()
        assert wait_for(lambda: handle._health.watches == 1)
        heard = []
        reader = threading.Thread(target=lambda: heard.append(next(b).status), daemon=True)
        reader.start()
        threading.Thread(target=handle.stop, args=(3,), daemon=True).start()
        reader.join(10)
        assert heard == [NOT_SERVING]
        # NOT_SERVING is for good: the stream ends, instead of holding the shutdown for its grace.
        with pytest.raises(StopIteration):
            next(b)
    finally:
        channel_a.close()
        channel_b.close()


def test_watch_ends_after_the_shutdown_status():
    async def main():
        servicer = server_module.HealthServicer()
        await servicer.set(API, SERVING)
        context = FakeContext()
        task = asyncio.ensure_future(servicer.Watch(health_pb2.HealthCheckRequest(service=API), context))
        assert await _next(context) == SERVING
        await servicer.enter_graceful_shutdown()
        assert await _next(context) == NOT_SERVING
        await asyncio.wait_for(task, 5)  # returned: the stream ends
        assert servicer.watches == 0

    asyncio.run(main())


def test_a_watcher_that_does_not_read_cannot_stall_health_or_shutdown(start_server, tmp_path):
    # A client with a receive window of 0 opens a Watch: the server's first answer can never be
    # sent. Upstream wrote it holding the service's lock, so every later set() of that service
    # (model changes, the shutdown's NOT_SERVING) waited for it, and stop() failed after 5 s.
    handle, _ = start_server(test_config(repo(tmp_path)))
    peer = RawH2(handle.port, settings={SETTINGS_INITIAL_WINDOW_SIZE: 0})
    try:
        peer.server_settings()
        stream = peer.open_call("/grpc.health.v1.Health/Watch")
        peer.send_message(stream, health_pb2.HealthCheckRequest(service="invert").SerializeToString())
        # The answer's HEADERS frame is not flow-controlled: once it is here, the first status
        # is being written (and can never be sent).
        while (frame := peer.read_frame(timeout=10)) is not None and not (
            frame.type == HEADERS and frame.stream == stream
        ):
            pass
        assert frame is not None
        handle._set_health("invert", NOT_SERVING)  # waits at most 5 s, raising TimeoutError
        handle.stop(0)
        assert handle._stopped.is_set()
    finally:
        peer.close()


def test_watch_streams_are_capped_and_check_is_not(start_server, tmp_path):
    handle, _ = start_server(test_config(repo(tmp_path), max_health_watches=2))
    channels = []
    try:
        watches = []
        for _ in range(2):
            channel, call = watch(handle.address, "")
            channels.append(channel)
            watches.append(call)
            assert next(call).status == SERVING
        channel, third = watch(handle.address, "")
        channels.append(channel)
        with pytest.raises(grpc.RpcError) as info:
            next(third)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 open health Watch streams (max_health_watches)" in info.value.details()
        counted = handle.metrics.registry.get_sample_value(
            "pixforge_request_failures_total", {"model": "-", "code": "RESOURCE_EXHAUSTED"}
        )
        assert counted == 1
        check = health_pb2_grpc.HealthStub(channels[0]).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == SERVING
        watches[0].cancel()
        assert wait_for(lambda: handle._health.watches == 1)
        channel, again = watch(handle.address, "")
        channels.append(channel)
        assert next(again).status == SERVING
    finally:
        for channel in channels:
            channel.close()

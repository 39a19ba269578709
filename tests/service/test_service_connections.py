"""Connection hygiene of the gRPC port: one connection cannot hold every open-call slot
(HTTP/2 ``max_concurrent_streams``), streams cannot take every slot from unary calls
(``max_concurrent_streaming_rpcs``), a burst cannot slip past the open-call limit, a half-open
peer is found by keepalive and its calls freed, idle connections are closed, an age limit never
cuts open calls; and the ``connection.*`` settings (config, environment, server options).

The HTTP/2 details (SETTINGS, unanswered PINGs, GOAWAY) are seen through a bare socket client
(h2_raw.py); everything else through real gRPC clients against real in-process servers.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import pytest
from h2_raw import GOAWAY, PING, SETTINGS_MAX_CONCURRENT_STREAMS, RawH2
from service_helpers import EngineControl, build_invert, png, rgb_image, test_config, wait_for

from pixforge.service.config import build_config, load_config
from pixforge.service.errors import ConfigError
from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

TRANSLATE_STREAM = "/pixforge.v1.ImageTranslation/TranslateStream"


def repo(path: Path) -> Path:
    build_invert(path / "invert" / "1" / "model.onnx")
    return path


def request() -> pb.TranslateRequest:
    return pb.TranslateRequest(model="invert", image=png(rgb_image(8, 8)))


def translate_on_new_connection(address: str) -> grpc.StatusCode:
    """A unary Translate from another client (its own channel, so its own connection)."""
    with grpc.insecure_channel(address) as channel:
        try:
            pb_grpc.ImageTranslationStub(channel).Translate(request(), timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


class AioCalls:
    """Calls started all at once (no await in between) from grpc.aio channels (``channels``
    connections) on an event loop thread of their own: ``streams`` TranslateStream calls that
    send nothing, or ``unary`` Translate calls."""

    def __init__(self, address: str, streams: int = 0, unary: int = 0, channels: int = 1):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._run(self._open(address, streams, unary, channels))

    def _run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self, address: str, streams: int, unary: int, channels: int) -> None:
        self.channels = [grpc.aio.insecure_channel(address) for _ in range(channels)]
        self._release = asyncio.Event()
        release = self._release

        async def silent():
            await release.wait()
            return
            yield  # pragma: no cover - makes this an async generator

        stubs = [pb_grpc.ImageTranslationStub(channel) for channel in self.channels]
        self.calls = [stubs[i % channels].TranslateStream(silent(), timeout=60) for i in range(streams)]
        self.calls += [stubs[i % channels].Translate(request(), timeout=60) for i in range(unary)]

    def finished(self) -> list[tuple[grpc.StatusCode, str]]:
        """(code, details) of the calls that ended."""

        async def collect():
            return [(await c.code(), await c.details()) for c in self.calls if c.done()]

        return self._run(collect())

    def close(self) -> None:
        async def close():
            self._release.set()
            for call in self.calls:
                call.cancel()
            for channel in self.channels:
                await channel.close()
            # grpc.aio's request-feeding tasks end with their calls; wait for them quietly.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# --------------------------------------------------------------------------- per connection


def test_server_announces_a_per_connection_stream_limit(start_server, tmp_path):
    handle, _ = start_server(test_config(repo(tmp_path)))
    connection = RawH2(handle.port)
    try:
        assert connection.server_settings().get(SETTINGS_MAX_CONCURRENT_STREAMS) == 100
    finally:
        connection.close()


def test_one_connection_cannot_lock_out_other_clients(start_server, tmp_path):
    # The audit's lock-out: one client opens more idle streams on one connection than the server
    # has open-call slots, and every other client's Translate got RESOURCE_EXHAUSTED.
    handle, _ = start_server(test_config(repo(tmp_path), max_concurrent_rpcs=150))
    streams = AioCalls(handle.address, streams=200)
    try:
        assert wait_for(lambda: handle._drain.active >= 100)
        # The other 100 wait in the client (HTTP/2 SETTINGS), never reaching the server.
        assert not wait_for(lambda: handle._drain.active > 100, timeout=1.0)
        assert translate_on_new_connection(handle.address) == grpc.StatusCode.OK
        assert streams.finished() == []  # nothing was refused: the client just queues
    finally:
        streams.close()
    assert wait_for(lambda: handle._drain.active == 0)


# --------------------------------------------------------------------------- streams vs unary calls


def test_streams_cannot_take_every_slot_from_unary_calls(start_server, tmp_path):
    # max_concurrent_rpcs 4: streams get three of the slots, so a unary call always finds one.
    handle, _ = start_server(test_config(repo(tmp_path), max_concurrent_rpcs=4))
    streams = AioCalls(handle.address, streams=4, channels=4)
    try:
        assert wait_for(lambda: len(streams.finished()) == 1)
        [(code, details)] = streams.finished()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3 open streaming calls (max_concurrent_streaming_rpcs)" in details
        assert "unary calls are still accepted" in details
        assert handle._drain.streams == 3 and handle._drain.active == 3
        assert translate_on_new_connection(handle.address) == grpc.StatusCode.OK
        counted = handle.metrics.registry.get_sample_value(
            "pixforge_request_failures_total", {"model": "-", "code": "RESOURCE_EXHAUSTED"}
        )
        assert counted == 1
    finally:
        streams.close()
    assert wait_for(lambda: handle._drain.active == 0 and handle._drain.streams == 0)


def test_a_burst_cannot_slip_past_the_open_call_limit(start_server, tmp_path):
    # 40 calls arrive together while the engine holds the first ones: each call is checked and
    # counted in one step when its handler starts, so exactly the limit gets in (checked when the
    # call arrived and counted only when its handler started, a burst got past it).
    control = EngineControl()
    handle, _ = start_server(test_config(repo(tmp_path), max_concurrent_rpcs=5), control)
    gate = control.gate("invert")
    calls = AioCalls(handle.address, unary=40, channels=4)
    try:
        assert wait_for(lambda: len(calls.finished()) == 35)
        assert {code for code, _ in calls.finished()} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("open calls (max_concurrent_rpcs)" in details for _, details in calls.finished())
        assert handle._drain.active == 5
        gate.set()
        assert wait_for(lambda: len(calls.finished()) == 40)
        assert [code for code, _ in calls.finished()].count(grpc.StatusCode.OK) == 5
    finally:
        control.open("invert")
        calls.close()
    assert wait_for(lambda: handle._drain.active == 0)


def test_open_call_limit_is_checked_when_the_handler_starts():
    # Deterministically, the order a burst can produce: four calls pass the interceptor before
    # any handler starts. Only two (the limit) may run; checked at the interceptor and counted at
    # the handler's start, all four ran.
    from types import SimpleNamespace

    from pixforge.service.interceptors import DrainInterceptor

    class Aborted(Exception):
        pass

    class Context:
        async def abort(self, code, details="", trailing_metadata=()):
            raise Aborted(code, details)

    async def scenario():
        release = asyncio.Event()

        async def behaviour(request, context):
            await release.wait()
            return "done"

        handler = grpc.unary_unary_rpc_method_handler(behaviour)

        async def continuation(_details):
            return handler

        drain = DrainInterceptor(lambda: False, max_open=2)
        details = SimpleNamespace(method="/pixforge.v1.ImageTranslation/Translate", invocation_metadata=())
        admitted = [await drain.intercept_service(continuation, details) for _ in range(4)]
        tasks = [asyncio.create_task(h.unary_unary(None, Context())) for h in admitted]
        for _ in range(10):
            await asyncio.sleep(0)
        assert drain.active == 2
        refused = [t for t in tasks if t.done()]
        assert len(refused) == 2 and all(isinstance(t.exception(), Aborted) for t in refused)
        assert "2 open calls (max_concurrent_rpcs)" in str(refused[0].exception())
        release.set()
        assert sorted(map(str, await asyncio.gather(*tasks, return_exceptions=True)))[-2:] == ["done", "done"]
        assert drain.active == 0

    asyncio.run(scenario())


# --------------------------------------------------------------------------- keepalive, idle, age


def test_half_open_peer_is_disconnected_and_its_call_freed(start_server, tmp_path):
    config = test_config(
        repo(tmp_path),
        **{"connection.keepalive_time_seconds": 0.2, "connection.keepalive_timeout_seconds": 0.5},
    )
    handle, _ = start_server(config)
    peer = RawH2(handle.port)  # acknowledges SETTINGS, never a PING: a peer that went away
    try:
        peer.open_call(TRANSLATE_STREAM)
        assert wait_for(lambda: handle._drain.active == 1)
        frames = peer.frames_until_closed(timeout=30)
    finally:
        peer.close()
    assert PING in [f.type for f in frames]
    assert any(f.type == GOAWAY and b"ping_timeout" in f.payload for f in frames)
    assert wait_for(lambda: handle._drain.active == 0)  # its slot is free again


def test_keepalive_spares_clients_that_answer(start_server, tmp_path):
    config = test_config(
        repo(tmp_path),
        **{"connection.keepalive_time_seconds": 0.1, "connection.keepalive_timeout_seconds": 2.0},
    )
    handle, _ = start_server(config)
    with grpc.insecure_channel(handle.address) as channel:
        stub = pb_grpc.ImageTranslationStub(channel)
        go_on = threading.Event()

        def items():
            yield pb.TranslateStreamRequest(request=request())
            go_on.wait(30)  # idle meanwhile: only the server's keepalive pings cross
            yield pb.TranslateStreamRequest(request=request())

        responses = stub.TranslateStream(items(), timeout=30)
        assert next(responses).response.width == 8
        assert not wait_for(lambda: handle._drain.active == 0, timeout=1.5)  # ~10 keepalive rounds
        go_on.set()
        assert next(responses).response.width == 8


@pytest.mark.parametrize("min_ping_interval, survives", [(0.1, True), (10.0, False)])
def test_client_keepalive_pings_are_accepted_down_to_the_minimum_interval(
    start_server, tmp_path, min_ping_interval, survives
):
    # A client pinging every 0.3 s during a silent call: accepted for 5 s when the server allows
    # it; GOAWAY too_many_pings (after about 4 s here) when it does not (the default allows 10 s).
    config = test_config(repo(tmp_path), **{"connection.min_ping_interval_seconds": min_ping_interval})
    handle, _ = start_server(config)
    options = [("grpc.keepalive_time_ms", 300), ("grpc.http2.max_pings_without_data", 0)]
    with grpc.insecure_channel(handle.address, options=options) as channel:
        stub = pb_grpc.ImageTranslationStub(channel)
        done = threading.Event()

        def items():
            done.wait(5.0 if survives else 30.0)  # silent; the refused call ends at the GOAWAY
            yield pb.TranslateStreamRequest(request=request())

        try:
            outcome = [r.response.width for r in stub.TranslateStream(items(), timeout=30)]
        except grpc.RpcError as error:
            outcome = [error.code(), error.details()]
    if survives:
        assert outcome == [8]
    else:
        assert outcome == [grpc.StatusCode.UNAVAILABLE, "Too many pings"]


def test_idle_connection_is_closed_gracefully(start_server, tmp_path):
    handle, _ = start_server(test_config(repo(tmp_path), **{"connection.max_idle_seconds": 0.3}))
    peer = RawH2(handle.port)
    try:
        frames = peer.frames_until_closed(timeout=30)
    finally:
        peer.close()
    assert any(f.type == GOAWAY and b"idle" in f.payload for f in frames)


def test_connection_age_sends_goaway_but_never_cuts_open_calls(start_server, tmp_path):
    handle, _ = start_server(test_config(repo(tmp_path), **{"connection.max_age_seconds": 0.3}))
    peer = RawH2(handle.port)
    try:
        peer.open_call(TRANSLATE_STREAM)
        assert wait_for(lambda: handle._drain.active == 1)
        while (frame := peer.read_frame(timeout=30)) is not None and frame.type != GOAWAY:
            pass
        assert frame is not None and b"max_age" in frame.payload
        # max_age_grace_seconds 0: the call goes on as long as its client wants.
        assert not wait_for(lambda: handle._drain.active == 0, timeout=1.0)
    finally:
        peer.close()
    assert wait_for(lambda: handle._drain.active == 0)


# --------------------------------------------------------------------------- settings


def test_connection_settings_and_their_server_options(tmp_path):
    from pixforge.service.server import grpc_server_options

    options = dict(grpc_server_options(build_config({})))
    assert options["grpc.max_concurrent_streams"] == 100
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.keepalive_timeout_ms"] == options["grpc.http2.ping_timeout_ms"] == 20_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.http2.max_ping_strikes"] == 2
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert "grpc.max_connection_age_ms" not in options  # no age limit unless set
    assert "grpc.max_connection_age_grace_ms" not in options  # never cut an open call

    env = {
        "PIXFORGE_CONNECTION_MAX_CONCURRENT_STREAMS": "16",
        "PIXFORGE_CONNECTION_KEEPALIVE_TIME_SECONDS": "30",
        "PIXFORGE_CONNECTION_MAX_IDLE_SECONDS": "0",
        "PIXFORGE_CONNECTION_MAX_AGE_SECONDS": "1800",
        "PIXFORGE_CONNECTION_MAX_AGE_GRACE_SECONDS": "60",
        "PIXFORGE_MAX_CONCURRENT_STREAMING_RPCS": "100",
        "PIXFORGE_MAX_HEALTH_WATCHES": "50",
    }
    config = load_config(env=env)
    assert config.max_concurrent_streaming_rpcs == 100 and config.max_health_watches == 50
    options = dict(grpc_server_options(config))
    assert options["grpc.max_concurrent_streams"] == 16
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert "grpc.max_connection_idle_ms" not in options  # 0 = never
    assert options["grpc.max_connection_age_ms"] == 1_800_000
    assert options["grpc.max_connection_age_grace_ms"] == 60_000

    yaml = tmp_path / "server.yaml"
    yaml.write_text("connection:\n  max_concurrent_streams: 8\n  keepalive_timeout_seconds: 5\n")
    config = load_config(yaml, env={})
    assert (config.connection.max_concurrent_streams, config.connection.keepalive_timeout_seconds) == (8, 5.0)


def test_streaming_limit_defaults_to_three_quarters_of_the_open_call_limit():
    from pixforge.service.config import streaming_rpc_limit

    assert streaming_rpc_limit(build_config({})) == 3072
    assert streaming_rpc_limit(build_config({"max_concurrent_rpcs": 3})) == 2
    assert streaming_rpc_limit(build_config({"max_concurrent_rpcs": 1})) == 1
    assert streaming_rpc_limit(build_config({"max_concurrent_streaming_rpcs": 10})) == 10


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"connection.max_concurrent_streams": 0}, "connection.max_concurrent_streams"),
        ({"connection.keepalive_time_seconds": 0}, "connection.keepalive_time_seconds"),
        ({"connection.keepalive_timeout_seconds": -1}, "connection.keepalive_timeout_seconds"),
        ({"connection.max_idle_seconds": -1}, "connection.max_idle_seconds"),
        ({"connection.max_age_seconds": 10**7}, "connection.max_age_seconds"),
        ({"connection.min_ping_interval_seconds": -0.5}, "connection.min_ping_interval_seconds"),
        ({"max_concurrent_rpcs": 10, "max_concurrent_streaming_rpcs": 11}, "max_concurrent_streaming_rpcs"),
        ({"max_health_watches": 0}, "max_health_watches"),
    ],
)
def test_connection_settings_are_validated(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config(values)

"""Streams on a real server: what a client that does not read can make the server hold, and how
open streams end when the server shuts down (service/streaming.py).

The clients that "do not read" open their channel with HTTP/2 bandwidth probing off, so their
transport keeps gRPC's 64 KiB window and takes no more of a response than that: an answer larger
than it stays unwritten in the server, as with a client that stopped reading. The counts are
made once the call's deadline has passed, so they are final (nothing of the call runs after it).
"""

from __future__ import annotations

import logging
import queue
import threading

import grpc
import pytest
from service_helpers import (
    SMALL_LIMITS,
    EngineControl,
    kserve_raw_request,
    png,
    rgb_image,
    test_config,
    wait_for,
)

from pixforge.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc
from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

NO_READ_AHEAD = [("grpc.http2.bdp_probe", 0)]
# A noise image: its PNG answer (~270 KB) is far over the non-reading client's 64 KiB window.
LARGE = png(rgb_image(300, 300, seed=3))
SMALL = png(rgb_image(16, 16, seed=4))
# What a stream ends with once the server drains (the drain interceptor's words for new calls).
DRAIN_MESSAGE = "server is shutting down; retry on another replica"


def item(image: bytes, request_id: str) -> pb.TranslateStreamRequest:
    return pb.TranslateStreamRequest(
        request=pb.TranslateRequest(model="invert", image=image, request_id=request_id)
    )


class Feed:
    """A client's request iterator fed by the test; it stays open until closed."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def send(self, message) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self):
        while (message := self._queue.get()) is not None:
            yield message


def collect(call) -> tuple[list, grpc.RpcError | None]:
    """Read a stream call to its end: (responses, the error it ended with or None)."""
    responses = []
    try:
        for response in call:
            responses.append(response)
    except grpc.RpcError as exc:
        return responses, exc
    return responses, None


def started(handle) -> float:
    """TranslateStream items the server started (``pixforge_requests_total``)."""
    value = handle.metrics.registry.get_sample_value(
        "pixforge_requests_total", {"model": "invert", "method": "TranslateStream"}
    )
    return value or 0.0


def answered_ok(handle) -> float:
    value = handle.metrics.registry.get_sample_value(
        "pixforge_responses_total", {"model": "invert", "method": "TranslateStream", "code": "OK"}
    )
    return value or 0.0


@pytest.fixture
def server(start_server, model_repo):
    """start(**settings) -> (handle, stub): a fresh server (the module's servers stop at its end)."""

    def start(**settings):
        config = test_config(
            model_repo,
            strict_readiness=False,  # the standard repository holds broken models on purpose
            **{**SMALL_LIMITS, "stream.max_in_flight": 2, **settings},
        )
        control = EngineControl()
        handle, stub = start_server(config, control)
        return handle, stub, control

    return start


@pytest.fixture
def server_log():
    """The pixforge.service.server records of the test (its logger may not propagate)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("pixforge.service.server")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


# --------------------------------------------------------------------------- memory


def test_a_client_that_does_not_read_gets_no_more_computed_than_the_window(server):
    handle, _, _ = server()
    before = started(handle)
    with grpc.insecure_channel(handle.address, options=NO_READ_AHEAD) as channel:
        items = iter([item(LARGE, str(i)) for i in range(8)])
        call = pb_grpc.ImageTranslationStub(channel).TranslateStream(items, timeout=3)
        assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # never read: waits out its deadline
    # The first answer never got out, and it counts in the stream's window of 2: two items were
    # computed for the client (HEAD: one more, read while the first answer was being written).
    assert started(handle) - before == 2


def test_unwritten_answers_of_all_streams_share_one_budget(server):
    # A budget of 1 byte: one unwritten answer fills it.
    handle, stub, _ = server(**{"stream.max_unsent_bytes": 1})
    before = answered_ok(handle)
    with grpc.insecure_channel(handle.address, options=NO_READ_AHEAD) as channel:
        stuck = Feed()
        stuck_call = pb_grpc.ImageTranslationStub(channel).TranslateStream(iter(stuck), timeout=60)
        stuck.send(item(LARGE, "stuck"))
        assert wait_for(lambda: answered_ok(handle) - before == 1)  # computed; it never gets out

        # Another client's stream is not read while that answer waits: its item never starts.
        blocked = stub.TranslateStream(iter([item(SMALL, "blocked")]), timeout=2)
        responses, error = collect(blocked)
        assert responses == [] and error is not None
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert answered_ok(handle) - before == 1

        stuck_call.cancel()  # the stuck client goes away: its unwritten answer is dropped
        stuck.close()
    responses, error = collect(stub.TranslateStream(iter([item(SMALL, "after")]), timeout=30))
    assert error is None and [r.error_code for r in responses] == [0]


# --------------------------------------------------------------------------- shutdown


def test_shutdown_ends_idle_streams_of_both_protocols_at_once(server, server_log):
    handle, stub, _ = server()
    kserve = kpb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(handle.address))
    feeds = [Feed(), Feed()]
    calls = [
        stub.TranslateStream(iter(feeds[0]), timeout=60),
        kserve.ModelStreamInfer(iter(feeds[1]), timeout=60),
    ]
    # One round trip each, so both streams are open on the server; then they idle.
    feeds[0].send(item(SMALL, "first"))
    assert next(calls[0]).error_code == 0
    feeds[1].send(kserve_raw_request("invert", rgb_image(8, 8), id="first"))
    assert not next(calls[1]).error_message

    stopper = threading.Thread(target=handle.stop, kwargs={"grace": 10})
    stopper.start()
    outcomes = [collect(call) for call in calls]
    stopper.join(30)
    for feed in feeds:
        feed.close()
    assert not stopper.is_alive()
    for responses, error in outcomes:
        assert responses == [] and error is not None
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, DRAIN_MESSAGE)
    # The shutdown did not wait out the grace period for the idle streams.
    assert not [r for r in server_log if "grace period over" in r.getMessage()]


def test_shutdown_delivers_the_items_in_flight_and_takes_no_new_ones(server, server_log):
    handle, stub, control = server()
    before = started(handle)
    gate = control.gate("invert")
    feed = Feed()
    call = stub.TranslateStream(iter(feed), timeout=60)
    result: list = []
    reader = threading.Thread(target=lambda: result.append(collect(call)))
    reader.start()
    stopper = threading.Thread(target=handle.stop, kwargs={"grace": 10})
    try:
        feed.send(item(SMALL, "in-flight"))
        assert control.entered["invert"].wait(10)  # being computed
        stopper.start()
        assert wait_for(lambda: handle.draining)
        feed.send(item(SMALL, "late"))  # sent after the shutdown began: not taken
    finally:
        gate.set()
        control.open("invert")
    reader.join(30)
    stopper.join(30)
    feed.close()
    assert not stopper.is_alive()
    ((responses, error),) = result
    assert [(r.request_id, r.error_code) for r in responses] == [("in-flight", 0)]
    assert error is not None
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, DRAIN_MESSAGE)
    assert started(handle) - before == 1  # the late item was never run
    assert not [r for r in server_log if "grace period over" in r.getMessage()]

"""Message limits between client and server: the server advertises its own, the client accepts
any answer the server may send, and nothing over a limit (an answer over the client's cap, a
request over the server's or the client's) is ever re-sent."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from clients_helpers import FakeServicer, png, start_server

from pixforge.client import Client, ClientConfigError, ReceiveLimitError, ResourceExhaustedError, RetryPolicy
from pixforge.clients.errors import RequestTooLargeError, error_from_code
from pixforge.clients.retry import GRPC_MAX_MESSAGE_BYTES, channel_options
from pixforge.codec import encode_image
from pixforge.v1 import translation_pb2_grpc as pb_grpc

MIB = 1024 * 1024


def test_receive_limit_defaults_to_grpcs_largest():
    options = dict(channel_options(RetryPolicy(), max_message_bytes=100 * MIB))
    assert options["grpc.max_send_message_length"] == 100 * MIB
    assert options["grpc.max_receive_message_length"] == GRPC_MAX_MESSAGE_BYTES
    capped = dict(channel_options(RetryPolicy(), max_receive_bytes=8 * MIB))
    assert capped["grpc.max_receive_message_length"] == 8 * MIB
    with pytest.raises(ClientConfigError, match="max_receive_bytes"):
        Client("127.0.0.1:1", max_receive_bytes=10)


@pytest.fixture(scope="module")
def server(model_repo):
    handle = start_server(model_repo, limits__max_message_bytes=96 * MIB, limits__max_output_pixels=5_000_000)
    yield handle
    handle.stop(0)


def test_server_advertises_its_limits(server):
    with Client(server.address) as client:
        info = client.get_model("invert")
        listed = client.list_models()
    assert (info.max_message_bytes, info.max_output_pixels) == (96 * MIB, 5_000_000)
    assert info.max_input_pixels > 0 and info.precision == "fp32" and info.variants == ("fp32",)
    assert listed[0].max_message_bytes == 96 * MIB


def test_answer_over_the_clients_cap_fails_once_and_fast(server):
    # Noise does not compress: the PNG answer (~3 MiB) is over a 1 MiB receive cap.
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    data = encode_image(noise)
    retry = RetryPolicy(max_attempts=5, initial_backoff=0.2, max_backoff=0.5, retry_seconds=30)
    with Client(server.address, retry=retry, max_receive_bytes=MIB) as client:
        start = time.monotonic()
        (result,) = list(client.translate_many([data], "invert"))
        assert isinstance(result.error, ReceiveLimitError), result.error
        assert result.attempts == 1 and "max_receive_bytes" in result.error.message
        assert not result.error.retryable
        with pytest.raises(ReceiveLimitError):
            client.translate(data, "invert")
        assert time.monotonic() - start < 20
    with Client(server.address, retry=retry) as client:  # the default takes what the server sends
        assert len(client.translate(data, "invert")) > MIB


# --------------------------------------------------------------------------- over-limit requests


@pytest.mark.parametrize(
    "message, kind, retryable",
    [
        ("CLIENT: Received message larger than max (5 vs. 4)", ReceiveLimitError, False),
        ("Stream removed (CLIENT: Received message larger than max (5 vs. 4))", ReceiveLimitError, False),
        ("SERVER: Received message larger than max (481328 vs. 100000)", RequestTooLargeError, False),
        ("CLIENT: Sent message larger than max (5 vs. 4)", RequestTooLargeError, False),
        (
            "request message is 5 bytes, over the server's limit of 4 bytes (limits.max_message_bytes)",
            RequestTooLargeError,
            False,
        ),
        ("queue full: 64 requests waiting", ResourceExhaustedError, True),
    ],
)
def test_resource_exhausted_is_told_apart_by_whose_limit_it_is(message, kind, retryable):
    # Before: the server's own receive limit ("SERVER: ...") became ReceiveLimitError (a client
    # setting to raise), and the server's refusal of a request over its limit was retryable.
    error = error_from_code(grpc.StatusCode.RESOURCE_EXHAUSTED, message, "t")
    assert type(error) is kind and error.retryable is retryable
    if kind is RequestTooLargeError:
        assert "not retried" in error.message and error.limit in (4, 100000)
        assert "over the server's" in error.message or "over this client's" in error.message
    assert not error_from_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", "t", pushback_ms=-1
    ).retryable


def noise_png(side: int) -> bytes:
    return encode_image(np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def small_server(model_repo):
    """A real server with a 1 MiB message limit (gRPC's own ceiling sits a quarter above it)."""
    handle = start_server(model_repo, limits__max_message_bytes=MIB)
    yield handle
    handle.stop(0)


def refused(handle) -> float:
    return handle.metrics.failures.labels("-", "RESOURCE_EXHAUSTED")._value.get()


def test_a_request_over_the_servers_limit_is_sent_once(small_server):
    data = noise_png(600)
    assert MIB < len(data) < 1.2 * MIB  # refused by the server's own check, which counts it
    retry = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.02, retry_seconds=30)
    with Client(small_server.address, retry=retry, timeout=20) as client:
        before = refused(small_server)
        with pytest.raises(RequestTooLargeError, match="over the server's") as info:
            client.translate(data, "invert")
        assert not info.value.retryable and not isinstance(info.value, ReceiveLimitError)
        assert refused(small_server) - before == 1  # before: gRPC re-sent it 5 times
        big, small = client.translate_many([data, png(1)], "invert")
    assert isinstance(big.error, RequestTooLargeError) and big.attempts == 1
    assert small.ok


class _CountCalls(grpc.ServerInterceptor):
    def __init__(self):
        self.methods: list[str] = []

    def intercept_service(self, continuation, handler_call_details):
        self.methods.append(handler_call_details.method.rsplit("/", 1)[-1])
        return continuation(handler_call_details)


@pytest.fixture
def tight_grpc_server():
    """A fake server whose gRPC receive limit is 100 kB: gRPC itself refuses larger requests."""
    counter = _CountCalls()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[counter],
        options=[("grpc.max_receive_message_length", 100_000)],
    )
    pb_grpc.add_ImageTranslationServicer_to_server(FakeServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", counter.methods
    server.stop(0).wait()


def test_grpcs_own_server_limit_is_not_a_receive_limit_and_is_not_retried(tight_grpc_server):
    address, methods = tight_grpc_server
    data = noise_png(300)
    assert len(data) > 100_000
    with Client(address, retry=RetryPolicy(max_attempts=5, initial_backoff=0.01), timeout=20) as client:
        with pytest.raises(RequestTooLargeError, match="SERVER: Received message larger") as info:
            client.translate(data, "invert")
        assert info.value.limit == 100_000
        assert methods == ["Translate"]  # before: ReceiveLimitError, after 5 attempts
        # The stream dies of the big item: it fails at once, the small one is re-sent.
        big, small = client.translate_many([data, png(2)], "invert", concurrency=2)
    assert isinstance(big.error, RequestTooLargeError) and big.attempts == 1
    assert small.ok and small.attempts <= 2


def test_a_stream_item_over_the_clients_send_limit_is_never_sent(fake_server):
    data = noise_png(700)
    assert len(data) > MIB
    with Client(fake_server.address, max_message_bytes=MIB, timeout=20) as client:
        big, small = client.translate_many([data, png(3)], "invert", concurrency=2)
    # Before: gRPC ended the stream, the item was re-sent on 5 new streams, then failed retryable.
    assert isinstance(big.error, RequestTooLargeError) and big.attempts == 0
    assert "send limit" in big.error.message and not big.error.retryable
    assert small.ok and fake_server.servicer.calls["TranslateStream"] == 1

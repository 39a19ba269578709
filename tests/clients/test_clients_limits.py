"""Message limits between client and server: the server advertises its own, the client accepts
any answer the server may send, and an answer over a cap the client set is never retried."""

from __future__ import annotations

import time

import numpy as np
import pytest
from clients_helpers import start_server

from pixforge.client import Client, ClientConfigError, ReceiveLimitError, RetryPolicy
from pixforge.clients.retry import GRPC_MAX_MESSAGE_BYTES, channel_options
from pixforge.codec import encode_image

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

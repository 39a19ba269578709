"""Retries: gRPC's service-config retry policy on unary calls, the client's own on streams."""

from __future__ import annotations

import json

import grpc
import pytest
from clients_helpers import make_image, png

from pixforge.client import (
    NO_RETRY,
    Client,
    ClientConfigError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    RetryPolicy,
    UnavailableError,
)
from pixforge.clients.retry import channel_options, service_config
from pixforge.codec import decode_image

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


def test_service_config_retries_only_idempotent_unary_methods_on_unavailable():
    config = json.loads(service_config(RetryPolicy(max_attempts=9), "round_robin"))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert {n["method"] for n in method["name"]} == {"Translate", "ListModels", "GetModel"}
    policy = method["retryPolicy"]
    # RESOURCE_EXHAUSTED is retried by the client, which can tell "busy" from "over a limit".
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert policy["maxAttempts"] == 5  # gRPC's own cap
    assert "methodConfig" not in json.loads(service_config(NO_RETRY))


def test_channel_options_raise_message_limits_and_the_retry_buffer():
    options = dict(channel_options(RetryPolicy(), max_message_bytes=100 * 2**20))
    assert options["grpc.max_send_message_length"] == 100 * 2**20
    # Otherwise a request over 256 KiB would never be retried.
    assert options["grpc.per_rpc_retry_buffer_size"] == 100 * 2**20
    assert options["grpc.keepalive_time_ms"] == 30_000


def test_backoff_is_bounded_and_grows():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.3, multiplier=2)
    for retry in range(1, 8):
        cap = min(0.3, 0.1 * 2 ** (retry - 1))
        assert all(0 <= policy.backoff(retry) <= cap for _ in range(50))
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


@pytest.mark.parametrize(
    "settings, why",
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"initial_backoff": float("nan")}, "initial_backoff"),
        ({"max_backoff": float("inf")}, "max_backoff"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"retry_seconds": -1}, "retry_seconds"),
    ],
)
def test_a_bad_retry_policy_is_a_client_config_error(settings, why):
    # Before: a bare ValueError (nan and inf passed).
    with pytest.raises(ClientConfigError, match=why):
        RetryPolicy(**settings)
    with pytest.raises(ClientConfigError, match=why):
        Client("127.0.0.1:1", retry=settings)


def test_retry_may_be_given_as_a_dict_of_its_fields():
    # Before: AttributeError ('dict' object has no attribute 'max_attempts') building the channel.
    with Client("127.0.0.1:1", retry={"max_attempts": 2, "retry_seconds": 10}) as client:
        assert client.config.retry == RetryPolicy(max_attempts=2, retry_seconds=10)
    with pytest.raises(ClientConfigError, match="unknown retry setting 'attempts'"):
        Client("127.0.0.1:1", retry={"attempts": 2})
    with pytest.raises(ClientConfigError, match="RetryPolicy or a dict"):
        Client("127.0.0.1:1", retry=3)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_unary_translate_is_retried_until_it_succeeds(fake_server, code):
    fake_server.servicer.fail_codes = [code, code]
    image = make_image(1)
    with Client(fake_server.address, retry=FAST, timeout=10) as client:
        out = client.translate(image, "invert", as_array=True)
    assert (out == 255 - image).all()
    assert fake_server.servicer.calls["Translate"] == 3


def test_a_large_request_is_retried_too(fake_server):
    # ~1 MB PNG: above gRPC's default 256 KiB retry buffer.
    fake_server.servicer.fail_codes = [grpc.StatusCode.UNAVAILABLE]
    image = make_image(2, 600, 600)
    with Client(fake_server.address, retry=FAST, timeout=20) as client:
        out = client.translate(image, "invert", as_array=True)
    assert (out == 255 - image).all()
    assert fake_server.servicer.calls["Translate"] == 2


def test_retries_give_up_after_max_attempts_with_a_typed_error(fake_server):
    fake_server.servicer.fail_codes = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 10
    with Client(fake_server.address, retry=FAST, timeout=10) as client, pytest.raises(ResourceExhaustedError):
        client.translate(png(3), "invert")
    assert fake_server.servicer.calls["Translate"] == FAST.max_attempts


def test_failed_precondition_is_not_retried_and_unavailable_is(fake_server):
    # The server answers "model still loading" with UNAVAILABLE: retried until the model is up.
    fake_server.servicer.fail_codes = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    with Client(fake_server.address, retry=FAST, timeout=10) as client:
        assert client.translate(png(5), "invert")
        assert fake_server.servicer.calls["Translate"] == 3
        fake_server.servicer.fail_codes = [grpc.StatusCode.FAILED_PRECONDITION]
        with pytest.raises(FailedPreconditionError, match="injected failure"):
            client.translate(png(5), "invert")
    assert fake_server.servicer.calls["Translate"] == 4


def test_no_retry_policy_and_non_retryable_codes_fail_at_once(fake_server):
    fake_server.servicer.fail_codes = [grpc.StatusCode.UNAVAILABLE]
    with Client(fake_server.address, retry=NO_RETRY, timeout=10) as client:
        with pytest.raises(UnavailableError, match="injected failure"):
            client.translate(png(4), "invert")
        fake_server.servicer.fail_codes = [grpc.StatusCode.INVALID_ARGUMENT]
    with Client(fake_server.address, retry=FAST, timeout=10) as client:
        with pytest.raises(InvalidArgumentError):
            client.translate(png(4), "invert")
    assert fake_server.servicer.calls["Translate"] == 2


@pytest.mark.parametrize("ordered", [True, False])
def test_a_broken_stream_resends_its_unanswered_items(fake_server, ordered):
    fake_server.servicer.stream_break_after = 5
    images = [png(i) for i in range(20)]
    with Client(fake_server.address, retry=FAST, timeout=10) as client:
        results = list(client.translate_many(images, "invert", concurrency=4, ordered=ordered))
    assert sorted(r.index for r in results) == list(range(20))
    assert all(r.ok for r in results)
    assert max(r.attempts for r in results) == 2
    for r in results:
        assert (decode_image(r.image).pixels == 255 - decode_image(images[r.index]).pixels).all()
    assert fake_server.servicer.calls["TranslateStream"] >= 2


def test_stream_items_fail_once_retries_are_used_up(fake_server):
    fake_server.servicer.stream_break_after = 0  # the first stream dies at once
    with Client(fake_server.address, retry=NO_RETRY, timeout=10) as client:
        results = list(client.translate_many([png(1), png(2)], "invert", concurrency=1))
    assert isinstance(results[0].error, UnavailableError)
    assert results[1].ok  # the next stream is fine


def test_over_limit_image_is_not_retried(model_repo):
    """RESOURCE_EXHAUSTED for an over-limit image carries a negative retry pushback: one attempt only."""
    import numpy as np
    from clients_helpers import start_server

    from pixforge.client import Client
    from pixforge.clients.errors import ResourceExhaustedError
    from pixforge.codec import encode_image

    handle = start_server(model_repo, limits__max_input_pixels=100)
    try:
        with Client(f"127.0.0.1:{handle.port}") as client:
            with pytest.raises(ResourceExhaustedError, match="limit"):
                client.translate(encode_image(np.zeros((20, 20, 3), np.uint8)), model="invert")
        sample = handle.metrics.requests.labels(model="invert", method="Translate")._value.get()
        assert sample == 1
    finally:
        handle.stop(0)

"""Client-side validation: a bad setting or argument fails at once with the library's own error
type and a message naming it, instead of surfacing later as a gRPC failure or a bare ValueError."""

from __future__ import annotations

import asyncio
import math

import pytest
from clients_helpers import free_port, png

from pixforge.client import AsyncClient, Client, ClientConfigError, InvalidArgumentError, TranslateParams
from pixforge.clients.errors import ClientClosedError

NOWHERE = f"127.0.0.1:{free_port()}"


@pytest.mark.parametrize("name", ["timeout", "stream_duration", "keepalive_s"])
@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0])
def test_config_durations_must_be_finite(name, value):
    # Before: inf and nan were accepted (nan compares False with everything).
    with pytest.raises(ClientConfigError, match=name):
        Client(NOWHERE, **{name: value})


@pytest.mark.parametrize("value", [-1, math.nan, math.inf])
def test_per_call_timeouts_must_be_finite_and_not_negative(value):
    # Before: -1 and nan went to gRPC (an instant DEADLINE_EXCEEDED, or no deadline at all).
    with pytest.raises(InvalidArgumentError, match="timeout"):
        TranslateParams("invert", timeout=value)
    with Client(NOWHERE, timeout=5) as client:
        with pytest.raises(InvalidArgumentError, match="timeout"):
            client.translate(png(1), "invert", timeout=value)
        with pytest.raises(InvalidArgumentError, match="timeout"):
            client.list_models(timeout=value)
        with pytest.raises(InvalidArgumentError, match="timeout"):
            client.health(timeout=value)
        with pytest.raises(InvalidArgumentError, match="timeout"):
            client.translate_many([png(1)], "invert", timeout=value)


@pytest.mark.parametrize("token", ["s3cret\n", "s3cret\r", "tab\there", "caf\u00e9"])
def test_a_token_gRPC_metadata_cannot_carry_is_refused(token):
    # Before: every call failed with INTERNAL "Invalid metadata".
    with pytest.raises(ClientConfigError, match="token contains"):
        Client(NOWHERE, token=token)
    with Client(NOWHERE, token="ok-token_1.2~/+=") as client:
        assert client.config.metadata() == (("authorization", "Bearer ok-token_1.2~/+="),)


def test_a_tls_root_file_that_is_not_pem_is_refused(tmp_path):
    # Before: accepted, then every call failed as UNAVAILABLE.
    der = tmp_path / "ca.der"
    der.write_bytes(b"\x30\x82\x01\x0a" + bytes(100))
    with pytest.raises(ClientConfigError, match=r"ca\.der is not PEM"):
        Client(NOWHERE, tls=str(der))


def test_calls_after_close_raise_client_closed_error():
    # Before: a bare ValueError ("Cannot invoke RPC on closed channel!") from grpc.
    client = Client(NOWHERE, timeout=5)
    client.close()
    for call in (
        lambda: client.translate(png(1), "invert"),
        lambda: client.list_models(),
        lambda: client.get_model("invert"),
        lambda: client.health(),
        lambda: client.translate_many([png(1)], "invert"),
        lambda: client.wait_ready(1),
    ):
        with pytest.raises(ClientClosedError, match="client is closed"):
            call()


def test_async_calls_after_close_raise_client_closed_error():
    async def main():
        client = AsyncClient(NOWHERE, timeout=5)
        await client.close()
        with pytest.raises(ClientClosedError):
            await client.translate(png(1), "invert")
        with pytest.raises(ClientClosedError):
            await client.health()
        with pytest.raises(ClientClosedError):
            client.translate_many([png(1)], "invert")

    asyncio.run(main())


@pytest.mark.parametrize("option", [{"concurrency": 0}, {"streams": 0}, {"streams": -2}])
def test_zero_concurrency_and_zero_streams_fail_alike(option):
    # Before: concurrency=0 gave InvalidArgumentError but streams=0 a bare ValueError.
    name = next(iter(option))
    with Client(NOWHERE) as client:
        with pytest.raises(InvalidArgumentError, match=f"{name} must be"):
            client.translate_many([png(1)], "invert", **option)

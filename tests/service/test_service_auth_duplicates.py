"""A call carrying more than one ``authorization`` value is refused, whatever the values and their
order, on the gRPC port (UNAUTHENTICATED) and on both HTTP ports (401): with a dict of the
metadata "the last one wins", so a wrong token followed by the right one got through."""

from __future__ import annotations

import http.client

import grpc
import pytest
from service_helpers import build_invert, test_config

from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

RIGHT = ("authorization", "Bearer s3cret")
WRONG = ("authorization", "Bearer nope")


@pytest.fixture(scope="module")
def server(start_server, tmp_path_factory):
    models = tmp_path_factory.mktemp("auth-models")
    build_invert(models / "invert" / "1" / "model.onnx")
    config = test_config(models, http_port=-1, metrics_port=-1, **{"auth.token": "s3cret"})
    handle, _ = start_server(config)
    return handle


def refused(handle) -> float:
    value = handle.metrics.registry.get_sample_value(
        "pixforge_request_failures_total", {"model": "-", "code": "UNAUTHENTICATED"}
    )
    return value or 0.0


def list_models(handle, metadata) -> grpc.RpcError | None:
    with grpc.insecure_channel(handle.address) as channel:
        try:
            pb_grpc.ImageTranslationStub(channel).ListModels(
                pb.ListModelsRequest(), metadata=metadata, timeout=10
            )
        except grpc.RpcError as error:
            return error
    return None


@pytest.mark.parametrize(
    "metadata",
    [(WRONG, RIGHT), (RIGHT, WRONG), (RIGHT, RIGHT)],
    ids=["wrong-then-right", "right-then-wrong", "right-twice"],
)
def test_grpc_call_with_two_authorization_values_is_refused(server, metadata):
    before = refused(server)
    error = list_models(server, metadata)
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "2 authorization values sent; send exactly one" in error.details()
    assert refused(server) == before + 1


def test_grpc_call_with_one_right_authorization_value_passes(server):
    assert list_models(server, (RIGHT,)) is None
    error = list_models(server, (WRONG,))
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing or invalid bearer token" in error.details()


def http_get(port: int, path: str, authorization: list[str]) -> tuple[int, bytes]:
    """GET with each value of ``authorization`` as its own header line."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", path)
        for value in authorization:
            connection.putheader("Authorization", value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("port_name, path", [("http_port", "/v2"), ("metrics_port", "/metrics")])
def test_http_request_with_two_authorization_headers_is_refused(server, port_name, path):
    port = getattr(server, port_name)
    assert http_get(port, path, ["Bearer s3cret"])[0] == 200
    for values in (["Bearer nope", "Bearer s3cret"], ["Bearer s3cret", "Bearer nope"], ["Bearer s3cret"] * 2):
        status, body = http_get(port, path, values)
        assert status == 401, values
        assert b"2 authorization values sent" in body


def test_probes_still_need_no_token(server):
    # The exemption is untouched: probes answer whatever authorization they carry, or none.
    assert http_get(server.http_port, "/v2/health/live", [])[0] == 200
    assert http_get(server.http_port, "/v2/health/live", ["Bearer nope", "Bearer s3cret"])[0] == 200

"""KServe v2 over HTTP/REST (`http_port`) with the REAL tritonclient.http: probes, metadata, infer
(JSON and binary tensors) equal to the gRPC KServe ModelInfer and to pixforge.v1 Translate,
parameters, every error and its documented HTTP status, auth and TLS on both protocols, /metrics
on the HTTP port, the metrics port's 404, configuration / statistics / repository control, and
graceful shutdown.

tritonclient.http registers no protobuf symbols (unlike tritonclient.grpc), so it runs in this
process beside pixforge's own KServe stubs.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.http as httpclient
from service_helpers import (
    SMALL_LIMITS,
    EngineControl,
    build_invert,
    decode,
    png,
    rgb_image,
    smooth_image,
    test_config,
)
from service_helpers import (
    kserve_json_request as json_request,
)
from tritonclient.utils import InferenceServerException

import pixforge
from pixforge.cli import build_parser
from pixforge.kserve.v2 import grpc_service_pb2 as kpb
from pixforge.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc
from pixforge.service.config import config_from_args, load_config
from pixforge.service.errors import ConfigError
from pixforge.service.kserve_http import HTTP_STATUS, uint8_json_list
from pixforge.service.server import serve
from pixforge.v1 import translation_pb2 as pb


@pytest.fixture(scope="module")
def server(start_kserve, model_repo):
    return start_kserve(
        # strict_readiness off: the standard repository holds broken models on purpose.
        test_config(
            model_repo, http_port=-1, strict_readiness=False, **SMALL_LIMITS, **{"batching.max_batch_size": 4}
        )
    )


@pytest.fixture(scope="module")
def client(server):
    with httpclient.InferenceServerClient(f"127.0.0.1:{server[0].http_port}") as c:
        yield c


def url(handle, path: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{handle.http_port}{path}"


def call(
    target: str,
    body: bytes | dict | None = None,
    headers: dict | None = None,
    context: ssl.SSLContext | None = None,
    method: str | None = None,
):
    """(status, headers, body bytes) of one HTTP request; a dict body is sent as JSON."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(target, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def infer_input(array: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("image", list(array.shape), "UINT8")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def grpc_infer(stub, model: str, array: np.ndarray, **parameters) -> np.ndarray:
    tensor = kpb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8", shape=list(array.shape))
    request = kpb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[array.tobytes()])
    for key, value in parameters.items():
        request.parameters[key].int64_param = value
    response = stub.ModelInfer(request, timeout=30)
    return np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(list(response.outputs[0].shape))


def v1_translate(v1, model: str, pixels: np.ndarray, **options) -> np.ndarray:
    request = pb.TranslateRequest(model=model, image=png(pixels), options=pb.TranslateOptions(**options))
    return decode(v1.Translate(request, timeout=30).image)


def error_of(fn, *args, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        fn(*args, **kwargs)
    assert "Traceback" not in info.value.message()
    return info.value


# --------------------------------------------------------------------------- config, probes, metadata


def test_http_port_setting():
    assert load_config(env={}).http_port == 8000  # Triton's HTTP port
    assert load_config(env={"PIXFORGE_HTTP_PORT": "0"}).http_port == 0
    args = build_parser().parse_args(["serve", "--http-port", "8123"])
    assert config_from_args(args, env={}).http_port == 8123
    with pytest.raises(ConfigError, match="http_port"):
        load_config(overrides={"http_port": 70000}, env={})


def test_probes_and_metadata(server, client):
    handle = server[0]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sr2") and client.is_model_ready("sr2", "1")
    assert not client.is_model_ready("sr2", "7")
    assert not client.is_model_ready("floatin")  # FAILED to load (breaks the contract)
    assert not client.is_model_ready("no-such-model")

    meta = client.get_server_metadata()
    assert meta["name"] == "pixforge" and meta["version"] == pixforge.__version__
    assert {"parameters", "binary_tensor_data"} <= set(meta["extensions"])
    assert "model_stream_infer" not in meta["extensions"]  # gRPC only

    sr2 = client.get_model_metadata("sr2")
    assert sr2 == {
        "name": "sr2",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}],
        "outputs": [{"name": "image_out", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}],
    }
    assert client.get_model_metadata("sr2", "1") == sr2
    gray = client.get_model_metadata("grayin")
    assert gray["inputs"][0]["shape"] == [-1, -1, -1, 1] and gray["outputs"][0]["shape"] == [-1, -1, -1, 3]

    # The raw answers: JSON bodies, and statuses a load balancer can read.
    status, _, body = call(url(handle, "/v2/health/live"))
    assert (status, json.loads(body)) == (200, {"live": True})
    status, _, body = call(url(handle, "/v2/health/ready"))
    assert (status, json.loads(body)) == (200, {"ready": True})
    status, _, body = call(url(handle, "/v2/models/floatin/ready"))
    assert (status, json.loads(body)) == (503, {"name": "floatin", "ready": False})
    assert call(url(handle, "/v2/models/no-such-model/ready"))[0] == 404
    assert call(url(handle, "/v2/models/sr2/versions/x/ready"))[0] == 400
    status, _, body = call(url(handle, "/v2/models/floatin"))
    assert status == 400 and "failed" in json.loads(body)["error"]  # FAILED_PRECONDITION


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize(
    "binary_in, binary_out", [(True, True), (False, False), (True, False), (False, True)]
)
def test_infer_equals_grpc_and_translate(server, client, binary_in, binary_out):
    _, v1, stub = server
    batch = np.stack([rgb_image(9, 7, seed=2), rgb_image(9, 7, seed=3)])
    outputs = [httpclient.InferRequestedOutput("image_out", binary_data=binary_out)]
    result = client.infer("sr2", [infer_input(batch, binary_in)], outputs=outputs, request_id="req-1")
    response = result.get_response()
    assert response["model_name"] == "sr2" and response["model_version"] == "1" and response["id"] == "req-1"
    [tensor] = response["outputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("image_out", "UINT8", [2, 18, 14, 3])
    assert ("parameters" in tensor) is binary_out and ("data" in tensor) is not binary_out
    out = result.as_numpy("image_out").reshape(tensor["shape"])  # JSON data is a flat list
    assert out.dtype == np.uint8
    assert np.array_equal(out, grpc_infer(stub, "sr2", batch))
    for i in range(2):
        assert np.array_equal(out[i], v1_translate(v1, "sr2", batch[i]))


def test_infer_defaults_compression_unbatched_and_nested(server, client):
    handle, _, stub = server
    image = rgb_image(10, 14, seed=1)
    # No requested output: tritonclient asks binary_data_output; the answer is binary.
    result = client.infer("invert", [infer_input(image[None])])
    assert result.get_response()["outputs"][0]["parameters"] == {"binary_data_size": image.size}
    assert np.array_equal(result.as_numpy("image_out")[0], 255 - image)
    # gzip / deflate both ways.
    compressed = client.infer(
        "invert",
        [infer_input(image[None], binary=False)],
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    assert np.array_equal(compressed.as_numpy("image_out")[0], 255 - image)

    # [H, W, C] (no batch dimension in, none out) and data nested as the shape; no outputs asked
    # and no binary_data_output: JSON data, as Triton answers.
    body = json_request(image, id="nested")
    body["inputs"][0]["data"] = image.tolist()
    status, headers, raw = call(url(handle, "/v2/models/invert/infer"), body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    answer = json.loads(raw)
    assert answer["id"] == "nested" and answer["outputs"][0]["shape"] == [10, 14, 3]
    assert np.array_equal(np.array(answer["outputs"][0]["data"], np.uint8).reshape(10, 14, 3), 255 - image)
    assert headers["x-request-id"] == "nested"
    # Without an id the x-request-id header names the request (echoed, not put in the body).
    status, headers, raw = call(
        url(handle, "/v2/models/invert/versions/1/infer"), json_request(image), {"x-request-id": "hdr-7"}
    )
    assert status == 200 and headers["x-request-id"] == "hdr-7" and "id" not in json.loads(raw)

    # The binary extension by hand: JSON header, then the raw tensor; binary output by the request
    # parameter.
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 10, 14, 3],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": image.size},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    status, headers, raw = call(
        url(handle, "/v2/models/invert/infer"),
        head + image.tobytes(),
        {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert status == 200
    n = int(headers["Inference-Header-Content-Length"])
    meta = json.loads(raw[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == len(raw) - n == image.size
    assert np.array_equal(np.frombuffer(raw[n:], np.uint8).reshape(10, 14, 3), 255 - image)


def test_json_encoding_of_outputs():
    values = np.array([0, 7, 10, 99, 100, 255, 1], np.uint8)
    assert uint8_json_list(values) == b"[0,7,10,99,100,255,1]"
    big = np.random.default_rng(0).integers(0, 256, (3, 700, 700), dtype=np.uint8)  # several chunks
    assert json.loads(uint8_json_list(big)) == big.ravel().tolist()
    assert uint8_json_list(np.zeros(0, np.uint8)) == b"[]"


def test_parameters_reach_the_pipeline(server, client):
    _, v1, stub = server
    large = rgb_image(40, 36, seed=4)[None]  # several 16 px tiles on the blur model
    params = {"tile_size": 16, "tile_overlap": 4}
    tiled = client.infer("blur", [infer_input(large)], parameters=params).as_numpy("image_out")
    assert np.array_equal(tiled[0], v1_translate(v1, "blur", large[0], **params))
    assert np.array_equal(tiled, grpc_infer(stub, "blur", large, **params))

    photo = smooth_image(40, 48)[None]
    rendered = client.infer("color", [infer_input(photo)], parameters={"render_size": 16})
    expected = v1_translate(v1, "color", photo[0], render_size=16)
    assert np.array_equal(rendered.as_numpy("image_out")[0], expected)
    plain = client.infer("color", [infer_input(photo)]).as_numpy("image_out")[0]
    assert not np.array_equal(plain, expected)


def test_http_requests_are_counted_and_metrics_are_served(server, client):
    handle = server[0]
    client.infer("invert", [infer_input(rgb_image(4, 4)[None])])
    status, headers, body = call(url(handle, "/metrics"))
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'pixforge_requests_total{method="HTTPInfer",model="invert"}' in text
    assert 'pixforge_model_ready{model="invert"} 1.0' in text


# --------------------------------------------------------------------------- errors


def _valid() -> dict:
    return json_request(rgb_image(4, 4), id="e")  # a valid [4, 4, 3] invert request


def _change(fn):
    def change(body):
        fn(body)
        return body

    return change


def _tensor(**fields):
    return _change(lambda b: b["inputs"][0].update(fields))


def _params(**fields):
    return _change(lambda b: b.setdefault("parameters", {}).update(fields))


# (id, model, change to a valid JSON request, HTTP status, message fragment)
ERRORS = [
    ("unknown model", "no-such-model", None, 404, "unknown model 'no-such-model'"),
    ("unknown version", "invert/versions/9", None, 404, "no version 9"),
    ("bad version", "invert/versions/v2", None, 400, "must be empty (latest) or a version number"),
    ("failed model", "floatin", None, 400, "failed"),  # FAILED_PRECONDITION
    ("no inputs", "invert", _change(lambda b: b.pop("inputs")), 400, "no inputs"),
    ("unknown input", "invert", _tensor(name="pixels"), 400, "unknown input 'pixels'"),
    ("input twice", "invert", _change(lambda b: b["inputs"].append(b["inputs"][0])), 400, "given 2 times"),
    ("datatype", "invert", _tensor(datatype="FP32"), 400, "datatype FP32"),
    ("rank 2", "invert", _tensor(shape=[4, 12]), 400, "expected [N, H, W, C]"),
    ("zero size", "invert", _tensor(shape=[0, 4, 3]), 400, "positive sizes"),
    ("shape type", "invert", _tensor(shape=["4", 4, 3]), 400, "expected [N, H, W, C]"),
    ("count", "invert", _tensor(data=[1, 2, 3]), 400, "has 3 elements in data"),
    ("value", "invert", _tensor(data=[300] * 48), 400, "value 300"),
    ("negative", "invert", _tensor(data=[-1] * 48), 400, "value -1"),
    ("float", "invert", _tensor(data=[1.5] * 48), 400, "non-integer"),
    ("ragged", "invert", _tensor(data=[[1, 2], [3]]), 400, "ragged"),
    ("booleans", "invert", _tensor(data=[True] + [1] * 47), 400, "holds booleans"),
    ("huge value", "invert", _tensor(data=[2**70] + [1] * 47), 400, "out of range for UINT8"),
    (
        "output twice",
        "invert",
        _change(lambda b: b.update(outputs=[{"name": "image_out"}, {"name": "image_out"}])),
        400,
        "requested 2 times",
    ),
    ("nesting", "invert", _tensor(data=np.zeros((4, 3, 4), int).tolist()), 400, "nested as [4, 3, 4]"),
    ("no data", "invert", _change(lambda b: b["inputs"][0].pop("data")), 400, "carries no data"),
    ("channels", "invert", _tensor(shape=[4, 12, 1]), 400, "takes 3-channel images"),
    ("shared memory", "invert", _tensor(parameters={"shared_memory_region": "r"}), 400, "shared-memory"),
    ("unknown output", "invert", _change(lambda b: b.update(outputs=[{"name": "mask"}])), 400, "'mask'"),
    (
        "classification",
        "invert",
        _change(lambda b: b.update(outputs=[{"name": "image_out", "parameters": {"classification": 3}}])),
        400,
        "classification outputs",
    ),
    ("param type", "invert", _params(tile_size="16"), 400, "must be an integer, got string"),
    ("param sign", "invert", _params(tile_overlap=-1), 400, "must be >= 0"),
    ("tile range", "invert", _params(tile_size=4), 400, "tile_size must be within"),
    ("binary flag", "invert", _params(binary_data_output="yes"), 400, "must be a boolean"),
    ("id type", "invert", _change(lambda b: b.update(id=7)), 400, "id must be a string"),
    ("id length", "invert", _change(lambda b: b.update(id="x" * 200)), 400, "over the limit of 128"),
]


@pytest.mark.parametrize(
    "model, change, status, fragment", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors_map_to_documented_statuses(server, model, change, status, fragment):
    body = _valid() if change is None else change(_valid())
    got, _, raw = call(url(server[0], f"/v2/models/{model}/infer"), body)
    error = json.loads(raw)
    assert (got, list(error)) == (status, ["error"]), error
    assert fragment in error["error"] and "Traceback" not in error["error"]


def test_body_and_binary_errors(server):
    handle = server[0]
    target = url(handle, "/v2/models/invert/infer")
    image = rgb_image(4, 4)

    def binary(head: dict, data: bytes, length: str | None = None):
        text = json.dumps(head).encode()
        return call(target, text + data, {"Inference-Header-Content-Length": length or str(len(text))})

    head = {"inputs": [{"name": "image", "shape": [4, 4, 3], "datatype": "UINT8", "parameters": {}}]}
    head["inputs"][0]["parameters"]["binary_data_size"] = 48
    cases = [
        (call(target, b"{not json"), "not valid JSON"),
        (call(target, b"[1, 2]"), "must be a JSON object"),
        (binary(head, image.tobytes(), length="x"), "Inference-Header-Content-Length"),
        (binary(head, image.tobytes(), length="99999"), "Inference-Header-Content-Length"),
        (binary(head, image.tobytes()[:40]), "but 40 bytes follow"),
        (binary({"inputs": [dict(head["inputs"][0], data=[0] * 48)]}, image.tobytes()), "both binary data"),
        (binary(json_request(image), image.tobytes()), "no input claims them"),
    ]
    head["inputs"][0]["parameters"]["binary_data_size"] = 40
    cases.append(
        (binary(head, image.tobytes()[:40]), "40 bytes of binary data, its shape [4, 4, 3] needs 48")
    )
    for (status, _, raw), fragment in cases:
        assert status == 400 and fragment in json.loads(raw)["error"], raw

    status, _, raw = call(target, _valid(), {"x-request-id": "y" * 200})
    assert status == 400 and "x-request-id header" in json.loads(raw)["error"]
    status, _, raw = call(url(handle, "/v2/no/such/route"))
    assert status == 404 and "not found" in json.loads(raw)["error"]
    status, headers, raw = call(url(handle, "/v2/models/invert/infer"))  # GET
    assert status == 405 and "POST" in headers["Allow"] and "error" in json.loads(raw)


def test_extensions_not_offered_are_501(client):
    # Shared memory, trace and log settings: 501 with the message the gRPC front's UNIMPLEMENTED has.
    for fn, args in (
        (client.get_system_shared_memory_status, ()),
        (client.register_system_shared_memory, ("region", "/key", 64)),
        (client.get_cuda_shared_memory_status, ()),
        (client.get_trace_settings, ()),
        (client.update_trace_settings, ("sr2", {"trace_level": ["TIMESTAMPS"]})),
        (client.get_log_settings, ()),
        (client.update_log_settings, ({"log_info": False},)),
    ):
        error = error_of(fn, *args)
        assert error.status() == "501" and "pixforge does not offer" in error.message(), fn.__name__


def test_size_limits_are_413(server, client):
    # Over limits.max_input_pixels (200 000): no retry can help -> 413, like a too-large body.
    error = error_of(client.infer, "invert", [infer_input(rgb_image(500, 500)[None])])
    assert error.status() == "413" and "over the limit" in error.message()
    # The output tensor over limits.max_message_bytes (1 MiB).
    error = error_of(client.infer, "sr2", [infer_input(rgb_image(300, 300)[None])])
    assert error.status() == "413" and "limits.max_message_bytes" in error.message()
    # A JSON output takes up to 4 bytes per element: 270 000 elements fit as binary, not as JSON.
    image = rgb_image(300, 300)[None]
    json_out = [httpclient.InferRequestedOutput("image_out", binary_data=False)]
    error = error_of(client.infer, "invert", [infer_input(image)], outputs=json_out)
    assert error.status() == "413" and "binary" in error.message()
    assert np.array_equal(client.infer("invert", [infer_input(image)]).as_numpy("image_out"), 255 - image)
    # A request body over limits.max_message_bytes is refused before it is parsed.
    error = error_of(client.infer, "invert", [infer_input(rgb_image(620, 600)[None])])
    assert error.status() == "413" and "limits.max_message_bytes" in error.message()
    compressed = gzip.compress(b" " * (2 << 20))  # the limit holds for the decompressed body
    status, _, raw = call(url(server[0], "/v2/models/invert/infer"), compressed, {"Content-Encoding": "gzip"})
    assert status == 413


def test_status_table_is_the_documented_one():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    for code, status in HTTP_STATUS.items():
        if code is not grpc.StatusCode.OK:
            assert f"| `{code.name}` | {status}" in doc, code.name


# --------------------------------------------------------------------------- busy, deadlines, shutdown


def _background_infer(handle, image, results: list, **headers):
    def run():
        results.append(call(url(handle, "/v2/models/invert/infer"), json_request(image), headers))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_busy_is_429_with_retry_after_and_timeout_is_504(start_server, tmp_path):
    control = EngineControl()
    build_invert(tmp_path / "models" / "invert" / "1" / "model.onnx")
    config = test_config(tmp_path / "models", http_port=-1, max_workers=2, **{"admission.max_queued": 0})
    handle, _ = start_server(config, control)
    image = rgb_image(8, 8, seed=5)
    gate = control.gate("invert")
    results: list = []
    threads = []
    try:
        threads = [_background_infer(handle, image, results) for _ in range(2)]  # both workers
        assert control.entered["invert"].wait(10)
        deadline = time.monotonic() + 10
        while handle.runner.admission.running < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, headers, raw = call(url(handle, "/v2/models/invert/infer"), json_request(image))
        assert status == 429 and "server busy" in json.loads(raw)["error"]
        assert int(headers["Retry-After"]) >= 1
    finally:
        gate.set()
        control.open("invert")
        for thread in threads:
            thread.join(30)
    assert [r[0] for r in results] == [200, 200]

    # Triton's `timeout` parameter (microseconds) is the request's deadline: 504 when it passes,
    # and the work is dropped (the admission slot comes back).
    gate = control.gate("invert")
    try:
        start = time.monotonic()
        body = json_request(image, parameters={"timeout": 300_000})
        status, _, raw = call(url(handle, "/v2/models/invert/infer"), body)
        assert status == 504 and "timeout" in json.loads(raw)["error"]
        assert time.monotonic() - start < 5
    finally:
        gate.set()
        control.open("invert")
    deadline = time.monotonic() + 10
    while handle.runner.admission.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handle.runner.admission.running == 0
    assert (
        call(url(handle, "/v2/models/invert/infer"), json_request(image, parameters={"timeout": 10**7}))[0]
        == 200
    )


def test_shutdown_refuses_new_requests_with_503_and_finishes_in_flight(start_server, tmp_path):
    control = EngineControl()
    build_invert(tmp_path / "models" / "invert" / "1" / "model.onnx")
    handle, _ = start_server(test_config(tmp_path / "models", http_port=-1), control)
    image = rgb_image(8, 8, seed=3)
    gate = control.gate("invert")
    results: list = []
    try:
        running = _background_infer(handle, image, results)  # keeps the drain waiting
        assert control.entered["invert"].wait(10)
        stopper = threading.Thread(target=handle.stop, kwargs={"grace": 20})
        stopper.start()
        deadline = time.monotonic() + 10
        while not handle.draining and time.monotonic() < deadline:
            time.sleep(0.01)
        assert call(url(handle, "/v2/health/live"))[0] == 200
        assert call(url(handle, "/v2/health/ready"))[0] == 503
        assert call(url(handle, "/v2/models/invert/ready"))[0] == 503
        status, _, raw = call(url(handle, "/v2/models/invert/infer"), json_request(image))
        assert status == 503 and "shutting down" in json.loads(raw)["error"]
    finally:
        gate.set()
        control.open("invert")
    running.join(30)
    status, _, raw = results[0]
    assert status == 200  # the in-flight request finished
    assert np.array_equal(
        np.array(json.loads(raw)["outputs"][0]["data"], np.uint8).reshape(8, 8, 3), 255 - image
    )
    stopper.join(30)
    with pytest.raises(OSError):  # the port is closed
        urllib.request.urlopen(url(handle, "/v2/health/live"), timeout=2)


# --------------------------------------------------------------------------- auth and TLS


def test_auth_on_both_protocols(start_server, tmp_path):
    build_invert(tmp_path / "models" / "invert" / "1" / "model.onnx")
    config = test_config(tmp_path / "models", http_port=-1, metrics_port=-1, **{"auth.token": "s3cret"})
    handle, _ = start_server(config)
    image = rgb_image(4, 4)[None]
    token = {"Authorization": "Bearer s3cret"}
    with httpclient.InferenceServerClient(f"127.0.0.1:{handle.http_port}") as client:
        # Probes need no token (Kubernetes and KServe call them without secrets).
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("invert")
        assert client.is_model_ready("invert", "1")
        for fn, args in (
            (client.infer, ("invert", [infer_input(image)])),
            (client.get_model_metadata, ("invert",)),
            (client.get_server_metadata, ()),
        ):
            assert error_of(fn, *args).status() == "401"
            assert error_of(fn, *args, headers={"Authorization": "Bearer wrong"}).status() == "401"
        result = client.infer("invert", [infer_input(image)], headers=token)
        assert np.array_equal(result.as_numpy("image_out"), 255 - image)
        assert client.get_model_metadata("invert", headers=token)["name"] == "invert"
    status, headers, raw = call(url(handle, "/metrics"))
    assert (
        status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and "pixforge_" not in raw.decode()
    )
    assert "error" in json.loads(raw)
    assert call(url(handle, "/metrics"), headers=token)[0] == 200
    metrics = f"http://127.0.0.1:{handle.metrics_port}/metrics"
    assert call(metrics)[0] == 401 and call(metrics, headers=token)[0] == 200

    # The same token on the gRPC port.
    tensor = kpb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8", shape=list(image.shape))
    request = kpb.ModelInferRequest(
        model_name="invert", inputs=[tensor], raw_input_contents=[image.tobytes()]
    )
    with grpc.insecure_channel(handle.address) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ModelInfer(request, timeout=10, metadata=[("authorization", "Bearer s3cret")]).outputs


def test_tls_and_mutual_tls(start_server, tmp_path, pki):
    build_invert(tmp_path / "models" / "invert" / "1" / "model.onnx")
    tls = {"tls.cert_file": str(pki / "server.pem"), "tls.key_file": str(pki / "server.key")}
    image = rgb_image(4, 4)[None]
    handle, _ = start_server(test_config(tmp_path / "models", http_port=-1, **tls))
    options = {"ca_certs": str(pki / "ca.pem")}
    with httpclient.InferenceServerClient(
        f"127.0.0.1:{handle.http_port}", ssl=True, ssl_options=options
    ) as c:
        assert c.is_server_ready()
        assert np.array_equal(c.infer("invert", [infer_input(image)]).as_numpy("image_out"), 255 - image)
    with pytest.raises(OSError):  # plain HTTP to the TLS port gets nothing
        urllib.request.urlopen(url(handle, "/v2/health/live"), timeout=5)

    mtls, _ = start_server(
        test_config(tmp_path / "models", http_port=-1, **tls, **{"tls.client_ca_file": str(pki / "ca.pem")})
    )
    no_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        call(url(mtls, "/v2/health/live", "https"), context=no_cert)
    with_cert = dict(options, certfile=str(pki / "client.pem"), keyfile=str(pki / "client.key"))
    with httpclient.InferenceServerClient(
        f"127.0.0.1:{mtls.http_port}", ssl=True, ssl_options=with_cert
    ) as c:
        assert np.array_equal(c.infer("invert", [infer_input(image)]).as_numpy("image_out"), 255 - image)


# --------------------------------------------------------------------------- ports


def test_metrics_port_serves_only_metrics_and_http_port_can_be_off(start_server, tmp_path):
    build_invert(tmp_path / "models" / "invert" / "1" / "model.onnx")
    handle, _ = start_server(test_config(tmp_path / "models", metrics_port=-1))  # http_port 0
    assert handle.http_port == 0 and handle.http_endpoint is None
    base = f"http://127.0.0.1:{handle.metrics_port}"
    assert call(f"{base}/metrics")[0] == 200
    for path in ("/v2/health/ready", "/v2", "/v2/models/invert/ready", "/"):
        status, _, raw = call(f"{base}{path}")
        assert status == 404 and b"pixforge_" not in raw, path
    assert call(f"{base}/v2/models/invert/infer", json_request(rgb_image(4, 4)))[0] == 404

    off, _ = start_server(test_config(tmp_path / "models", http_port=-1, kserve=False))
    assert off.http_port == 0  # the HTTP port speaks KServe v2 only

    # A taken port is a configuration error naming the key, and nothing is left running.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="http_port: cannot bind"):
            serve(test_config(tmp_path / "models", http_port=port))


# --------------------------------------------------------------------------- management extensions


def test_model_config_statistics_and_index(server, client):
    config = client.get_model_config("sr2")
    assert config["name"] == "sr2" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4
    assert [t["name"] for t in config["input"]] == ["image"]
    assert [t["name"] for t in config["output"]] == ["image_out"]
    assert client.get_model_config("sr2", "1") == config
    assert error_of(client.get_model_config, "no-such-model").status() == "404"

    client.infer("sr2", [infer_input(rgb_image(4, 4)[None])])
    stats = client.get_inference_statistics("sr2")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("sr2", "1")]
    assert stats[0]["inference_stats"]["success"]["count"] >= 1
    assert client.get_inference_statistics("sr2", "1")["model_stats"][0]["name"] == "sr2"
    every = {s["name"] for s in client.get_inference_statistics()["model_stats"]}
    assert {"sr2", "invert"} <= every
    assert error_of(client.get_inference_statistics, "no-such-model").status() == "404"

    index = {(e["name"], e["version"]): e for e in client.get_model_repository_index()}
    assert index[("sr2", "1")]["state"] == "READY"
    assert index[("floatin", "1")]["state"] == "UNAVAILABLE" and index[("floatin", "1")]["reason"]
    # Without model_control (the default) load and unload are refused: FAILED_PRECONDITION -> 400.
    assert error_of(client.load_model, "sr2").status() == "400"
    assert error_of(client.unload_model, "sr2").status() == "400"


def test_load_and_unload(start_server, tmp_path):
    build_invert(tmp_path / "models" / "invert" / "1" / "model.onnx")
    handle, _ = start_server(test_config(tmp_path / "models", http_port=-1, model_control=True))
    image = rgb_image(4, 4)[None]
    with httpclient.InferenceServerClient(f"127.0.0.1:{handle.http_port}") as client:
        status, _, raw = call(url(handle, "/v2/repository/index"), {"ready": True})
        assert status == 200 and [e["name"] for e in json.loads(raw)] == ["invert"]
        client.unload_model("invert")
        assert not client.is_model_ready("invert")
        assert error_of(client.infer, "invert", [infer_input(image)]).status() == "404"
        [entry] = client.get_model_repository_index()
        assert (entry["state"], entry["reason"]) == ("UNAVAILABLE", "unloaded")
        assert json.loads(call(url(handle, "/v2/repository/index"), {"ready": True})[2]) == []
        client.load_model("invert")
        assert client.is_model_ready("invert")
        assert np.array_equal(client.infer("invert", [infer_input(image)]).as_numpy("image_out"), 255 - image)
        assert error_of(client.load_model, "invert", config="{}").status() == "400"  # no overrides
        assert error_of(client.load_model, "no-such-model").status() == "404"

"""KServe v2 interoperability with the REAL tritonclient: health, metadata, infer, errors, stream.

The pytest process must never import tritonclient (its stubs and ours define the same
``inference.*`` protobuf symbols), so the server runs here and tritonclient runs once in a
subprocess (kserve_triton_client.py) whose recorded answers the tests below check. Outputs are
compared with what pixforge.v1 Translate returns as PNG for the same images: both protocols must
give the same pixels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from service_helpers import decode, png, rgb_image, run_triton_client, test_config

import pixforge
from pixforge.v1 import translation_pb2 as pb


@pytest.fixture(scope="module")
def server(start_server, model_repo):
    # strict_readiness off: the standard repository holds broken models on purpose.
    return start_server(test_config(model_repo, strict_readiness=False, **{"batching.max_batch_size": 4}))


@pytest.fixture(scope="module")
def inputs():
    return {
        "single": rgb_image(10, 14, seed=1)[None],  # [1, H, W, 3]
        "batch": np.stack([rgb_image(9, 7, seed=2), rgb_image(9, 7, seed=3)]),  # [2, H, W, 3]
        "large": rgb_image(40, 36, seed=4)[None],  # several 16 px tiles on the blur model
    }


@pytest.fixture(scope="module")
def triton(server, inputs, tmp_path_factory):
    """Run tritonclient against the server once; returns (results dict, output arrays)."""
    handle, _ = server
    workdir = tmp_path_factory.mktemp("kserve-triton")
    np.savez(workdir / "inputs.npz", **inputs)
    run_triton_client("calls", handle.address, str(workdir), timeout=120)
    results = json.loads((workdir / "results.json").read_text())
    with np.load(workdir / "outputs.npz") as outputs:
        arrays = {k: outputs[k] for k in outputs.files}
    return results, arrays


def v1_translate(stub, model, pixels, **options) -> np.ndarray:
    request = pb.TranslateRequest(model=model, image=png(pixels), options=pb.TranslateOptions(**options))
    return decode(stub.Translate(request, timeout=30).image)


def test_tritonclient_health(triton):
    results, _ = triton
    assert results["live"] is True and results["ready"] is True
    # floatin breaks the contract (FAILED); an unknown model is simply not ready.
    assert results["model_ready"] == {"sr2": True, "floatin": False, "no-such-model": False}
    assert results["model_ready_versions"] == {"1": True, "7": False}


def test_tritonclient_metadata(triton):
    results, _ = triton
    server = results["server_metadata"]
    assert server["name"] == "pixforge" and server["version"] == pixforge.__version__
    assert set(server["extensions"]) == {
        "parameters",
        "model_stream_infer",
        "model_configuration",
        "model_repository",
        "statistics",
    }
    sr2 = results["model_metadata"]["sr2"]
    assert sr2["name"] == "sr2" and sr2["versions"] == ["1"] and sr2["platform"] == "onnxruntime_onnx"

    def tensors(meta, key):
        # MessageToJson writes int64 as strings.
        return [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[key]]

    assert tensors(sr2, "inputs") == [("image", "UINT8", [-1, -1, -1, 3])]
    assert tensors(sr2, "outputs") == [("image_out", "UINT8", [-1, -1, -1, 3])]
    gray = results["model_metadata"]["grayin"]
    assert tensors(gray, "inputs") == [("image", "UINT8", [-1, -1, -1, 1])]
    assert tensors(gray, "outputs") == [("image_out", "UINT8", [-1, -1, -1, 3])]


def test_tritonclient_infer_equals_v1_translate(triton, server, inputs):
    results, arrays = triton
    _, stub = server
    single = inputs["single"]
    assert results["single"] == {
        "model_name": "sr2",
        "model_version": "1",
        "id": "req-1",
        "outputs": [{"name": "image_out", "datatype": "UINT8", "shape": [1, 20, 28, 3]}],
    }
    assert arrays["single"].dtype == np.uint8
    assert np.array_equal(arrays["single"][0], v1_translate(stub, "sr2", single[0]))

    assert results["batch"]["outputs"][0]["shape"] == [2, 9, 7, 3]
    for i in range(2):
        assert np.array_equal(arrays["batch"][i], v1_translate(stub, "invert", inputs["batch"][i]))
        assert np.array_equal(arrays["batch"][i], 255 - inputs["batch"][i])

    # A tiled image with request parameters equals v1 with the same TranslateOptions (that the
    # parameters reach the tiler at all is checked in test_service_kserve_protocol.py).
    tiled = v1_translate(stub, "blur", inputs["large"][0], tile_size=16, tile_overlap=4)
    assert np.array_equal(arrays["tiled"][0], tiled)


def test_tritonclient_errors(triton):
    errors = triton[0]["errors"]
    assert errors["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "no-such-model" in errors["unknown_model"]["message"]
    assert errors["metadata_unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["fp32"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "FP32" in errors["fp32"]["message"] and "UINT8" in errors["fp32"]["message"]
    assert errors["shape_mismatch"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "bytes of raw data" in errors["shape_mismatch"]["message"]
    assert errors["channels"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "3-channel" in errors["channels"]["message"]
    assert errors["unknown_output"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "'logits'" in errors["unknown_output"]["message"]
    # model_control is off by default: explicit load/unload are refused, naming the setting.
    for key in ("load_disabled", "unload_disabled"):
        assert errors[key]["status"] == "StatusCode.FAILED_PRECONDITION", key
        assert "model_control" in errors[key]["message"], key
    assert all("Traceback" not in e["message"] for e in errors.values())


def test_tritonclient_stream_in_order(triton, inputs):
    results, arrays = triton
    stream = results["stream"]
    assert stream[0] == {"id": "s0"} and stream[2] == {"id": "s2"}
    assert stream[1]["error"].startswith("NOT_FOUND: ") and "no-such-model" in stream[1]["error"]
    for key in ("stream0", "stream2"):
        assert np.array_equal(arrays[key][0], 255 - inputs["batch"][0])


def test_kserve_requests_are_counted(triton, server):
    registry = server[0].metrics.registry

    def sample(name, labels):
        return registry.get_sample_value(name, labels) or 0.0

    assert sample("pixforge_requests_total", {"model": "sr2", "method": "ModelInfer"}) >= 1
    assert sample("pixforge_requests_total", {"model": "invert", "method": "ModelStreamInfer"}) >= 2
    assert sample("pixforge_request_failures_total", {"model": "_unknown", "code": "NOT_FOUND"}) >= 2
    assert sample("pixforge_request_failures_total", {"model": "sr2", "code": "INVALID_ARGUMENT"}) >= 3

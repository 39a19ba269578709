"""The tritonclient side of the KServe v2 tests; runs in a subprocess, never imported by pytest.

tritonclient's generated stubs and pixforge's both register the ``inference.*`` messages in
protobuf's default descriptor pool, so the two cannot be imported into one process. The tests start
the server in-process and run this script against it:

    python kserve_triton_client.py calls ADDRESS WORKDIR   # WORKDIR/inputs.npz -> results.json, outputs.npz
    python kserve_triton_client.py describe               # tritonclient's descriptor as JSON on stdout

It only records what the unmodified client sees; the test asserts on it.
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def _input(array: np.ndarray, datatype: str = "UINT8") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _error(fn) -> dict:
    try:
        fn()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": "no error", "message": ""}


def _summary(result) -> dict:
    response = result.get_response()
    out = response.outputs[0]
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": [{"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}],
    }


def calls(address: str, workdir: Path) -> None:
    data = np.load(workdir / "inputs.npz")
    client = grpcclient.InferenceServerClient(url=address)
    results: dict = {}
    arrays: dict[str, np.ndarray] = {}

    # -- health and metadata
    results["live"] = client.is_server_live()
    results["ready"] = client.is_server_ready()
    results["model_ready"] = {m: client.is_model_ready(m) for m in ("sr2", "floatin", "no-such-model")}
    results["model_ready_versions"] = {v: client.is_model_ready("sr2", v) for v in ("1", "7")}
    results["server_metadata"] = client.get_server_metadata(as_json=True)
    results["model_metadata"] = {m: client.get_model_metadata(m, as_json=True) for m in ("sr2", "grayin")}

    # -- inference, raw binary data (what set_data_from_numpy sends)
    result = client.infer(
        "sr2",
        [_input(data["single"])],
        outputs=[grpcclient.InferRequestedOutput("image_out")],
        request_id="req-1",
    )
    arrays["single"] = result.as_numpy("image_out")
    results["single"] = _summary(result)
    result = client.infer("invert", [_input(data["batch"])], model_version="1")
    arrays["batch"] = result.as_numpy("image_out")
    results["batch"] = _summary(result)
    result = client.infer("blur", [_input(data["large"])], parameters={"tile_size": 16, "tile_overlap": 4})
    arrays["tiled"] = result.as_numpy("image_out")

    # -- errors
    def shape_mismatch():
        tensor = _input(data["single"])
        tensor.set_shape([1, 5, 5, 3])  # the data no longer fits the declared shape
        client.infer("sr2", [tensor])

    results["errors"] = {
        "unknown_model": _error(lambda: client.infer("no-such-model", [_input(data["single"])])),
        "fp32": _error(lambda: client.infer("sr2", [_input(data["single"].astype(np.float32), "FP32")])),
        "shape_mismatch": _error(shape_mismatch),
        "channels": _error(lambda: client.infer("sr2", [_input(np.zeros((1, 4, 4, 4), np.uint8))])),
        "unknown_output": _error(
            lambda: client.infer(
                "sr2", [_input(data["single"])], outputs=[grpcclient.InferRequestedOutput("logits")]
            )
        ),
        "metadata_unknown_model": _error(lambda: client.get_model_metadata("no-such-model")),
    }

    # -- streaming: three requests, the middle one fails; answers come back in order
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i, model in enumerate(("invert", "no-such-model", "invert")):
        client.async_stream_infer(model, [_input(data["batch"][i % 2 : i % 2 + 1])], request_id=f"s{i}")
    stream = []
    for i in range(3):
        result, error = answers.get(timeout=30)
        if error is not None:
            stream.append({"error": error.message()})
        else:
            stream.append({"id": result.get_response().id})
            arrays[f"stream{i}"] = result.as_numpy("image_out")
    client.stop_stream()
    results["stream"] = stream
    client.close()

    (workdir / "results.json").write_text(json.dumps(results))
    np.savez(workdir / "outputs.npz", **arrays)


def describe() -> None:
    from kserve_descriptor import describe as describe_file  # beside this script
    from tritonclient.grpc import service_pb2

    print(json.dumps(describe_file(service_pb2.DESCRIPTOR)))


if __name__ == "__main__":
    if sys.argv[1] == "describe":
        describe()
    else:
        calls(sys.argv[2], Path(sys.argv[3]))

"""The tritonclient side of the KServe v2 tests; runs in a subprocess, never imported by pytest.

tritonclient's generated stubs and pixforge's both register the ``inference.*`` messages in
protobuf's default descriptor pool, so the two cannot be imported into one process. The tests start
the server in-process and run this script against it:

    python kserve_triton_client.py calls ADDRESS WORKDIR   # WORKDIR/inputs.npz -> results.json, outputs.npz
    python kserve_triton_client.py manage ADDRESS WORKDIR  # management calls -> WORKDIR/manage.json
    python kserve_triton_client.py describe               # tritonclient's descriptors as JSON on stdout

It only records what the unmodified client sees; the test asserts on it.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
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
        # model_control is off on this server: explicit load/unload are refused
        "load_disabled": _error(lambda: client.load_model("sr2")),
        "unload_disabled": _error(lambda: client.unload_model("sr2")),
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


def manage(address: str, workdir: Path) -> None:
    """Triton's management calls against a server with model_control on and repository polls."""
    data = np.load(workdir / "inputs.npz")
    client = grpcclient.InferenceServerClient(url=address)
    r: dict = {}

    def infer_shape(model: str, array: np.ndarray) -> list:
        return list(client.infer(model, [_input(array)]).as_numpy("image_out").shape)

    # -- configuration and index
    r["config"] = {m: client.get_model_config(m, as_json=True) for m in ("sr2", "grayin")}
    r["config_errors"] = {
        "unknown": _error(lambda: client.get_model_config("no-such-model")),
        "failed": _error(lambda: client.get_model_config("floatin")),
        "bad_version": _error(lambda: client.get_model_config("sr2", "x")),
    }
    r["index"] = client.get_model_repository_index(as_json=True)

    # -- statistics: 3 requests of 2 images each, then one that fails (4 channels)
    r["stats_before"] = client.get_inference_statistics("invert", as_json=True)
    for _ in range(3):
        infer_shape("invert", data["batch"])
    r["infer_fail"] = _error(lambda: client.infer("invert", [_input(np.zeros((1, 4, 4, 4), np.uint8))]))
    r["stats_invert"] = client.get_inference_statistics("invert", as_json=True)
    r["stats_invert_v1"] = client.get_inference_statistics("invert", "1", as_json=True)
    r["stats_all"] = client.get_inference_statistics(as_json=True)
    r["stats_errors"] = {
        "unknown": _error(lambda: client.get_inference_statistics("no-such-model")),
        "unknown_version": _error(lambda: client.get_inference_statistics("invert", "7")),
    }

    # -- unload: the model is gone until loaded again, also after repository polls
    client.unload_model("invert")
    client.unload_model("invert")  # unloading an unloaded model does nothing
    time.sleep(1.0)  # several repository polls (poll_seconds 0.2)
    r["unloaded"] = {
        "ready": client.is_model_ready("invert"),
        "index": client.get_model_repository_index(as_json=True),
        "infer": _error(lambda: infer_shape("invert", data["batch"])),
        "metadata": _error(lambda: client.get_model_metadata("invert")),
        "config": _error(lambda: client.get_model_config("invert")),
        "others_serve": infer_shape("sr2", data["single"]),
    }
    client.load_model("invert")
    r["loaded"] = {
        "ready": client.is_model_ready("invert"),
        "shape": infer_shape("invert", data["batch"]),
        "stats": client.get_inference_statistics("invert", as_json=True),
    }
    client.load_model("sr2")  # loading a loaded model: unchanged files keep serving
    r["reloaded_sr2"] = infer_shape("sr2", data["single"])
    r["control_errors"] = {
        "load_unknown": _error(lambda: client.load_model("no-such-model")),
        "load_failing": _error(lambda: client.load_model("floatin")),
        "load_config_override": _error(lambda: client.load_model("invert", config='{"max_batch_size": 8}')),
        "load_file_override": _error(lambda: client.load_model("invert", files={"file:1/model.onnx": b"x"})),
        "load_empty_name": _error(lambda: client.load_model("")),
        "unload_unknown": _error(lambda: client.unload_model("no-such-model")),
    }
    # tritonclient has no argument for the request's `ready` flag: call its stub directly
    ready_only = client._client_stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    r["ready_only_index"] = sorted((m.name, m.version, m.state) for m in ready_only.models)

    # -- Triton extensions pixforge does not offer
    r["not_offered"] = {
        "system_shm_status": _error(lambda: client.get_system_shared_memory_status()),
        "system_shm_register": _error(lambda: client.register_system_shared_memory("r", "/k", 16)),
        "system_shm_unregister": _error(lambda: client.unregister_system_shared_memory()),
        "cuda_shm_status": _error(lambda: client.get_cuda_shared_memory_status()),
        "cuda_shm_register": _error(lambda: client.register_cuda_shared_memory("r", b"\0" * 64, 0, 16)),
        "cuda_shm_unregister": _error(lambda: client.unregister_cuda_shared_memory()),
        "trace": _error(lambda: client.get_trace_settings()),
        "trace_update": _error(lambda: client.update_trace_settings(settings={"trace_rate": "1"})),
        "log": _error(lambda: client.get_log_settings()),
        "log_update": _error(lambda: client.update_log_settings({"log_verbose_level": 1})),
    }
    r["final_stats"] = client.get_inference_statistics(as_json=True)
    client.close()
    (workdir / "manage.json").write_text(json.dumps(r))


def describe() -> None:
    from kserve_descriptor import describe as describe_file  # beside this script
    from tritonclient.grpc import model_config_pb2

    print(
        json.dumps(
            {
                "service": describe_file(service_pb2.DESCRIPTOR),
                "model_config": describe_file(model_config_pb2.DESCRIPTOR),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1] == "describe":
        describe()
    elif sys.argv[1] == "manage":
        manage(sys.argv[2], Path(sys.argv[3]))
    else:
        calls(sys.argv[2], Path(sys.argv[3]))

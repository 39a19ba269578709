"""Triton's management extensions of the KServe v2 gRPC protocol, driven by the REAL tritonclient.

ModelConfig, RepositoryIndex, RepositoryModelLoad/Unload (``model_control: true``) over a
read-only repository, ModelStatistics, and the shared-memory / trace / log RPCs pixforge does not
offer. tritonclient runs in a subprocess (kserve_triton_client.py ``manage``; its stubs and ours
cannot share one process). The statistics and the Triton-named metrics are checked through the
server's own objects too, with a gated engine so that batches and failures are deterministic.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from service_helpers import EngineControl, png, rgb_image, run_triton_client, test_config

from pixforge.kserve.v2 import grpc_service_pb2 as kpb
from pixforge.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc
from pixforge.service.admission import AdmissionRejected
from pixforge.service.errors import InferenceError, ModelNotFoundError, OutOfMemoryError, QueueFullError
from pixforge.service.metrics import Metrics
from pixforge.service.statistics import RequestRecorder, Statistics, failure_reason
from pixforge.v1 import translation_pb2 as pb

TOKEN = "management-test-token"


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root with (mode, size, mtime_ns): what "nothing was written" compares."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.stat()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _set_writable(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        if writable:
            path.chmod(mode | stat.S_IWUSR)
        else:
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="module")
def readonly_repo(model_repo, tmp_path_factory):
    """A copy of the standard repository with every write permission removed (restored after)."""
    import shutil

    repo = tmp_path_factory.mktemp("kserve-readonly") / "models"
    shutil.copytree(model_repo, repo)
    _set_writable(repo, False)
    yield repo
    _set_writable(repo, True)


@pytest.fixture(scope="module")
def server(start_server, readonly_repo):
    before = _tree(readonly_repo)
    config = test_config(
        readonly_repo, model_control=True, poll_seconds=0.2, **{"batching.max_batch_size": 4}
    )
    handle, stub = start_server(config)
    return handle, stub, before


@pytest.fixture(scope="module")
def managed(server, tmp_path_factory):
    """Run tritonclient's management calls once; returns what it recorded."""
    handle, _, _ = server
    workdir = tmp_path_factory.mktemp("kserve-manage")
    np.savez(
        workdir / "inputs.npz",
        single=rgb_image(10, 14, seed=1)[None],
        batch=np.stack([rgb_image(9, 7, seed=2), rgb_image(9, 7, seed=3)]),
    )
    run_triton_client("manage", handle.address, str(workdir), timeout=180)
    return json.loads((workdir / "manage.json").read_text())


def _count(duration: dict | None) -> int:
    """A StatisticDuration's count from MessageToJson (uint64 as text, zero fields left out)."""
    return int((duration or {}).get("count", 0))


def _ns(duration: dict | None) -> int:
    return int((duration or {}).get("ns", 0))


def _only(stats: dict) -> dict:
    (entry,) = stats["model_stats"]
    return entry


# --------------------------------------------------------------------------- tritonclient


def test_model_config_for_perf_analyzer(managed):
    sr2 = managed["config"]["sr2"]["config"]
    assert sr2["name"] == "sr2"
    assert sr2["platform"] == "onnxruntime_onnx" and sr2["backend"] == "onnxruntime"
    assert sr2["max_batch_size"] == 4  # batching.max_batch_size; dims leave the batch out
    assert sr2["input"] == [
        {"name": "image", "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": ["-1", "-1", "3"]}
    ]
    assert sr2["output"] == [{"name": "image_out", "data_type": "TYPE_UINT8", "dims": ["-1", "-1", "3"]}]
    assert sr2["dynamic_batching"]["max_queue_delay_microseconds"] == "2000"  # 2 ms in test_config
    assert sr2["version_policy"] == {"all": {}}
    assert sr2["instance_group"][0]["kind"] == "KIND_CPU"
    params = {k: v["string_value"] for k, v in sr2["parameters"].items()}
    assert params["task"] == "super_resolution" and params["scale"] == "2"
    gray = managed["config"]["grayin"]["config"]
    assert gray["input"][0]["dims"] == ["-1", "-1", "1"] and gray["output"][0]["dims"] == ["-1", "-1", "3"]
    errors = managed["config_errors"]
    assert errors["unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["failed"]["status"] == "StatusCode.FAILED_PRECONDITION"
    assert "failed" in errors["failed"]["message"]
    assert errors["bad_version"]["status"] == "StatusCode.INVALID_ARGUMENT"


def test_repository_index(managed, server):
    handle = server[0]
    index = managed["index"]["models"]
    rows = {(r.name, str(r.version)): r for r in handle.registry.versions()}
    assert {(m["name"], m["version"]) for m in index} == set(rows)
    for m in index:
        row = rows[(m["name"], m["version"])]
        if row.state.value == "READY":
            assert m["state"] == "READY" and "reason" not in m
        else:
            assert m["state"] == "UNAVAILABLE" and m["reason"] == row.error
    floatin = next(m for m in index if m["name"] == "floatin")
    assert floatin["state"] == "UNAVAILABLE" and floatin["reason"]
    ready = [[m["name"], m["version"], "READY"] for m in index if m["state"] == "READY"]
    assert managed["ready_only_index"] == sorted(ready)


def test_statistics_count_requests_and_batches(managed):
    assert _count(_only(managed["stats_before"])["inference_stats"].get("success")) == 0
    assert managed["infer_fail"]["status"] == "StatusCode.INVALID_ARGUMENT"
    invert = _only(managed["stats_invert"])
    assert invert["name"] == "invert" and invert["version"] == "1"
    stats = invert["inference_stats"]
    assert _count(stats["success"]) == 3 and _count(stats["fail"]) == 1
    for stage in ("queue", "compute_input", "compute_infer"):
        assert _count(stats[stage]) == 3, stage  # successful requests only, like Triton
    assert _ns(stats["compute_infer"]) > 0 and _ns(stats["success"]) >= _ns(stats["compute_infer"])
    assert int(invert["inference_count"]) == 6  # 3 requests x 2 images
    executions = int(invert["execution_count"])
    assert 3 <= executions <= 6  # the two images of a request may share a call
    batches = {int(b["batch_size"]): _count(b["compute_infer"]) for b in invert["batch_stats"]}
    assert sum(batches.values()) == executions and sum(n * c for n, c in batches.items()) == 6
    assert abs(int(invert["last_inference"]) / 1000 - time.time()) < 120
    assert managed["stats_invert_v1"] == managed["stats_invert"]
    # Without a name: every ready model version (floatin failed to load: not listed).
    listed = {(m["name"], m["version"]) for m in managed["stats_all"]["model_stats"]}
    ready = {(m["name"], m["version"]) for m in managed["index"]["models"] if m["state"] == "READY"}
    assert listed == ready and ("floatin", "1") not in listed
    assert managed["stats_errors"]["unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert managed["stats_errors"]["unknown_version"]["status"] == "StatusCode.NOT_FOUND"


def test_unload_and_load_without_writing_the_repository(managed, server, readonly_repo):
    handle, _, before = server
    unloaded = managed["unloaded"]
    assert unloaded["ready"] is False
    entry = next(m for m in unloaded["index"]["models"] if m["name"] == "invert")
    assert entry == {"name": "invert", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
    for call in ("infer", "metadata", "config"):
        assert unloaded[call]["status"] == "StatusCode.NOT_FOUND", call
        assert "unloaded" in unloaded[call]["message"], call
    assert unloaded["others_serve"] == [1, 20, 28, 3]
    loaded = managed["loaded"]
    assert loaded["ready"] is True and loaded["shape"] == [2, 9, 7, 3]
    # Statistics of the version carry on across the unload.
    assert _count(_only(loaded["stats"])["inference_stats"]["success"]) == 4
    assert managed["reloaded_sr2"] == [1, 20, 28, 3]
    errors = managed["control_errors"]
    assert errors["load_unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert "no-such-model" in errors["load_unknown"]["message"]
    assert errors["load_failing"]["status"] == "StatusCode.FAILED_PRECONDITION"
    assert "failed to load" in errors["load_failing"]["message"]
    for key in ("load_config_override", "load_file_override", "load_empty_name"):
        assert errors[key]["status"] == "StatusCode.INVALID_ARGUMENT", key
    assert "only from the files" in errors["load_config_override"]["message"]
    assert errors["unload_unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert all("Traceback" not in e["message"] for e in errors.values())
    # A read-only repository, and nothing in it changed (no file, mode or time).
    assert _tree(readonly_repo) == before
    assert handle.registry.describe("invert").state.value == "READY"


def test_not_offered_extensions_answer_unimplemented(managed):
    for name, error in managed["not_offered"].items():
        assert error["status"] == "StatusCode.UNIMPLEMENTED", name
        assert error["message"].startswith("pixforge does not offer"), name


def test_triton_metrics_match_the_statistics(managed, server):
    registry = server[0].metrics.registry
    final = {(m["name"], m["version"]): m for m in managed["final_stats"]["model_stats"]}
    invert = final[("invert", "1")]
    labels = {"model": "invert", "version": "1"}

    def value(name, **extra):
        return registry.get_sample_value(name, {**labels, **extra})

    stats = invert["inference_stats"]
    assert value("nv_inference_request_success") == _count(stats["success"]) == 4
    assert value("nv_inference_request_failure", reason="OTHER") == 1
    assert value("nv_inference_request_failure", reason="REJECTED") == 0
    assert value("nv_inference_count") == int(invert["inference_count"]) == 8
    assert value("nv_inference_exec_count") == int(invert["execution_count"])
    assert value("nv_inference_request_duration_us") == pytest.approx(_ns(stats["success"]) / 1000)
    assert value("nv_inference_compute_infer_duration_us") == pytest.approx(
        _ns(stats["compute_infer"]) / 1000
    )
    assert value("nv_inference_queue_duration_us") == pytest.approx(_ns(stats["queue"]) / 1000)
    assert value("nv_inference_pending_request_count") == 0
    # pixforge's own families: answers by code, process metrics, no precomputed rate.
    code = {"model": "invert", "method": "ModelInfer"}
    assert registry.get_sample_value("pixforge_responses_total", {**code, "code": "OK"}) == 4
    assert registry.get_sample_value("pixforge_responses_total", {**code, "code": "INVALID_ARGUMENT"}) == 1
    assert registry.get_sample_value("process_cpu_seconds_total") > 0
    assert registry.get_sample_value("process_resident_memory_bytes") > 0
    names = {family.name for family in registry.collect()}
    assert "python_info" in names and "pixforge_images_per_second" not in names


# --------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def gated(start_kserve, model_repo):
    """A server whose engines can be gated, with two request slots per model."""
    control = EngineControl()
    config = test_config(
        model_repo,
        model_control=True,
        **{"batching.max_batch_size": 4, "batching.queue_size": 2, "batching.max_queue_delay_ms": 50},
    )
    return (*start_kserve(config, control), control)


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_batch_stats_and_rejections_are_exact(gated):
    handle, stub, kstub, control = gated
    statistics = handle.metrics.statistics
    runtime = handle.registry.runtime("invert")
    image = rgb_image(8, 8, seed=5)
    results: dict = {}
    control.gate("invert")
    try:
        one = pb.TranslateRequest(model="invert", image=png(image))
        first = threading.Thread(target=lambda: results.update(a=stub.Translate(one, timeout=30)))
        first.start()
        assert control.entered["invert"].wait(10)  # a batch of 1 is inside the engine
        request = kpb.ModelInferRequest(
            model_name="invert",
            inputs=[
                kpb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8", shape=[3, 8, 8, 3])
            ],
            raw_input_contents=[np.stack([image] * 3).tobytes()],
        )
        second = threading.Thread(target=lambda: results.update(b=kstub.ModelInfer(request, timeout=30)))
        second.start()
        _wait_for(lambda: runtime.batcher.queue_depth == 3)  # its 3 images wait for the engine
        assert next(s for s in statistics.snapshot() if s.name == "invert").pending == 2
        with pytest.raises(grpc.RpcError) as refused:
            stub.Translate(pb.TranslateRequest(model="invert", image=png(image)), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # queue_size 2
    finally:
        control.open("invert")
    first.join(30)
    second.join(30)
    assert set(results) == {"a", "b"}
    (invert,) = statistics.model_stats([("invert", 1)])
    assert invert["execution_count"] == 2 and invert["inference_count"] == 4
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in invert["batch_stats"]] == [(1, 1), (3, 1)]
    stats = invert["inference_stats"]
    assert stats["success"]["count"] == 2 and stats["fail"]["count"] == 1
    # pixforge.v1 decodes and encodes: compute_input and compute_output are measured.
    assert stats["compute_input"]["ns"] > 0 and stats["compute_output"]["ns"] > 0
    registry = handle.metrics.registry
    labels = {"model": "invert", "version": "1"}
    assert registry.get_sample_value("nv_inference_request_failure", {**labels, "reason": "REJECTED"}) == 1
    assert registry.get_sample_value("nv_inference_pending_request_count", labels) == 0
    assert registry.get_sample_value("nv_inference_exec_count", labels) == 2

    def answered(method, code):
        return registry.get_sample_value(
            "pixforge_responses_total", {"model": "invert", "method": method, "code": code}
        )

    assert answered("Translate", "OK") == 1 and answered("ModelInfer", "OK") == 1
    assert answered("Translate", "RESOURCE_EXHAUSTED") == 1


def test_failure_reasons_backend_and_canceled(gated):
    handle, stub, _, control = gated
    registry = handle.metrics.registry

    def failures(model, reason):
        return registry.get_sample_value(
            "nv_inference_request_failure", {"model": model, "version": "1", "reason": reason}
        )

    control.oom_above["blur"] = 1  # every batch "runs out of memory"
    try:
        with pytest.raises(grpc.RpcError):
            stub.Translate(pb.TranslateRequest(model="blur", image=png(rgb_image(16, 16))), timeout=30)
    finally:
        control.oom_above.pop("blur", None)
    assert failures("blur", "BACKEND") == 1
    control.gate("color")
    try:
        with pytest.raises(grpc.RpcError) as late:
            stub.Translate(pb.TranslateRequest(model="color", image=png(rgb_image(16, 16))), timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_for(lambda: failures("color", "CANCELED") == 1)
    finally:
        control.open("color")


def test_load_and_unload_need_the_token_like_any_call(start_server, model_repo):
    config = test_config(model_repo, model_control=True, **{"auth.token": TOKEN})
    handle, _ = start_server(config)
    with grpc.insecure_channel(handle.address) as channel:
        kstub = kpb_grpc.GRPCInferenceServiceStub(channel)
        request = kpb.RepositoryModelUnloadRequest(model_name="invert")
        with pytest.raises(grpc.RpcError) as refused:
            kstub.RepositoryModelUnload(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert handle.registry.describe("invert").state.value == "READY"
        auth = (("authorization", f"Bearer {TOKEN}"),)
        kstub.RepositoryModelUnload(request, timeout=10, metadata=auth)
        ready = kstub.ModelReady(kpb.ModelReadyRequest(name="invert"), timeout=10)  # probe: no token
        assert ready.ready is False
        kstub.RepositoryModelLoad(
            kpb.RepositoryModelLoadRequest(model_name="invert"), timeout=30, metadata=auth
        )
        assert kstub.ModelReady(kpb.ModelReadyRequest(name="invert"), timeout=10).ready is True


def test_model_control_is_off_by_default(start_server, model_repo):
    handle, _ = start_server(test_config(model_repo))
    assert handle.config.model_control is False
    with grpc.insecure_channel(handle.address) as channel:
        kstub = kpb_grpc.GRPCInferenceServiceStub(channel)
        for call, request in (
            (kstub.RepositoryModelUnload, kpb.RepositoryModelUnloadRequest(model_name="invert")),
            (kstub.RepositoryModelLoad, kpb.RepositoryModelLoadRequest(model_name="invert")),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "model_control" in refused.value.details()
        # Reading is always allowed.
        index = kstub.RepositoryIndex(kpb.RepositoryIndexRequest(), timeout=10)
        assert any(m.name == "invert" and m.state == "READY" for m in index.models)
    assert handle.registry.describe("invert").state.value == "READY"


def test_unload_survives_reload_and_load_reads_the_repository_again(start_server, repo_copy):
    handle, _ = start_server(test_config(repo_copy, model_control=True))
    registry = handle.registry
    assert registry.unload("sr2") == ["sr2/1"]
    assert registry.reload().loaded == []  # SIGHUP or a poll: sr2 stays unloaded
    assert "sr2" not in registry.names() and registry.unloaded() == {"sr2": (1,)}
    # A new version appears meanwhile: load brings the model back with every version it has now.
    import shutil

    shutil.copytree(repo_copy / "sr2" / "1", repo_copy / "sr2" / "2")
    summary = registry.load("sr2")
    assert sorted(summary.loaded) == ["sr2/1", "sr2/2"] and registry.unloaded() == {}
    assert registry.describe("sr2").version == 2
    shutil.rmtree(repo_copy / "sr2")
    with pytest.raises(ModelNotFoundError, match="not in the repository"):
        registry.load("sr2")


# --------------------------------------------------------------------------- units


def test_failure_reasons_follow_triton():
    assert failure_reason("RESOURCE_EXHAUSTED", AdmissionRejected("busy", 10)) == "REJECTED"
    assert failure_reason("RESOURCE_EXHAUSTED", QueueFullError("full")) == "REJECTED"
    assert failure_reason("RESOURCE_EXHAUSTED", OutOfMemoryError("oom")) == "BACKEND"
    assert failure_reason("INTERNAL", InferenceError("broken")) == "BACKEND"
    assert failure_reason("CANCELLED", None) == "CANCELED"
    assert failure_reason("DEADLINE_EXCEEDED", None) == "CANCELED"
    assert failure_reason("INVALID_ARGUMENT", ValueError()) == "OTHER"


def test_statistics_store_and_recorder():
    statistics = Statistics()

    class Registry:  # the one call RequestRecorder makes
        @staticmethod
        def describe(name, version=0):
            if name != "m":
                raise KeyError(name)
            return type("Row", (), {"version": version or 3})()

    ok = RequestRecorder(statistics)
    ok.start(Registry, "m")
    assert statistics.model_stats([("m", 3)])[0]["inference_stats"]["success"]["count"] == 0
    ok.succeeded(3, queue_ms=1.0, input_ms=2.0, infer_ms=3.0, output_ms=4.0, inferences=5)
    ok.succeeded(3, queue_ms=1.0, input_ms=2.0, infer_ms=3.0, output_ms=4.0, inferences=5)  # once only
    bad = RequestRecorder(statistics)
    bad.start(Registry, "m", 3)
    bad.failed("DEADLINE_EXCEEDED", None)
    unknown = RequestRecorder(statistics)
    unknown.start(Registry, "nope")
    unknown.failed("NOT_FOUND", None)  # no statistics for unknown models
    statistics.executed("m", 3, 4, 0.002)
    statistics.executed("m", 3, 4, 0.002)
    statistics.executed("m", 3, 1, 0.001)
    (m,) = statistics.model_stats()
    stats = m["inference_stats"]
    assert (m["name"], m["version"], m["inference_count"], m["execution_count"]) == ("m", "3", 5, 3)
    assert stats["success"]["count"] == 1 and stats["fail"]["count"] == 1
    assert stats["queue"] == {"count": 1, "ns": 1_000_000} and stats["compute_output"]["ns"] == 4_000_000
    assert [(b["batch_size"], b["compute_infer"]) for b in m["batch_stats"]] == [
        (1, {"count": 1, "ns": 1_000_000}),
        (4, {"count": 2, "ns": 4_000_000}),
    ]
    assert statistics.snapshot()[0].pending == 0 and statistics.snapshot()[0].failures["CANCELED"] == 1


def test_metric_families_have_triton_names_and_a_code_label():
    metrics = Metrics()
    families = {f.name: f for f in metrics.registry.collect()}
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_pending_request_count",
    ):
        assert name in families, name
    observe = metrics.batch_observer("m", 2)  # a loaded version is listed at zero at once
    assert metrics.registry.get_sample_value("nv_inference_exec_count", {"model": "m", "version": "2"}) == 0
    observe(2, [0.001, 0.001], 0.01)
    assert metrics.registry.get_sample_value("nv_inference_exec_count", {"model": "m", "version": "2"}) == 1
    metrics.request_started("m", "Translate")
    metrics.request_finished("m", 0.1, "NOT_FOUND", "Translate")
    labels = {"model": "m", "method": "Translate", "code": "NOT_FOUND"}
    assert metrics.registry.get_sample_value("pixforge_responses_total", labels) == 1
    assert "process_cpu_seconds" in families and "python_info" in families
    assert os.name != "posix" or metrics.registry.get_sample_value("process_open_fds") > 0

"""The serving core under hostile load: idle streams, expired work, admission by cost,
oversized responses, unbounded client strings, the open-call limit. Real in-process servers with
tiny models; a gate in the engine holds inference so the tests decide who is running."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import (
    EngineControl,
    build_invert,
    build_sr2,
    decode,
    png,
    rgb_image,
    smooth_image,
    test_config,
    wait_for,
)

from pixforge.kserve.v2 import grpc_service_pb2 as kpb
from pixforge.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc
from pixforge.v1 import translation_pb2 as pb

MB = 1 << 20
NO_WARMUP = {"engine.warmup": False}  # the engine counts only requests' images


def repo(path: Path) -> Path:
    build_invert(path / "invert" / "1" / "model.onnx")
    build_sr2(path / "sr2" / "1" / "model.onnx")
    return path


def request(model="invert", seed=0, size=8, **kwargs):
    return pb.TranslateRequest(model=model, image=png(rgb_image(size, size, seed)), **kwargs)


def images_run(control: EngineControl, model: str = "invert") -> int:
    with control.lock:
        return sum(control.batches.get(model, []))


def pushback(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("grpc-retry-pushback-ms")


class IdleStreams:
    """Open TranslateStream calls that never send anything until closed."""

    def __init__(self, stub, count: int):
        self._done = threading.Event()

        def silent():
            self._done.wait(60)
            return
            yield  # pragma: no cover

        self.calls = [stub.TranslateStream(silent(), timeout=60) for _ in range(count)]

    def close(self):
        self._done.set()
        for call in self.calls:
            call.cancel()


def test_idle_streams_hold_no_worker_and_probes_answer_fast(start_server, tmp_path):
    # 24 idle streams: more than the 16 handler threads the loopback config used to mean.
    handle, stub = start_server(test_config(repo(tmp_path)))
    streams = IdleStreams(stub, 24)
    try:
        time.sleep(0.3)  # let the server accept every stream
        channel = grpc.insecure_channel(handle.address)
        health = health_pb2_grpc.HealthStub(channel)
        kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(3):
            start = time.perf_counter()
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1
            assert kserve.ServerReady(kpb.ServerReadyRequest(), timeout=2).ready
            assert len(stub.ListModels(pb.ListModelsRequest(), timeout=2).models) == 2
            assert (time.perf_counter() - start) < 1.0
        assert stub.Translate(request(), timeout=5).width == 8
        channel.close()
    finally:
        streams.close()


def test_expired_requests_never_run(start_server, tmp_path):
    control = EngineControl()
    handle, stub = start_server(test_config(repo(tmp_path), max_workers=2, **NO_WARMUP), control)
    gate = control.gate("invert")
    try:
        holders = [stub.Translate.future(request(seed=i), timeout=30) for i in range(2)]
        assert control.entered["invert"].wait(10)
        late = [stub.Translate.future(request(seed=10 + i), timeout=0.3) for i in range(4)]
        for future in late:
            with pytest.raises(grpc.RpcError) as info:
                future.result()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        gate.set()
        control.open("invert")
    for future in holders:
        assert future.result().width == 8
    time.sleep(0.5)  # anything still (wrongly) running would reach the engine now
    assert images_run(control) == 2  # only the two callers that waited
    assert wait_for(lambda: handle.runner.admission.running == 0 and handle.runner.admission.queued == 0)


def test_admission_queue_rejects_at_once_and_counts_the_wait(start_server, tmp_path):
    control = EngineControl()
    config = test_config(repo(tmp_path), max_workers=2, **{"admission.max_queued": 2})
    handle, stub = start_server(config, control)
    gate = control.gate("invert")
    try:
        running = [stub.Translate.future(request(seed=i), timeout=30) for i in range(2)]
        assert control.entered["invert"].wait(10)
        assert wait_for(lambda: handle.runner.admission.running == 2)
        queued = [stub.Translate.future(request(seed=10 + i), timeout=30) for i in range(2)]
        assert wait_for(lambda: handle.runner.admission.queued == 2)
        assert handle.metrics.registry.get_sample_value("pixforge_admission_queued") == 2
        for i in range(3):
            start = time.perf_counter()
            with pytest.raises(grpc.RpcError) as info:
                stub.Translate(request(seed=20 + i), timeout=30)
            assert time.perf_counter() - start < 0.5
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "admission.max_queued" in info.value.details()
            assert int(pushback(info.value)) >= 0
        time.sleep(0.3)
    finally:
        gate.set()
        control.open("invert")
    for future in running + queued:
        assert future.result().width == 8
    assert all(f.result().timing.queue_ms >= 250 for f in queued)  # the admission wait is counted
    failures = handle.metrics.registry.get_sample_value(
        "pixforge_request_failures_total", {"model": "invert", "code": "RESOURCE_EXHAUSTED"}
    )
    assert failures == 3


def test_an_output_its_format_cannot_store_is_refused_before_compute(start_server, tmp_path):
    control = EngineControl()
    handle, stub = start_server(test_config(repo(tmp_path), **NO_WARMUP), control)
    wide = pb.TranslateRequest(model="sr2", image=png(rgb_image(2, 8200, 1)), output_format="webp")
    with pytest.raises(grpc.RpcError) as info:
        stub.Translate(wide, timeout=10)  # x2: 16400 pixels wide, WebP holds 16383
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 16383 pixels per side" in info.value.details() and pushback(info.value) == "-1"
    assert images_run(control, "sr2") == 0  # refused from the header: nothing ran
    wide.output_format = "png"
    assert stub.Translate(wide, timeout=30).width == 16400


def test_oversized_response_is_refused_once_with_no_retry(start_server, tmp_path):
    control = EngineControl()
    config = test_config(repo(tmp_path), **{"limits.max_message_bytes": 128 * 1024}, **NO_WARMUP)
    handle, stub = start_server(config, control)
    noise = pb.TranslateRequest(model="invert", image=png(rgb_image(160, 160, 3)))  # PNG ~ raw size
    assert len(noise.image) < 100 * 1024
    with pytest.raises(grpc.RpcError) as info:
        stub.Translate(noise, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_message_bytes" in info.value.details()
    # The message names the value compared (the limit less room for the other fields), not only the limit.
    assert "64 KiB a response can carry (128 KiB limits.max_message_bytes" in info.value.details()
    assert pushback(info.value) == "-1"
    once = images_run(control)
    noise.output_format = "jpeg"  # the same work, a response that fits
    assert stub.Translate(noise, timeout=10).width == 160
    assert images_run(control) == 2 * once  # the refused request ran once, not once per retry
    registry = handle.metrics.registry
    assert (
        registry.get_sample_value(
            "pixforge_request_failures_total", {"model": "invert", "code": "RESOURCE_EXHAUSTED"}
        )
        == 1
    )

    # An x2 output that cannot fit even well compressed is refused before any compute.
    big = pb.TranslateRequest(model="sr2", image=png(smooth_image(256, 256)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Translate(big, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at least" in info.value.details()
    assert images_run(control, "sr2") == 0


@pytest.mark.parametrize("field", ["model", "output_format", "request_id"])
def test_huge_client_strings_are_invalid_and_never_echoed_whole(start_server, tmp_path, field):
    handle, stub = start_server(test_config(repo(tmp_path)))
    values = {"model": "invert", "output_format": "png", "request_id": "r1"}
    values[field] = "x" * MB
    req = pb.TranslateRequest(image=png(rgb_image(8, 8)), **values)
    with pytest.raises(grpc.RpcError) as info:
        stub.Translate(req, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details()) < 300


def test_huge_kserve_model_name_is_invalid(start_server, tmp_path):
    handle, _ = start_server(test_config(repo(tmp_path)))
    with grpc.insecure_channel(handle.address) as channel:
        kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            kserve.ModelInfer(kpb.ModelInferRequest(model_name="m" * MB), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(info.value.details()) < 300
        with pytest.raises(grpc.RpcError) as info:
            kserve.ModelMetadata(kpb.ModelMetadataRequest(name="m" * MB), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_open_call_limit_spares_probes_and_is_counted(start_server, tmp_path):
    # Streams may take every slot here (by default they get three quarters of them), so three idle
    # streams reach the open-call limit itself.
    config = test_config(repo(tmp_path), max_concurrent_rpcs=3, max_concurrent_streaming_rpcs=3)
    handle, stub = start_server(config)
    streams = IdleStreams(stub, 3)
    try:
        assert wait_for(lambda: handle._drain.active == 3)
        with pytest.raises(grpc.RpcError) as info:
            stub.Translate(request(), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with grpc.insecure_channel(handle.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        counted = handle.metrics.registry.get_sample_value(
            "pixforge_request_failures_total", {"model": "-", "code": "RESOURCE_EXHAUSTED"}
        )
        assert counted == 1
    finally:
        streams.close()
    assert wait_for(lambda: handle._drain.active == 0)
    assert stub.Translate(request(), timeout=5).width == 8


def test_stream_items_share_admission_and_run_in_order(start_server, tmp_path):
    handle, stub = start_server(test_config(repo(tmp_path), max_workers=2))
    items = [pb.TranslateStreamRequest(request=request(seed=i)) for i in range(12)]
    responses = list(stub.TranslateStream(iter(items), timeout=30))
    assert [r.response.width for r in responses] == [8] * 12
    # Each answer is the inverse of its own request's image: with two workers the items finish in
    # any order, and the stream must still answer them in request order.
    for i, r in enumerate(responses):
        np.testing.assert_array_equal(decode(r.response.image), 255 - rgb_image(8, 8, i))
    assert handle.runner.admission.running == 0


def test_limits_are_checked_from_the_header_before_any_decode(start_server, tmp_path, monkeypatch):
    import cv2

    import pixforge.codec as codec

    config = test_config(
        repo(tmp_path), **{"limits.max_output_pixels": 10_000, "limits.max_input_pixels": 1_000_000}
    )
    handle, stub = start_server(config)
    sixteen_bit = cv2.imencode(".png", np.zeros((900, 900, 3), np.uint16))[1].tobytes()
    decodes = []
    real = codec.cv2.imdecode
    monkeypatch.setattr(codec.cv2, "imdecode", lambda *a, **k: decodes.append(1) or real(*a, **k))
    # x2 output of 64x64 = 16384 pixels, over the output limit: refused from the header.
    with pytest.raises(grpc.RpcError) as info:
        stub.Translate(pb.TranslateRequest(model="sr2", image=png(rgb_image(64, 64))), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "output" in info.value.details()
    # 0.81 MP is under the pixel limit, but 16 bits per sample need more memory than it allows.
    with pytest.raises(grpc.RpcError) as info:
        stub.Translate(pb.TranslateRequest(model="invert", image=sixteen_bit), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert decodes == []
    assert stub.Translate(request(), timeout=5).width == 8  # and an ordinary image still decodes
    assert decodes == [1]


def test_request_over_the_message_limit_is_refused_and_counted(start_server, tmp_path):
    config = test_config(repo(tmp_path), **{"limits.max_message_bytes": 200 * 1024})
    handle, stub = start_server(config)
    big = pb.TranslateRequest(model="invert", image=png(rgb_image(300, 300, 7)))
    assert big.ByteSize() > 200 * 1024
    with pytest.raises(grpc.RpcError) as info:
        stub.Translate(big, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limits.max_message_bytes" in info.value.details()
    assert pushback(info.value) == "-1"  # re-sending the same bytes cannot succeed
    # In a stream the oversized item alone fails (never retried); the others are answered.
    items = [pb.TranslateStreamRequest(request=r) for r in (request(seed=1), big, request(seed=2))]
    responses = list(stub.TranslateStream(iter(items), timeout=30))
    assert [r.error_code for r in responses] == [0, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], 0]
    assert responses[1].retry_pushback_ms == -1
    counted = handle.metrics.registry.get_sample_value(
        "pixforge_request_failures_total", {"model": "-", "code": "RESOURCE_EXHAUSTED"}
    )
    assert counted == 2

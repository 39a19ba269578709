"""The real server on a loopback port, called through the generated stubs: every RPC, every error
code, batching, tiling, channel adaptation, colourisation render size, health, reflection, metrics.

One server serves the whole module; an EngineControl counts, gates and fails inference calls.
"""

from __future__ import annotations

import threading
import time
import urllib.request

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from service_helpers import (
    SMALL_LIMITS,
    EngineControl,
    color_reference,
    decode,
    five_channel_tiff,
    png,
    rgb_image,
    smooth_image,
    test_config,
    wait_for,
)

from pixforge.v1 import translation_pb2 as pb

MAX_BATCH = 4
QUEUE_SIZE = 8


@pytest.fixture(scope="module")
def control():
    return EngineControl()


@pytest.fixture(scope="module")
def server(start_server, model_repo, control):
    config = test_config(
        model_repo,
        metrics_port=-1,
        strict_readiness=False,  # the standard repository holds broken models on purpose
        **{
            "batching.max_batch_size": MAX_BATCH,
            "batching.queue_size": QUEUE_SIZE,
            **SMALL_LIMITS,
            "stream.max_in_flight": 2,
        },
    )
    return start_server(config, control)


@pytest.fixture(scope="module")
def handle(server):
    return server[0]


@pytest.fixture(scope="module")
def stub(server):
    return server[1]


def translate(stub, model, pixels, **kwargs):
    return stub.Translate(pb.TranslateRequest(model=model, image=png(pixels), **kwargs), timeout=30)


def expect_code(code, fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    assert info.value.code() == code, info.value.details()
    assert "Traceback" not in (info.value.details() or "")
    return info.value


def box_blur(img: np.ndarray) -> np.ndarray:
    out = cv2.filter2D(
        img.astype(np.float32), -1, np.full((3, 3), 1 / 9, np.float32), borderType=cv2.BORDER_CONSTANT
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- RPCs


def test_list_models_reports_ready_and_failed(stub):
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert set(models) == {"invert", "sr2", "grayin", "color", "blur", "floatin", "nometa"}
    for name in ("invert", "sr2", "grayin", "color", "blur"):
        assert models[name].state == pb.MODEL_STATE_READY
        assert models[name].provider == "CPUExecutionProvider"
    assert models["floatin"].state == pb.MODEL_STATE_FAILED
    assert "uint8" in models["floatin"].error
    assert models["nometa"].state == pb.MODEL_STATE_FAILED
    assert "metadata" in models["nometa"].error


def test_get_model_describes_contract(stub):
    info = stub.GetModel(pb.GetModelRequest(name="sr2"), timeout=10).model
    assert (info.name, info.version, info.task, info.scale) == ("sr2", 1, pb.TASK_SUPER_RESOLUTION, 2)
    assert (info.input_channels, info.output_channels, info.size_multiple, info.tile_size) == (3, 3, 2, 32)
    assert info.provider == "CPUExecutionProvider"
    assert info.metadata["task"] == "super_resolution"
    assert stub.GetModel(pb.GetModelRequest(name="sr2", version=1), timeout=10).model.version == 1
    expect_code(grpc.StatusCode.NOT_FOUND, stub.GetModel, pb.GetModelRequest(name="nope"), timeout=10)
    expect_code(
        grpc.StatusCode.NOT_FOUND, stub.GetModel, pb.GetModelRequest(name="sr2", version=7), timeout=10
    )
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.GetModel, pb.GetModelRequest(name=""), timeout=10)
    failed = stub.GetModel(pb.GetModelRequest(name="floatin"), timeout=10).model
    assert failed.state == pb.MODEL_STATE_FAILED and failed.error


def test_translate_invert_odd_size(stub):
    img = rgb_image(37, 23)
    resp = translate(stub, "invert", img, request_id="req-1")
    assert (resp.width, resp.height, resp.model, resp.version) == (23, 37, "invert", 1)
    assert resp.request_id == "req-1" and resp.output_format == "png"
    assert resp.timing.total_ms > 0 and resp.timing.inference_ms > 0
    np.testing.assert_array_equal(decode(resp.image), 255 - img)


def test_server_assigns_request_id(stub):
    resp = translate(stub, "invert", rgb_image(8, 8))
    assert len(resp.request_id) >= 8


def test_super_resolution_exact_size_with_tiling(stub):
    img = rgb_image(70, 101, seed=3)  # larger than the 32 px tile, not a multiple of anything
    resp = translate(stub, "sr2", img)
    out = decode(resp.image)
    assert out.shape == (140, 202, 3) and (resp.width, resp.height) == (202, 140)
    np.testing.assert_array_equal(out, np.repeat(np.repeat(img, 2, 0), 2, 1))


def test_output_formats(stub):
    img = rgb_image(16, 16)
    assert translate(stub, "invert", img, output_format="jpeg").image[:3] == b"\xff\xd8\xff"
    webp = translate(stub, "invert", img, output_format="webp", options=pb.TranslateOptions(quality=80))
    assert webp.image[:4] == b"RIFF" and webp.output_format == "webp"
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, translate, stub, "invert", img, output_format="gif")


# --------------------------------------------------------------------------- channel adaptation


def test_gray_photo_on_rgb_model(stub):
    gray = rgb_image(20, 30)[:, :, :1]
    out = decode(translate(stub, "invert", gray).image)
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], 255 - gray[:, :, 0])


def test_rgb_photo_on_luminance_model(stub):
    img = rgb_image(20, 30)
    out = decode(translate(stub, "grayin", img).image)
    expected = 255 - cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out[:, :, 1], expected)


def test_alpha_is_kept_and_resized(stub):
    img = rgb_image(24, 40)
    alpha = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (24, 1))
    out = decode(stub.Translate(pb.TranslateRequest(model="invert", image=png(img, alpha)), timeout=30).image)
    assert out.shape == (24, 40, 4)
    np.testing.assert_array_equal(out[:, :, 3], alpha)
    np.testing.assert_array_equal(out[:, :, :3], 255 - img)
    sr = decode(stub.Translate(pb.TranslateRequest(model="sr2", image=png(img, alpha)), timeout=30).image)
    assert sr.shape == (48, 80, 4)
    np.testing.assert_array_equal(sr[:, :, 3], cv2.resize(alpha, (80, 48), interpolation=cv2.INTER_LINEAR))


def test_colorization_render_size_keeps_full_resolution_luminance(stub, control):
    img = smooth_image(240, 360)
    direct = decode(translate(stub, "color", img, options=pb.TranslateOptions(render_size=1024)).image)
    np.testing.assert_array_equal(direct, color_reference(img))  # fits: the model's own output
    control.reset_counts()
    small = decode(translate(stub, "color", img, options=pb.TranslateOptions(render_size=64)).image)
    assert control.calls.get("color") == 1  # one pass at render size
    assert small.shape == img.shape
    lab_in = cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    lab_out = cv2.cvtColor(small.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    lab_ref = cv2.cvtColor(direct.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    # Luminance comes from the full-resolution input, chroma from the model at render size.
    assert np.abs(lab_out[..., 0] - lab_in[..., 0]).max() < 1.0
    assert np.abs(lab_out[..., 1:] - lab_ref[..., 1:])[4:-4, 4:-4].max() < 2.5


# --------------------------------------------------------------------------- tiling


def test_tiled_equals_untiled_away_from_borders(stub, control):
    img = rgb_image(100, 140, seed=7)
    control.reset_counts()
    tiled = decode(
        translate(stub, "blur", img, options=pb.TranslateOptions(tile_size=32, tile_overlap=8)).image
    )
    tiled_calls = sum(control.batches["blur"])
    untiled = decode(translate(stub, "blur", img, options=pb.TranslateOptions(tile_size=256)).image)
    assert tiled_calls > 1 and sum(control.batches["blur"]) == tiled_calls + 1
    assert tiled.shape == untiled.shape == img.shape
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(tiled.astype(int) - untiled.astype(int))[inner].max() <= 2
    assert np.abs(untiled.astype(int) - box_blur(img).astype(int))[inner].max() <= 1


def test_out_of_memory_retries_with_smaller_tiles(stub, handle, control):
    img = rgb_image(64, 64, seed=2)
    runtime = handle.registry.runtime("blur")
    splits = runtime.batcher.stats.oom_splits
    control.oom_above["blur"] = 1500  # pixels per batch: a 64x64 tile or a batch of 32x32 tiles "OOMs"
    try:
        out = decode(translate(stub, "blur", img, options=pb.TranslateOptions(tile_size=64)).image)
        assert runtime.batcher.stats.oom_splits > splits  # batch split before shrinking tiles further
        inner = (slice(2, -2), slice(2, -2))
        assert np.abs(out.astype(int) - box_blur(img).astype(int))[inner].max() <= 1
        control.oom_above["blur"] = 10  # nothing fits, not even 8 px tiles
        err = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, translate, stub, "blur", img)
        assert "memory" in err.details()
    finally:
        control.oom_above.pop("blur", None)
    translate(stub, "blur", img)  # the model still serves


# --------------------------------------------------------------------------- errors


def test_invalid_argument_errors(stub):
    img = rgb_image(16, 16)
    bad = [
        pb.TranslateRequest(model="invert", image=b"not an image at all"),
        pb.TranslateRequest(model="invert", image=b""),
        pb.TranslateRequest(model="invert", image=png(img)[:40]),  # truncated
        pb.TranslateRequest(model="invert", image=five_channel_tiff()),  # neither gray nor RGB(A)
        pb.TranslateRequest(model="invert", image=png(img), options=pb.TranslateOptions(quality=101)),
        pb.TranslateRequest(model="blur", image=png(img), options=pb.TranslateOptions(tile_size=36)),
        pb.TranslateRequest(
            model="blur", image=png(img), options=pb.TranslateOptions(tile_size=32, tile_overlap=16)
        ),
        pb.TranslateRequest(model="color", image=png(img), options=pb.TranslateOptions(render_size=5)),
        pb.TranslateRequest(model="", image=png(img)),
        pb.TranslateRequest(model="invert", image=png(img), version=-1),
    ]
    for request in bad:
        expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Translate, request, timeout=10)


def test_not_found_and_failed_precondition(stub):
    img = rgb_image(8, 8)
    expect_code(grpc.StatusCode.NOT_FOUND, translate, stub, "no-such-model", img)
    expect_code(grpc.StatusCode.NOT_FOUND, translate, stub, "invert", img, version=9)
    err = expect_code(grpc.StatusCode.FAILED_PRECONDITION, translate, stub, "floatin", img)
    assert "failed to load" in err.details()
    expect_code(grpc.StatusCode.FAILED_PRECONDITION, translate, stub, "nometa", img)


def test_resource_exhausted_for_pixel_limits(stub):
    expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, translate, stub, "invert", rgb_image(500, 500))  # input
    err = expect_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED, translate, stub, "sr2", rgb_image(300, 400)
    )  # output
    assert "output" in err.details()


def test_message_size_limit(stub):
    # 1.5 MiB request over the module's 1 MiB limit: refused by gRPC itself, the server lives on.
    big = np.random.default_rng(0).integers(0, 256, 1_500_000, dtype=np.uint8).tobytes()
    expect_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        stub.Translate,
        pb.TranslateRequest(model="invert", image=big),
        timeout=10,
    )
    translate(stub, "invert", rgb_image(8, 8))


def test_queue_full_is_resource_exhausted(stub, handle, control):
    runtime = handle.registry.runtime("invert")
    control.gate("invert")
    futures = []
    try:
        for i in range(QUEUE_SIZE):
            futures.append(
                stub.Translate.future(
                    pb.TranslateRequest(model="invert", image=png(rgb_image(8, 8, i))), timeout=30
                )
            )
        assert wait_for(lambda: runtime.in_flight == QUEUE_SIZE)
        err = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, translate, stub, "invert", rgb_image(8, 8))
        assert "busy" in err.details()
    finally:
        control.open("invert")
    for f in futures:
        assert f.result().width == 8
    assert wait_for(lambda: runtime.in_flight == 0)


def test_deadline_frees_queued_work(stub, handle, control):
    runtime = handle.registry.runtime("invert")
    cancelled_before = runtime.batcher.stats.cancelled
    metrics = handle.metrics.registry
    labels = {"model": "invert", "code": "DEADLINE_EXCEEDED"}
    expired_before = metrics.get_sample_value("pixforge_request_failures_total", labels) or 0
    gate = control.gate("invert")
    try:
        first = stub.Translate.future(
            pb.TranslateRequest(model="invert", image=png(rgb_image(8, 8))), timeout=30
        )
        assert control.entered["invert"].wait(10)  # the first batch is inside the engine, blocked
        calls_before = control.calls["invert"]
        doomed = stub.Translate.future(
            pb.TranslateRequest(model="invert", image=png(rgb_image(16, 16))), timeout=2
        )
        assert wait_for(lambda: runtime.batcher.queue_depth == 1)  # queued behind the blocked batch
        assert doomed.exception(10).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Freed while the engine is still busy: the expired request gave back its admission slot.
        assert wait_for(lambda: runtime.in_flight == 1)
        assert not gate.is_set()
    finally:
        control.open("invert")
    assert first.result().width == 8
    # The expired request's queued image was dropped, never run, and its admission slot freed.
    assert wait_for(lambda: runtime.batcher.stats.cancelled > cancelled_before)
    assert control.calls["invert"] == calls_before
    assert wait_for(lambda: runtime.in_flight == 0)
    # The server, too, counted it as a deadline (DEADLINE_EXCEEDED in its metrics), not a cancel.
    assert wait_for(
        lambda: (metrics.get_sample_value("pixforge_request_failures_total", labels) or 0) > expired_before
    )
    translate(stub, "invert", rgb_image(8, 8))


def test_client_cancellation_frees_work(stub, handle, control):
    runtime = handle.registry.runtime("invert")
    cancelled_before = runtime.batcher.stats.cancelled
    control.gate("invert")
    try:
        first = stub.Translate.future(
            pb.TranslateRequest(model="invert", image=png(rgb_image(8, 8))), timeout=30
        )
        assert control.entered["invert"].wait(10)
        second = stub.Translate.future(
            pb.TranslateRequest(model="invert", image=png(rgb_image(16, 16))), timeout=30
        )
        assert wait_for(lambda: runtime.batcher.queue_depth == 1)
        second.cancel()
        assert wait_for(lambda: runtime.in_flight == 1)  # the cancelled request let go of its slot
    finally:
        control.open("invert")
    first.result()
    assert wait_for(lambda: runtime.batcher.stats.cancelled > cancelled_before)


# --------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_with_identical_outputs(stub, handle, control):
    runtime = handle.registry.runtime("invert")
    # Different sizes that share the 64 px shape bucket, so they can share a batch.
    images = [rgb_image(20 + 5 * i, 30 + 3 * i, seed=i) for i in range(7)]
    gate = control.gate("invert")
    try:
        head = stub.Translate.future(pb.TranslateRequest(model="invert", image=png(images[0])), timeout=30)
        assert control.entered["invert"].wait(10)
        control.reset_counts()
        rest = [
            stub.Translate.future(pb.TranslateRequest(model="invert", image=png(im)), timeout=30)
            for im in images[1:]
        ]
        assert wait_for(lambda: runtime.batcher.queue_depth == len(rest))
    finally:
        gate.set()
        control.open("invert")
    batched = [head.result()] + [f.result() for f in rest]
    calls = control.calls["invert"]
    assert calls < len(rest)  # 6 queued requests -> ceil(6 / 4) = 2 calls
    assert max(control.batches["invert"]) == MAX_BATCH
    one_by_one = [translate(stub, "invert", im) for im in images]
    for b, s, im in zip(batched, one_by_one, images, strict=True):
        np.testing.assert_array_equal(decode(b.image), decode(s.image))
        np.testing.assert_array_equal(decode(b.image), 255 - im)
    registry = handle.metrics.registry
    assert registry.get_sample_value("pixforge_batch_size_bucket", {"model": "invert", "le": "4.0"}) >= 1


# --------------------------------------------------------------------------- streaming


def test_stream_in_order_with_request_ids_and_item_errors(stub):
    images = [rgb_image(10 + i, 12, seed=i) for i in range(5)]
    requests = [
        pb.TranslateStreamRequest(
            request=pb.TranslateRequest(model="invert", image=png(im), request_id=f"id-{i}")
        )
        for i, im in enumerate(images)
    ]
    requests.insert(
        2,
        pb.TranslateStreamRequest(
            request=pb.TranslateRequest(model="invert", image=b"junk", request_id="bad")
        ),
    )
    requests.append(
        pb.TranslateStreamRequest(request=pb.TranslateRequest(model="nope", image=png(images[0])))
    )
    responses = list(stub.TranslateStream(iter(requests), timeout=30))
    assert [r.request_id for r in responses[:6]] == ["id-0", "id-1", "bad", "id-2", "id-3", "id-4"]
    assert responses[2].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and responses[2].error_message
    assert responses[6].error_code == grpc.StatusCode.NOT_FOUND.value[0] and responses[6].request_id
    good = [r for r in responses if r.error_code == 0]
    assert len(good) == 5
    for r, im in zip(good, images, strict=True):
        np.testing.assert_array_equal(decode(r.response.image), 255 - im)


def test_stream_back_pressure(stub, handle, control):
    registry = handle.metrics.registry

    def started():
        return (
            registry.get_sample_value(
                "pixforge_requests_total", {"model": "invert", "method": "TranslateStream"}
            )
            or 0.0
        )

    before = started()
    pulled = []

    def items():
        for i in range(8):
            pulled.append(i)
            yield pb.TranslateStreamRequest(
                request=pb.TranslateRequest(model="invert", image=png(rgb_image(8, 8, i)), request_id=str(i))
            )

    gate = control.gate("invert")
    results = []
    call = stub.TranslateStream(items(), timeout=30)
    reader = threading.Thread(target=lambda: results.extend(call))
    reader.start()
    try:
        assert control.entered["invert"].wait(10)
        time.sleep(0.3)  # give the server every chance to read ahead
        assert started() - before <= 2  # stream.max_in_flight = 2: nothing more is being processed
    finally:
        gate.set()
        control.open("invert")
    reader.join(30)
    assert [r.request_id for r in results] == [str(i) for i in range(8)]
    assert all(r.error_code == 0 for r in results)


# --------------------------------------------------------------------------- operations


def test_health_overall_service_and_models(handle):
    with grpc.insecure_channel(handle.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def status(name):
            return health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status

        serving = health_pb2.HealthCheckResponse.SERVING
        assert status("") == serving
        assert status("pixforge.v1.ImageTranslation") == serving
        assert status("invert") == serving and status("sr2") == serving
        assert status("floatin") == health_pb2.HealthCheckResponse.NOT_SERVING
        expect_code(
            grpc.StatusCode.NOT_FOUND, health.Check, health_pb2.HealthCheckRequest(service="zzz"), timeout=5
        )


def test_reflection_lists_services(handle):
    with grpc.insecure_channel(handle.address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"pixforge.v1.ImageTranslation", "grpc.health.v1.Health"} <= services
        from google.protobuf.descriptor_pool import DescriptorPool

        service = DescriptorPool(db).FindServiceByName("pixforge.v1.ImageTranslation")
        assert {m.name for m in service.methods} == {"Translate", "TranslateStream", "ListModels", "GetModel"}


def test_reflection_v1_beside_v1alpha(handle):
    """grpc.reflection.v1 (what grpcurl asks first) answers like v1alpha: same messages on the wire."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    with grpc.insecure_channel(handle.address) as channel:
        answers = {}
        for version in ("v1", "v1alpha"):
            call = channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                response_deserializer=rpb.ServerReflectionResponse.FromString,
            )
            requests = [
                rpb.ServerReflectionRequest(list_services=""),
                rpb.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
            ]
            answers[version] = list(call(iter(requests), timeout=10))
    assert answers["v1"] == answers["v1alpha"]
    listing, found = answers["v1"]
    services = {s.name for s in listing.list_services_response.service}
    assert {"pixforge.v1.ImageTranslation", "inference.GRPCInferenceService"} <= services
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in found.file_descriptor_response.file_descriptor_proto
    ]
    (service,) = [s for f in files for s in f.service if s.name == "GRPCInferenceService"]
    assert {"ModelConfig", "ModelStatistics", "RepositoryIndex"} <= {m.name for m in service.method}


def test_metrics_endpoint(stub, handle):
    translate(stub, "invert", rgb_image(8, 8))
    expect_code(grpc.StatusCode.NOT_FOUND, translate, stub, "no-such-model", rgb_image(8, 8))
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{handle.metrics_port}/metrics", timeout=5).read().decode()
    )
    for name in (
        "pixforge_requests_total",
        "pixforge_request_failures_total",
        "pixforge_queue_seconds_bucket",
        "pixforge_inference_seconds_bucket",
        "pixforge_batch_size_bucket",
        "pixforge_images_total",
        "pixforge_responses_total",
        "nv_inference_request_success",
        "process_cpu_seconds_total",
        "pixforge_in_flight",
        "pixforge_request_seconds_bucket",
        "pixforge_model_ready",
    ):
        assert name in text, name
    assert 'pixforge_request_failures_total{code="NOT_FOUND",model="_unknown"}' in text
    assert "pixforge_images_per_second" not in text  # rate(pixforge_images_total[1m]) instead
    assert 'pixforge_responses_total{code="OK",method="Translate",model="invert"}' in text
    assert 'nv_inference_request_success{model="invert",version="1"}' in text
    assert 'pixforge_model_ready{model="floatin"} 0.0' in text
    assert 'pixforge_model_ready{model="invert"} 1.0' in text


def test_server_survives_everything(stub, handle):
    with grpc.insecure_channel(handle.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    np.testing.assert_array_equal(
        decode(translate(stub, "invert", rgb_image(9, 9)).image), 255 - rgb_image(9, 9)
    )

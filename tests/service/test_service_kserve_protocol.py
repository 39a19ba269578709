"""KServe v2 protocol details through pixforge's own generated stubs (in-process, no tritonclient):
typed contents, [H, W, C] inputs, every INVALID_ARGUMENT path, status codes shared with
pixforge.v1, parameters reaching the pipeline, colourisation/gray parity with Translate, health,
reflection, probes during shutdown and without a token, the ``kserve: false`` switch, and errors
raised inside a batch's fan-out."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from service_helpers import (
    SMALL_LIMITS,
    EngineControl,
    build_invert,
    decode,
    png,
    rgb_image,
    smooth_image,
    test_config,
    wait_for,
)
from service_helpers import (
    expect_rpc_error as expect,
)
from service_helpers import (
    kserve_raw_request as raw_request,
)

from pixforge.errors import ImageTooLargeError
from pixforge.kserve.v2 import grpc_service_pb2 as kpb
from pixforge.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc
from pixforge.service.pipeline import ArrayJob
from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

Tensor = kpb.ModelInferRequest.InferInputTensor
Requested = kpb.ModelInferRequest.InferRequestedOutputTensor
KSERVE = "inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def server(start_kserve, model_repo):
    # strict_readiness off: the standard repository holds broken models on purpose.
    return start_kserve(test_config(model_repo, strict_readiness=False, **SMALL_LIMITS))


@pytest.fixture(scope="module")
def kserve(server):
    return server[2]


def output(response: kpb.ModelInferResponse) -> np.ndarray:
    tensor = response.outputs[0]
    assert (tensor.name, tensor.datatype) == ("image_out", "UINT8")
    return np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(list(tensor.shape))


def test_typed_contents_and_unbatched_shape(kserve):
    image = rgb_image(5, 6, seed=7)
    tensor = Tensor(name="image", datatype="UINT8", shape=[5, 6, 3])
    tensor.contents.uint_contents.extend(image.ravel().tolist())
    request = kpb.ModelInferRequest(model_name="invert", id="typed", inputs=[tensor])
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    response = kserve.ModelInfer(request, timeout=30)
    assert response.id == "typed" and response.model_version == "1"
    assert list(response.outputs[0].shape) == [5, 6, 3]  # no batch dimension in, none out
    assert np.array_equal(output(response), 255 - image)
    assert response.parameters["triton_final_response"].bool_param is True
    raw = kserve.ModelInfer(raw_request("invert", image[None]), timeout=30)
    assert np.array_equal(output(raw)[0], output(response))


def _set(**fields):
    return lambda r: [setattr(r, k, v) for k, v in fields.items()]


def _typed(values, field="uint_contents"):
    def change(r):
        del r.raw_input_contents[:]
        getattr(r.inputs[0].contents, field).extend(values)

    return change


def _raw_and_typed(r):
    r.inputs[0].contents.uint_contents.append(1)


def _shape(*dims):
    def change(r):
        r.inputs[0].ClearField("shape")
        r.inputs[0].shape.extend(dims)

    return change


def _raw_bytes(data):
    def change(r):
        r.raw_input_contents[0] = data

    return change


def _param(where, key, **value):
    def change(r):
        target = where(r)
        target[key].CopyFrom(kpb.InferParameter(**value))

    return change


def _output(name, **params):
    def change(r):
        r.outputs.append(Requested(name=name))
        for key, value in params.items():
            r.outputs[-1].parameters[key].CopyFrom(kpb.InferParameter(int64_param=value))

    return change


# (id, change to a valid 4x4 RGB invert request (48 raw bytes), message fragment): every
# INVALID_ARGUMENT path of the servicer, kserve_tensors and the pipeline's checks.
MUTATIONS = [
    ("no model name", _set(model_name=""), "model_name is empty"),
    ("bad version", _set(model_version="v2"), "model_version must be"),
    ("no inputs", lambda r: r.ClearField("inputs"), "no inputs"),
    ("unknown input", lambda r: setattr(r.inputs[0], "name", "pixels"), "unknown input 'pixels'"),
    ("input twice", lambda r: r.inputs.append(r.inputs[0]), "given 2 times"),
    ("raw count", lambda r: r.raw_input_contents.append(b"x"), "one per input"),
    ("datatype", lambda r: setattr(r.inputs[0], "datatype", "INT8"), "datatype INT8"),
    ("rank 2", _shape(4, 12), "expected [N, H, W, C]"),
    ("zero size", _shape(1, 0, 4, 3), "positive sizes"),
    ("raw size", _raw_bytes(b"\0" * 10), "10 bytes of raw data"),
    ("raw and typed", _raw_and_typed, "both raw_input_contents and contents"),
    ("no data", lambda r: r.ClearField("raw_input_contents"), "carries no data"),
    ("typed count", _typed([1, 2, 3]), "has 3 elements"),
    ("typed value", _typed([300] * 48), "value 300"),
    ("typed field", _typed([1] * 48, "int_contents"), "not int_contents"),
    ("channels", _shape(1, 4, 12, 1), "takes 3-channel images"),
    ("unknown output", _output("mask"), "unknown output 'mask'"),
    ("classification", _output("image_out", classification=3), "classification outputs"),
    (
        "shared memory",
        _param(lambda r: r.inputs[0].parameters, "shared_memory_region", string_param="region"),
        "shared-memory inputs",
    ),
    ("param type", _param(lambda r: r.parameters, "tile_size", string_param="16"), "must be an integer"),
    ("param sign", _param(lambda r: r.parameters, "tile_overlap", int64_param=-1), "must be >= 0"),
    # tile_size reaches the pipeline's own option checks, exactly as v1's TranslateOptions.tile_size.
    ("tile range", _param(lambda r: r.parameters, "tile_size", int64_param=4), "tile_size must be within"),
    ("tile multiple", _param(lambda r: r.parameters, "tile_size", int64_param=13), "not a multiple"),
]


@pytest.mark.parametrize("change, fragment", [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_invalid_argument(kserve, change, fragment):
    request = raw_request("invert", rgb_image(4, 4)[None])  # 48 bytes
    change(request)
    details = expect(grpc.StatusCode.INVALID_ARGUMENT, kserve.ModelInfer, request)
    assert fragment in details


def test_status_codes_match_v1(kserve):
    image = rgb_image(4, 4)[None]
    assert "no version 9" in expect(
        grpc.StatusCode.NOT_FOUND, kserve.ModelInfer, raw_request("invert", image, model_version="9")
    )
    # floatin breaks the contract, so it FAILED to load: FAILED_PRECONDITION as in pixforge.v1.
    expect(grpc.StatusCode.FAILED_PRECONDITION, kserve.ModelInfer, raw_request("floatin", image))
    assert "failed" in expect(
        grpc.StatusCode.FAILED_PRECONDITION, kserve.ModelMetadata, kpb.ModelMetadataRequest(name="floatin")
    )
    expect(grpc.StatusCode.INVALID_ARGUMENT, kserve.ModelMetadata, kpb.ModelMetadataRequest(name=""))
    expect(
        grpc.StatusCode.INVALID_ARGUMENT, kserve.ModelReady, kpb.ModelReadyRequest(name="sr2", version="x")
    )
    # Over limits.max_input_pixels (200 000) and over the response message limit (1 MiB).
    assert "over the limit" in expect(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        kserve.ModelInfer,
        raw_request("invert", rgb_image(500, 500)[None]),
    )
    assert "limits.max_message_bytes" in expect(
        grpc.StatusCode.RESOURCE_EXHAUSTED, kserve.ModelInfer, raw_request("sr2", rgb_image(300, 300)[None])
    )


def test_gray_and_colorization_equal_v1(server, kserve):
    _, v1, _ = server
    gray = rgb_image(12, 16, seed=5)[:, :, :1]
    response = kserve.ModelInfer(raw_request("grayin", gray[None]), timeout=30)
    expected = decode(v1.Translate(pb.TranslateRequest(model="grayin", image=png(gray)), timeout=30).image)
    assert np.array_equal(output(response)[0], expected)

    # render_size reaches the colourisation path (model at 16 px, chroma joined at full size).
    photo = smooth_image(40, 48)
    request = raw_request("color", photo[None])
    request.parameters["render_size"].int64_param = 16
    v1_request = pb.TranslateRequest(
        model="color", image=png(photo), options=pb.TranslateOptions(render_size=16)
    )
    expected = decode(v1.Translate(v1_request, timeout=30).image)
    assert np.array_equal(output(kserve.ModelInfer(request, timeout=30))[0], expected)
    plain = output(kserve.ModelInfer(raw_request("color", photo[None]), timeout=30))[0]
    assert not np.array_equal(plain, expected)


def test_health_and_reflection_list_kserve(server, kserve):
    handle = server[0]
    assert kserve.ServerLive(kpb.ServerLiveRequest(), timeout=5).live
    assert kserve.ServerReady(kpb.ServerReadyRequest(), timeout=5).ready
    assert not kserve.ModelReady(kpb.ModelReadyRequest(name="nometa"), timeout=5).ready
    with grpc.insecure_channel(handle.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        status = check(health_pb2.HealthCheckRequest(service=KSERVE), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert KSERVE in set(ProtoReflectionDescriptorDatabase(channel).get_services())


def test_probes_need_no_token_but_inference_does(start_server, tmp_path):
    build_invert(tmp_path / "models" / "invert" / "1" / "model.onnx")
    handle, _ = start_server(test_config(tmp_path / "models", **{"auth.token": "s3cret"}))
    with grpc.insecure_channel(handle.address) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(kpb.ServerLiveRequest(), timeout=5).live
        assert stub.ServerReady(kpb.ServerReadyRequest(), timeout=5).ready
        assert stub.ModelReady(kpb.ModelReadyRequest(name="invert"), timeout=5).ready
        request = raw_request("invert", rgb_image(4, 4)[None])
        expect(grpc.StatusCode.UNAUTHENTICATED, stub.ModelInfer, request)
        expect(grpc.StatusCode.UNAUTHENTICATED, stub.ModelMetadata, kpb.ModelMetadataRequest(name="invert"))
        response = stub.ModelInfer(request, timeout=30, metadata=[("authorization", "Bearer s3cret")])
        assert np.array_equal(output(response)[0], 255 - rgb_image(4, 4))


def test_kserve_can_be_turned_off(start_server, tmp_path):
    build_invert(tmp_path / "models" / "invert" / "1" / "model.onnx")
    handle, v1 = start_server(test_config(tmp_path / "models", kserve=False))
    with grpc.insecure_channel(handle.address) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        expect(grpc.StatusCode.UNIMPLEMENTED, stub.ServerLive, kpb.ServerLiveRequest())
        expect(grpc.StatusCode.UNIMPLEMENTED, stub.ModelInfer, raw_request("invert", rgb_image(4, 4)[None]))
        assert KSERVE not in set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert v1.ListModels(pb.ListModelsRequest(), timeout=5).models[0].name == "invert"
    assert isinstance(v1, pb_grpc.ImageTranslationStub)


def test_batch_error_inside_fan_out_reports_the_cause(server):
    # Each 400x300 image fits max_input_pixels but its x2 output breaks max_output_pixels, so the
    # error is raised inside the images' tasks on the pool: it reaches the caller as the domain
    # error, and the batch's admission slot is returned.
    handle = server[0]
    job = ArrayJob(model="sr2", images=np.zeros((3, 400, 300, 3), np.uint8))
    with ThreadPoolExecutor(max_workers=3) as pool:
        with pytest.raises(ImageTooLargeError, match="output would be 600x800"):
            handle.pipeline.translate_arrays(job, executor=pool)
    assert handle.registry.runtime("sr2").in_flight == 0
    ok = handle.pipeline.translate_arrays(ArrayJob(model="sr2", images=np.zeros((2, 4, 6, 3), np.uint8)))
    assert ok.images.shape == (2, 8, 12, 3) and ok.version == 1


def test_shutdown_probes_answer_not_ready_and_inference_is_unavailable(start_server, tmp_path):
    control = EngineControl()
    build_invert(tmp_path / "models" / "invert" / "1" / "model.onnx")
    handle, _ = start_server(test_config(tmp_path / "models"), control)
    channel = grpc.insecure_channel(handle.address)
    stub = kpb_grpc.GRPCInferenceServiceStub(channel)
    image = rgb_image(8, 8, seed=3)[None]
    gate = control.gate("invert")
    try:
        running = stub.ModelInfer.future(raw_request("invert", image), timeout=30)  # keeps the drain waiting
        assert control.entered["invert"].wait(10)
        stopper = threading.Thread(target=handle.stop, kwargs={"grace": 20})
        stopper.start()
        assert wait_for(lambda: handle.draining)
        assert stub.ServerLive(kpb.ServerLiveRequest(), timeout=5).live
        assert not stub.ServerReady(kpb.ServerReadyRequest(), timeout=5).ready
        assert not stub.ModelReady(kpb.ModelReadyRequest(name="invert"), timeout=5).ready
        expect(grpc.StatusCode.UNAVAILABLE, stub.ModelInfer, raw_request("invert", image))
    finally:
        gate.set()
        control.open("invert")
    assert np.array_equal(output(running.result())[0], 255 - image[0])  # the in-flight call finished
    stopper.join(20)
    channel.close()

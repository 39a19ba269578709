"""KServe v2 limits and input hygiene on both fronts: the advertised ``max_batch_size``, the cost of
a batch of tiny images, windows and cancellation inside a batch, ASCII-only version numbers,
printable request ids (and log lines no field can break), duplicate requested outputs, JSON element
types, and messages that state the limit they compare and keep the server's paths to itself."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from service_helpers import SMALL_LIMITS, rgb_image, test_config
from service_helpers import expect_rpc_error as expect
from service_helpers import kserve_json_request as json_infer
from service_helpers import kserve_raw_request as raw_request

from pixforge.kserve.v2 import grpc_service_pb2 as kpb
from pixforge.service.errors import InvalidRequestError, RequestExpiredError
from pixforge.service.kserve_tensors import (
    check_requested_output_names,
    json_elements,
    parse_ascii_int,
    parse_version,
)
from pixforge.service.logs import TextFormatter, configure_logging, escape_controls
from pixforge.service.pipeline import MIN_IMAGE_COST_PIXELS, ArrayJob, CancelToken, human_bytes
from pixforge.service.servicer import check_request_id
from pixforge.v1 import translation_pb2 as pb

Tensor = kpb.ModelInferRequest.InferInputTensor
Requested = kpb.ModelInferRequest.InferRequestedOutputTensor
MAX_BATCH = 4


@pytest.fixture(scope="module")
def server(start_kserve, model_repo):
    config = test_config(
        model_repo,
        http_port=-1,
        strict_readiness=False,  # the standard repository holds broken models on purpose
        model_control=True,
        **SMALL_LIMITS,
        **{"batching.max_batch_size": MAX_BATCH},
    )
    return start_kserve(config)


@pytest.fixture(scope="module")
def kserve(server):
    return server[2]


def http(handle, path: str, body: dict | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of a GET (no body) or POST to the HTTP front."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{handle.http_port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --------------------------------------------------------------------------- batch size and cost


def test_batch_over_max_batch_size_is_refused_on_both_fronts(server, kserve):
    handle = server[0]
    tiny = np.zeros((MAX_BATCH + 1, 1, 1, 3), np.uint8)
    details = expect(grpc.StatusCode.INVALID_ARGUMENT, kserve.ModelInfer, raw_request("invert", tiny))
    assert f"batch-size must be <= {MAX_BATCH}" in details and f"got {MAX_BATCH + 1}" in details
    status, answer = http(handle, "/v2/models/invert/infer", json_infer(tiny))
    assert status == 400 and f"batch-size must be <= {MAX_BATCH}" in answer["error"]
    # Exactly max_batch_size images is what ModelConfig advertises: served.
    response = kserve.ModelInfer(raw_request("invert", tiny[:MAX_BATCH]), timeout=30)
    assert list(response.outputs[0].shape) == [MAX_BATCH, 1, 1, 3]


def test_batch_cost_counts_padding_and_a_minimum_per_image(server):
    handle = server[0]
    pipeline, contract = handle.pipeline, handle.registry.describe("sr2").contract
    factor = 1 + contract.scale**2  # input + output pixels
    assert (
        pipeline.check_array_response(contract, (MAX_BATCH, 1, 1, 3))
        == MAX_BATCH * MIN_IMAGE_COST_PIXELS * factor
    )
    # 65 rows and columns run padded to sr2's size multiple (2): 66 x 66.
    assert pipeline.check_array_response(contract, (2, 65, 65, 3)) == 2 * 66 * 66 * factor


def test_too_large_message_states_the_limit_it_compares(server, kserve):
    handle = server[0]
    limit = human_bytes(handle.pipeline.max_response_bytes)
    assert limit != human_bytes(SMALL_LIMITS["limits.max_message_bytes"])
    # 300 x 300 x2 is 1.0 MiB of output: over what a response can carry under the 1 MiB message limit.
    details = expect(
        grpc.StatusCode.RESOURCE_EXHAUSTED, kserve.ModelInfer, raw_request("sr2", rgb_image(300, 300)[None])
    )
    assert f"over the {limit} a response can carry" in details and "limits.max_message_bytes" in details


class CountingExecutor(ThreadPoolExecutor):
    """A pool that records how many of its tasks were submitted and at most pending at once."""

    def __init__(self, delay: float = 0.0):
        super().__init__(max_workers=8)
        self.delay = delay
        self.lock = threading.Lock()
        self.submitted = self.pending = self.most_pending = 0

    def submit(self, fn, *args):
        with self.lock:
            self.submitted += 1
            self.pending += 1
            self.most_pending = max(self.most_pending, self.pending)

        def task():
            time.sleep(self.delay)  # holds the image long enough for a burst of submits to show
            return fn(*args)

        future = super().submit(task)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future) -> None:
        with self.lock:
            self.pending -= 1


def test_batch_images_run_in_bounded_windows(server):
    handle = server[0]
    images = np.stack([rgb_image(4, 4, seed=i) for i in range(6)])
    with CountingExecutor(delay=0.05) as pool:
        result = handle.pipeline.translate_arrays(
            ArrayJob(model="invert", images=images), executor=pool, window=2
        )
    assert np.array_equal(result.images, 255 - images)
    assert pool.submitted == 6 and pool.most_pending == 2


def _expire_after_first_image(monkeypatch, pipeline, token: CancelToken) -> list[int]:
    """Make the first image that finishes expire ``token`` (its deadline passes); returns the calls."""
    calls = []
    real = pipeline._translate_pixels

    def translate_pixels(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        token.expire()
        return result

    monkeypatch.setattr(pipeline, "_translate_pixels", translate_pixels)
    return calls


def test_images_after_the_deadline_are_never_started(server, monkeypatch):
    pipeline = server[0].pipeline
    images = np.zeros((4, 4, 4, 3), np.uint8)
    token = CancelToken()
    calls = _expire_after_first_image(monkeypatch, pipeline, token)
    with pytest.raises(RequestExpiredError):
        pipeline.translate_arrays(ArrayJob(model="invert", images=images), token)  # one after the other
    assert len(calls) == 1

    token = CancelToken()
    calls = _expire_after_first_image(monkeypatch, pipeline, token)
    with CountingExecutor() as pool, pytest.raises(RequestExpiredError):
        pipeline.translate_arrays(ArrayJob(model="invert", images=images), token, pool, window=1)
    assert len(calls) == 1 and pool.submitted == 1


# --------------------------------------------------------------------------- versions


def test_versions_are_ascii_decimal():
    assert [parse_ascii_int(t) for t in ("0", "7", "01", "123")] == [0, 7, 1, 123]
    for text in ("", " 1", "1 ", "+1", "-1", "1.0", "¹", "１", "٣", "1\n"):
        assert parse_ascii_int(text) is None, repr(text)
    assert parse_version("") == 0 and parse_version("01") == 1
    for text in ("¹", "１", " 1 ", " ", "0"):
        with pytest.raises(InvalidRequestError, match="ASCII digits"):
            parse_version(text)


@pytest.mark.parametrize("version", ["¹", "１", " 1 "])
def test_non_ascii_versions_are_invalid_argument_everywhere(server, kserve, version):
    handle = server[0]
    image = rgb_image(4, 4)[None]
    calls = [
        (kserve.ModelInfer, raw_request("invert", image, model_version=version)),
        (kserve.ModelMetadata, kpb.ModelMetadataRequest(name="invert", version=version)),
        (kserve.ModelReady, kpb.ModelReadyRequest(name="invert", version=version)),
        (kserve.ModelConfig, kpb.ModelConfigRequest(name="invert", version=version)),
        (kserve.ModelStatistics, kpb.ModelStatisticsRequest(name="invert", version=version)),
    ]
    for rpc, request in calls:
        assert "ASCII digits" in expect(grpc.StatusCode.INVALID_ARGUMENT, rpc, request)
    quoted = urllib.request.quote(version)
    for path in ("", "/ready", "/config", "/stats"):
        status, answer = http(handle, f"/v2/models/invert/versions/{quoted}{path}")
        assert status == 400 and "ASCII digits" in answer["error"], (path, answer)
    status, answer = http(handle, f"/v2/models/invert/versions/{quoted}/infer", json_infer(image))
    assert status == 400 and "ASCII digits" in answer["error"]


def test_leading_zeros_name_the_same_version(server, kserve):
    image = rgb_image(4, 4)[None]
    response = kserve.ModelInfer(raw_request("invert", image, model_version="01"), timeout=30)
    assert response.model_version == "1"
    assert kserve.ModelReady(kpb.ModelReadyRequest(name="invert", version="001"), timeout=5).ready


# --------------------------------------------------------------------------- request ids


def test_request_ids_must_be_printable_ascii():
    assert check_request_id("req-1 ~!") == "req-1 ~!"
    for bad in ("a\nb", "tab\there", "\x1b[31m", "caf\u00e9", "del\x7f", "\u2028"):
        with pytest.raises(InvalidRequestError, match="printable ASCII"):
            check_request_id(bad)
    with pytest.raises(InvalidRequestError, match="over the limit"):
        check_request_id("x" * 200)


@pytest.mark.parametrize("request_id", ["a\nb", "caf\u00e9", "x\x1b[2J"])
def test_unprintable_request_ids_are_refused_on_every_front(server, kserve, request_id):
    handle, v1 = server[0], server[1]
    image = rgb_image(4, 4)[None]
    details = expect(
        grpc.StatusCode.INVALID_ARGUMENT, kserve.ModelInfer, raw_request("invert", image, id=request_id)
    )
    assert "printable ASCII" in details
    streamed = list(kserve.ModelStreamInfer(iter([raw_request("invert", image, id=request_id)]), timeout=30))
    assert (
        streamed[0].error_message.startswith("INVALID_ARGUMENT: ")
        and "printable ASCII" in streamed[0].error_message
    )
    status, answer = http(handle, "/v2/models/invert/infer", json_infer(image, id=request_id))
    assert status == 400 and "printable ASCII" in answer["error"]
    v1_request = pb.TranslateRequest(model="invert", image=b"\x89PNG", request_id=request_id)
    assert "printable ASCII" in expect(grpc.StatusCode.INVALID_ARGUMENT, v1.Translate, v1_request)


def test_text_log_lines_escape_control_characters():
    assert escape_controls("a\nb\r\x1b[31m\u2028\x85 ok é") == "a\\nb\\r\\x1b[31m\\u2028\\x85 ok é"
    record = logging.LogRecord(
        "pixforge.test", logging.WARNING, __file__, 1, "model %s\nFORGED", ("m\r",), None
    )
    record.request_id = "id\n2024-01-01 INFO forged"
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert "[id\\n2024-01-01 INFO forged] model m\\r\\nFORGED" in line
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = __import__("sys").exc_info()
    assert "\nTraceback" in TextFormatter().format(record)  # the traceback keeps its lines


def test_configured_text_logging_escapes_control_characters():
    logger = logging.getLogger("pixforge")
    saved = logger.handlers[:], logger.level, logger.propagate
    stream = io.StringIO()
    try:
        configure_logging("INFO", "text", stream)
        logging.getLogger("pixforge.test").info("unknown model %s", "x\ny")
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    assert stream.getvalue().count("\n") == 1 and "unknown model x\\ny" in stream.getvalue()


# --------------------------------------------------------------------------- outputs, elements, messages


def test_duplicate_requested_outputs_are_refused(kserve):
    check_requested_output_names(["image_out"])
    with pytest.raises(InvalidRequestError, match="requested 2 times"):
        check_requested_output_names(["image_out", "image_out"])
    request = raw_request("invert", rgb_image(4, 4)[None])
    request.outputs.extend([Requested(name="image_out"), Requested(name="image_out")])
    assert "requested 2 times" in expect(grpc.StatusCode.INVALID_ARGUMENT, kserve.ModelInfer, request)


def test_typed_elements_out_of_range_name_the_datatype(kserve):
    request = raw_request("invert", rgb_image(4, 4)[None])
    del request.raw_input_contents[:]
    request.inputs[0].contents.uint_contents.extend([300] * 48)
    details = expect(grpc.StatusCode.INVALID_ARGUMENT, kserve.ModelInfer, request)
    assert "element value 300: out of range for UINT8 (0..255)" in details


@pytest.mark.parametrize(
    "datatype, data, fragment",
    [
        ("UINT8", [True, 1, 2], "booleans (true/false): UINT8"),
        ("INT32", [1, False, 2], "booleans (true/false): INT32"),
        ("UINT8", [1, 2, 2**70], f"element value {2**70}: out of range for UINT8 (0..255)"),
        ("INT32", [1, 2, 2**40], "out of range for INT32"),
        ("UINT8", [1, 2, 2**64 - 1], "out of range for UINT8"),  # numpy alone reads it as a float
        ("UINT8", [1, 2, -1], "element value -1: out of range for UINT8"),
        ("UINT8", [1, 2, 1.5], "non-integer"),
        ("UINT8", [1, 2, None], "non-integer"),
        ("BOOL", [True, 1, False], "non-boolean elements"),
    ],
)
def test_json_elements_check_types_and_ranges(datatype, data, fragment):
    with pytest.raises(InvalidRequestError) as info:
        json_elements("image", datatype, data, [3], 3)
    assert fragment in str(info.value)


def test_json_elements_convert_valid_data():
    assert json_elements("image", "UINT8", [[0, 7, 255]], [1, 3], 3).tolist() == [0, 7, 255]
    assert json_elements("image", "UINT8", [0, 7, 255], [1, 3], 3).dtype == np.uint8
    assert json_elements("image", "UINT64", [0, 1, 2**64 - 1], [3], 3).tolist() == [0, 1, 2**64 - 1]
    assert json_elements("image", "BOOL", [True, False, True], [3], 3).tolist() == [True, False, True]
    with pytest.raises(InvalidRequestError, match="ragged"):
        json_elements("image", "UINT8", [[1, 2], [3]], [3], 3)


def test_model_load_not_found_names_only_the_model(server, kserve, model_repo):
    handle = server[0]
    request = kpb.RepositoryModelLoadRequest(model_name="no-such-model")
    details = expect(grpc.StatusCode.NOT_FOUND, kserve.RepositoryModelLoad, request)
    assert "'no-such-model' is not in the model repository" in details
    assert str(model_repo) not in details and model_repo.name not in details
    status, answer = http(handle, "/v2/repository/models/no-such-model/load", {})
    assert status == 404 and str(model_repo) not in answer["error"]

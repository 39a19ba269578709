"""KServe v2 / Open Inference Protocol over HTTP/REST (``/v2/...``), as ``tritonclient.http`` speaks it.

A thin aiohttp front of :class:`~pixforge.service.kserve_core.KServeCore`, the same core the gRPC
front (:mod:`pixforge.service.kserve`) uses: same registry, admission, batchers, tiling
parameters, limits and metrics, so an HTTP request returns exactly the pixels of the same gRPC
``ModelInfer`` (and of pixforge.v1 ``Translate``). It runs on the server's event loop
(:class:`~pixforge.service.http_server.HttpEndpoint`), with the gRPC port's bearer tokens and TLS.

Tensors come as JSON (``"data"``: a flat or nested list) or with the binary-tensor extension: the
``Inference-Header-Content-Length`` header gives the length of the JSON header, the raw tensor
bytes follow it (``"parameters": {"binary_data_size": n}`` on the input). Outputs are JSON
``"data"`` (a flat list, as Triton answers) unless binary output is asked for (``binary_data`` on
the requested output, or the request parameter ``binary_data_output``), then they follow the JSON
header the same way. Errors answer Triton's ``{"error": "<message>"}`` with the status of
:data:`HTTP_STATUS` (the gRPC code from the one table, :func:`~pixforge.service.servicer.status_for_error`,
mapped to HTTP).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry

import pixforge
from pixforge.contract import INPUT_NAME, OUTPUT_NAME
from pixforge.errors import ImageTooLargeError

from .errors import InvalidRequestError
from .http_server import auth_middleware, metrics_handler
from .interceptors import REQUEST_ID_HEADER, DrainInterceptor
from .kserve import EXTENSIONS as GRPC_EXTENSIONS
from .kserve_core import PLATFORM, SERVER_NAME, KServeCore, not_offered
from .kserve_tensors import (
    DATATYPE,
    OPTION_PARAMETERS,
    InputImages,
    check_input_parameters,
    check_input_tensor,
    check_inputs,
    check_option,
    check_requested_output,
    images_from_flat,
    parse_version,
    tensor_specs,
    translate_options,
    uint8_elements,
)
from .logs import request_context
from .metrics import Metrics
from .pipeline import TranslateOptions, human_bytes
from .servicer import message_request_id, pushback_ms, status_for_error
from .text_limits import MAX_REQUEST_ID, quote

log = logging.getLogger("pixforge.service.kserve_http")

METHOD = "HTTPInfer"  # the metrics/log label of HTTP inference requests
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
# What GET /v2 advertises: the gRPC front's extensions without its streaming RPC, plus Triton's
# binary tensor format.
EXTENSIONS = tuple(e for e in GRPC_EXTENSIONS if e != "model_stream_infer") + ("binary_tensor_data",)

# The one table from status codes to HTTP statuses (docs/serving.md, "HTTP/REST (KServe v2)"):
# the standard mapping of google.rpc.Code (grpc-gateway's), which also gives Triton's 400 for
# request errors. RESOURCE_EXHAUSTED splits in two: a request over a size limit, which no retry
# can fix (the gRPC front's `grpc-retry-pushback-ms: -1`), is 413; a busy server is 429, with
# `Retry-After` when admission knows the expected wait.
# Codes the server never gives (PERMISSION_DENIED, ...) would answer 500.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,  # the client closed the request (nginx's code); it never sees it
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,  # Triton extensions pixforge does not offer
    grpc.StatusCode.FAILED_PRECONDITION: 400,  # a model loading or failed; model control off
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
TOO_LARGE_STATUS = 413  # RESOURCE_EXHAUSTED that retrying cannot help (over a size limit)

# JSON header bytes (request) or output elements (response) above which the work leaves the loop.
OFF_LOOP_BYTES = 256 * 1024
OFF_LOOP_ELEMENTS = 256 * 1024
JSON_BYTES_PER_ELEMENT = 4  # at most "255," per UINT8 element of a JSON output
_JSON_DIGITS = np.array([f"{i},".encode() for i in range(256)], dtype="S4")  # NUL-padded
_JSON_CHUNK = 1 << 20  # elements encoded at a time (bounds the temporary arrays)


def error_body(message: str) -> bytes:
    """Triton's error JSON."""
    return json.dumps({"error": message}).encode()


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type=JSON_TYPE, headers=headers
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(message), content_type=JSON_TYPE, headers=headers)


def http_status(exc: BaseException, request_id: str = "-") -> tuple[int, grpc.StatusCode, str, dict]:
    """(HTTP status, gRPC code, client-safe message, extra headers) for an exception."""
    code, message = status_for_error(exc, request_id)
    headers: dict[str, str] = {}
    status = HTTP_STATUS.get(code, 500)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        pushback = pushback_ms(exc)
        if pushback < 0:
            status = TOO_LARGE_STATUS
        elif pushback > 0:
            headers["Retry-After"] = str(max(1, math.ceil(pushback / 1000)))
    return status, code, message, headers


def uint8_json_list(flat: np.ndarray) -> bytes:
    """A uint8 array as a compact JSON list ``[0,17,255]``, vectorised (no Python int per element)."""
    flat = flat.reshape(-1)
    if flat.size == 0:
        return b"[]"
    parts = [b"["]
    for start in range(0, flat.size, _JSON_CHUNK):
        padded = np.frombuffer(_JSON_DIGITS[flat[start : start + _JSON_CHUNK]].tobytes(), np.uint8)
        parts.append(padded[padded != 0].tobytes())
    parts[-1] = parts[-1][:-1]  # the last element's comma
    parts.append(b"]")
    return b"".join(parts)


# --------------------------------------------------------------------------- request decoding


@dataclass
class InferRequest:
    """A decoded infer request: the JSON header, the binary section and what the front needs early.

    Attributes:
        header: the JSON object.
        binary: the bytes after the JSON header (binary tensor extension), else empty.
        id: the request's ``id`` ("" without one).
        timeout_s: Triton's ``timeout`` parameter in seconds (None: no deadline).
    """

    header: dict
    binary: memoryview
    id: str = ""
    timeout_s: float | None = None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what} must be a JSON object, got {_json_type(value)}")
    return value


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Split a request body into its JSON header and binary section and read the header.

    Raises:
        InvalidRequestError: a bad ``Inference-Header-Content-Length``, JSON that does not parse or
            is not an object, a non-string ``id``.
    """
    view = memoryview(body)
    if header_length is None:
        text, binary = view, memoryview(b"")
    else:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise InvalidRequestError(
                f"{HEADER_LENGTH} is {quote(header_length)}: it must be the length of the JSON header, "
                f"0..{len(body)} bytes for this body"
            )
        n = int(header_length)
        text, binary = view[:n], view[n:]
    try:
        header = json.loads(bytes(text))
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise InvalidRequestError(f"the request is not valid JSON: {detail[:200]}") from None
    if not isinstance(header, dict):
        raise InvalidRequestError(f"the request must be a JSON object, got {_json_type(header)}")
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidRequestError(f"id must be a string, got {_json_type(request_id)}")
    timeout_s = None
    parameters = header.get("parameters")
    if isinstance(parameters, dict) and _is_int(parameters.get("timeout")) and parameters["timeout"] > 0:
        timeout_s = parameters["timeout"] / 1e6  # Triton's request timeout, in microseconds
    return InferRequest(header, binary, request_id, timeout_s)


def request_options(parameters: dict) -> TranslateOptions:
    """``tile_size``, ``tile_overlap``, ``render_size`` from the request parameters (0 = default).

    Raises:
        InvalidRequestError: one of them is not a non-negative integer.
    """
    values = {}
    for key in OPTION_PARAMETERS:
        if key in parameters:
            value = parameters[key]
            if not _is_int(value):
                raise InvalidRequestError(f"parameter {key!r} must be an integer, got {_json_type(value)}")
            values[key] = check_option(key, value)
    return translate_options(values)


def binary_outputs(header: dict, parameters: dict) -> bool:
    """Whether ``image_out`` goes back as binary; refuses outputs pixforge cannot produce.

    The request parameter ``binary_data_output`` sets the default; a requested output's
    ``binary_data`` overrides it (as in Triton).
    """
    default = parameters.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidRequestError(
            f"parameter 'binary_data_output' must be a boolean, got {_json_type(default)}"
        )
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidRequestError(f"outputs must be a JSON array, got {_json_type(outputs)}")
    binary = default
    for output in outputs:
        output = _object(output, "each requested output")
        name = output.get("name", "")
        params = _object(output.get("parameters"), f"the parameters of output {quote(str(name))}")
        check_requested_output(name if isinstance(name, str) else repr(name), params)
        flag = params.get("binary_data", default)
        if not isinstance(flag, bool):
            raise InvalidRequestError(
                f"output parameter 'binary_data' must be a boolean, got {_json_type(flag)}"
            )
        binary = flag
    return binary


def _json_elements(data: Any, shape: list[int], count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidRequestError(f"input {INPUT_NAME!r} data must be a JSON array, got {_json_type(data)}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} data is a ragged nested list: send a flat list or one nested as {shape}"
        ) from None
    if array.size != count:
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} has {array.size} elements in data, its shape {shape} needs {count}"
        )
    if array.ndim > 1 and list(array.shape) != shape:
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} data is nested as {list(array.shape)}, its shape is {shape}: "
            "send a flat list or one nested as the shape"
        )
    if array.dtype.kind not in "iu":
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} data holds non-integer elements: {DATATYPE} elements are integers 0..255"
        )
    return uint8_elements(INPUT_NAME, array.reshape(-1))


def input_images(header: dict, binary: memoryview) -> InputImages:
    """Validate the request's inputs (JSON data or binary) and return its images, as the gRPC front.

    Raises:
        InvalidRequestError: the same cases as the gRPC front's, plus binary sections that do not
            match ``binary_data_size`` and JSON data of the wrong size or type.
    """
    inputs = header.get("inputs") or []
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise InvalidRequestError("inputs must be a JSON array of tensor objects")
    check_inputs([t.get("name") if isinstance(t.get("name"), str) else repr(t.get("name")) for t in inputs])
    tensor = inputs[0]
    parameters = _object(tensor.get("parameters"), f"the parameters of input {INPUT_NAME!r}")
    check_input_parameters(parameters, "data or the binary tensor extension")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} has shape {quote(json.dumps(shape))}: expected [N, H, W, C] or "
            "[H, W, C] with positive sizes"
        )
    datatype = tensor.get("datatype", "")
    shape, count = check_input_tensor(datatype if isinstance(datatype, str) else repr(datatype), shape)
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise InvalidRequestError(
                f"input {INPUT_NAME!r} has both binary data (binary_data_size) and data: use one of them"
            )
        if not _is_int(size) or size < 0:
            raise InvalidRequestError(f"input {INPUT_NAME!r} has binary_data_size {quote(json.dumps(size))}")
        if size != len(binary):
            raise InvalidRequestError(
                f"input {INPUT_NAME!r} has binary_data_size {size} but {len(binary)} bytes follow the JSON "
                f"header ({HEADER_LENGTH})"
            )
        if size != count:
            raise InvalidRequestError(
                f"input {INPUT_NAME!r} has {size} bytes of binary data, its shape {shape} needs {count}"
            )
        return images_from_flat(np.frombuffer(binary, dtype=np.uint8), shape)
    if len(binary):
        raise InvalidRequestError(
            f"{len(binary)} bytes follow the JSON header but no input claims them (binary_data_size)"
        )
    if "data" not in tensor:
        raise InvalidRequestError(
            f"input {INPUT_NAME!r} carries no data: send data or binary data (parameters.binary_data_size)"
        )
    return images_from_flat(_json_elements(tensor["data"], shape, count), shape)


@dataclass
class ParsedInfer:
    """What :func:`parse_infer` read from a request."""

    inputs: InputImages
    options: TranslateOptions
    binary_output: bool


@dataclass
class PreparedInfer:
    """A decoded request and its validated tensors, or why they were refused (reported later)."""

    request: InferRequest
    parsed: ParsedInfer | None
    failure: Exception | None

    def checked(self) -> ParsedInfer:
        """The validated tensors; raises the refusal kept in ``failure`` if they were refused."""
        if self.parsed is None:
            raise self.failure or InvalidRequestError("the request was not parsed")
        return self.parsed


def prepare_infer(body: bytes, header_length: str | None) -> PreparedInfer:
    """Decode and validate a request body (pure, any thread: the front runs large ones off the loop).

    Raises:
        InvalidRequestError: the body is not a readable request at all (see :func:`decode_request`);
            the tensors' and parameters' errors are kept in ``failure`` instead.
    """
    request = decode_request(body, header_length)
    try:
        return PreparedInfer(request, parse_infer(request), None)
    except Exception as exc:
        return PreparedInfer(request, None, exc)


def parse_infer(request: InferRequest) -> ParsedInfer:
    """The whole tensor and parameter validation of a decoded request (pure, any thread).

    The order follows the gRPC front: requested outputs, options, inputs.
    """
    header = request.header
    parameters = _object(header.get("parameters"), "parameters")
    binary = binary_outputs(header, parameters)
    options = request_options(parameters)
    return ParsedInfer(input_images(header, request.binary), options, binary)


# --------------------------------------------------------------------------- the application


# eq=False: a service object compared (and hashed) by identity; its bound methods are the routes.
@dataclass(eq=False)
class KServeHTTP:
    """The ``/v2`` routes on a :class:`KServeCore`.

    Args:
        core: the protocol-neutral KServe operations (shared with the gRPC front).
        metrics: the server's metrics (rejections before the core counts them).
        open_calls: the gRPC drain interceptor: HTTP requests share its open-call count, its
            ``max_concurrent_rpcs`` limit and the graceful-shutdown wait.
        draining: whether shutdown has begun (new requests other than probes get 503).
        registry: the Prometheus registry served at ``/metrics``.
        max_body_bytes: the request body limit (for the 413 message).
    """

    core: KServeCore
    metrics: Metrics
    _: KW_ONLY
    open_calls: DrainInterceptor | None
    draining: Callable[[], bool]
    registry: CollectorRegistry
    max_body_bytes: int

    # -- middlewares

    @web.middleware
    async def errors(self, request: web.Request, handler) -> web.StreamResponse:
        """aiohttp's own refusals (404, 405, 413 body too large) as Triton's ``{"error": ...}``."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.reason
            if exc.status == 413:
                self.metrics.call_rejected(METHOD, "RESOURCE_EXHAUSTED")
                message = (
                    f"request body over the server's limit of {human_bytes(self.max_body_bytes)} "
                    "(limits.max_message_bytes)"
                )
            elif exc.status == 404:
                message = f"not found: {quote(request.path)} (the /v2 routes are in docs/serving.md)"
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(exc.status, message, allow)

    @web.middleware
    async def drain(self, request: web.Request, handler) -> web.StreamResponse:
        """503 once shutdown began and 429 beyond ``max_concurrent_rpcs`` (probes and /metrics exempt)."""
        if _exempt_from_drain(request):
            return await handler(request)
        if self.draining():
            self.metrics.call_rejected(METHOD, "UNAVAILABLE")
            return error_response(503, "server is shutting down; retry on another replica")
        if self.open_calls is None:
            return await handler(request)
        if self.open_calls.over_limit():
            self.metrics.call_rejected(METHOD, "RESOURCE_EXHAUSTED")
            return error_response(
                429, f"server has {self.open_calls.active} open calls (max_concurrent_rpcs); retry later"
            )
        with self.open_calls.counted():
            return await handler(request)

    # -- health and metadata

    async def live(self, _request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, _request: web.Request) -> web.Response:
        ready = self.core.server_ready()
        return json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, _request: web.Request) -> web.Response:
        return json_response(
            {"name": SERVER_NAME, "version": pixforge.__version__, "extensions": list(EXTENSIONS)}
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        try:
            ready = self.core.model_ready(name, version)
        except Exception as exc:
            return self._error(exc)
        return json_response({"name": name, "ready": ready}, status=200 if ready else 503)

    async def model_metadata(self, request: web.Request) -> web.Response:
        return self._model_json(request, self._metadata)

    def _metadata(self, name: str, version: str) -> dict:
        described = self.core.model_metadata(name, version)
        inputs, outputs = tensor_specs(described.contract)
        return {
            "name": described.row.name,
            "versions": described.versions,
            "platform": PLATFORM,
            "inputs": inputs,
            "outputs": outputs,
        }

    async def model_config(self, request: web.Request) -> web.Response:
        return self._model_json(request, self.core.model_config)

    async def statistics(self, request: web.Request) -> web.Response:
        return self._model_json(request, self.core.statistics)

    def _model_json(self, request: web.Request, answer: Callable[[str, str], dict]) -> web.Response:
        """``answer(name, version)`` for the request's model as JSON, or the error it raised."""
        try:
            return json_response(answer(*_model(request)))
        except Exception as exc:
            return self._error(exc)

    async def repository_index(self, request: web.Request) -> web.Response:
        try:
            body = await _json_body(request)
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidRequestError(f"'ready' must be a boolean, got {_json_type(ready)}")
            return json_response(self.core.repository_index(ready))
        except Exception as exc:
            return self._error(exc)

    async def load(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        try:
            body = await _json_body(request)
            parameters = _object(body.get("parameters"), "parameters")
            await self.core.load_model(name, list(parameters))  # config / file: overrides refused
        except Exception as exc:
            return self._error(exc)
        return web.Response(status=200)

    async def unload(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        try:
            await _json_body(request)  # unload_dependents: pixforge models have no dependents
            await self.core.unload_model(name)
        except Exception as exc:
            return self._error(exc)
        return web.Response(status=200)

    def not_offered(self, feature: str):
        """A handler answering 501 for a Triton extension pixforge does not offer."""

        async def handler(_request: web.Request) -> web.Response:
            return self._error(not_offered(feature))

        return handler

    async def metrics_route(self, _request: web.Request) -> web.Response:
        return await metrics_handler(self.registry)

    def _error(self, exc: BaseException, request_id: str = "-") -> web.Response:
        status, code, message, headers = http_status(exc, request_id)
        if code is grpc.StatusCode.INTERNAL and not isinstance(exc, web.HTTPException):
            log.error("HTTP request failed: %s", message, exc_info=exc)
        return error_response(status, message, headers)

    # -- inference

    async def infer(self, request: web.Request) -> web.StreamResponse:
        """POST .../infer: decode (JSON or binary), run through the core, answer like Triton."""
        name, version = _model(request)
        header_id = request.headers.get(REQUEST_ID_HEADER, "")
        if len(header_id) > MAX_REQUEST_ID:
            self.metrics.call_rejected(METHOD, "INVALID_ARGUMENT")
            return error_response(
                400,
                f"{REQUEST_ID_HEADER} header is {len(header_id)} characters long, over the limit of "
                f"{MAX_REQUEST_ID}: {quote(header_id)}",
            )
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        with request_context(header_id or "-", METHOD):
            try:
                body = await request.read()  # over client_max_size: 413 (errors middleware)
                length = request.headers.get(HEADER_LENGTH)
                if len(body) > OFF_LOOP_BYTES:  # JSON parsing and numpy conversion take a while
                    prepared = await loop.run_in_executor(None, prepare_infer, body, length)
                else:
                    prepared = prepare_infer(body, length)
                request_id = message_request_id(prepared.request.id)
            except web.HTTPException:
                raise
            except Exception as exc:
                status, code, message, headers = http_status(exc)
                self.metrics.call_rejected(METHOD, code.name)
                return error_response(status, message, headers)
            with request_context(request_id, METHOD):
                return await self._infer(request, name, version, prepared, request_id, arrived)

    async def _infer(
        self,
        request: web.Request,
        name: str,
        version: str,
        prepared: PreparedInfer,
        request_id: str,
        arrived: float,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        timeout_s = prepared.request.timeout_s
        deadline = None if timeout_s is None else arrived + timeout_s

        def parse():
            # Called by the core after it found the model: an unknown model is 404 whatever the
            # tensors, as on the gRPC port.
            parsed = prepared.checked()
            if not parsed.binary_output:
                self._check_json_output(name, version, parsed.inputs.images.shape)
            return parsed.inputs.images, parsed.options

        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        call = self.core.infer(name, version, parse, request_id, METHOD, remaining)
        try:
            # A timeout cancels the call at its deadline, as gRPC cancels a call at its deadline:
            # queued work is dropped and the admission slot freed.
            result = await (call if remaining is None else asyncio.wait_for(call, remaining))
        except Exception as exc:
            status, code, message, headers = http_status(exc, request_id)
            expired = deadline is not None and loop.time() >= deadline
            timed_out = isinstance(exc, asyncio.TimeoutError) or code in (
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            if timeout_s is not None and expired and timed_out:
                status = HTTP_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED]
                message = f"the request's timeout ({timeout_s * 1e6:.0f} us) passed before it finished"
            headers[REQUEST_ID_HEADER] = request_id
            return error_response(status, message, headers)
        parsed = prepared.checked()  # parse() returned: the request's tensors are valid
        images = result.images if parsed.inputs.batched else result.images[0]
        envelope: dict[str, Any] = {"model_name": name, "model_version": str(result.version)}
        if prepared.request.id:
            envelope["id"] = prepared.request.id
        output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": list(images.shape)}
        envelope["outputs"] = [output]
        headers = {REQUEST_ID_HEADER: request_id}
        if parsed.binary_output:
            raw = np.ascontiguousarray(images).data.cast("B")
            output["parameters"] = {"binary_data_size": raw.nbytes}
            head = json.dumps(envelope).encode()
            headers[HEADER_LENGTH] = str(len(head))
            return await _send(request, [head, raw], BINARY_TYPE, headers)
        output["data"] = None  # replaced by the encoded elements: the last "null" of the text
        prefix, suffix = json.dumps(envelope).encode().rsplit(b"null", 1)
        if images.size > OFF_LOOP_ELEMENTS:
            data = await loop.run_in_executor(None, uint8_json_list, images)
        else:
            data = uint8_json_list(images)
        return await _send(request, [prefix, data, suffix], JSON_TYPE, headers)

    def _check_json_output(self, name: str, version: str, shape: tuple[int, ...]) -> None:
        """Refuse, before compute, a JSON output that would not fit limits.max_message_bytes."""
        row = self.core.registry.describe(name, parse_version(version))
        if row.contract is None:
            return  # the core answers "not ready"
        n, h, w, _ = shape
        c = row.contract
        elements = n * h * w * c.scale * c.scale * c.output_channels
        limit = self.core.pipeline.max_response_bytes
        if elements * JSON_BYTES_PER_ELEMENT > limit:
            raise ImageTooLargeError(
                f"the JSON output would be up to {human_bytes(elements * JSON_BYTES_PER_ELEMENT)} "
                f"({JSON_BYTES_PER_ELEMENT} bytes per element), over the server's message limit of "
                f"{human_bytes(limit)} (limits.max_message_bytes): ask for binary output "
                "(parameters.binary_data) or send fewer or smaller images"
            )


async def _send(
    request: web.Request, parts: list, content_type: str, headers: dict[str, str]
) -> web.StreamResponse:
    """Write a response from parts without joining them (a tensor is not copied again)."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = content_type
    if _accepts_compression(request):
        response.enable_compression()
    else:
        response.content_length = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    await response.write_eof()
    return response


def _accepts_compression(request: web.Request) -> bool:
    accepted = request.headers.get("Accept-Encoding", "").lower()
    return "gzip" in accepted or "deflate" in accepted


async def _json_body(request: web.Request) -> dict:
    """A control request's optional JSON object body ({} when empty)."""
    body = await request.read()
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequestError("the request body is not valid JSON") from None
    return _object(value, "the request body")


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info.get("model", ""), request.match_info.get("version", "")


PROBES = frozenset({"live", "ready", "model_ready", "model_version_ready"})


def is_probe(request: web.Request) -> bool:
    """Liveness/readiness probes: no token, answered while draining (as the gRPC probes)."""
    route = request.match_info.route
    return route is not None and route.name in PROBES and request.method in ("GET", "HEAD")


def _exempt_from_drain(request: web.Request) -> bool:
    route = request.match_info.route
    return is_probe(request) or (route is not None and route.name == "metrics")


def kserve_app(
    core: KServeCore,
    metrics: Metrics,
    *,
    tokens: tuple[str, ...] = (),
    max_body_bytes: int,
    open_calls: DrainInterceptor | None = None,
    draining: Callable[[], bool] = lambda: False,
) -> web.Application:
    """The KServe v2 HTTP/REST application (routes in docs/serving.md).

    Args:
        core: the server's KServeCore.
        metrics: the server's metrics (its registry is served at /metrics).
        tokens: bearer tokens (the gRPC ``auth.tokens``); empty = no authentication.
        max_body_bytes: largest request body (``limits.max_message_bytes``); beyond: 413.
        open_calls: the gRPC drain interceptor whose open-call count HTTP requests share.
        draining: whether shutdown has begun.
    """
    front = KServeHTTP(
        core,
        metrics,
        open_calls=open_calls,
        draining=draining,
        registry=metrics.registry,
        max_body_bytes=max_body_bytes,
    )
    middlewares = [front.errors, front.drain]
    if tokens:
        middlewares.append(
            auth_middleware(
                tokens,
                exempt=is_probe,
                error_body=error_body,
                content_type=JSON_TYPE,
                on_reject=lambda: metrics.call_rejected(METHOD, "UNAUTHENTICATED"),
            )
        )
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    r = app.router
    r.add_get("/v2", front.server_metadata, name="server_metadata")
    r.add_get("/v2/health/live", front.live, name="live")
    r.add_get("/v2/health/ready", front.ready, name="ready")
    # /v2/models/stats before /v2/models/{model}: a model named "stats" is shadowed, as in Triton.
    r.add_get("/v2/models/stats", front.statistics, name="stats_all")
    for prefix, suffix in (("/v2/models/{model}", ""), ("/v2/models/{model}/versions/{version}", "_version")):
        r.add_get(prefix, front.model_metadata, name=f"model_metadata{suffix}")
        r.add_get(f"{prefix}/ready", front.model_ready, name=f"model{suffix}_ready")
        r.add_get(f"{prefix}/config", front.model_config, name=f"model_config{suffix}")
        r.add_get(f"{prefix}/stats", front.statistics, name=f"stats{suffix}")
        r.add_post(f"{prefix}/infer", front.infer, name=f"infer{suffix}")
    r.add_post("/v2/repository/index", front.repository_index, name="repository_index")
    r.add_post("/v2/repository/models/{model}/load", front.load, name="load")
    r.add_post("/v2/repository/models/{model}/unload", front.unload, name="unload")
    r.add_get("/metrics", front.metrics_route, name="metrics")
    # Triton extensions pixforge does not offer: 501 with the gRPC front's UNIMPLEMENTED message.
    for path, feature in (
        ("/v2/systemsharedmemory{tail:(/.*)?}", "system_shared_memory"),
        ("/v2/cudasharedmemory{tail:(/.*)?}", "cuda_shared_memory"),
        ("/v2/trace{tail:(/.*)?}", "trace"),
        ("/v2/models/{model}/trace{tail:(/.*)?}", "trace"),
        ("/v2/logging", "logging"),
    ):
        r.add_route("*", path, front.not_offered(feature))
    return app

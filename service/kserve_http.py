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

A request body is read, under :data:`BODY_TIMEOUT_S`, before the call is admitted (counted against
``max_concurrent_rpcs``): a client that sends its body slowly, or never, holds its connection but no
call slot. What the headers alone can refuse is refused before any of the body is read (and before
``100 Continue``): a Content-Length over the limit (413), a Content-Encoding aiohttp does not decode
(415), an unknown model (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

import grpc
import numpy as np
from aiohttp import HttpVersion11, hdrs, web
from aiohttp import compression_utils as aiohttp_compression
from prometheus_client import CollectorRegistry

import pixforge
from pixforge.contract import INPUT_NAME, OUTPUT_NAME
from pixforge.errors import ImageTooLargeError

from .errors import InvalidRequestError, ServiceError
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
    check_requested_output_names,
    images_from_flat,
    json_elements,
    parse_ascii_int,
    parse_version,
    tensor_specs,
    translate_options,
)
from .logs import request_context
from .metrics import Metrics
from .pipeline import OFF_LOOP_BYTES, TranslateOptions, human_bytes
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

# Output elements (response) above which the work leaves the loop; request bodies follow the
# pipeline's OFF_LOOP_BYTES, as the gRPC front's image prechecks do.
OFF_LOOP_ELEMENTS = 256 * 1024
JSON_BYTES_PER_ELEMENT = 4  # at most "255," per UINT8 element of a JSON output
_JSON_DIGITS = np.array([f"{i},".encode() for i in range(256)], dtype="S4")  # NUL-padded
_JSON_CHUNK = 1 << 20  # elements encoded at a time (bounds the temporary arrays)

# A request body that sends nothing for this long is stalled: 408 and the connection is closed (what
# is still to come could not be told from a next request). The body is read before the call is
# admitted, so a stalled body holds a connection, not one of the max_concurrent_rpcs slots that
# gRPC shares; the timeout is between reads, so a large body on a slow link that keeps moving is not
# cut off. A module constant, not a setting: kserve_app() and KServeHTTP take it as an argument.
BODY_TIMEOUT_S = 30.0
# The Content-Encodings aiohttp decodes (its parser passes any other one through undecoded, so the
# front refuses it with 415 instead of reading compressed bytes as JSON). br and zstd need optional
# packages; "identity" (or no header) is a body sent as is.
DECODED_ENCODINGS = ("gzip", "deflate") + tuple(
    coding
    for coding, available in (
        ("br", getattr(aiohttp_compression, "HAS_BROTLI", False)),
        ("zstd", getattr(aiohttp_compression, "HAS_ZSTD", False)),
    )
    if available
)
# Response codings the front offers (Accept-Encoding), by preference on equal weights.
RESPONSE_CODINGS = (("gzip", web.ContentCoding.gzip), ("deflate", web.ContentCoding.deflate))
# The routes whose handlers read a request body: they admit the call themselves once it is in
# (KServeHTTP._with_body); the drain middleware counts the others.
BODY_ROUTES = frozenset({"infer", "infer_version", "repository_index", "load", "unload"})
# A header value the front writes verbatim: printable ASCII. Anything else a client sent (an id)
# is percent-encoded: aiohttp refuses control characters in headers (the response would be lost)
# and non-ASCII text has no portable encoding there.
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")  # RFC 9110 weight syntax


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


class BodyRefused(ServiceError):
    """A request refused from its body's headers or while its body was read (before decoding).

    Attributes:
        status: the HTTP status (408, 413, 415, 400).
        code: the status code name the metrics count it under.
        close: close the connection right after the answer (a stalled or undecodable body: the
            rest of it could not be told from a next request on the connection).
    """

    def __init__(self, status: int, code: grpc.StatusCode, message: str, *, close: bool = False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.close = close


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds control characters (C0, DEL, C1) or lone surrogates.

    Such a request id would break the ``x-request-id`` header and log lines it is written to.
    """
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def header_value(text: str) -> str:
    """Client text as a response header value: verbatim if printable ASCII, else percent-encoded
    UTF-8 (a CR, LF or other control character would make aiohttp drop the whole response)."""
    if _HEADER_SAFE.fullmatch(text):
        return text
    return urllib.parse.quote(text, safe="", errors="backslashreplace")


def response_coding(accept_encoding: str) -> web.ContentCoding | None:
    """The coding of a response under ``Accept-Encoding`` (RFC 9110, 12.5.3); None: uncompressed.

    Each listed coding weighs its ``q`` (1 without one; an entry with a malformed ``q`` is
    ignored); a coding not listed weighs what ``*`` does, or 0 without ``*``. The answer is gzip or
    deflate, whichever weighs more (gzip on a tie), if its weight is above 0 and not below the
    weight ``identity`` was given explicitly (or through ``*``). No header: uncompressed.
    """
    weights: dict[str, float] = {}
    for entry in accept_encoding.split(","):
        coding, *params = (part.strip() for part in entry.split(";"))
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                value = value.strip()
                weight = float(value) if _QVALUE.fullmatch(value) else -1.0
        if coding and weight >= 0:
            weights.setdefault(coding.lower(), weight)  # a repeated coding: its first entry counts
    star = weights.get("*")
    best: web.ContentCoding | None = None
    best_weight = 0.0
    for name, option in RESPONSE_CODINGS:
        weight = weights.get(name, star if star is not None else 0.0)
        if weight > best_weight:
            best, best_weight = option, weight
    identity = weights.get("identity", star)
    if best is not None and identity is not None and identity > best_weight:
        return None
    return best


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


def json_header_length(value: str, body_size: int) -> int:
    """The ``Inference-Header-Content-Length`` value: ASCII digits, at most the body's size.

    Read by :func:`~pixforge.service.kserve_tensors.parse_ascii_int` (ASCII digits only, any length
    refused cleanly), so any value answers 400, never 500.

    Raises:
        InvalidRequestError: not a decimal number of bytes, or larger than the body.
    """
    length = parse_ascii_int(value.strip(" \t"))  # header values may carry optional whitespace
    if length is None:
        raise InvalidRequestError(
            f"{HEADER_LENGTH} is {quote(value)}: it must be the length of the JSON header in bytes, "
            f"a decimal number 0..{body_size} for this body"
        )
    if length > body_size:
        raise InvalidRequestError(
            f"{HEADER_LENGTH} is {quote(value)}, more than the {body_size} bytes of the body: it must be "
            f"the length of the JSON header, 0..{body_size} bytes for this body"
        )
    return length


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
        n = json_header_length(header_length, len(body))
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
    names = [o.get("name", "") if isinstance(o, dict) else "" for o in outputs]
    check_requested_output_names([n if isinstance(n, str) else repr(n) for n in names])
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
    return images_from_flat(json_elements(INPUT_NAME, DATATYPE, tensor["data"], shape, count), shape)


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
        max_body_bytes: the request body limit (decoded size; also the most a Content-Length may
            announce).
        body_timeout_s: the most seconds a request body may send nothing (:data:`BODY_TIMEOUT_S`).
    """

    core: KServeCore
    metrics: Metrics
    _: KW_ONLY
    open_calls: DrainInterceptor | None
    draining: Callable[[], bool]
    registry: CollectorRegistry
    max_body_bytes: int
    body_timeout_s: float = BODY_TIMEOUT_S

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
                message = self._too_large()
            elif exc.status == 404:
                message = f"not found: {quote(request.path)} (the /v2 routes are in docs/serving.md)"
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(exc.status, message, allow)

    @web.middleware
    async def drain(self, request: web.Request, handler) -> web.StreamResponse:
        """503 once shutdown began and 429 beyond ``max_concurrent_rpcs`` (probes and /metrics exempt).

        A request with a body is checked here too (no body is read for a refused call) but counted
        by its handler once the body is in (:meth:`_with_body`).
        """
        if _exempt_from_drain(request):
            return await handler(request)
        refusal = self._admission_refusal()
        if refusal is not None:
            return refusal
        route = request.match_info.route
        if route is not None and route.name in BODY_ROUTES:
            return await handler(request)
        with self._counted():
            return await handler(request)

    def _admission_refusal(self) -> web.Response | None:
        """The 503 (shutting down) or 429 (``max_concurrent_rpcs`` open calls) for a new call, or None."""
        if self.draining():
            self.metrics.call_rejected(METHOD, "UNAVAILABLE")
            return error_response(503, "server is shutting down; retry on another replica")
        if self.open_calls is not None and self.open_calls.over_limit():
            self.metrics.call_rejected(METHOD, "RESOURCE_EXHAUSTED")
            return error_response(
                429, f"server has {self.open_calls.active} open calls (max_concurrent_rpcs); retry later"
            )
        return None

    def _counted(self) -> contextlib.AbstractContextManager:
        """Count a call as open (shared with gRPC) for the duration of the block."""
        return self.open_calls.counted() if self.open_calls is not None else contextlib.nullcontext()

    # -- request bodies

    def _too_large(self, size: int | None = None) -> str:
        """The 413 message; ``size``: the Content-Length, in bytes (rounding could hide the excess)."""
        what = "request body" if size is None else f"request body of {size} bytes (Content-Length)"
        return (
            f"{what} over the server's limit of {human_bytes(self.max_body_bytes)} (limits.max_message_bytes)"
        )

    def check_body_headers(self, request: web.Request) -> None:
        """Refuse a body from its headers alone, before any of it is read.

        Raises:
            BodyRefused: 415 for a Content-Encoding aiohttp does not decode (it would hand over the
                encoded bytes as they are), 413 for a Content-Length over ``max_body_bytes``.
        """
        encoding = ", ".join(request.headers.getall(hdrs.CONTENT_ENCODING, [])).strip().lower()
        if encoding not in ("", "identity") and encoding not in DECODED_ENCODINGS:
            raise BodyRefused(
                415,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Content-Encoding {quote(encoding)} is not supported: send the body as is or encoded "
                f"with one of {', '.join(DECODED_ENCODINGS)}",
            )
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise BodyRefused(413, grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large(length))

    async def read_body(self, request: web.Request) -> bytes:
        """The request body (decoded), read with :attr:`body_timeout_s` between reads.

        Raises:
            BodyRefused: the headers' refusals (:meth:`check_body_headers`); 413 when the decoded
                body passes ``max_body_bytes`` (reading stops there); 408 when it stalls (the
                connection is closed); 400 when it cannot be decoded (corrupt gzip, br, ...; the
                connection is closed).
        """
        self.check_body_headers(request)
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = await asyncio.wait_for(request.content.readany(), self.body_timeout_s)
                if not chunk:
                    return b"".join(parts)
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise BodyRefused(413, grpc.StatusCode.RESOURCE_EXHAUSTED, self._too_large())
                parts.append(chunk)
        except asyncio.TimeoutError:
            expected = request.content_length
            of = f" of {expected}" if expected is not None else ""
            raise BodyRefused(
                408,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request body stalled: nothing arrived for {self.body_timeout_s:g} s after "
                f"{size}{of} bytes",
                close=True,
            ) from None
        except web.RequestPayloadError as exc:
            # aiohttp's decoding error (ContentEncodingError) or a chunked body cut short: the
            # client's error, never a 500. The stream is broken, so the connection closes (aiohttp
            # would read on to discard the rest and log the same error as unhandled).
            detail = getattr(exc.__cause__, "message", "") or " ".join(str(exc).split())
            raise BodyRefused(
                400,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request body cannot be read: {detail}",
                close=True,
            ) from None

    def _refused(self, exc: BodyRefused) -> web.Response:
        self.metrics.call_rejected(METHOD, exc.code.name)
        response = error_response(exc.status, str(exc))
        if exc.close:
            response.force_close()
        return response

    async def _with_body(
        self, request: web.Request, answer: Callable[[bytes], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Read the request's body, then admit the call (the drain checks again) and answer it.

        The call counts against ``max_concurrent_rpcs`` only once its body is in: a client that
        sends its body slowly, or not at all, holds its connection, never a call slot.
        """
        try:
            body = await self.read_body(request)
        except BodyRefused as exc:
            response = self._refused(exc)
            if exc.close:
                # aiohttp would linger reading the rest of the body (up to 10 s) before closing: the
                # answer is sent here, then the connection closed at once (the returned response is
                # already finished, so aiohttp sends nothing more).
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()
            return response
        refusal = self._admission_refusal()
        if refusal is not None:
            return refusal
        with self._counted():
            return await answer(body)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse from the headers (413, 415) before the client sends the
        body, else invite it (``100 Continue``). Runs before the middlewares (aiohttp's hook)."""
        if request.version != HttpVersion11:
            return None  # HTTP/1.0 has no 100 Continue (aiohttp's default does the same)
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect.lower() != "100-continue":
            return error_response(417, f"Expect {quote(expect)} is not supported: only 100-continue is")
        try:
            self.check_body_headers(request)
        except BodyRefused as exc:
            return self._refused(exc)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is no part of the response (as aiohttp's default)
        return None

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

    async def repository_index(self, request: web.Request) -> web.StreamResponse:
        async def answer(raw: bytes) -> web.Response:
            try:
                body = _json_object(raw)
                ready = body.get("ready", False)
                if not isinstance(ready, bool):
                    raise InvalidRequestError(f"'ready' must be a boolean, got {_json_type(ready)}")
                return json_response(self.core.repository_index(ready))
            except Exception as exc:
                return self._error(exc)

        return await self._with_body(request, answer)

    async def load(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]

        async def answer(raw: bytes) -> web.Response:
            try:
                parameters = _object(_json_object(raw).get("parameters"), "parameters")
                await self.core.load_model(name, list(parameters))  # config / file: overrides refused
            except Exception as exc:
                return self._error(exc)
            return web.Response(status=200)

        return await self._with_body(request, answer)

    async def unload(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["model"]

        async def answer(raw: bytes) -> web.Response:
            try:
                _json_object(raw)  # unload_dependents: pixforge models have no dependents
                await self.core.unload_model(name)
            except Exception as exc:
                return self._error(exc)
            return web.Response(status=200)

        return await self._with_body(request, answer)

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

    def _rejected(self, exc: BaseException) -> web.Response:
        """The answer to a request refused before the core saw it (counted as a rejected call)."""
        status, code, message, headers = http_status(exc)
        self.metrics.call_rejected(METHOD, code.name)
        if code is grpc.StatusCode.INTERNAL:
            log.error("HTTP request failed: %s", message, exc_info=exc)
        return error_response(status, message, headers)

    async def infer(self, request: web.Request) -> web.StreamResponse:
        """POST .../infer: decode (JSON or binary), run through the core, answer like Triton.

        The model is looked up and the headers checked before the body is read: an unknown model
        is 404 without reading (or parsing) a large body.
        """
        name, version = _model(request)
        header_id = request.headers.get(REQUEST_ID_HEADER, "")
        if len(header_id) > MAX_REQUEST_ID:
            return self._rejected(
                InvalidRequestError(
                    f"{REQUEST_ID_HEADER} header is {len(header_id)} characters long, over the limit "
                    f"of {MAX_REQUEST_ID}: {quote(header_id)}"
                )
            )
        if has_control_characters(header_id):  # aiohttp's parser refuses most; never echo any
            return self._rejected(
                InvalidRequestError(
                    f"{REQUEST_ID_HEADER} header holds control characters: {quote(header_id)}"
                )
            )
        arrived = asyncio.get_running_loop().time()
        with request_context(header_id or "-", METHOD):
            try:
                self.core.describe(name, version, "ModelInfer")
            except Exception as exc:
                return await self._model_refused(name, version, exc)
            lengths = request.headers.getall(HEADER_LENGTH, [])
            if len(lengths) > 1:
                # Two values could be read either way (a proxy may keep the other one): refused.
                return self._rejected(
                    InvalidRequestError(
                        f"{HEADER_LENGTH} is sent {len(lengths)} times: send it once, the length of the "
                        "JSON header"
                    )
                )
            length = lengths[0] if lengths else None

            async def answer(body: bytes) -> web.StreamResponse:
                return await self._decode_and_infer(request, name, version, body, length, arrived)

            return await self._with_body(request, answer)

    async def _model_refused(self, name: str, version: str, refusal: Exception) -> web.StreamResponse:
        """An unknown model (or a bad name or version): the core's own answer, without the body.

        The core looks the model up first and refuses it before it parses anything, so ``parse``
        only runs if the model appeared since (loaded meanwhile): the request is refused as it was
        when it arrived.
        """

        def parse():
            raise refusal

        request_id = header_value(message_request_id(""))  # the x-request-id header, or a new id
        try:
            await self.core.infer(name, version, parse, request_id, METHOD, None)
        except Exception as exc:
            status, _, message, headers = http_status(exc, request_id)
        else:  # unreachable: parse() raises
            status, _, message, headers = http_status(refusal, request_id)
        headers[REQUEST_ID_HEADER] = request_id
        return error_response(status, message, headers)

    async def _decode_and_infer(
        self,
        request: web.Request,
        name: str,
        version: str,
        body: bytes,
        header_length: str | None,
        arrived: float,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        try:
            if len(body) > OFF_LOOP_BYTES:  # JSON parsing and numpy conversion take a while
                prepared = await loop.run_in_executor(None, prepare_infer, body, header_length)
            else:
                prepared = prepare_infer(body, header_length)
            # Refuses an id that is not printable ASCII (check_request_id), so it is safe in the
            # x-request-id header and in log lines; an empty one falls back to the header's id,
            # checked on arrival (infer).
            request_id = message_request_id(prepared.request.id)
        except Exception as exc:
            return self._rejected(exc)
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
            headers[REQUEST_ID_HEADER] = header_value(request_id)
            return error_response(status, message, headers)
        parsed = prepared.checked()  # parse() returned: the request's tensors are valid
        images = result.images if parsed.inputs.batched else result.images[0]
        envelope: dict[str, Any] = {"model_name": name, "model_version": str(result.version)}
        if prepared.request.id:
            envelope["id"] = prepared.request.id
        output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": DATATYPE, "shape": list(images.shape)}
        envelope["outputs"] = [output]
        headers = {REQUEST_ID_HEADER: header_value(request_id)}
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
    # The coding is forced: aiohttp's own choice matches substrings ("gzip;q=0" would get gzip).
    coding = response_coding(", ".join(request.headers.getall(hdrs.ACCEPT_ENCODING, [])))
    if coding is not None:
        response.enable_compression(coding)
    else:
        response.content_length = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    await response.write_eof()
    return response


def _json_object(body: bytes) -> dict:
    """A control request's optional JSON object body ({} when empty)."""
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
    body_timeout_s: float | None = None,
) -> web.Application:
    """The KServe v2 HTTP/REST application (routes in docs/serving.md).

    Args:
        core: the server's KServeCore.
        metrics: the server's metrics (its registry is served at /metrics).
        tokens: bearer tokens (the gRPC ``auth.tokens``); empty = no authentication.
        max_body_bytes: largest request body (``limits.max_message_bytes``); beyond: 413.
        open_calls: the gRPC drain interceptor whose open-call count HTTP requests share.
        draining: whether shutdown has begun.
        body_timeout_s: the most seconds a request body may send nothing (None:
            :data:`BODY_TIMEOUT_S`, read when the application is built).
    """
    front = KServeHTTP(
        core,
        metrics,
        open_calls=open_calls,
        draining=draining,
        registry=metrics.registry,
        max_body_bytes=max_body_bytes,
        body_timeout_s=BODY_TIMEOUT_S if body_timeout_s is None else body_timeout_s,
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
    # client_max_size: aiohttp's own reads stop there too (the front reads bodies itself).
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    r = app.router
    r.add_get("/v2", front.server_metadata, name="server_metadata")
    r.add_get("/v2/health/live", front.live, name="live")
    r.add_get("/v2/health/ready", front.ready, name="ready")
    # /v2/models/stats before /v2/models/{model}: a model named "stats" is shadowed, as in Triton.
    r.add_get("/v2/models/stats", front.statistics, name="stats_all")
    # The routes with a body answer Expect: 100-continue themselves (413 / 415 before the body).
    expect = {"expect_handler": front.expect}
    for prefix, suffix in (("/v2/models/{model}", ""), ("/v2/models/{model}/versions/{version}", "_version")):
        r.add_get(prefix, front.model_metadata, name=f"model_metadata{suffix}")
        r.add_get(f"{prefix}/ready", front.model_ready, name=f"model{suffix}_ready")
        r.add_get(f"{prefix}/config", front.model_config, name=f"model_config{suffix}")
        r.add_get(f"{prefix}/stats", front.statistics, name=f"stats{suffix}")
        r.add_post(f"{prefix}/infer", front.infer, name=f"infer{suffix}", **expect)
    r.add_post("/v2/repository/index", front.repository_index, name="repository_index", **expect)
    r.add_post("/v2/repository/models/{model}/load", front.load, name="load", **expect)
    r.add_post("/v2/repository/models/{model}/unload", front.unload, name="unload", **expect)
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

"""The pixforge.v1.ImageTranslation servicer (grpc.aio): proto <-> domain conversion and error mapping.

All real work happens in :class:`~pixforge.service.pipeline.Pipeline` and the registry; this module
turns requests into :class:`TranslateJob` s, results into responses, and every exception into a gRPC
status in one place (:func:`status_for_error`). Clients never see a stack trace: unexpected
exceptions are logged with their traceback and answered INTERNAL with the request id.

The handlers are coroutines on the server's event loop: what can be refused from the request and
the image header is refused first (:meth:`Pipeline.precheck_async`: on the loop for small images, on
a thread above ``OFF_LOOP_BYTES`` so a large header walk cannot stall other calls), then
the request waits for
admission and its blocking work runs on a worker thread (:class:`~pixforge.service.runner.RequestRunner`),
bound to the caller's deadline. TranslateStream applies back-pressure
(:func:`~pixforge.service.streaming.ordered_responses`): the next request is read only while fewer
than ``stream.max_in_flight`` items of that stream are in flight, answers not yet written included;
responses go out in request order. No stream reads on while the server holds
``stream.max_unsent_bytes`` of unwritten stream responses (an item that arrives then anyway is
refused, RESOURCE_EXHAUSTED), and once the server drains a stream reads nothing new, delivers what
it holds and ends UNAVAILABLE.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import grpc

from pixforge.errors import ContractError, ImageDecodeError, ImageEncodeError, ImageTooLargeError
from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

from .admission import AdmissionRejected
from .config import LimitsConfig
from .errors import (
    InferenceError,
    InvalidRequestError,
    ModelControlDisabledError,
    ModelLoadingError,
    ModelNotFoundError,
    ModelNotReadyError,
    NotOfferedError,
    OutOfMemoryError,
    QueueFullError,
    RepositoryUnavailableError,
    RequestCancelledError,
    RequestExpiredError,
    ShuttingDownError,
)
from .interceptors import OversizedMessage
from .logs import request_context, request_id_var
from .metrics import Metrics
from .pipeline import CancelToken, Pipeline, TranslateJob, TranslateOptions, TranslateResult, new_request_id
from .repository import ModelRegistry, ModelState, ModelVersion
from .runner import RequestRunner, interrupted_code, time_remaining
from .statistics import RequestRecorder
from .streaming import StreamControl, ordered_responses
from .text_limits import MAX_MODEL_NAME, MAX_REQUEST_ID, check_text

log = logging.getLogger("pixforge.service.servicer")

TASK_TO_PROTO = {
    "super_resolution": pb.TASK_SUPER_RESOLUTION,
    "colorization": pb.TASK_COLORIZATION,
    "style_translation": pb.TASK_STYLE_TRANSLATION,
    "paired_translation": pb.TASK_PAIRED_TRANSLATION,
}
STATE_TO_PROTO = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}

# The one table from domain errors to status codes (first match wins; order matters for subclasses).
ERROR_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ImageTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OutOfMemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ImageDecodeError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ModelLoadingError, grpc.StatusCode.UNAVAILABLE),  # before its base class: transient
    (ModelNotReadyError, grpc.StatusCode.FAILED_PRECONDITION),
    (ModelControlDisabledError, grpc.StatusCode.FAILED_PRECONDITION),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (RepositoryUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (NotOfferedError, grpc.StatusCode.UNIMPLEMENTED),
    (RequestExpiredError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (RequestCancelledError, grpc.StatusCode.CANCELLED),
    (InferenceError, grpc.StatusCode.INTERNAL),
    (ContractError, grpc.StatusCode.INTERNAL),
    (ImageEncodeError, grpc.StatusCode.INTERNAL),
)


def status_for_error(exc: BaseException, request_id: str = "-") -> tuple[grpc.StatusCode, str]:
    """Map an exception to (status code, client-safe message).

    Known errors keep their human message; anything else becomes INTERNAL with only the request id,
    so internals never leak to clients.
    """
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code, str(exc) or cls.__name__
    return grpc.StatusCode.INTERNAL, f"internal server error (request id {request_id}); see the server logs"


def pushback_ms(exc: BaseException) -> int:
    """The retry advice for a failure, in gRPC's grpc-retry-pushback-ms terms.

    A request over a size limit can never succeed: -1 (never retry). A request refused because the
    server is busy: the expected wait, so retries come when a place is likely to be free. Anything
    else: 0 (no advice).
    """
    if isinstance(exc, ImageTooLargeError):
        return -1
    if isinstance(exc, AdmissionRejected):
        return max(1, exc.pushback_ms)
    return 0


def pushback_trailer(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """The ``grpc-retry-pushback-ms`` trailer for a refusal (none without advice)."""
    ms = pushback_ms(exc)
    return (("grpc-retry-pushback-ms", str(ms)),) if ms else ()


async def run_unary(context, message_id: str, call):
    """The shape of every unary inference RPC (Translate, ModelInfer): take the request id (a
    too-long one is INVALID_ARGUMENT), run ``await call(request_id)`` in its log context, and turn
    a failure into the status from the one table plus its retry-pushback trailer."""
    try:
        request_id = message_request_id(message_id)
    except InvalidRequestError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    with request_context(request_id):
        try:
            return await call(request_id)
        except Exception as exc:
            failure = exc
        code, message = status_for_error(failure, request_id)
        trailer = pushback_trailer(failure)
        if trailer:
            context.set_trailing_metadata(trailer)
        await context.abort(code, message)


async def serve_stream(context, requests, process, control: StreamControl, size, cancel: CancelToken):
    """The shape of every streaming inference RPC (TranslateStream, ModelStreamInfer): the responses
    of :func:`~pixforge.service.streaming.ordered_responses` in request order, and the stream ended
    UNAVAILABLE when it stopped reading because the server drains (the client retries what it did
    not get back)."""
    responses = ordered_responses(requests, process, control=control, size=size, cancel=cancel)
    try:
        async for response in responses:
            yield response
    except ShuttingDownError as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))


def failure_code(
    exc: BaseException, request_id: str, model: str, remaining: float | None, started: float
) -> str:
    """The status code name a failed request counts under in metrics and statistics.

    An error is logged (traceback only for unexpected ones). Anything that is not an Exception is
    gRPC cancelling the RPC under the request: not logged, and the clock tells a deadline from a
    client cancel (:func:`~pixforge.service.runner.interrupted_code`; ``remaining`` and
    ``started`` as it takes them).
    """
    if not isinstance(exc, Exception):
        return interrupted_code(remaining, started)
    status, message = status_for_error(exc, request_id)
    code = status.name
    if status is grpc.StatusCode.INTERNAL and not isinstance(
        exc, (InferenceError, ContractError, ImageEncodeError)
    ):
        log.exception("request %s on model %s failed unexpectedly", request_id, model, exc_info=exc)
    else:
        log.warning("request failed: %s %s", code, message, extra={"model": model, "code": code})
    return code


def check_request_id(value: str, field: str = "request_id") -> str:
    """Return a client's request id if it is at most :data:`MAX_REQUEST_ID` printable ASCII characters.

    The id is echoed in response headers (where aiohttp refuses a newline after the work is done),
    in response bodies and in every log line of the request: a control character would break the
    response or forge log lines, and non-ASCII text has no single encoding in a header.

    Raises:
        InvalidRequestError: too long, or a character outside 0x20-0x7E (the message shows it escaped).
    """
    check_text(field, value, MAX_REQUEST_ID)
    for position, char in enumerate(value):
        if not " " <= char <= "~":
            raise InvalidRequestError(
                f"{field} must be printable ASCII (0x20-0x7E): character {ascii(char)} at position {position}"
            )
    return value


def message_request_id(message_id: str, stream_index: int = 0) -> str:
    """The id a request is known by: its own field, else the x-request-id header, else a new one.

    Raises:
        InvalidRequestError: the id is over :data:`MAX_REQUEST_ID` characters or not printable ASCII.
    """
    check_request_id(message_id)
    header = request_id_var.get()  # x-request-id, length-checked by the interceptor
    if message_id:
        return message_id
    if header != "-":
        return f"{header}-{stream_index}" if stream_index else header
    return new_request_id()


# --------------------------------------------------------------------------- conversions


def job_from_proto(request: pb.TranslateRequest, request_id: str) -> TranslateJob:
    """TranslateRequest -> TranslateJob."""
    o = request.options
    return TranslateJob(
        model=request.model,
        image=request.image,
        output_format=request.output_format,
        version=int(request.version),
        options=TranslateOptions(int(o.tile_size), int(o.tile_overlap), int(o.quality), int(o.render_size)),
        request_id=request_id,
    )


def response_from_result(result: TranslateResult) -> pb.TranslateResponse:
    """TranslateResult -> TranslateResponse."""
    return pb.TranslateResponse(
        image=result.image,
        width=result.width,
        height=result.height,
        model=result.model,
        version=result.version,
        timing=pb.Timing(**dataclasses.asdict(result.timing)),  # the same field names
        request_id=result.request_id,
        output_format=result.output_format,
    )


def model_info(row: ModelVersion, limits: LimitsConfig | None = None) -> pb.ModelInfo:
    """Registry row -> ModelInfo (failed rows carry only identity, state and error), with the
    server's ``limits`` when given."""
    info = pb.ModelInfo(
        name=row.name,
        version=row.version,
        state=STATE_TO_PROTO[row.state],
        error=row.error,
        provider=row.provider,
        precision=row.precision,
        variants=list(row.variants),
    )
    c = row.contract
    if c is not None:
        info.task = TASK_TO_PROTO.get(c.task, pb.TASK_UNSPECIFIED)
        info.scale = c.scale
        info.input_channels = c.input_channels
        info.output_channels = c.output_channels
        info.description = c.description
        info.size_multiple = c.size_multiple
        info.tile_size = c.tile_size
        info.metadata.update(dict(c.metadata))
    if limits is not None:
        info.max_message_bytes = limits.max_message_bytes
        info.max_input_pixels = limits.max_input_pixels
        info.max_output_pixels = limits.max_output_pixels
    return info


# --------------------------------------------------------------------------- servicer


class ImageTranslationServicer(pb_grpc.ImageTranslationServicer):
    """Thin asyncio gRPC front of the pipeline.

    Args:
        pipeline: runs translations.
        registry: answers ListModels/GetModel.
        metrics: request metrics.
        streams: what the server's streams share (window, unsent budget, drain signal).
        runner: admission + worker threads for the blocking work.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        registry: ModelRegistry,
        metrics: Metrics,
        streams: StreamControl,
        runner: RequestRunner,
    ):
        self._pipeline = pipeline
        self._registry = registry
        self._metrics = metrics
        self._streams = streams
        self._runner = runner

    def _model_label(self, name: str) -> str:
        # Only known names become label values: clients must not be able to explode cardinality.
        return name if name in self._registry.names() else "_unknown"

    async def _run(
        self,
        job: TranslateJob,
        method: str,
        remaining: float | None,
        cancel: CancelToken | None = None,
        check: Callable[[], None] | None = None,
    ) -> TranslateResult:
        """Check, admit and run one job with metrics and logging; raises the domain error on failure.

        ``check`` runs first, inside the request's metrics (a stream's unsent budget).
        """
        label = self._model_label(job.model)
        self._metrics.request_started(label, method)
        start = time.perf_counter()
        code = "OK"
        stats = RequestRecorder(self._metrics.statistics)
        try:
            stats.start(self._registry, job.model, job.version)
            if check is not None:
                check()
            pixels = await self._pipeline.precheck_async(job)  # a large image's header: off the loop
            result, waited_ms = await self._runner.run(
                job.model, pixels, remaining, lambda token: self._pipeline.translate(job, token), cancel
            )
        except BaseException as exc:
            code = failure_code(exc, job.request_id, job.model, remaining, start)
            stats.failed(code, exc)
            raise
        finally:
            self._metrics.request_finished(label, time.perf_counter() - start, code, method)
        # The wait for admission is queueing like the batcher's: the caller sees it in queue_ms.
        timing = result.timing
        result = dataclasses.replace(
            result,
            timing=dataclasses.replace(
                timing,
                queue_ms=timing.queue_ms + waited_ms,
                total_ms=(time.perf_counter() - start) * 1000.0,
            ),
        )
        stats.succeeded_with(result)
        log.info(
            "%s %s v%d -> %dx%d in %.1f ms (%d tiles)",
            method,
            job.model,
            result.version,
            result.width,
            result.height,
            result.timing.total_ms,
            result.tiles,
            extra={
                "model": job.model,
                "version": result.version,
                "width": result.width,
                "height": result.height,
                "total_ms": round(result.timing.total_ms, 2),
                "tiles": result.tiles,
            },
        )
        return result

    async def Translate(self, request, context):
        """Translate one image (unary); errors become a status via status_for_error."""

        async def call(request_id: str) -> pb.TranslateResponse:
            job = job_from_proto(request, request_id)
            return response_from_result(await self._run(job, "Translate", time_remaining(context)))

        return await run_unary(context, request.request_id, call)

    async def _stream_item(
        self, item: pb.TranslateStreamRequest, index: int, remaining: float | None, cancel: CancelToken
    ) -> pb.TranslateStreamResponse:
        if isinstance(item, OversizedMessage):  # counted by MessageSizeInterceptor
            return pb.TranslateStreamResponse(
                error_code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                error_message=item.message,
                retry_pushback_ms=-1,
            )
        try:
            request_id = message_request_id(
                item.request.request_id if item.HasField("request") else "", index
            )
        except InvalidRequestError as exc:
            return pb.TranslateStreamResponse(
                error_code=grpc.StatusCode.INVALID_ARGUMENT.value[0], error_message=str(exc)
            )
        with request_context(request_id):
            if not item.HasField("request"):
                code, message = grpc.StatusCode.INVALID_ARGUMENT, "stream item has no request"
                return pb.TranslateStreamResponse(
                    request_id=request_id, error_code=code.value[0], error_message=message
                )
            job = job_from_proto(item.request, request_id)
            try:
                result = await self._run(
                    job, "TranslateStream", remaining, cancel, self._streams.check_unsent
                )
            except Exception as exc:
                code, message = status_for_error(exc, request_id)
                return pb.TranslateStreamResponse(
                    request_id=request_id,
                    error_code=code.value[0],
                    error_message=message,
                    retry_pushback_ms=pushback_ms(exc),
                )
            return pb.TranslateStreamResponse(request_id=request_id, response=response_from_result(result))

    async def TranslateStream(self, request_iterator, context):
        """Translate a stream of images; responses in request order, per-item errors inline.

        Once the server drains, the stream reads no new item, answers the ones it holds and ends
        UNAVAILABLE (clients re-send what was not answered elsewhere).
        """
        cancel = CancelToken()

        async def process(item: pb.TranslateStreamRequest, index: int) -> pb.TranslateStreamResponse:
            # The stream's deadline (if any) bounds every item; each item's admission sees what is left.
            return await self._stream_item(item, index, time_remaining(context), cancel)

        responses = serve_stream(
            context, request_iterator, process, self._streams, pb.TranslateStreamResponse.ByteSize, cancel
        )
        async for response in responses:
            yield response

    async def ListModels(self, request, context):
        """Every known model version, failed ones included."""
        limits = self._pipeline.limits
        return pb.ListModelsResponse(models=[model_info(r, limits) for r in self._registry.versions()])

    async def GetModel(self, request, context):
        """Describe one model: the pinned version, else the served one."""
        try:
            if not request.name:
                raise InvalidRequestError("GetModel needs a model name")
            check_text("model name", request.name, MAX_MODEL_NAME)
            if request.version < 0:
                raise InvalidRequestError(f"version must be >= 0, got {request.version}")
            row = self._registry.describe(request.name, int(request.version))
        except Exception as exc:
            await context.abort(*status_for_error(exc))
        return pb.GetModelResponse(model=model_info(row, self._pipeline.limits))

"""The pixforge.v1.ImageTranslation servicer: proto <-> domain conversion and error mapping only.

All real work happens in :class:`~pixforge.service.pipeline.Pipeline` and the registry; this module
turns requests into :class:`TranslateJob` s, results into responses, and every exception into a gRPC
status in one place (:func:`status_for_error`). Clients never see a stack trace: unexpected
exceptions are logged with their traceback and answered INTERNAL with the request id.

TranslateStream applies back-pressure (:func:`~pixforge.service.streaming.ordered_responses`): a
reader thread pulls the next request only while fewer than ``stream.max_in_flight`` items of that
stream are being processed, so a fast sender is slowed by HTTP/2 flow control instead of filling
server memory; responses go out in request order.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor

import grpc

from pixforge.errors import ContractError, ImageDecodeError, ImageEncodeError, ImageTooLargeError
from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

from .config import StreamConfig
from .errors import (
    InferenceError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    OutOfMemoryError,
    QueueFullError,
    RequestCancelledError,
    ShuttingDownError,
)
from .logs import request_context, request_id_var
from .metrics import Metrics
from .pipeline import CancelToken, Pipeline, TranslateJob, TranslateOptions, TranslateResult, new_request_id
from .repository import ModelRegistry, ModelState, ModelVersion
from .streaming import ordered_responses

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
    (ModelNotReadyError, grpc.StatusCode.FAILED_PRECONDITION),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
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
    t = result.timing
    return pb.TranslateResponse(
        image=result.image,
        width=result.width,
        height=result.height,
        model=result.model,
        version=result.version,
        timing=pb.Timing(
            decode_ms=t.decode_ms,
            queue_ms=t.queue_ms,
            inference_ms=t.inference_ms,
            encode_ms=t.encode_ms,
            total_ms=t.total_ms,
        ),
        request_id=result.request_id,
        output_format=result.output_format,
    )


def model_info(row: ModelVersion) -> pb.ModelInfo:
    """Registry row -> ModelInfo (failed rows carry only identity, state and error)."""
    info = pb.ModelInfo(
        name=row.name,
        version=row.version,
        state=STATE_TO_PROTO[row.state],
        error=row.error,
        provider=row.provider,
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
    return info


# --------------------------------------------------------------------------- servicer


class ImageTranslationServicer(pb_grpc.ImageTranslationServicer):
    """Thin gRPC front of the pipeline.

    Args:
        pipeline: runs translations.
        registry: answers ListModels/GetModel.
        metrics: request metrics.
        stream: TranslateStream settings.
        executor: worker pool that processes stream items (decode, queue, encode).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        registry: ModelRegistry,
        metrics: Metrics,
        stream: StreamConfig,
        executor: Executor,
    ):
        self._pipeline = pipeline
        self._registry = registry
        self._metrics = metrics
        self._stream = stream
        self._executor = executor

    def _model_label(self, name: str) -> str:
        # Only known names become label values: clients must not be able to explode cardinality.
        return name if name in self._registry.names() else "_unknown"

    def _run(self, job: TranslateJob, method: str, cancel: CancelToken) -> TranslateResult:
        """Run one job with metrics and logging; raises the domain error on failure."""
        label = self._model_label(job.model)
        self._metrics.request_started(label, method)
        start = time.perf_counter()
        code = "OK"
        try:
            result = self._pipeline.translate(job, cancel)
        except Exception as exc:
            status, message = status_for_error(exc, job.request_id)
            code = status.name
            if status is grpc.StatusCode.INTERNAL and not isinstance(
                exc, (InferenceError, ContractError, ImageEncodeError)
            ):
                log.exception("request %s on model %s failed unexpectedly", job.request_id, job.model)
            else:
                log.warning("request failed: %s %s", code, message, extra={"model": job.model, "code": code})
            raise
        finally:
            self._metrics.request_finished(label, time.perf_counter() - start, code)
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

    @staticmethod
    def _request_id(request: pb.TranslateRequest) -> str:
        header = request_id_var.get()
        return request.request_id or (header if header != "-" else "") or new_request_id()

    def Translate(self, request, context):
        """Translate one image (unary); errors become a status via status_for_error."""
        job = job_from_proto(request, self._request_id(request))
        cancel = CancelToken()
        context.add_callback(cancel.cancel)  # fires when the RPC ends: client cancel, deadline, or done
        with request_context(job.request_id):
            try:
                return response_from_result(self._run(job, "Translate", cancel))
            except Exception as exc:
                code, message = status_for_error(exc, job.request_id)
                if isinstance(exc, ImageTooLargeError):
                    # RESOURCE_EXHAUSTED as the API promises, but retrying cannot help: a negative
                    # pushback tells gRPC's client-side retry policy not to try again.
                    context.set_trailing_metadata((("grpc-retry-pushback-ms", "-1"),))
                context.abort(code, message)

    def _stream_item(
        self, item: pb.TranslateStreamRequest, request_id: str, cancel: CancelToken
    ) -> pb.TranslateStreamResponse:
        with request_context(request_id):
            if not item.HasField("request"):
                code, message = grpc.StatusCode.INVALID_ARGUMENT, "stream item has no request"
                return pb.TranslateStreamResponse(
                    request_id=request_id, error_code=code.value[0], error_message=message
                )
            job = job_from_proto(item.request, request_id)
            try:
                result = self._run(job, "TranslateStream", cancel)
            except Exception as exc:
                code, message = status_for_error(exc, request_id)
                return pb.TranslateStreamResponse(
                    request_id=request_id, error_code=code.value[0], error_message=message
                )
            return pb.TranslateStreamResponse(request_id=request_id, response=response_from_result(result))

    def TranslateStream(self, request_iterator, context):
        """Translate a stream of images; responses in request order, per-item errors inline."""
        cancel = CancelToken()
        context.add_callback(cancel.cancel)
        header_id = request_id_var.get()  # read here: worker threads do not inherit the log context

        def process(item: pb.TranslateStreamRequest, index: int) -> pb.TranslateStreamResponse:
            rid = item.request.request_id if item.HasField("request") else ""
            if not rid:
                rid = f"{header_id}-{index}" if header_id != "-" else new_request_id()
            return self._stream_item(item, rid, cancel)

        yield from ordered_responses(
            request_iterator,
            process,
            executor=self._executor,
            max_in_flight=self._stream.max_in_flight,
            cancel=cancel,
        )

    def ListModels(self, request, context):
        """Every known model version, failed ones included."""
        return pb.ListModelsResponse(models=[model_info(r) for r in self._registry.versions()])

    def GetModel(self, request, context):
        """Describe one model: the pinned version, else the served one."""
        try:
            if not request.name:
                raise InvalidRequestError("GetModel needs a model name")
            if request.version < 0:
                raise InvalidRequestError(f"version must be >= 0, got {request.version}")
            row = self._registry.describe(request.name, int(request.version))
        except Exception as exc:
            code, message = status_for_error(exc)
            context.abort(code, message)
        return pb.GetModelResponse(model=model_info(row))

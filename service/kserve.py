"""The KServe v2 / Triton gRPC predict protocol (``inference.GRPCInferenceService``) beside pixforge.v1.

Apps written against ``tritonclient[grpc]`` or KServe clients talk to pixforge unchanged: same
port, same model registry, and every image goes through the same pipeline as a pixforge.v1
Translate (batcher, tiling, size limits, colourisation render size), so a tensor request returns
exactly the pixels that Translate returns as a PNG. Like :mod:`~pixforge.service.servicer`, this is a
thin front: tensors are converted in :mod:`~pixforge.service.kserve_tensors`, work is done by
:meth:`Pipeline.translate_arrays`, and errors get their status from the one table,
:func:`~pixforge.service.servicer.status_for_error`.

Each model appears with one input ``image`` (UINT8 [-1, -1, -1, C_in]) and one output
``image_out`` (UINT8 [-1, -1, -1, C_out]), platform ``onnxruntime_onnx``. Versions are decimal
strings; an empty version means the one pixforge serves (the pinned, else the highest ready one).
The pixforge contract (task, scale, size multiple, ...) is not part of this protocol: ask
pixforge.v1 GetModel on the same port for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import grpc

import pixforge
from pixforge.contract import ModelContract
from pixforge.errors import ContractError, ImageEncodeError, ImageTooLargeError
from pixforge.kserve.v2 import grpc_service_pb2 as kpb
from pixforge.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc

from .config import StreamConfig
from .errors import InferenceError, InvalidRequestError, ModelNotFoundError, ModelNotReadyError
from .kserve_tensors import (
    check_requested_outputs,
    input_images,
    output_tensor,
    parse_version,
    request_options,
    tensor_metadata,
)
from .logs import request_context, request_id_var
from .metrics import Metrics
from .pipeline import ArrayJob, ArrayResult, CancelToken, Pipeline, new_request_id
from .repository import ModelRegistry, ModelState
from .servicer import status_for_error
from .streaming import ordered_responses

log = logging.getLogger("pixforge.service.kserve")

# "inference.GRPCInferenceService": the method paths tritonclient calls.
SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "pixforge"
PLATFORM = "onnxruntime_onnx"
# What ServerMetadata advertises: request `parameters` (tile_size, tile_overlap, render_size) and
# the ModelStreamInfer streaming RPC. Shared memory, statistics, repository control and model
# configuration are Triton extensions pixforge does not offer.
EXTENSIONS = ("parameters", "model_stream_infer")
# Room for the response's protobuf fields beside the output tensor's bytes.
RESPONSE_OVERHEAD_BYTES = 64 * 1024
MIB = 1024 * 1024


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer):
    """Thin KServe v2 front of the pipeline and the registry.

    Args:
        pipeline: runs the images.
        registry: model versions and their state.
        metrics: request metrics (``method`` label ``ModelInfer`` / ``ModelStreamInfer``).
        stream: stream settings (``max_in_flight`` applies to ModelStreamInfer too).
        stream_executor: pool that processes stream requests.
        image_executor: pool that runs the images of one request concurrently; its tasks only
            wait on batchers, so it must be a pool of its own (not ``stream_executor``).
        max_message_bytes: the server's message limit; larger responses are refused up front.
        server_ready: whether the server is ready (models loaded, not shutting down).
        draining: whether shutdown has begun.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        stream: StreamConfig,
        stream_executor: Executor,
        image_executor: Executor,
        max_message_bytes: int,
        server_ready: Callable[[], bool],
        draining: Callable[[], bool],
    ):
        self._pipeline = pipeline
        self._registry = registry
        self._metrics = metrics
        self._stream = stream
        self._stream_executor = stream_executor
        self._image_executor = image_executor
        self._max_message_bytes = max_message_bytes
        self._server_ready = server_ready
        self._draining = draining

    # -- health and metadata

    def ServerLive(self, request, context):
        """Live while the process answers (also during shutdown, like grpc.health)."""
        return kpb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        """Ready once the initial model load finished and until shutdown begins."""
        return kpb.ServerReadyResponse(ready=self._server_ready())

    def ModelReady(self, request, context):
        """Ready when the named version (or, without a version, any version) is READY.

        An unknown model is simply not ready (as in Triton); a malformed version is INVALID_ARGUMENT.
        """
        try:
            if not request.name:
                raise InvalidRequestError("ModelReady needs a model name")
            row = self._registry.describe(request.name, parse_version(request.version, "version"))
        except ModelNotFoundError:
            return kpb.ModelReadyResponse(ready=False)
        except Exception as exc:
            context.abort(*status_for_error(exc))
        return kpb.ModelReadyResponse(ready=row.state is ModelState.READY and not self._draining())

    def ServerMetadata(self, request, context):
        """Server name, pixforge version and the supported extensions."""
        return kpb.ServerMetadataResponse(
            name=SERVER_NAME, version=pixforge.__version__, extensions=list(EXTENSIONS)
        )

    def ModelMetadata(self, request, context):
        """A model's ready versions, platform and tensors (channels from its contract)."""
        try:
            if not request.name:
                raise InvalidRequestError("ModelMetadata needs a model name")
            row = self._registry.describe(request.name, parse_version(request.version, "version"))
            if row.contract is None:
                reason = f": {row.error}" if row.error else ""
                raise ModelNotReadyError(
                    f"model {row.name!r} version {row.version} is {row.state.value.lower()}{reason}"
                )
        except Exception as exc:
            context.abort(*status_for_error(exc))
        versions = [
            str(r.version)
            for r in self._registry.versions()
            if r.name == row.name and r.state is ModelState.READY
        ]
        inputs, outputs = tensor_metadata(row.contract)
        return kpb.ModelMetadataResponse(
            name=row.name, versions=versions, platform=PLATFORM, inputs=inputs, outputs=outputs
        )

    # -- inference

    def _model_label(self, name: str) -> str:
        # Only known names become label values: clients must not be able to explode cardinality.
        return name if name in self._registry.names() else "_unknown"

    def _check_response_size(self, contract: ModelContract, shape: tuple[int, ...]) -> None:
        n, h, w, _ = shape
        out_bytes = n * h * w * contract.scale * contract.scale * contract.output_channels
        if out_bytes > self._max_message_bytes - RESPONSE_OVERHEAD_BYTES:
            raise ImageTooLargeError(
                f"output tensor would be {out_bytes / MIB:.1f} MiB, over the server's message limit of "
                f"{self._max_message_bytes / MIB:.1f} MiB (limits.max_message_bytes): send fewer or "
                "smaller images per request"
            )

    def _translate(
        self, request: kpb.ModelInferRequest, request_id: str, cancel: CancelToken
    ) -> tuple[ArrayResult, bool]:
        """Validate and run one infer request; returns the result and whether it was batched."""
        if not request.model_name:
            raise InvalidRequestError("model_name is empty: name the model to run")
        version = parse_version(request.model_version)
        row = self._registry.describe(request.model_name, version)  # unknown model: NOT_FOUND first
        check_requested_outputs(request)
        options = request_options(request)
        inputs = input_images(request)
        if row.contract is not None:
            self._check_response_size(row.contract, inputs.images.shape)
        job = ArrayJob(
            model=request.model_name,
            images=inputs.images,
            version=version,
            options=options,
            request_id=request_id,
        )
        return self._pipeline.translate_arrays(job, cancel, self._image_executor), inputs.batched

    def _infer(
        self, request: kpb.ModelInferRequest, request_id: str, method: str, cancel: CancelToken
    ) -> kpb.ModelInferResponse:
        """Run one request with metrics and logging; raises the domain error on failure."""
        model = request.model_name
        label = self._model_label(model)
        self._metrics.request_started(label, method)
        start = time.perf_counter()
        code = "OK"
        try:
            result, batched = self._translate(request, request_id, cancel)
        except Exception as exc:
            status, message = status_for_error(exc, request_id)
            code = status.name
            if status is grpc.StatusCode.INTERNAL and not isinstance(
                exc, (InferenceError, ContractError, ImageEncodeError)
            ):
                log.exception("request %s on model %s failed unexpectedly", request_id, model)
            else:
                log.warning("request failed: %s %s", code, message, extra={"model": model, "code": code})
            raise
        finally:
            self._metrics.request_finished(label, time.perf_counter() - start, code)
        n, height, width, _ = result.images.shape
        log.info(
            "%s %s v%d -> %d x %dx%d in %.1f ms (%d tiles)",
            method,
            model,
            result.version,
            n,
            width,
            height,
            result.timing.total_ms,
            result.tiles,
            extra={
                "model": model,
                "version": result.version,
                "width": width,
                "height": height,
                "total_ms": round(result.timing.total_ms, 2),
                "tiles": result.tiles,
            },
        )
        tensor, raw = output_tensor(result.images, batched)
        response = kpb.ModelInferResponse(
            model_name=model,
            model_version=str(result.version),
            id=request.id,
            outputs=[tensor],
            raw_output_contents=[raw],
        )
        final = request.parameters.get("triton_enable_empty_final_response")
        if final is not None and final.bool_param:
            # Triton marks the last response of a request when asked; pixforge sends exactly one.
            response.parameters["triton_final_response"].bool_param = True
        return response

    @staticmethod
    def _request_id(request: kpb.ModelInferRequest) -> str:
        header = request_id_var.get()
        return request.id or (header if header != "-" else "") or new_request_id()

    def ModelInfer(self, request, context):
        """Run one inference request (unary); errors become a status via status_for_error."""
        request_id = self._request_id(request)
        cancel = CancelToken()
        context.add_callback(cancel.cancel)  # fires when the RPC ends: client cancel, deadline, or done
        with request_context(request_id):
            try:
                return self._infer(request, request_id, "ModelInfer", cancel)
            except Exception as exc:
                code, message = status_for_error(exc, request_id)
                if isinstance(exc, ImageTooLargeError):
                    # Retrying the same request cannot help (see the v1 servicer).
                    context.set_trailing_metadata((("grpc-retry-pushback-ms", "-1"),))
                context.abort(code, message)

    def ModelStreamInfer(self, request_iterator, context):
        """Answer each streamed request in order; a failed one yields ``error_message`` ("CODE: why")."""
        cancel = CancelToken()
        context.add_callback(cancel.cancel)
        header_id = request_id_var.get()  # read here: worker threads do not inherit the log context

        def process(request: kpb.ModelInferRequest, index: int) -> kpb.ModelStreamInferResponse:
            rid = request.id or (f"{header_id}-{index}" if header_id != "-" else new_request_id())
            with request_context(rid):
                try:
                    response = self._infer(request, rid, "ModelStreamInfer", cancel)
                except Exception as exc:
                    code, message = status_for_error(exc, rid)
                    # The stream message has no status field: the code leads the text instead.
                    return kpb.ModelStreamInferResponse(error_message=f"{code.name}: {message}")
                return kpb.ModelStreamInferResponse(infer_response=response)

        yield from ordered_responses(
            request_iterator,
            process,
            executor=self._stream_executor,
            max_in_flight=self._stream.max_in_flight,
            cancel=cancel,
        )


def add_kserve_service(
    server: grpc.Server,
    pipeline: Pipeline,
    registry: ModelRegistry,
    metrics: Metrics,
    *,
    stream: StreamConfig,
    stream_executor: Executor,
    workers: int,
    max_message_bytes: int,
    server_ready: Callable[[], bool],
    draining: Callable[[], bool],
) -> ThreadPoolExecutor:
    """Register ``inference.GRPCInferenceService`` on a server.

    Args:
        server: the gRPC server (not started yet).
        pipeline, registry, metrics: the server's core objects (shared with pixforge.v1).
        stream: stream settings.
        stream_executor: pool for ModelStreamInfer requests (the server's codec pool).
        workers: threads of the new pool that runs the images of a request concurrently.
        max_message_bytes: the server's message size limit.
        server_ready, draining: the server's state.

    Returns:
        The image pool; the caller shuts it down with the server.
    """
    image_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pixforge-kserve")
    servicer = KServeServicer(
        pipeline,
        registry,
        metrics,
        stream=stream,
        stream_executor=stream_executor,
        image_executor=image_pool,
        max_message_bytes=max_message_bytes,
        server_ready=server_ready,
        draining=draining,
    )
    kpb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return image_pool

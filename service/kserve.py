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

import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import grpc

import pixforge
from pixforge.kserve.v2 import grpc_service_pb2 as kpb
from pixforge.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc

from .config import StreamConfig
from .errors import InvalidRequestError, ModelNotFoundError, ModelNotReadyError
from .kserve_tensors import (
    check_requested_outputs,
    input_images,
    output_tensor,
    parse_version,
    request_options,
    tensor_metadata,
)
from .logs import request_context
from .metrics import Metrics
from .pipeline import ArrayJob, ArrayResult, CancelToken, Pipeline
from .repository import ModelRegistry, ModelState
from .runner import RequestRunner, time_remaining
from .servicer import log_failure, message_request_id, pushback_trailer, status_for_error
from .streaming import ordered_responses
from .text_limits import MAX_MODEL_NAME, check_text

log = logging.getLogger("pixforge.service.kserve")

# "inference.GRPCInferenceService": the method paths tritonclient calls.
SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "pixforge"
PLATFORM = "onnxruntime_onnx"
# What ServerMetadata advertises: request `parameters` (tile_size, tile_overlap, render_size) and
# the ModelStreamInfer streaming RPC. Shared memory, statistics, repository control and model
# configuration are Triton extensions pixforge does not offer.
EXTENSIONS = ("parameters", "model_stream_infer")


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer):
    """Thin asyncio KServe v2 front of the pipeline and the registry.

    Args:
        pipeline: runs the images.
        registry: model versions and their state.
        metrics: request metrics (``method`` label ``ModelInfer`` / ``ModelStreamInfer``).
        stream: stream settings (``max_in_flight`` applies to ModelStreamInfer too).
        runner: admission + worker threads; a request's tensor batch is admitted once.
        image_executor: pool that runs the images of one request concurrently; its tasks only
            wait on batchers, so it must be a pool of its own (not the runner's).
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
        runner: RequestRunner,
        image_executor: Executor,
        server_ready: Callable[[], bool],
        draining: Callable[[], bool],
    ):
        self._pipeline = pipeline
        self._registry = registry
        self._metrics = metrics
        self._stream = stream
        self._runner = runner
        self._image_executor = image_executor
        self._server_ready = server_ready
        self._draining = draining

    # -- health and metadata

    async def ServerLive(self, request, context):
        """Live while the process answers (also during shutdown, like grpc.health)."""
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        """Ready once the initial model load finished and until shutdown begins."""
        return kpb.ServerReadyResponse(ready=self._server_ready())

    def _describe(self, name: str, version: str, rpc: str):
        if not name:
            raise InvalidRequestError(f"{rpc} needs a model name")
        check_text("model name", name, MAX_MODEL_NAME)
        return self._registry.describe(name, parse_version(version, "version"))

    async def ModelReady(self, request, context):
        """Ready when the named version (or, without a version, any version) is READY.

        An unknown model is simply not ready (as in Triton); a malformed version is INVALID_ARGUMENT.
        """
        try:
            row = self._describe(request.name, request.version, "ModelReady")
        except ModelNotFoundError:
            return kpb.ModelReadyResponse(ready=False)
        except Exception as exc:
            await context.abort(*status_for_error(exc))
        return kpb.ModelReadyResponse(ready=row.state is ModelState.READY and not self._draining())

    async def ServerMetadata(self, request, context):
        """Server name, pixforge version and the supported extensions."""
        return kpb.ServerMetadataResponse(
            name=SERVER_NAME, version=pixforge.__version__, extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(self, request, context):
        """A model's ready versions, platform and tensors (channels from its contract)."""
        try:
            row = self._describe(request.name, request.version, "ModelMetadata")
            if row.contract is None:
                reason = f": {row.error}" if row.error else ""
                raise ModelNotReadyError(
                    f"model {row.name!r} version {row.version} is {row.state.value.lower()}{reason}"
                )
        except Exception as exc:
            await context.abort(*status_for_error(exc))
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

    def _job(self, request: kpb.ModelInferRequest, request_id: str) -> tuple[ArrayJob, bool, int]:
        """Validate a request before admission: returns the job, whether it was batched, its cost."""
        if not request.model_name:
            raise InvalidRequestError("model_name is empty: name the model to run")
        check_text("model_name", request.model_name, MAX_MODEL_NAME)
        version = parse_version(request.model_version)
        row = self._registry.describe(request.model_name, version)  # unknown model: NOT_FOUND first
        check_requested_outputs(request)
        options = request_options(request)
        inputs = input_images(request)
        pixels = 0
        if row.contract is not None:
            pixels = self._pipeline.check_array_response(row.contract, inputs.images.shape)
        job = ArrayJob(
            model=request.model_name,
            images=inputs.images,
            version=version,
            options=options,
            request_id=request_id,
        )
        return job, inputs.batched, pixels

    async def _infer(
        self,
        request: kpb.ModelInferRequest,
        request_id: str,
        method: str,
        remaining: float | None,
        cancel: CancelToken | None = None,
    ) -> kpb.ModelInferResponse:
        """Check, admit and run one request with metrics and logging; raises the domain error."""
        model = request.model_name
        label = self._model_label(model)
        self._metrics.request_started(label, method)
        start = time.perf_counter()
        code = "OK"
        try:
            job, batched, pixels = self._job(request, request_id)
            result, waited_ms = await self._runner.run(
                model,
                pixels,
                remaining,
                lambda token: self._pipeline.translate_arrays(job, token, self._image_executor),
                cancel,
            )
        except BaseException as exc:
            code = "CANCELLED" if not isinstance(exc, Exception) else log_failure(exc, request_id, model)
            raise
        finally:
            self._metrics.request_finished(label, time.perf_counter() - start, code)
        result = _with_admission_wait(result, waited_ms, start)
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

    async def ModelInfer(self, request, context):
        """Run one inference request (unary); errors become a status via status_for_error."""
        try:
            request_id = message_request_id(request.id)
        except InvalidRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with request_context(request_id):
            try:
                return await self._infer(request, request_id, "ModelInfer", time_remaining(context))
            except Exception as exc:
                failure = exc
            code, message = status_for_error(failure, request_id)
            trailer = pushback_trailer(failure)
            if trailer:
                context.set_trailing_metadata(trailer)
            await context.abort(code, message)

    async def ModelStreamInfer(self, request_iterator, context):
        """Answer each streamed request in order; a failed one yields ``error_message`` ("CODE: why")."""
        cancel = CancelToken()

        async def process(request: kpb.ModelInferRequest, index: int) -> kpb.ModelStreamInferResponse:
            try:
                rid = message_request_id(request.id, index)
                with request_context(rid):
                    response = await self._infer(
                        request, rid, "ModelStreamInfer", time_remaining(context), cancel
                    )
            except Exception as exc:
                code, message = status_for_error(exc)
                # The stream message has no status field: the code leads the text instead.
                return kpb.ModelStreamInferResponse(error_message=f"{code.name}: {message}")
            return kpb.ModelStreamInferResponse(infer_response=response)

        async for response in ordered_responses(
            request_iterator, process, max_in_flight=self._stream.max_in_flight, cancel=cancel
        ):
            yield response


def _with_admission_wait(result: ArrayResult, waited_ms: float, start: float) -> ArrayResult:
    """The result with the admission wait counted as queue time and the total measured here."""
    timing = dataclasses.replace(
        result.timing,
        queue_ms=result.timing.queue_ms + waited_ms,
        total_ms=(time.perf_counter() - start) * 1000.0,
    )
    return dataclasses.replace(result, timing=timing)


def add_kserve_service(
    server: grpc.aio.Server,
    pipeline: Pipeline,
    registry: ModelRegistry,
    metrics: Metrics,
    *,
    stream: StreamConfig,
    runner: RequestRunner,
    workers: int,
    server_ready: Callable[[], bool],
    draining: Callable[[], bool],
) -> ThreadPoolExecutor:
    """Register ``inference.GRPCInferenceService`` on a server.

    Args:
        server: the grpc.aio server (not started yet).
        pipeline, registry, metrics: the server's core objects (shared with pixforge.v1).
        stream: stream settings.
        runner: the server's admission + worker threads.
        workers: threads of the new pool that runs the images of a request concurrently.
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
        runner=runner,
        image_executor=image_pool,
        server_ready=server_ready,
        draining=draining,
    )
    kpb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return image_pool

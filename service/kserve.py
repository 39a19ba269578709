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
pixforge.v1 GetModel on the same port for it (ModelConfig carries it as ``parameters`` too).

Triton's management extensions: ModelConfig, ModelStatistics, RepositoryIndex and
RepositoryModelLoad/Unload (the latter only with ``model_control: true``) convert the core's
JSON-shaped answers into their messages with ``json_format.ParseDict``; shared memory, trace and log
settings answer UNIMPLEMENTED with a message saying pixforge does not offer them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf.json_format import ParseDict

import pixforge
from pixforge.kserve.v2 import grpc_service_pb2 as kpb
from pixforge.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc

from .errors import ModelNotFoundError
from .interceptors import OversizedMessage
from .kserve_core import NOT_OFFERED, PLATFORM, SERVER_NAME, KServeCore, not_offered
from .kserve_tensors import (
    check_requested_outputs,
    input_images,
    output_tensor,
    request_options,
    tensor_metadata,
)
from .logs import request_context
from .metrics import Metrics
from .pipeline import CancelToken, Pipeline
from .repository import ModelRegistry
from .runner import RequestRunner, time_remaining
from .servicer import message_request_id, run_unary, serve_stream, status_for_error
from .streaming import StreamControl
from .text_limits import check_text

# Triton names a repository by its path; pixforge accepts any name for its one repository.
MAX_REPOSITORY_NAME = 4096

# "inference.GRPCInferenceService": the method paths tritonclient calls.
SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# What ServerMetadata advertises, in Triton's names: request `parameters` (tile_size, tile_overlap,
# render_size), the ModelStreamInfer streaming RPC, ModelConfig, the repository index with explicit
# load/unload (allowed with model_control: true) and ModelStatistics. Shared memory, trace and
# logging are Triton extensions pixforge does not offer.
EXTENSIONS = ("parameters", "model_stream_infer", "model_configuration", "model_repository", "statistics")


def _not_offered_rpc(feature: str):
    """An RPC answering UNIMPLEMENTED for a Triton extension pixforge does not offer (a NOT_OFFERED key)."""

    async def rpc(self, request, context):
        await context.abort(*status_for_error(not_offered(feature)))

    rpc.__doc__ = f"UNIMPLEMENTED: {NOT_OFFERED[feature]}."
    return rpc


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer):
    """Thin asyncio gRPC front of :class:`~pixforge.service.kserve_core.KServeCore`.

    Args:
        core: the protocol-neutral KServe operations.
        streams: what the server's streams share with TranslateStream (the window of
            ``stream.max_in_flight``, the unsent budget and the drain signal).
    """

    def __init__(self, core: KServeCore, *, streams: StreamControl):
        self._core = core
        self._streams = streams

    # -- health and metadata

    async def ServerLive(self, request, context):
        """Live while the process answers (also during shutdown, like grpc.health)."""
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        """Ready once the initial model load finished and until shutdown begins."""
        return kpb.ServerReadyResponse(ready=self._core.server_ready())

    async def ModelReady(self, request, context):
        """Ready when the named version (or, without a version, any version) is READY.

        An unknown model is simply not ready (as in Triton); a malformed version is INVALID_ARGUMENT.
        """
        try:
            ready = self._core.model_ready(request.name, request.version)
        except ModelNotFoundError:
            return kpb.ModelReadyResponse(ready=False)
        except Exception as exc:
            await context.abort(*status_for_error(exc))
        return kpb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        """Server name, pixforge version and the supported extensions."""
        return kpb.ServerMetadataResponse(
            name=SERVER_NAME, version=pixforge.__version__, extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(self, request, context):
        """A model's ready versions, platform and tensors (channels from its contract)."""
        try:
            described = self._core.model_metadata(request.name, request.version)
        except Exception as exc:
            await context.abort(*status_for_error(exc))
        inputs, outputs = tensor_metadata(described.contract)
        return kpb.ModelMetadataResponse(
            name=described.row.name,
            versions=described.versions,
            platform=PLATFORM,
            inputs=inputs,
            outputs=outputs,
        )

    # -- inference

    async def _infer(
        self,
        request: kpb.ModelInferRequest,
        request_id: str,
        method: str,
        remaining: float | None,
        cancel: CancelToken | None = None,
        check: Callable[[], None] | None = None,
    ) -> kpb.ModelInferResponse:
        """Run one request through the core and build its response; raises the domain error.

        ``check`` runs first, inside the request's metrics (a stream's unsent budget).
        """
        batched = []

        def parse():
            if check is not None:
                check()
            check_requested_outputs(request)
            options = request_options(request)
            inputs = input_images(request)
            batched.append(inputs.batched)
            return inputs.images, options

        result = await self._core.infer(
            request.model_name, request.model_version, parse, request_id, method, remaining, cancel
        )
        tensor, raw = output_tensor(result.images, batched[0])
        response = kpb.ModelInferResponse(
            model_name=request.model_name,
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

        async def call(request_id: str) -> kpb.ModelInferResponse:
            return await self._infer(request, request_id, "ModelInfer", time_remaining(context))

        return await run_unary(context, request.id, call)

    async def ModelStreamInfer(self, request_iterator, context):
        """Answer each streamed request in order; a failed one yields ``error_message`` ("CODE: why").

        Once the server drains, the stream reads no new request, answers the ones it holds and
        ends UNAVAILABLE.
        """
        cancel = CancelToken()

        async def process(request: kpb.ModelInferRequest, index: int) -> kpb.ModelStreamInferResponse:
            if isinstance(request, OversizedMessage):  # counted by MessageSizeInterceptor
                return kpb.ModelStreamInferResponse(error_message=f"RESOURCE_EXHAUSTED: {request.message}")
            try:
                rid = message_request_id(request.id, index)
                with request_context(rid):
                    remaining = time_remaining(context)
                    response = await self._infer(
                        request, rid, "ModelStreamInfer", remaining, cancel, self._streams.check_unsent
                    )
            except Exception as exc:
                code, message = status_for_error(exc)
                # The stream message has no status field: the code leads the text instead.
                return kpb.ModelStreamInferResponse(error_message=f"{code.name}: {message}")
            return kpb.ModelStreamInferResponse(infer_response=response)

        responses = serve_stream(
            context, request_iterator, process, self._streams, kpb.ModelStreamInferResponse.ByteSize, cancel
        )
        async for response in responses:
            yield response

    # -- Triton management extensions

    async def ModelConfig(self, request, context):
        """A model's configuration (Triton's ModelConfig; dims without the batch dimension)."""
        try:
            config = self._core.model_config(request.name, request.version)
        except Exception as exc:
            await context.abort(*status_for_error(exc))
        return kpb.ModelConfigResponse(config=ParseDict(config, kpb.ModelConfigResponse().config))

    async def ModelStatistics(self, request, context):
        """Cumulative statistics of every ready model version, or of the named model (version)."""
        try:
            stats = self._core.statistics(request.name, request.version)
        except Exception as exc:
            await context.abort(*status_for_error(exc))
        return ParseDict(stats, kpb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):
        """The model versions and their states (``ready``: only the ready ones)."""
        try:
            self._check_repository(request.repository_name)
            index = self._core.repository_index(request.ready)
        except Exception as exc:
            await context.abort(*status_for_error(exc))
        return ParseDict({"models": index}, kpb.RepositoryIndexResponse())

    async def RepositoryModelLoad(self, request, context):
        """Load or reload a model from the repository (needs ``model_control: true``)."""
        try:
            self._check_repository(request.repository_name)
            await self._core.load_model(request.model_name, list(request.parameters))
        except Exception as exc:
            await context.abort(*status_for_error(exc))
        return kpb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        """Take a model out of service until it is loaded again (needs ``model_control: true``)."""
        try:
            self._check_repository(request.repository_name)
            await self._core.unload_model(request.model_name)
        except Exception as exc:
            await context.abort(*status_for_error(exc))
        return kpb.RepositoryModelUnloadResponse()

    @staticmethod
    def _check_repository(name: str) -> None:
        # pixforge serves one repository; Triton names repositories by their path, so any name is
        # accepted for it, but it must be sane text.
        check_text("repository_name", name, MAX_REPOSITORY_NAME)

    # Triton extensions pixforge does not offer: UNIMPLEMENTED, saying so (the HTTP front's 501).
    SystemSharedMemoryStatus = SystemSharedMemoryRegister = SystemSharedMemoryUnregister = _not_offered_rpc(
        "system_shared_memory"
    )
    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _not_offered_rpc(
        "cuda_shared_memory"
    )
    TraceSetting = _not_offered_rpc("trace")
    LogSettings = _not_offered_rpc("logging")


def add_kserve_service(
    server: grpc.aio.Server,
    pipeline: Pipeline,
    registry: ModelRegistry,
    metrics: Metrics,
    *,
    stream: StreamControl,
    runner: RequestRunner,
    workers: int,
    server_ready: Callable[[], bool],
    draining: Callable[[], bool],
    model_control: bool = False,
) -> tuple[KServeCore, ThreadPoolExecutor]:
    """Register ``inference.GRPCInferenceService`` on a server.

    Args:
        server: the grpc.aio server (not started yet).
        pipeline, registry, metrics: the server's core objects (shared with pixforge.v1).
        stream: what the server's streams share (TranslateStream's too).
        runner: the server's admission + worker threads.
        workers: threads of the new pool that runs the images of a request concurrently.
        server_ready, draining: the server's state.
        model_control: allow RepositoryModelLoad/Unload (the ``model_control`` setting).

    Returns:
        The core (the HTTP front shares it) and the image pool (the caller shuts it down).
    """
    image_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pixforge-kserve")
    core = KServeCore(
        pipeline,
        registry,
        metrics,
        runner=runner,
        image_executor=image_pool,
        server_ready=server_ready,
        draining=draining,
        model_control=model_control,
    )
    kpb_grpc.add_GRPCInferenceServiceServicer_to_server(KServeServicer(core, streams=stream), server)
    return core, image_pool

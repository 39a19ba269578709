"""The KServe v2 / Open Inference Protocol logic shared by its gRPC and HTTP/REST fronts.

:mod:`~pixforge.service.kserve` (``inference.GRPCInferenceService``) and
:mod:`~pixforge.service.kserve_http` (``/v2/...`` over HTTP) differ only in how requests and
answers are encoded. Everything else lives here once: readiness, model descriptions, and
inference (checks before admission, admission and the worker thread through the
:class:`~pixforge.service.runner.RequestRunner`, metrics, statistics and the log line), and
Triton's management extensions as JSON-shaped dicts (model configuration, repository index,
explicit load/unload, statistics) that the gRPC front converts to its messages and the HTTP front
sends as they are. Errors are the serving core's typed exceptions; each front maps them to its own
status codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import Executor
from dataclasses import KW_ONLY, dataclass

import numpy as np

from pixforge.contract import ModelContract

from .errors import (
    InvalidRequestError,
    ModelControlDisabledError,
    ModelLoadingError,
    ModelNotFoundError,
    ModelNotReadyError,
    NotOfferedError,
)
from .kserve_tensors import parse_version
from .metrics import Metrics
from .pipeline import ArrayJob, ArrayResult, CancelToken, Pipeline, TranslateOptions
from .repository import ModelRegistry, ModelState, ModelVersion
from .runner import RequestRunner
from .servicer import failure_code
from .statistics import RequestRecorder
from .text_limits import MAX_MODEL_NAME, MAX_VERSION_TEXT, check_text, quote

log = logging.getLogger("pixforge.service.kserve")

SERVER_NAME = "pixforge"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Triton's repository index states for the registry's.
INDEX_STATE = {ModelState.READY: "READY", ModelState.LOADING: "LOADING", ModelState.FAILED: "UNAVAILABLE"}
# What the Triton extensions pixforge does not offer answer (UNIMPLEMENTED).
NOT_OFFERED = {
    "system_shared_memory": "pixforge does not offer system shared memory: send tensors in the request",
    "cuda_shared_memory": "pixforge does not offer CUDA shared memory: send tensors in the request",
    "trace": "pixforge does not offer trace settings: use the request ids in its logs and its metrics",
    "logging": "pixforge does not offer log settings: set log_level / log_format in its configuration",
}


def not_offered(feature: str) -> NotOfferedError:
    """The error for a Triton extension pixforge does not offer (a key of :data:`NOT_OFFERED`)."""
    return NotOfferedError(NOT_OFFERED[feature])


@dataclass(frozen=True)
class ModelDescription:
    """What ModelMetadata answers: the row, its ready versions and its contract (tensor channels)."""

    row: ModelVersion
    versions: list[str]
    contract: ModelContract


def _loaded_contract(row: ModelVersion) -> ModelContract:
    """The contract of a loaded version (metadata and config describe its tensors).

    Raises:
        ModelNotReadyError: the version is loading or failed, so its tensors are not known yet.
    """
    if row.contract is None:
        reason = f": {row.error}" if row.error else ""
        error = ModelLoadingError if row.state is ModelState.LOADING else ModelNotReadyError
        raise error(f"model {row.name!r} version {row.version} is {row.state.value.lower()}{reason}")
    return row.contract


# eq=False: a service object compared (and hashed) by identity, not a value.
@dataclass(eq=False)
class KServeCore:
    """Protocol-neutral KServe v2 operations on the server's registry, pipeline and runner.

    Args:
        pipeline: runs the images.
        registry: model versions and their state.
        metrics: request metrics (``method`` label as the front names it).
        runner: admission + worker threads; a request's tensor batch is admitted once.
        image_executor: pool that runs the images of one request concurrently; its tasks only
            wait on batchers, so it must be a pool of its own (not the runner's).
        server_ready: whether the server is ready (models loaded, not shutting down).
        draining: whether shutdown has begun.
        model_control: whether :meth:`load_model` / :meth:`unload_model` are allowed (the
            ``model_control`` setting; Triton's explicit model control mode).
    """

    pipeline: Pipeline
    registry: ModelRegistry
    metrics: Metrics
    _: KW_ONLY
    runner: RequestRunner
    image_executor: Executor
    server_ready: Callable[[], bool]
    draining: Callable[[], bool]
    model_control: bool = False

    # -- health and metadata

    def describe(self, name: str, version: str, what: str) -> ModelVersion:
        """The row a request names (an empty version: the served one).

        Raises:
            InvalidRequestError: no name, an over-long name or a malformed version.
            ModelNotFoundError: unknown model or version.
        """
        if not name:
            raise InvalidRequestError(f"{what} needs a model name")
        check_text("model name", name, MAX_MODEL_NAME)
        check_text("model version", version, MAX_VERSION_TEXT)
        return self.registry.describe(name, parse_version(version, "version"))

    def model_ready(self, name: str, version: str) -> bool:
        """Ready when the named version (or, without a version, the served one) is READY.

        Raises:
            ModelNotFoundError: unknown model (the fronts answer "not ready", as Triton does).
        """
        row = self.describe(name, version, "ModelReady")
        return row.state is ModelState.READY and not self.draining()

    def model_metadata(self, name: str, version: str) -> ModelDescription:
        """A model's row and ready versions.

        Raises:
            ModelNotReadyError: the version is loading or failed (nothing to describe yet).
        """
        row = self.describe(name, version, "ModelMetadata")
        contract = _loaded_contract(row)
        versions = [
            str(r.version)
            for r in self.registry.versions()
            if r.name == row.name and r.state is ModelState.READY
        ]
        return ModelDescription(row, versions, contract)

    # -- inference

    def model_label(self, name: str) -> str:
        """The metrics label for a client-chosen name (unknown names share one label)."""
        return name if name in self.registry.names() else "_unknown"

    async def infer(
        self,
        model: str,
        version: str,
        parse: Callable[[], tuple[np.ndarray, TranslateOptions]],
        request_id: str,
        method: str,
        remaining: float | None,
        cancel: CancelToken | None = None,
    ) -> ArrayResult:
        """Check, admit and run a batch of uint8 (N, H, W, C) images; raises the domain error.

        Args:
            model, version: the model and its version text ("" = the served one).
            parse: the front's decoding of the request: returns the uint8 (N, H, W, C) input and the
                options from its parameters. Called after the model was found (an unknown model is
                NOT_FOUND whatever the tensors), inside the request's metrics.
            request_id: for logs and the result.
            method: the metrics/log label (``ModelInfer``, ``ModelStreamInfer``, ``HTTPInfer``).
            remaining: seconds until the caller's deadline (None: none).
            cancel: a stream's token.
        """
        label = self.model_label(model)
        self.metrics.request_started(label, method)
        start = time.perf_counter()
        code = "OK"
        stats = RequestRecorder(self.metrics.statistics)
        try:
            if not model:
                raise InvalidRequestError("model_name is empty: name the model to run")
            check_text("model_name", model, MAX_MODEL_NAME)
            check_text("model_version", version, MAX_VERSION_TEXT)
            number = parse_version(version)
            row = self.registry.describe(model, number)  # unknown model: NOT_FOUND first
            stats.start(self.registry, model, number)
            parse_start = time.perf_counter()
            images, options = parse()
            parse_ms = (time.perf_counter() - parse_start) * 1000.0
            self.pipeline.check_array_batch(model, len(images))  # before admission: INVALID_ARGUMENT
            pixels = 0
            if row.contract is not None:
                pixels = self.pipeline.check_array_response(row.contract, images.shape)
            job = ArrayJob(model=model, images=images, version=number, options=options, request_id=request_id)
            result, waited_ms = await self.runner.run(
                model,
                pixels,
                remaining,
                lambda token: self.pipeline.translate_arrays(job, token, self.image_executor),
                cancel,
            )
        except BaseException as exc:
            code = failure_code(exc, request_id, model, remaining, start)
            stats.failed(code, exc)
            raise
        finally:
            self.metrics.request_finished(label, time.perf_counter() - start, code, method)
        timing = dataclasses.replace(
            result.timing,
            decode_ms=result.timing.decode_ms + parse_ms,
            queue_ms=result.timing.queue_ms + waited_ms,
            total_ms=(time.perf_counter() - start) * 1000.0,
        )
        result = dataclasses.replace(result, timing=timing)
        # The output tensor is built by the front after this: compute_output is not measured (0).
        stats.succeeded_with(result)
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
        return result

    # -- Triton management extensions (model configuration, repository, statistics)

    def model_config(self, name: str, version: str) -> dict:
        """Triton's model configuration of a model (version) as JSON (``ModelConfig`` field names).

        ``max_batch_size`` is ``batching.max_batch_size`` and the tensors' ``dims`` leave out the
        batch dimension, as in a Triton ``config.pbtxt``: ``image`` is UINT8 [-1, -1, C_in] and
        ``image_out`` UINT8 [-1, -1, C_out], so with the batch dimension they match ModelMetadata's
        [-1, -1, -1, C]. ``parameters`` carry the pixforge contract (task, scale, ...).

        Raises:
            InvalidRequestError, ModelNotFoundError: see :meth:`describe`.
            ModelNotReadyError: the version is loading or failed (its tensors are not known).
        """
        row = self.describe(name, version, "ModelConfig")
        contract = _loaded_contract(row)
        batching = self.registry.batching
        gpu = row.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        group: dict[str, object] = {"name": row.name, "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": 1}
        if gpu:
            group["gpus"] = [self.registry.engine_config.device_id]
        parameters = {
            "task": contract.task,
            "scale": contract.scale,
            "size_multiple": contract.size_multiple,
            "tile_size": contract.tile_size,
            "execution_provider": row.provider,
            "precision": row.precision,
        }
        return {
            "name": row.name,
            "platform": PLATFORM,
            "backend": BACKEND,
            # Every version in the repository is loaded and can be named; "" means the pinned,
            # else the highest ready one.
            "version_policy": {"all": {}},
            "max_batch_size": batching.max_batch_size,
            "input": [
                {
                    "name": "image",
                    "data_type": "TYPE_UINT8",
                    "format": "FORMAT_NHWC",
                    "dims": [-1, -1, contract.input_channels],
                }
            ],
            "output": [
                {"name": "image_out", "data_type": "TYPE_UINT8", "dims": [-1, -1, contract.output_channels]}
            ],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(round(batching.max_queue_delay_ms * 1000)),
                "preserve_ordering": True,
            },
            "instance_group": [group],
            "default_model_filename": "model.onnx",
            "parameters": {key: {"string_value": str(value)} for key, value in parameters.items()},
        }

    def repository_index(self, ready_only: bool) -> list[dict]:
        """Triton's repository index: one ``{name, version, state[, reason]}`` per model version.

        States: READY, LOADING, UNAVAILABLE (failed to load, with the error as reason, or unloaded
        by :meth:`unload_model`, reason "unloaded"). ``ready_only``: READY versions only.
        """
        entries = []
        for row in self.registry.versions():
            if ready_only and row.state is not ModelState.READY:
                continue
            entry = {"name": row.name, "version": str(row.version), "state": INDEX_STATE[row.state]}
            if row.error:
                entry["reason"] = row.error
            entries.append(entry)
        if not ready_only:
            for name, versions in self.registry.unloaded().items():
                for number in versions:
                    entries.append(
                        {"name": name, "version": str(number), "state": "UNAVAILABLE", "reason": "unloaded"}
                    )
        entries.sort(key=lambda e: (e["name"], int(e["version"])))
        return entries

    def _check_model_control(self, name: str, what: str) -> None:
        if not self.model_control:
            raise ModelControlDisabledError(
                f"{what} needs explicit model control, which is off on this server: set model_control: "
                "true (PIXFORGE_MODEL_CONTROL=1) to allow it"
            )
        if not name:
            raise InvalidRequestError(f"{what} needs a model name")
        check_text("model name", name, MAX_MODEL_NAME)

    async def load_model(self, name: str, parameters: Collection[str] = ()) -> None:
        """Load (or reload) a model from the read-only repository (Triton's RepositoryModelLoad).

        New, changed and failed versions load; unchanged ones keep serving; an unloaded model
        comes back. The load runs on a thread, off the event loop.

        Args:
            name: the model (its folder in the repository).
            parameters: names of the request's load parameters; Triton's ``config`` and ``file:*``
                overrides are refused (pixforge never writes or overrides repository files).

        Raises:
            ModelControlDisabledError: ``model_control`` is off.
            InvalidRequestError: no name, an over-long name or an override parameter.
            ModelNotFoundError: no such model folder in the repository.
            RepositoryUnavailableError: the repository cannot be read now.
            ModelNotReadyError: a version failed to load.
        """
        self._check_model_control(name, "RepositoryModelLoad")
        refused = sorted(p for p in parameters if p == "config" or p.startswith("file:"))
        if refused:
            raise InvalidRequestError(
                f"load parameter(s) {', '.join(refused)} not supported: pixforge loads models only "
                "from the files in its repository"
            )
        try:
            await asyncio.to_thread(self.registry.load, name)
        except ModelNotFoundError as exc:
            # The registry's message names the repository's folder on the server: keep that for
            # the log and tell the client only about the model it asked for.
            log.info("RepositoryModelLoad %s: %s", quote(name), exc)
            raise ModelNotFoundError(
                f"model {quote(name)} is not in the model repository (no <version>/model.onnx in a folder "
                "of that name)"
            ) from None

    async def unload_model(self, name: str) -> None:
        """Take a model out of service until it is loaded again (Triton's RepositoryModelUnload).

        Every version stops taking requests at once (they get NOT_FOUND, ModelReady is false);
        in-flight ones finish. Repository polls leave it unloaded; nothing is written to the
        repository. Unloading an unloaded model does nothing.

        Raises:
            ModelControlDisabledError: ``model_control`` is off.
            InvalidRequestError: no name or an over-long name.
            ModelNotFoundError: no model of that name.
        """
        self._check_model_control(name, "RepositoryModelUnload")
        await asyncio.to_thread(self.registry.unload, name)

    def statistics(self, name: str, version: str) -> dict:
        """Triton's ``{"model_stats": [...]}``: every ready model version without a name, else the
        named model's ready versions (or the one version asked for).

        Raises:
            InvalidRequestError: an over-long name or a malformed version.
            ModelNotFoundError: unknown model or version.
            ModelNotReadyError: the named model has no ready version (and none was asked for).
        """
        check_text("model name", name, MAX_MODEL_NAME)
        check_text("model version", version, MAX_VERSION_TEXT)
        number = parse_version(version, "version")
        if name:
            row = self.registry.describe(name, number)  # unknown model or version: NOT_FOUND
            if number:
                keys = [(row.name, row.version)]
            else:
                keys = [
                    (r.name, r.version)
                    for r in self.registry.versions()
                    if r.name == name and r.state is ModelState.READY
                ]
                if not keys:
                    raise ModelNotReadyError(f"model {name!r} has no ready version")
        else:
            if number:
                raise InvalidRequestError("ModelStatistics: a version needs a model name")
            keys = [(r.name, r.version) for r in self.registry.versions() if r.state is ModelState.READY]
        return {"model_stats": self.metrics.statistics.model_stats(keys)}

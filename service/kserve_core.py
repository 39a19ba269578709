"""The KServe v2 / Open Inference Protocol logic shared by its gRPC and HTTP/REST fronts.

:mod:`~pixforge.service.kserve` (``inference.GRPCInferenceService``) and
:mod:`~pixforge.service.kserve_http` (``/v2/...`` over HTTP) differ only in how requests and
answers are encoded. Everything else lives here once: readiness, model descriptions, and
inference (checks before admission, admission and the worker thread through the
:class:`~pixforge.service.runner.RequestRunner`, metrics and the log line). Errors are the serving
core's typed exceptions; each front maps them to its own status codes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from pixforge.contract import ModelContract

from .errors import InvalidRequestError, ModelNotReadyError
from .kserve_tensors import DATATYPE, parse_version  # noqa: F401 - DATATYPE re-exported for the fronts
from .metrics import Metrics
from .pipeline import ArrayJob, ArrayResult, CancelToken, Pipeline, TranslateOptions
from .repository import ModelRegistry, ModelState, ModelVersion
from .runner import RequestRunner
from .servicer import log_failure
from .text_limits import MAX_MODEL_NAME, MAX_VERSION_TEXT, check_text

log = logging.getLogger("pixforge.service.kserve")

SERVER_NAME = "pixforge"
PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True)
class ModelDescription:
    """What ModelMetadata answers: the row, its ready versions and its tensors' channel counts."""

    row: ModelVersion
    versions: list[str]

    @property
    def contract(self) -> ModelContract:
        return self.row.contract


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
    """

    def __init__(
        self,
        pipeline: Pipeline,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        runner: RequestRunner,
        image_executor: Executor,
        server_ready: Callable[[], bool],
        draining: Callable[[], bool],
    ):
        self.pipeline = pipeline
        self.registry = registry
        self.metrics = metrics
        self.runner = runner
        self.image_executor = image_executor
        self.server_ready = server_ready
        self.draining = draining

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
        if row.contract is None:
            reason = f": {row.error}" if row.error else ""
            raise ModelNotReadyError(
                f"model {row.name!r} version {row.version} is {row.state.value.lower()}{reason}"
            )
        versions = [
            str(r.version)
            for r in self.registry.versions()
            if r.name == row.name and r.state is ModelState.READY
        ]
        return ModelDescription(row, versions)

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
        try:
            if not model:
                raise InvalidRequestError("model_name is empty: name the model to run")
            check_text("model_name", model, MAX_MODEL_NAME)
            check_text("model_version", version, MAX_VERSION_TEXT)
            number = parse_version(version)
            row = self.registry.describe(model, number)  # unknown model: NOT_FOUND first
            images, options = parse()
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
            code = "CANCELLED" if not isinstance(exc, Exception) else log_failure(exc, request_id, model)
            raise
        finally:
            self.metrics.request_finished(label, time.perf_counter() - start, code)
        timing = dataclasses.replace(
            result.timing,
            queue_ms=result.timing.queue_ms + waited_ms,
            total_ms=(time.perf_counter() - start) * 1000.0,
        )
        result = dataclasses.replace(result, timing=timing)
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

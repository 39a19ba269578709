"""Per model version request statistics in NVIDIA Triton's terms (ModelStatistics and nv_* metrics).

One :class:`Statistics` store per server, fed from where requests finish (the pixforge.v1 servicer
and :class:`~pixforge.service.kserve_core.KServeCore`, for the gRPC and HTTP fronts alike) and
from the batchers' per-call observer. It answers the KServe ``ModelStatistics`` RPC (Triton's
``{"model_stats": [...]}`` shape) and the ``nv_inference_*`` Prometheus families
(:class:`TritonCollector`), so Triton's perf_analyzer, Model Analyzer and dashboards read pixforge
like a Triton server.

What the Triton fields mean here (all durations cumulative, in nanoseconds):

* ``success`` / ``fail``: requests answered OK / with an error, and their end-to-end durations.
  Failures also count by reason for the metrics (Triton's ``REJECTED``, ``CANCELED``, ``BACKEND``,
  ``OTHER``; see :func:`failure_reason`).
* ``queue``: waiting for admission plus waiting in the batcher's queue; ``compute_input``: decoding
  the image (pixforge.v1) or parsing the request's tensors (KServe); ``compute_infer``: the
  inference calls the request waited for; ``compute_output``: encoding the image (KServe output
  tensors are built by the front after the statistics were taken: 0). Like Triton's, these four
  count successful requests only.
* ``inference_count``: images or tiles of successful requests run through the model (an untiled
  image is one); ``execution_count``: model calls (batches), so ``inference_count /
  execution_count`` is the mean batch size. ``batch_stats`` counts the calls per batch size with
  their durations (the stacking of the batch is inside the model call, so its ``compute_input``
  and ``compute_output`` durations are 0).
* ``last_inference``: milliseconds since the epoch of the last successful request.
* ``pending``: requests for the version received and not answered yet (waiting for admission,
  queued or running).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .admission import AdmissionRejected
from .errors import InferenceError, OutOfMemoryError, QueueFullError

# Triton's failure reasons (the `reason` label of nv_inference_request_failure).
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
_STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def failure_reason(code: str, exc: BaseException | None = None) -> str:
    """Triton's failure reason for a request that failed with gRPC status ``code`` (its name).

    REJECTED: refused because the model or the server was busy (queue full, admission); CANCELED:
    the caller went away or its deadline passed; BACKEND: the model failed or ran out of memory;
    OTHER: anything else (invalid request, image too large, model not ready, shutdown).
    """
    if isinstance(exc, (AdmissionRejected, QueueFullError)):
        return "REJECTED"
    if isinstance(exc, (InferenceError, OutOfMemoryError)):
        return "BACKEND"
    if code in ("CANCELLED", "DEADLINE_EXCEEDED"):
        return "CANCELED"
    return "OTHER"


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, int(ns))

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """The counters of one model version (mutated only under the store's lock)."""

    def __init__(self, name: str, version: int):
        self.name = name
        self.version = version
        self.stages = {stage: _Duration() for stage in _STAGES}
        self.failures = dict.fromkeys(REASONS, 0)
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference = 0
        self.pending = 0
        # batch size -> model calls of that size and their summed duration
        self.batches: dict[int, _Duration] = {}

    def as_dict(self) -> dict:
        """Triton's ModelStatistics as JSON (the HTTP ``/v2/models/stats`` shape)."""
        stats = {stage: d.as_dict() for stage, d in self.stages.items()}
        stats["cache_hit"] = {"count": 0, "ns": 0}
        stats["cache_miss"] = {"count": 0, "ns": 0}
        return {
            "name": self.name,
            "version": str(self.version),
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": stats,
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.as_dict(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for size, d in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }


class Statistics:
    """Thread-safe store of :class:`ModelStats` by (model, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, int], ModelStats] = {}

    def _get(self, name: str, version: int) -> ModelStats:
        """The entry of (name, version), created at zero; caller holds the lock."""
        stats = self._models.get((name, version))
        if stats is None:
            stats = self._models[(name, version)] = ModelStats(name, version)
        return stats

    def register(self, name: str, version: int) -> None:
        """Make (name, version) known with zero counters (a version was loaded)."""
        with self._lock:
            self._get(name, version)

    def request_started(self, name: str, version: int) -> None:
        """A request for the version arrived (pending + 1)."""
        with self._lock:
            self._get(name, version).pending += 1

    def request_succeeded(
        self,
        name: str,
        version: int,
        *,
        started_version: int | None = None,
        total_s: float,
        queue_s: float,
        input_s: float,
        infer_s: float,
        output_s: float,
        inferences: int,
    ) -> None:
        """A request answered OK (pending - 1 on ``started_version``, default ``version``)."""
        with self._lock:
            self._get(name, version if started_version is None else started_version).pending -= 1
            stats = self._get(name, version)
            stats.stages["success"].add(total_s * 1e9)
            stats.stages["queue"].add(queue_s * 1e9)
            stats.stages["compute_input"].add(input_s * 1e9)
            stats.stages["compute_infer"].add(infer_s * 1e9)
            stats.stages["compute_output"].add(output_s * 1e9)
            stats.inference_count += max(0, int(inferences))
            stats.last_inference = int(time.time() * 1000)

    def request_failed(self, name: str, version: int, *, total_s: float, reason: str) -> None:
        """A request failed with Triton ``reason`` (one of :data:`REASONS`); pending - 1."""
        with self._lock:
            stats = self._get(name, version)
            stats.pending -= 1
            stats.stages["fail"].add(total_s * 1e9)
            stats.failures[reason if reason in stats.failures else "OTHER"] += 1

    def executed(self, name: str, version: int, batch_size: int, infer_s: float) -> None:
        """One model call of ``batch_size`` images or tiles took ``infer_s`` seconds."""
        with self._lock:
            stats = self._get(name, version)
            stats.execution_count += 1
            calls = stats.batches.get(batch_size)
            if calls is None:
                calls = stats.batches[batch_size] = _Duration()
            calls.add(infer_s * 1e9)

    def model_stats(self, keys: list[tuple[str, int]] | None = None) -> list[dict]:
        """Triton ModelStatistics dicts for ``keys`` (default: every known version), in that order.

        A key never seen has zero counters.
        """
        with self._lock:
            if keys is None:
                keys = sorted(self._models)
            return [
                self._models[k].as_dict() if k in self._models else ModelStats(*k).as_dict() for k in keys
            ]

    def snapshot(self) -> list[ModelStats]:
        """Copies of every entry (for the metrics collector), sorted by (model, version)."""
        with self._lock:
            out = []
            for key in sorted(self._models):
                src = self._models[key]
                copy = ModelStats(src.name, src.version)
                copy.stages = {s: _copy(d) for s, d in src.stages.items()}
                copy.failures = dict(src.failures)
                copy.inference_count = src.inference_count
                copy.execution_count = src.execution_count
                copy.last_inference = src.last_inference
                copy.pending = src.pending
                out.append(copy)
            return out


def _copy(d: _Duration) -> _Duration:
    c = _Duration()
    c.count, c.ns = d.count, d.ns
    return c


# Triton's per model version counters: (name, help, what: a stage's duration or a count).
_COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes", "success"),
    ("nv_inference_count", "Number of inferences performed (images or tiles)", "inferences"),
    ("nv_inference_exec_count", "Number of model executions performed (batches)", "executions"),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        "success_us",
    ),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds", "queue_us"),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        "compute_input_us",
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        "compute_infer_us",
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds",
        "compute_output_us",
    ),
)


def _value(stats: ModelStats, what: str) -> float:
    if what == "inferences":
        return float(stats.inference_count)
    if what == "executions":
        return float(stats.execution_count)
    if what.endswith("_us"):
        return stats.stages[what[:-3]].ns / 1000.0
    return float(stats.stages[what].count)


FAILURE_METRIC = "nv_inference_request_failure"
PENDING_METRIC = "nv_inference_pending_request_count"
TRITON_METRICS = tuple(name for name, _, _ in _COUNTERS) + (FAILURE_METRIC, PENDING_METRIC)


class TritonCollector(Collector):
    """Prometheus families with Triton's names and labels (``model``, ``version``), read from a store.

    Triton's counters carry no ``_total`` suffix; prometheus_client would add one to a family of
    type counter, so they are exposed as untyped (``unknown``) families with exactly Triton's sample
    names: ``rate()`` and Triton's dashboards work on them unchanged.
    """

    def __init__(self, statistics: Statistics):
        self._statistics = statistics

    def collect(self) -> Iterator[Metric]:
        rows = self._statistics.snapshot()
        for name, doc, what in _COUNTERS:
            family = Metric(name, doc, "unknown")
            for s in rows:
                family.add_sample(name, {"model": s.name, "version": str(s.version)}, _value(s, what))
            yield family
        failures = Metric(FAILURE_METRIC, "Number of failed inference requests, all batch sizes", "unknown")
        for s in rows:
            for reason in REASONS:
                labels = {"model": s.name, "version": str(s.version), "reason": reason}
                failures.add_sample(FAILURE_METRIC, labels, float(s.failures[reason]))
        yield failures
        pending = GaugeMetricFamily(
            PENDING_METRIC,
            "Instantaneous number of pending requests awaiting execution per-model",
            labels=["model", "version"],
        )
        for s in rows:
            pending.add_metric([s.name, str(s.version)], max(0, s.pending))
        yield pending

    def describe(self) -> Iterator[Metric]:
        """The families without samples (so registering never scrapes)."""
        for name in TRITON_METRICS:
            yield Metric(name, "", "gauge" if name == PENDING_METRIC else "unknown")


class RequestRecorder:
    """The statistics of one request: :meth:`start` once its model is known, then one outcome.

    Args:
        statistics: the server's store.
    """

    def __init__(self, statistics: Statistics):
        self._statistics = statistics
        self._begin = time.perf_counter()
        self.model = ""
        self.version: int | None = None  # the version whose pending count this request holds

    def start(self, registry, model: str, version: int = 0) -> None:
        """Count the request as pending on the version ``registry`` serves for (model, version).

        An unknown model or version is not counted (Triton keeps no statistics for it).
        """
        try:
            served = registry.describe(model, version).version
        except Exception:
            return
        self.model, self.version = model, served
        self._statistics.request_started(model, served)

    def failed(self, code: str, exc: BaseException | None) -> None:
        """The request failed with gRPC status ``code`` (its name)."""
        if self.version is None:
            return
        self._statistics.request_failed(
            self.model,
            self.version,
            total_s=time.perf_counter() - self._begin,
            reason=failure_reason(code, exc),
        )
        self.version = None

    def succeeded_with(self, result) -> None:
        """The request was answered OK: its version, timing and tile count from a pipeline result
        (a TranslateResult or an ArrayResult: both carry ``version``, ``timing`` and ``tiles``)."""
        timing = result.timing
        self.succeeded(
            result.version,
            queue_ms=timing.queue_ms,
            input_ms=timing.decode_ms,
            infer_ms=timing.inference_ms,
            output_ms=timing.encode_ms,
            inferences=result.tiles,
        )

    def succeeded(
        self,
        version: int,
        *,
        queue_ms: float,
        input_ms: float,
        infer_ms: float,
        output_ms: float,
        inferences: int,
    ) -> None:
        """The request was answered OK by ``version`` (the one that ran it)."""
        if self.version is None:
            return
        self._statistics.request_succeeded(
            self.model,
            version,
            started_version=self.version,
            total_s=time.perf_counter() - self._begin,
            queue_s=queue_ms / 1000.0,
            input_s=input_ms / 1000.0,
            infer_s=infer_ms / 1000.0,
            output_s=output_ms / 1000.0,
            inferences=inferences,
        )
        self.version = None

"""Prometheus metrics on their own registry (never the process-global default one).

A private ``CollectorRegistry`` lets several servers live in one process (tests, benchmarks)
without "duplicated timeseries" errors and keeps library metrics out of our endpoint. Every
pixforge metric carries a ``model`` label.

Exposed names (see docs/serving.md):
    pixforge_requests_total{model,method}            requests received
    pixforge_responses_total{model,method,code}      requests answered, by gRPC status code name
                                                     (OK included; the HTTP front uses the same names)
    pixforge_request_failures_total{model,code}      requests failed, by gRPC status code (model "-":
                                                     refused before a handler ran)
    pixforge_request_seconds{model}                  end-to-end latency (histogram)
    pixforge_queue_seconds{model}                    time an image/tile waited in the batch queue
    pixforge_inference_seconds{model}                duration of one inference call (batch)
    pixforge_batch_size{model}                       images/tiles per inference call (histogram)
    pixforge_images_total{model}                     images/tiles run through the model (rate() = images/s)
    pixforge_in_flight{model}                        requests being processed now
    pixforge_model_ready{model}                      1 when a version of the model serves
    pixforge_model_info{model,version,provider,precision}  1 for the serving version: what runs it
    pixforge_admission_queued                        requests waiting for a worker
    pixforge_admission_queued_seconds                estimated seconds of work waiting
    pixforge_admission_running                       requests holding a worker
    nv_inference_*{model,version}                    Triton's per model version families, read from
                                                     :class:`~pixforge.service.statistics.Statistics`
    process_*, python_info                           the process (CPU, memory, open files) and runtime
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from .statistics import Statistics, TritonCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """All server metrics on one private registry.

    Args:
        registry: a CollectorRegistry (default: a new private one).

    Attributes:
        statistics: the per model version statistics (Triton's ModelStatistics and ``nv_*`` families).
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("pixforge_requests", "Requests received", ["model", "method"], registry=r)
        self.responses = Counter(
            "pixforge_responses",
            "Requests answered, by gRPC status code name (OK included)",
            ["model", "method", "code"],
            registry=r,
        )
        self.failures = Counter(
            "pixforge_request_failures", "Requests failed, by gRPC status code", ["model", "code"], registry=r
        )
        self.latency = Histogram(
            "pixforge_request_seconds",
            "End-to-end request latency",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "pixforge_queue_seconds",
            "Time an image or tile waited in the batching queue",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "pixforge_inference_seconds",
            "Duration of one inference call (one batch)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pixforge_batch_size",
            "Images or tiles per inference call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "pixforge_images", "Images or tiles run through the model", ["model"], registry=r
        )
        self.in_flight = Gauge("pixforge_in_flight", "Requests being processed", ["model"], registry=r)
        self.model_ready = Gauge(
            "pixforge_model_ready", "1 when a version of the model is serving", ["model"], registry=r
        )
        self.model_info = Gauge(
            "pixforge_model_info",
            "1 for the serving version of each model, labelled with what runs it",
            ["model", "version", "provider", "precision"],
            registry=r,
        )
        self._info_labels: dict[str, tuple[str, str, str, str]] = {}
        self.admission_queued = Gauge(
            "pixforge_admission_queued", "Requests waiting for a worker (admission queue)", registry=r
        )
        self.admission_queued_seconds = Gauge(
            "pixforge_admission_queued_seconds", "Estimated seconds of work waiting for a worker", registry=r
        )
        self.admission_running = Gauge(
            "pixforge_admission_running", "Requests holding a worker (decode, inference, encode)", registry=r
        )
        self.statistics = Statistics()
        r.register(TritonCollector(self.statistics))
        # The process (CPU seconds, resident memory, open files, start time; Linux) and the runtime.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def batch_observer(self, model: str, version: int = 0):
        """A Batcher ``on_batch`` callback recording batch metrics and statistics for (model, version)."""
        queue = self.queue.labels(model)
        inference = self.inference.labels(model)
        size = self.batch_size.labels(model)
        images = self.images.labels(model)
        statistics = self.statistics
        statistics.register(model, version)

        def observe(batch_size: int, queue_seconds: list, inference_seconds: float) -> None:
            for q in queue_seconds:
                queue.observe(q)
            inference.observe(inference_seconds)
            size.observe(batch_size)
            images.inc(batch_size)
            statistics.executed(model, version, batch_size, inference_seconds)

        return observe

    def request_started(self, model: str, method: str) -> None:
        """Count a request and raise the in-flight gauge."""
        self.requests.labels(model, method).inc()
        self.in_flight.labels(model).inc()

    def request_finished(self, model: str, seconds: float, code: str | None, method: str = "") -> None:
        """Lower the in-flight gauge, record latency and the answer's code (a failure when not OK).

        Args:
            model: the model label.
            seconds: end-to-end duration.
            code: gRPC status code name (``OK``, ``NOT_FOUND``, ...; None counts as OK).
            method: the method label of :meth:`request_started` (counts the answer by code).
        """
        self.in_flight.labels(model).dec()
        self.latency.labels(model).observe(seconds)
        code = code or "OK"
        if method:
            self.responses.labels(model, method, code).inc()
        if code != "OK":
            self.failures.labels(model, code).inc()

    def admission_observer(self, queued: int, queued_seconds: float, running: int) -> None:
        """An Admission observer: the queue and running gauges."""
        self.admission_queued.set(queued)
        self.admission_queued_seconds.set(queued_seconds)
        self.admission_running.set(running)

    def call_rejected(self, method: str, code: str) -> None:
        """Count a call refused before its handler ran (shutdown, open-call limit, authentication)
        as a failure of model "-" (the method is not a label: clients choose it)."""
        self.failures.labels("-", code).inc()
        self.responses.labels("-", "-", code).inc()

    def failure(self, model: str, code: str) -> None:
        """Count a failure that happened outside a tracked request (e.g. authentication)."""
        self.failures.labels(model, code).inc()

    def set_ready(
        self, model: str, ready: bool | None, version: int = 0, provider: str = "", precision: str = ""
    ) -> None:
        """Set (or with None remove) the model's ready gauge, and its info series: the serving
        version's provider and precision (removed while no version serves)."""
        if ready is None:
            try:
                self.model_ready.remove(model)
            except KeyError:
                pass
        else:
            self.model_ready.labels(model).set(1 if ready else 0)
        labels = (model, str(version), provider, precision) if ready else None
        old = self._info_labels.pop(model, None)
        if old is not None and old != labels:
            self.model_info.remove(*old)
        if labels is not None:
            self.model_info.labels(*labels).set(1)
            self._info_labels[model] = labels

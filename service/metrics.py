"""Prometheus metrics on their own registry (never the process-global default one).

A private ``CollectorRegistry`` lets several servers live in one process (tests, benchmarks)
without "duplicated timeseries" errors and keeps library metrics out of our endpoint. Every
metric carries a ``model`` label.

Exposed names (see docs/serving.md):
    pixforge_requests_total{model,method}            requests received
    pixforge_request_failures_total{model,code}      requests failed, by gRPC status code
    pixforge_request_seconds{model}                  end-to-end latency (histogram)
    pixforge_queue_seconds{model}                    time an image/tile waited in the batch queue
    pixforge_inference_seconds{model}                duration of one inference call (batch)
    pixforge_batch_size{model}                       images/tiles per inference call (histogram)
    pixforge_images_total{model}                     images/tiles run through the model
    pixforge_images_per_second{model}                throughput over the last 10 s
    pixforge_in_flight{model}                        requests being processed now
    pixforge_model_ready{model}                      1 when a version of the model serves
"""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
RATE_WINDOW_S = 10.0


class _Throughput:
    """Images per second over a sliding window."""

    def __init__(self, window: float = RATE_WINDOW_S):
        self.window = window
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._events.append((now, n))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._events) / self.window


class Metrics:
    """All server metrics on one private registry.

    Args:
        registry: a CollectorRegistry (default: a new private one).
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("pixforge_requests", "Requests received", ["model", "method"], registry=r)
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
        self.images_per_second = Gauge(
            "pixforge_images_per_second",
            f"Images or tiles per second over the last {RATE_WINDOW_S:.0f} s",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge("pixforge_in_flight", "Requests being processed", ["model"], registry=r)
        self.model_ready = Gauge(
            "pixforge_model_ready", "1 when a version of the model is serving", ["model"], registry=r
        )
        self._rates: dict[str, _Throughput] = {}
        self._lock = threading.Lock()
        self._http = None

    def _rate(self, model: str) -> _Throughput:
        with self._lock:
            meter = self._rates.get(model)
            if meter is None:
                meter = self._rates[model] = _Throughput()
                self.images_per_second.labels(model).set_function(meter.rate)
            return meter

    def batch_observer(self, model: str):
        """A Batcher ``on_batch`` callback that records batch metrics for ``model``."""
        meter = self._rate(model)
        queue = self.queue.labels(model)
        inference = self.inference.labels(model)
        size = self.batch_size.labels(model)
        images = self.images.labels(model)

        def observe(batch_size: int, queue_seconds: list, inference_seconds: float) -> None:
            for q in queue_seconds:
                queue.observe(q)
            inference.observe(inference_seconds)
            size.observe(batch_size)
            images.inc(batch_size)
            meter.add(batch_size)

        return observe

    def request_started(self, model: str, method: str) -> None:
        """Count a request and raise the in-flight gauge."""
        self.requests.labels(model, method).inc()
        self.in_flight.labels(model).inc()

    def request_finished(self, model: str, seconds: float, code: str | None) -> None:
        """Lower the in-flight gauge, record latency, count a failure when ``code`` is not OK."""
        self.in_flight.labels(model).dec()
        self.latency.labels(model).observe(seconds)
        if code and code != "OK":
            self.failures.labels(model, code).inc()

    def failure(self, model: str, code: str) -> None:
        """Count a failure that happened outside a tracked request (e.g. authentication)."""
        self.failures.labels(model, code).inc()

    def set_ready(self, model: str, ready: bool | None) -> None:
        """Set (or with None remove) the model's ready gauge."""
        if ready is None:
            try:
                self.model_ready.remove(model)
            except KeyError:
                pass
        else:
            self.model_ready.labels(model).set(1 if ready else 0)

    def serve_http(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint; port -1 picks a free one. Returns the bound port."""
        server, _thread = start_http_server(max(port, 0), addr=host, registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

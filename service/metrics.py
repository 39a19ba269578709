"""Prometheus metrics on their own registry (never the process-global default one).

A private ``CollectorRegistry`` lets several servers live in one process (tests, benchmarks)
without "duplicated timeseries" errors and keeps library metrics out of our endpoint. Every
metric carries a ``model`` label.

Exposed names (see docs/serving.md):
    pixforge_requests_total{model,method}            requests received
    pixforge_request_failures_total{model,code}      requests failed, by gRPC status code (model "-":
                                                     refused before a handler ran)
    pixforge_request_seconds{model}                  end-to-end latency (histogram)
    pixforge_queue_seconds{model}                    time an image/tile waited in the batch queue
    pixforge_inference_seconds{model}                duration of one inference call (batch)
    pixforge_batch_size{model}                       images/tiles per inference call (histogram)
    pixforge_images_total{model}                     images/tiles run through the model
    pixforge_images_per_second{model}                throughput over the last 10 s
    pixforge_in_flight{model}                        requests being processed now
    pixforge_model_ready{model}                      1 when a version of the model serves
    pixforge_admission_queued                        requests waiting for a worker
    pixforge_admission_queued_seconds                estimated seconds of work waiting
    pixforge_admission_running                       requests holding a worker
"""

from __future__ import annotations

import collections
import hmac
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
RATE_WINDOW_S = 10.0

METRICS_PATH = "/metrics"  # the only path the HTTP endpoint serves; any other answers 404
HTTP_TIMEOUT_S = 10.0  # a connection that sends nothing (or no TLS handshake) for this long is dropped
HTTP_MAX_CONNECTIONS = 32  # connections handled at once; more are closed at once (a scraper retries)


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
        self.admission_queued = Gauge(
            "pixforge_admission_queued", "Requests waiting for a worker (admission queue)", registry=r
        )
        self.admission_queued_seconds = Gauge(
            "pixforge_admission_queued_seconds", "Estimated seconds of work waiting for a worker", registry=r
        )
        self.admission_running = Gauge(
            "pixforge_admission_running", "Requests holding a worker (decode, inference, encode)", registry=r
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

    def admission_observer(self, queued: int, queued_seconds: float, running: int) -> None:
        """An Admission observer: the queue and running gauges."""
        self.admission_queued.set(queued)
        self.admission_queued_seconds.set(queued_seconds)
        self.admission_running.set(running)

    def call_rejected(self, method: str, code: str) -> None:
        """Count a call refused before its handler ran (shutdown, open-call limit, authentication)
        as a failure of model "-" (the method is not a label: clients choose it)."""
        self.failures.labels("-", code).inc()

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

    def serve_http(
        self,
        host: str,
        port: int,
        *,
        tokens: Sequence[str] = (),
        cert_file: str = "",
        key_file: str = "",
        client_ca_file: str = "",
    ) -> int:
        """Start the metrics endpoint (``GET /metrics``; other paths 404); port -1 picks a free one.

        Args:
            host, port: where to listen (the server passes ``metrics_host``, loopback by default).
            tokens: accepted bearer tokens (the gRPC ``auth.tokens``); when any is set every request
                needs ``Authorization: Bearer <token>``, else 401.
            cert_file, key_file: PEM certificate chain and key (the gRPC ``tls.*``): serve HTTPS.
            client_ca_file: PEM CA bundle; when set clients must present a certificate it signed.

        Returns:
            The bound port.

        Raises:
            OSError: the address cannot be bound or the TLS files cannot be loaded (ssl.SSLError).
        """
        context = _tls_context(cert_file, key_file, client_ca_file) if cert_file else None
        family, addr = _address_family(host, max(port, 0))

        class Server(_MetricsHTTPServer):
            address_family = family

        server = make_server(addr, max(port, 0), _metrics_app(self.registry, tokens), Server, _QuietHandler)
        server.ssl_context = context
        thread = threading.Thread(target=server.serve_forever, name="pixforge-metrics", daemon=True)
        thread.start()
        self._http = server
        return int(server.server_port)

    @property
    def http_scheme(self) -> str:
        """'https' when the running endpoint serves TLS, else 'http' ('' when not started)."""
        if self._http is None:
            return ""
        return "https" if self._http.ssl_context is not None else "http"

    def close(self) -> None:
        """Stop the HTTP endpoint."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def _authorized(header: str, tokens: Sequence[bytes]) -> bool:
    """Whether an ``Authorization`` header carries one of the tokens (``Bearer <token>``)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    candidate = token.strip().encode()
    # Compare against every token so timing does not reveal which one nearly matched.
    matches = [hmac.compare_digest(candidate, t) for t in tokens]
    return any(matches)


def _metrics_app(registry: CollectorRegistry, tokens: Sequence[str]):
    """prometheus_client's WSGI app behind bearer-token auth, answering 404 off ``/metrics``."""
    metrics_app = make_wsgi_app(registry)
    accepted = [t.encode() for t in tokens if t]

    def app(environ, start_response):
        if accepted and not _authorized(environ.get("HTTP_AUTHORIZATION", ""), accepted):
            start_response(
                "401 Unauthorized",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("WWW-Authenticate", 'Bearer realm="metrics"'),
                ],
            )
            return [b"missing or invalid bearer token (send 'Authorization: Bearer <token>')\n"]
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: this endpoint serves only {METRICS_PATH}\n".encode()]
        return metrics_app(environ, start_response)

    return app


def _tls_context(cert_file: str, key_file: str, client_ca_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _address_family(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """IPv4 or IPv6 for a bind address (as http.server does), and the address to bind."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr[0]


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's request handler without access logs, with a socket timeout (slow clients)."""

    timeout = HTTP_TIMEOUT_S

    def log_message(self, format, *args):  # the base class names it `format`
        pass


class _MetricsHTTPServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most HTTP_MAX_CONNECTIONS at once, TLS optional.

    The TLS handshake runs on the connection's thread with a timeout (wrapping the listening
    socket would run it in the accept loop, where one silent client blocks every scrape).
    """

    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(HTTP_MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request, client_address):
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HTTP_TIMEOUT_S)
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except OSError:  # ssl.SSLError included: a failed or timed-out handshake closes the socket
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            self.shutdown_request(conn)

    def handle_error(self, request, client_address):
        pass  # a client that hangs up or times out is not a server error

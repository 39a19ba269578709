"""`pixforge serve`: wires the gRPC server and owns its lifecycle (no torch anywhere on this path).

:func:`serve` builds everything once and passes it into constructors: metrics, the model registry,
the pipeline, admission control and the worker threads (:class:`RequestRunner`), the thin
servicer, the KServe v2 servicer (``kserve: true``), the standard ``grpc.health.v1`` service
(service/health.py; overall ``""``, ``pixforge.v1.ImageTranslation``,
``inference.GRPCInferenceService`` and one entry per model name), server reflection, interceptors
(drain -> auth -> request context), TLS/mTLS, message-size and connection limits
(:func:`grpc_server_options`: streams per connection, keepalive, idle connections), and on the
same event loop the KServe v2 HTTP/REST port (``http_port``,
service/kserve_http.py) and the metrics port (service/http_server.py). It returns a
:class:`ServerHandle` with ``.port`` and ``.stop(grace)`` for tests, clients' tests and the CLI.

Concurrency model: a grpc.aio server on one event loop thread. An RPC is a coroutine, so an idle or
slow stream, a health probe or ListModels costs no thread and can never be starved by inference.
Inference requests are refused at once when they cannot succeed (request and header checks), then
pass :class:`~pixforge.service.admission.Admission` (a bounded, cost-aware FIFO) and run on exactly
``max_workers`` threads (decode, tiles through the per-model batcher threads, encode; onnxruntime
and OpenCV release the GIL, so threads give real parallelism). So the server's memory is bounded
by ``max_workers`` x one request's bound (docs/serving.md), whatever the number of open calls.

Shutdown (SIGTERM/SIGINT or ``stop()``): health goes NOT_SERVING, new calls get UNAVAILABLE,
in-flight calls get ``grace_seconds`` to finish, then batchers drain and close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

from .admission import Admission
from .config import (
    ServiceConfig,
    available_cpus,
    config_from_args,
    config_to_dict,
    request_memory_bound,
    streaming_rpc_limit,
    unknown_env,
    worker_count,
)
from .engine import expected_provider, gpu_log_line
from .errors import ServerConfigError
from .health import HealthServicer
from .http_server import HttpEndpoint, metrics_app, tls_context
from .interceptors import AuthInterceptor, DrainInterceptor, MessageSizeInterceptor, RequestContextInterceptor
from .kserve import SERVICE_NAME as KSERVE_SERVICE_NAME
from .kserve import add_kserve_service
from .kserve_core import KServeCore
from .kserve_http import kserve_app
from .logs import configure_logging
from .metrics import Metrics
from .pipeline import Pipeline
from .reflection import V1ALPHA_SERVICE_NAME, enable_reflection
from .repository import EngineFactory, ModelRegistry, ModelState, ReloadSummary
from .runner import RequestRunner
from .servicer import ImageTranslationServicer
from .streaming import StreamControl

log = logging.getLogger("pixforge.service.server")
MIB = 1024 * 1024

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageTranslation"].full_name  # "pixforge.v1.ImageTranslation"
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ServerConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


class ServerHandle:
    """A running server.

    Attributes:
        port: the bound gRPC port (useful with ``port: 0``).
        metrics_port: the bound Prometheus port (0 when disabled).
        http_port: the bound KServe v2 HTTP/REST port (0 when disabled).
        http_endpoint, metrics_endpoint: the two HTTP endpoints (None when disabled).
        address: ``host:port`` clients should dial (loopback when bound to all interfaces).
        config: the ServiceConfig it runs with.
        registry, pipeline, metrics: the core objects (tests and benchmarks inspect them).
    """

    def __init__(
        self,
        config: ServiceConfig,
        registry: ModelRegistry,
        pipeline: Pipeline,
        metrics: Metrics,
        health_servicer: HealthServicer,
        loop: asyncio.AbstractEventLoop,
    ):
        self.config = config
        self.registry = registry
        self.pipeline = pipeline
        self.metrics = metrics
        self.port = 0
        self.http_endpoint: HttpEndpoint | None = None
        self.metrics_endpoint: HttpEndpoint | None = None
        self._health = health_servicer
        self._loop = loop
        self._server: grpc.aio.Server | None = None
        self.runner: RequestRunner | None = None
        self.kserve: KServeCore | None = None  # the KServe v2 operations (gRPC and HTTP fronts)
        self._drain: DrainInterceptor | None = None
        self._executors: list[ThreadPoolExecutor] = []
        self._draining = False
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()
        self.ready = threading.Event()  # set once the initial model load finished
        self._serving = False  # the overall readiness last published (see _refresh_overall)
        self._overall_lock = threading.Lock()

    @property
    def address(self) -> str:
        """``host:port`` to dial; loopback when the server binds every interface."""
        host = self.config.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return _address(host, self.port)

    # The HTTP ports are read off their endpoints rather than copied, so there is one source.
    @property
    def http_port(self) -> int:
        return self.http_endpoint.port if self.http_endpoint is not None else 0

    @property
    def metrics_port(self) -> int:
        return self.metrics_endpoint.port if self.metrics_endpoint is not None else 0

    @property
    def draining(self) -> bool:
        """True once shutdown began (new calls get UNAVAILABLE)."""
        return self._draining

    @property
    def serving(self) -> bool:
        """Whether the server is ready: the initial load finished, not draining, and the models
        meet the readiness rule (``strict_readiness``)."""
        return self.ready.is_set() and not self._draining and self._serving

    # -- model state -> health + metrics

    def _on_loop(self, coro, wait: float | None = 5.0):
        """Run a coroutine on the server's event loop from any thread (waits unless on the loop)."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            return asyncio.ensure_future(coro)
        if self._loop.is_closed():
            coro.close()
            return None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(wait) if wait is not None else future

    def _set_health(self, service: str, status) -> None:
        self._on_loop(self._health.set(service, status))

    def _model_changed(self, name: str) -> None:
        self._publish_model(name)
        if self.ready.is_set():  # during the initial load, _initial_load publishes once at its end
            self._refresh_overall()

    def _publish_model(self, name: str) -> None:
        """One model's health status and readiness gauge."""
        try:
            row = self.registry.describe(name)
        except Exception:  # removed from the repository
            self._set_health(name, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            self.metrics.set_ready(name, None)
            return
        ready = row.state is ModelState.READY
        self._set_health(
            name,
            health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        self.metrics.set_ready(name, ready, row.version, row.provider, row.precision)

    def _readiness(self) -> tuple[bool, list[str]]:
        """The readiness rule over the registry: (ready, the models without a READY version).

        Ready when every model (strict) or at least one has a READY version. A model counts by
        name, so a broken new version beside a serving one keeps the server ready; an empty
        repository is ready (there is nothing to wait for, as in Triton).
        """
        rows = self.registry.versions()
        names = {r.name for r in rows}
        ready = {r.name for r in rows if r.state is ModelState.READY}
        missing = sorted(names - ready)
        if not names:
            return True, missing
        return (not missing if self.config.strict_readiness else bool(ready)), missing

    def _refresh_overall(self) -> None:
        """Publish the overall readiness to the health service when it changed."""
        if self._draining:
            return  # shutdown owns health now (NOT_SERVING)
        # Loader threads and the loop may report changes at once: the lock orders the publications,
        # and they are queued on the loop without waiting, so a caller on the loop cannot deadlock.
        with self._overall_lock:
            serving, missing = self._readiness()
            if serving == self._serving:
                return
            self._serving = serving
            self._set_overall(serving, wait=None)
        if serving:
            log.info("server ready%s", f" (no READY version of {', '.join(missing)})" if missing else "")
        else:
            log.warning("server not ready: no READY version of %s", ", ".join(missing))

    def _set_overall(self, serving: bool, wait: float | None = 5.0) -> None:
        """Publish readiness on the API services (what readiness probes and balancers ask about).

        The server's own entry, ``""``, is left alone: it says the process is up and its initial
        load finished (liveness and startup probes), so a model that cannot load takes a pod out
        of rotation without the kubelet restarting it over and over, which would not fix the file.
        """
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        services = [SERVICE_NAME] + ([KSERVE_SERVICE_NAME] if self.config.kserve else [])
        for service in services:
            self._on_loop(self._health.set(service, status), wait=wait)

    def _initial_load(self) -> None:
        try:
            self.registry.reload()
        except Exception:
            log.exception("initial model load failed")
        if self._draining:
            return
        with self._overall_lock:
            self._serving, missing = self._readiness()
            self._set_overall(self._serving)
            self._set_health("", health_pb2.HealthCheckResponse.SERVING)  # alive: the load finished
            self.ready.set()
        if not self._serving:
            log.warning("server not ready: no READY version of %s", ", ".join(missing))
        rows = self.registry.versions()
        ready = [r for r in rows if r.state is ModelState.READY]
        failed = [f"{r.name}/{r.version}" for r in rows if r.state is ModelState.FAILED]
        providers = sorted({r.provider for r in ready}) or [expected_provider(self.config.engine)]
        names = sorted({r.name for r in ready})
        log.info(
            "serving %d models on %s (provider %s)%s",
            len(names),
            _address(self.config.host, self.port),
            ", ".join(providers),
            f"; failed: {', '.join(failed)}" if failed else "",
        )
        if not rows:
            log.warning(
                "model repository %s holds no models (<name>/<version>/model.onnx)", self.registry.repository
            )
        self.registry.start_polling(self.config.poll_seconds)

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Block until the initial model load finished; returns False on timeout."""
        return self.ready.wait(timeout)

    def reload(self) -> ReloadSummary:
        """Re-scan the repository now (what SIGHUP does)."""
        summary = self.registry.reload()
        log.info(
            "reload: loaded %s; failed %s; kept %s; removed %s%s",
            summary.loaded or "-",
            summary.failed or "-",
            summary.kept or "-",
            summary.removed or "-",
            f"; repository unavailable ({summary.unavailable}), models kept" if summary.unavailable else "",
        )
        return summary

    # -- shutdown

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``.

        Args:
            grace: seconds for in-flight RPCs (default: ``grace_seconds`` of the config).
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.config.grace_seconds if grace is None else grace
            deadline = time.monotonic() + grace
            self._draining = True
            try:
                self._on_loop(self._health.enter_graceful_shutdown())
            except Exception:  # a stuck health service must not stop the shutdown itself
                log.exception("health could not be set NOT_SERVING; shutting down anyway")
            log.info("shutting down: refusing new requests, %.1f s grace for in-flight ones", grace)
            if self._server is not None:
                # Keep the port open while in-flight calls finish so late callers get UNAVAILABLE
                # from the drain interceptor; then stop, cancelling whatever outlived the grace.
                if self._drain is not None and not self._drain.wait_idle(grace):
                    log.warning(
                        "grace period over with %d calls still running; cancelling them", self._drain.active
                    )
                remaining = max(0.0, deadline - time.monotonic())
                self._on_loop(self._server.stop(remaining), wait=remaining + 10.0)
            self._stop_http()
            self.registry.close()
            if self.runner is not None:
                self.runner.close()
            for pool in self._executors:
                pool.shutdown(wait=False, cancel_futures=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
            log.info("server stopped")
            self._stopped.set()

    def _stop_http(self) -> None:
        """Close the HTTP ports (their in-flight requests were counted by the drain wait)."""
        for endpoint in (self.http_endpoint, self.metrics_endpoint):
            if endpoint is not None:
                try:
                    self._on_loop(endpoint.stop(), wait=15.0)
                except Exception:
                    log.exception("closing the %s endpoint failed", endpoint.name)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stopped (signals are handled meanwhile); False on timeout."""
        if timeout is not None:
            return self._stopped.wait(timeout)
        while not self._stopped.wait(0.5):  # short waits keep the main thread responsive to signals
            pass
        return True

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: graceful stop; SIGHUP: reload. Main thread only."""

        def stop(signum, _frame):
            log.info("received %s", signal.Signals(signum).name)
            threading.Thread(target=self.stop, name="pixforge-shutdown", daemon=True).start()

        def hup(_signum, _frame):
            log.info("received SIGHUP: reloading the model repository")
            threading.Thread(target=self.reload, name="pixforge-reload", daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, hup)


def serve(
    config: ServiceConfig,
    *,
    engine_factory: EngineFactory | None = None,
    wait_for_models: bool = True,
    handle_signals: bool = False,
) -> ServerHandle:
    """Start the gRPC server (and the metrics endpoint) for a config.

    Args:
        config: the resolved ServiceConfig (see :func:`pixforge.service.config.load_config`).
        engine_factory: builds engines (default :class:`~pixforge.service.engine.Engine`); tests
            inject wrappers to count or gate inference calls.
        wait_for_models: load every model before returning (tests); False returns as soon as the
            port is bound, with health NOT_SERVING until the load finishes (the CLI).
        handle_signals: install SIGTERM/SIGINT/SIGHUP handlers (main thread only).

    Returns:
        A ServerHandle (``.port``, ``.address``, ``.stop(grace)``, ``.wait()``, ``.reload()``).

    Raises:
        ServerConfigError: the repository is missing, TLS files are unreadable or the port cannot be bound.
    """
    repository = config.repository
    if not repository.is_dir():
        raise ServerConfigError(f"models: model repository {repository} is not a directory")

    metrics = Metrics()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="pixforge-grpc", daemon=True).start()
    # The asyncio health servicer binds its conditions to the loop it is created on.
    health_servicer = asyncio.run_coroutine_threadsafe(
        _make_health(config.max_health_watches, metrics.call_rejected), loop
    ).result()
    handle_box: list[ServerHandle] = []
    registry = ModelRegistry(
        repository,
        config.engine,
        config.batching,
        pins=dict(config.pins),
        engine_factory=engine_factory,
        batch_observer=metrics.batch_observer,
        on_change=lambda name: handle_box[0]._model_changed(name) if handle_box else None,
    )
    pipeline = Pipeline(registry, config.tiling, config.limits, config.colorization, config.batching)
    handle = ServerHandle(config, registry, pipeline, metrics, health_servicer, loop)
    handle_box.append(handle)
    try:
        asyncio.run_coroutine_threadsafe(
            _build_server(handle, config, metrics, pipeline, registry), loop
        ).result()
        port = asyncio.run_coroutine_threadsafe(_bind_and_start(handle, config), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        raise
    handle.port = port
    log.info(
        "listening on %s%s%s; %s",
        _address(config.host, port),
        " (TLS" if config.tls.enabled else "",
        (", mTLS)" if config.tls.client_ca_file else ")") if config.tls.enabled else "",
        gpu_log_line(config.engine),
    )
    # What the limits allow requests to hold at worst: the figure to size a memory limit from.
    log.info(
        "%d workers; requests hold at most %.1f GiB beside the models (limits.*, admission.max_queued, "
        "stream.max_in_flight)",
        worker_count(config),
        request_memory_bound(config) / (1 << 30),
    )
    try:
        _start_http(handle, config)
    except ServerConfigError:
        handle.stop(0)
        raise
    if handle_signals:
        handle.install_signal_handlers()
    if wait_for_models:
        handle._initial_load()
    else:
        threading.Thread(target=handle._initial_load, name="pixforge-load", daemon=True).start()
    return handle


def _start_http(handle: ServerHandle, config: ServiceConfig) -> None:
    """Start the KServe v2 HTTP/REST port and the metrics port on the server's event loop.

    Both follow the gRPC port's ``auth.*`` tokens and ``tls.*`` files (HTTPS, mTLS).

    Raises:
        ServerConfigError: a port cannot be bound or the TLS files cannot be loaded.
    """
    tls = config.tls
    context = None
    if (config.http_port or config.metrics_port) and tls.enabled:
        try:
            context = tls_context(tls.cert_file, tls.key_file, tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ServerConfigError(f"tls.cert_file / tls.key_file: cannot serve HTTPS: {exc}") from None
    kserve = handle.kserve
    if config.http_port and kserve is None:
        log.info("http_port %d not opened: kserve is false (that port speaks KServe v2)", config.http_port)
    elif config.http_port and kserve is not None:
        app = kserve_app(
            kserve,
            handle.metrics,
            tokens=tuple(config.auth.tokens),
            max_body_bytes=config.limits.max_message_bytes,
            open_calls=handle._drain,
            draining=lambda: handle.draining,
        )
        endpoint = HttpEndpoint(app, config.host, config.http_port, context, name="KServe HTTP")
        _start_endpoint(handle, endpoint, "http_port", config.http_port)
        handle.http_endpoint = endpoint
        log.info("KServe v2 HTTP/REST on %s://%s/v2", endpoint.scheme, _address(config.host, endpoint.port))
    if config.metrics_port:
        metrics_host = config.metrics_host or config.host
        endpoint = HttpEndpoint(
            metrics_app(handle.metrics.registry, tuple(config.auth.tokens)),
            metrics_host,
            config.metrics_port,
            context,
            name="metrics",
        )
        _start_endpoint(handle, endpoint, "metrics_port", config.metrics_port)
        handle.metrics_endpoint = endpoint
        log.info("metrics on %s://%s/metrics", endpoint.scheme, _address(metrics_host, endpoint.port))


def _start_endpoint(handle: ServerHandle, endpoint: HttpEndpoint, key: str, port: int) -> None:
    try:
        handle._on_loop(endpoint.start(), wait=30.0)
    except OSError as exc:
        raise ServerConfigError(f"{key}: cannot bind {endpoint.host}:{port}: {exc.strerror or exc}") from None


async def _make_health(max_watches: int, on_reject) -> HealthServicer:
    return HealthServicer(max_watches=max_watches, on_reject=on_reject)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def grpc_server_options(config: ServiceConfig) -> list[tuple[str, int]]:
    """The grpc.aio server's channel options: message sizes and the ``connection.*`` settings.

    Connection hygiene, so that no peer can hold the server's ``max_concurrent_rpcs`` slots for
    long (docs/serving.md "Connections"):

    * ``grpc.max_concurrent_streams``: calls per connection (HTTP/2 SETTINGS); a client's further
      calls wait in the client, so one connection cannot take every slot.
    * keepalive: the server pings a connection with open calls after ``keepalive_time_seconds``
      without activity and closes it when the ping is not answered within
      ``keepalive_timeout_seconds``, freeing the calls of a vanished or half-open peer (without
      it the kernel notices after about two hours). ``keepalive_permit_without_calls`` lets the
      server ping idle connections too and, on the receiving side, accept clients' own keepalive
      pings while no call is open, every ``min_ping_interval_seconds`` at most (two faster pings:
      GOAWAY too_many_pings, gRPC's max_ping_strikes default, set explicitly).
    * ``grpc.max_connection_idle_ms``: a connection without calls is closed gracefully.
    * ``grpc.max_connection_age_ms`` (off by default) and its grace (unlimited by default): an
      age limit sends GOAWAY so clients reconnect (rebalancing behind an L4 balancer); a finite
      grace would cut long streams, which is why it is unlimited unless set.
    """
    size = config.limits.max_message_bytes
    c = config.connection
    options = [
        # gRPC's own ceiling sits above the configured limit so that MessageSizeInterceptor
        # sees (and counts) messages up to a quarter over it; beyond, gRPC refuses uncounted.
        ("grpc.max_receive_message_length", size + max(MIB, size // 4)),
        ("grpc.max_send_message_length", size),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        ("grpc.max_concurrent_streams", c.max_concurrent_streams),
        ("grpc.keepalive_time_ms", _ms(c.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(c.keepalive_timeout_seconds)),
        # The wait for a ping's answer that actually closes the connection: 1 minute unless set
        # (grpc.http2.ping_timeout_ms), whatever keepalive_timeout_ms says.
        ("grpc.http2.ping_timeout_ms", _ms(c.keepalive_timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", round(c.min_ping_interval_seconds * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if c.max_idle_seconds:
        options.append(("grpc.max_connection_idle_ms", _ms(c.max_idle_seconds)))
    if c.max_age_seconds:
        options.append(("grpc.max_connection_age_ms", _ms(c.max_age_seconds)))
        if c.max_age_grace_seconds:
            options.append(("grpc.max_connection_age_grace_ms", _ms(c.max_age_grace_seconds)))
    return options


async def _build_server(
    handle: ServerHandle, config: ServiceConfig, metrics: Metrics, pipeline: Pipeline, registry: ModelRegistry
) -> None:
    """Create the grpc.aio server with its interceptors and services (on the event loop)."""
    workers = worker_count(config)
    admission = Admission(
        workers,
        config.admission.max_queued,
        config.admission.max_queued_seconds,
        observer=metrics.admission_observer,
    )
    runner = RequestRunner(admission, workers)
    handle.runner = runner
    handle._drain = DrainInterceptor(
        lambda: handle.draining,
        max_open=config.max_concurrent_rpcs,
        on_reject=metrics.call_rejected,
        max_open_streams=streaming_rpc_limit(config),
    )
    interceptors: list[grpc.aio.ServerInterceptor] = [handle._drain]
    if config.auth.enabled:
        interceptors.append(
            AuthInterceptor(
                config.auth.tokens, on_reject=lambda method: metrics.call_rejected(method, "UNAUTHENTICATED")
            )
        )
    interceptors.append(RequestContextInterceptor())
    interceptors.append(
        MessageSizeInterceptor(config.limits.max_message_bytes, on_reject=metrics.call_rejected)
    )

    server = grpc.aio.server(interceptors=interceptors, options=grpc_server_options(config))
    # Both stream RPCs share one window size, budget of unwritten responses and drain signal.
    streams = StreamControl(
        config.stream.max_in_flight,
        config.stream.unsent_budget(workers, config.limits.max_message_bytes),
        lambda: handle.draining,
    )
    servicer = ImageTranslationServicer(pipeline, registry, metrics, streams, runner)
    pb_grpc.add_ImageTranslationServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(handle._health, server)
    services = [SERVICE_NAME, HEALTH_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    if config.kserve:
        # KServe v2 / Triton protocol on the same port, engine and registry (service/kserve.py).
        handle.kserve, kserve_pool = add_kserve_service(
            server,
            pipeline,
            registry,
            metrics,
            stream=streams,
            runner=runner,
            workers=config.codec_workers or min(32, 4 * available_cpus()),
            server_ready=lambda: handle.serving,
            draining=lambda: handle.draining,
            model_control=config.model_control,
        )
        handle._executors.append(kserve_pool)
        services.append(KSERVE_SERVICE_NAME)
    enable_reflection(services, server)  # grpc.reflection.v1alpha, and v1 beside it
    handle._server = server


async def _bind_and_start(handle: ServerHandle, config: ServiceConfig) -> int:
    """Bind the port (TLS when configured), set health NOT_SERVING and start serving."""
    server = handle._server
    if server is None:
        raise RuntimeError("_build_server() has not run")
    address = _address(config.host, config.port)
    try:
        if config.tls.enabled:
            ca = _read(config.tls.client_ca_file) if config.tls.client_ca_file else None
            credentials = grpc.ssl_server_credentials(
                [(_read(config.tls.key_file), _read(config.tls.cert_file))],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ServerConfigError(f"port: cannot bind {address}: {exc}") from None
    if not port:
        raise ServerConfigError(f"port: cannot bind {address}")
    for name in ("", SERVICE_NAME) + ((KSERVE_SERVICE_NAME,) if config.kserve else ()):
        await handle._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)  # until models load
    await server.start()
    return port


def run(args) -> int:
    """Entry point of `pixforge serve` (see pixforge/cli.py for the flags).

    Returns:
        Process exit code: 0 after a clean shutdown, 2 for a bad configuration.
    """
    try:
        config = config_from_args(args)
    except ServerConfigError as exc:
        print(f"pixforge serve: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "dry_run", False):
        print(json.dumps(config_to_dict(config), indent=2))
        return 0
    configure_logging(config.log_level, config.log_format)
    for line in unknown_env(os.environ):
        log.warning("%s", line)
    try:
        handle = serve(config, wait_for_models=False, handle_signals=True)
    except ServerConfigError as exc:
        print(f"pixforge serve: {exc}", file=sys.stderr)
        return 2
    handle.wait()
    return 0

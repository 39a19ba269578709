"""aiohttp plumbing shared by the two HTTP ports: the KServe v2 REST port and the metrics port.

Both run on the server's one asyncio event loop (the grpc.aio loop), so an idle or slow HTTP
connection holds no thread, exactly like an open gRPC call. This module holds what they share:

* :func:`tls_context`: the ``tls.*`` files as an ``ssl.SSLContext`` (HTTPS, mTLS when a client CA
  is set); the TLS handshake runs on the event loop with a timeout, so a silent client blocks
  nobody;
* :func:`auth_middleware`: ``Authorization: Bearer <token>`` with the gRPC interceptor's
  constant-time check (:func:`~pixforge.service.interceptors.bearer_token_valid`), 401 otherwise;
* :func:`metrics_app`: the metrics port's application: ``GET /metrics`` only, 404 elsewhere;
* :class:`HttpEndpoint`: one application bound to ``host:port`` (port -1 picks a free one),
  started and stopped on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .interceptors import bearer_token_valid, duplicate_authorization_message

log = logging.getLogger("pixforge.service.http")

METRICS_PATH = "/metrics"  # the only path the metrics port serves; any other answers 404
HTTP_TIMEOUT_S = 10.0  # a TLS handshake that does not finish within this is dropped
# An idle keep-alive connection (one that sends no request) is closed after this long.
KEEPALIVE_TIMEOUT_S = 75.0
AUTH_MESSAGE = "missing or invalid bearer token (send 'Authorization: Bearer <token>')"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def tls_context(cert_file: str, key_file: str, client_ca_file: str = "") -> ssl.SSLContext:
    """A server TLS context from PEM files (the gRPC port's ``tls.*``): TLS >= 1.2, mTLS with a CA.

    Raises:
        OSError: a file cannot be read; ssl.SSLError: the certificate or key is invalid.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def auth_middleware(
    tokens: Sequence[str],
    *,
    exempt: Callable[[web.Request], bool] = lambda request: False,
    error_body: Callable[[str], bytes] = lambda message: f"{message}\n".encode(),
    content_type: str = "text/plain",
    on_reject: Callable[[], None] | None = None,
):
    """Require ``Authorization: Bearer <token>`` (any of ``tokens``) on every non-exempt request.

    Args:
        tokens: accepted tokens (the gRPC ``auth.tokens``; non-empty).
        exempt: requests that need no token (probes).
        error_body: the 401 body for a message (the KServe port answers Triton's ``{"error": ...}``).
        content_type: the 401 body's content type.
        on_reject: called for each refused request (metrics).
    """
    accepted = [t.encode() for t in tokens if t]
    if not accepted:
        raise ValueError("auth_middleware needs at least one token")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if exempt(request):
            return await handler(request)
        # Every Authorization header, not the first: with two, "wrong then right" (or the
        # reverse) would depend on which one each proxy on the way keeps; exactly one is accepted.
        values = request.headers.getall("Authorization", [])
        if len(values) == 1 and bearer_token_valid(values[0], accepted):
            return await handler(request)
        if on_reject is not None:
            on_reject()
        return web.Response(
            status=401,
            body=error_body(
                duplicate_authorization_message(len(values)) if len(values) > 1 else AUTH_MESSAGE
            ),
            content_type=content_type,
            headers={"WWW-Authenticate": 'Bearer realm="pixforge"'},
        )

    return middleware


async def metrics_handler(registry: CollectorRegistry) -> web.Response:
    """The Prometheus text exposition of a registry (rendered off the event loop)."""
    body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def metrics_app(registry: CollectorRegistry, tokens: Sequence[str] = ()) -> web.Application:
    """The metrics port: ``GET /metrics`` only (404 elsewhere), behind the bearer tokens if any.

    A Triton or KServe client pointed at this port by mistake gets 404 for ``/v2/health/ready``,
    never a "ready"; without a token it gets 401 whatever the path, so nothing is revealed.
    """
    middlewares = [auth_middleware(tokens)] if any(tokens) else []
    app = web.Application(middlewares=middlewares)

    async def scrape(_request: web.Request) -> web.Response:
        return await metrics_handler(registry)

    async def not_found(_request: web.Request) -> web.Response:
        return web.Response(status=404, text=f"not found: this endpoint serves only {METRICS_PATH}\n")

    app.router.add_get(METRICS_PATH, scrape)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


class _Site(web.BaseSite):
    """aiohttp's TCPSite with a TLS handshake timeout and SO_REUSEPORT off.

    A second server on the same port must fail to bind, not share it (as ``grpc.so_reuseport=0``).
    """

    def __init__(self, runner: web.AppRunner, host: str, port: int, ssl_context: ssl.SSLContext | None):
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self.server: asyncio.Server | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        if server is None:  # BaseSite.start() has already refused a runner that is not set up
            raise RuntimeError("the AppRunner is not set up")
        self.server = self._server = await loop.create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=128,
            reuse_address=True,
            reuse_port=False,
            # Only meaningful (and only accepted) with TLS; None is asyncio's default.
            ssl_handshake_timeout=HTTP_TIMEOUT_S if self._ssl_context is not None else None,
        )


class HttpEndpoint:
    """One aiohttp application on ``host:port``, run on the calling event loop.

    Args:
        app: the application (not started yet; the endpoint adds a middleware that tracks its
            handlers, so :meth:`stop` can cancel those that outlive the grace period).
        host: the address to bind.
        port: the port; -1 (or 0) picks a free one.
        ssl_context: serve HTTPS with it (None: plain HTTP).
        name: for log lines ("KServe HTTP", "metrics").
    """

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        name: str = "http",
    ):
        app.middlewares.insert(0, self._track)
        self.app = app
        self.host = host
        self.requested_port = port
        self.ssl_context = ssl_context
        self.name = name
        self.port = 0
        self.bound_host = ""
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task] = set()

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:  # aiohttp runs every handler in a task
            self._handlers.add(task)
        try:
            return await handler(request)
        finally:
            if task is not None:
                self._handlers.discard(task)

    @property
    def scheme(self) -> str:
        """'https' with TLS, else 'http'."""
        return "https" if self.ssl_context is not None else "http"

    async def start(self) -> int:
        """Bind and serve (on the running loop); returns the bound port.

        Raises:
            OSError: the address cannot be bound.
        """
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=KEEPALIVE_TIMEOUT_S,
            # A client that disconnects cancels its handler: its queued work is dropped, as a
            # cancelled gRPC call's is.
            handler_cancellation=True,
        )
        await runner.setup()
        site = _Site(runner, self.host, max(self.requested_port, 0), self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        assert site.server is not None  # set by a successful start()
        sockname = site.server.sockets[0].getsockname()
        self.bound_host, self.port = sockname[0], int(sockname[1])
        return self.port

    async def stop(self) -> None:
        """Close the port: cancel the handlers still running (the caller gave them their grace),
        then close every connection."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5.0)
        await runner.cleanup()

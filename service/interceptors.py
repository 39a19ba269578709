"""gRPC (grpc.aio) server interceptors: cross-cutting checks kept out of the servicer.

* :class:`DrainInterceptor` answers UNAVAILABLE once shutdown has begun (health and the KServe
  live/ready probes stay reachable so load balancers see "not ready" rather than a closed door),
  and RESOURCE_EXHAUSTED beyond ``max_concurrent_rpcs`` open calls or beyond
  ``max_concurrent_streaming_rpcs`` open streaming calls (probes exempt).
* :class:`AuthInterceptor` checks ``authorization: Bearer <token>`` against the configured tokens
  (constant-time compare; a call carrying the header twice is refused); probes
  (:func:`is_probe`) are exempt so they work without secrets.
* :class:`RequestContextInterceptor` tags log lines with the RPC method and the caller's
  ``x-request-id`` metadata, if any (the servicer refines it with the message's request_id).

A rejected call gets a handler of the same RPC shape that aborts at once, so clients see a clean
status and no stack trace.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import grpc

from .logs import request_context
from .text_limits import MAX_REQUEST_ID, quote

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# The KServe v2 liveness/readiness RPCs are probes too (KServe and Kubernetes call them without
# secrets), so they get the same exemptions as grpc.health.
KSERVE_PROBES = frozenset(
    f"/inference.GRPCInferenceService/{name}" for name in ("ServerLive", "ServerReady", "ModelReady")
)
REQUEST_ID_HEADER = "x-request-id"


def is_probe(method: str) -> bool:
    """Whether an RPC is a health/readiness probe (exempt from auth and from the drain refusal)."""
    return method.startswith(HEALTH_PREFIX) or method in KSERVE_PROBES


def bearer_token_valid(header: str, tokens: Sequence[bytes]) -> bool:
    """Whether an authorization header (gRPC metadata or HTTP) is ``Bearer <one of tokens>``.

    Compares against every token in constant time, so timing does not reveal which one nearly
    matched. Shared by the gRPC interceptor and the HTTP ports (service/http_server.py).
    """
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    candidate = token.strip().encode()
    matches = [hmac.compare_digest(candidate, t) for t in tokens]
    return any(matches)


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {k.lower(): v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


def _metadata_values(details: grpc.HandlerCallDetails, key: str) -> list[str | bytes]:
    """Every value of one metadata key, in order (a dict of the metadata keeps only the last)."""
    return [v for k, v in (details.invocation_metadata or ()) if k.lower() == key]


def duplicate_authorization_message(count: int) -> str:
    """Why a call (or HTTP request) carrying ``count`` > 1 authorization values is refused.

    With several values, which one counts would be up to each proxy and library on the way ("the
    last wins" here, "the first" elsewhere), so a wrong token followed by a right one, or the
    reverse, must not pass: exactly one is accepted. Shared by the gRPC and HTTP fronts.
    """
    return f"{count} authorization values sent; send exactly one 'Bearer <token>'"


def _rejecting(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler with ``handler``'s shape that aborts with (code, message)."""

    async def abort(_request, context):
        await context.abort(code, message)

    async def abort_stream(_request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator like the handler it replaces

    args = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, *args)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, *args)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, *args)
    return grpc.stream_stream_rpc_method_handler(abort_stream, *args)


def _wrap(
    handler: grpc.RpcMethodHandler,
    around: Callable[[grpc.aio.ServicerContext], contextlib.AbstractAsyncContextManager],
):
    """Rebuild ``handler`` with its behaviour run inside ``around(context)``, an async context manager
    made per call from the call's context (it may abort the call on entry).

    Streaming behaviours may be async generators or coroutines that write with ``context.write``;
    both shapes are kept.
    """
    args = (handler.request_deserializer, handler.response_serializer)

    def unary(behavior):
        async def wrapped(request, context):
            async with around(context):
                return await behavior(request, context)

        return wrapped

    def streaming(behavior):
        if not inspect.isasyncgenfunction(behavior):
            return unary(behavior)

        async def wrapped(request, context):
            async with around(context):
                async for response in behavior(request, context):
                    yield response

        return wrapped

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), *args)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), *args)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), *args)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), *args)


@contextlib.asynccontextmanager
async def _within(manager: contextlib.AbstractContextManager):
    """A plain context manager entered and left as an async one (for :func:`_wrap`)."""
    with manager:
        yield


class DrainInterceptor(grpc.aio.ServerInterceptor):
    """Count open calls; refuse new non-probe calls once draining (UNAVAILABLE) or over a limit.

    Graceful shutdown first waits (:meth:`wait_idle`) for the counted calls while the server keeps
    accepting connections, so late callers get a clean UNAVAILABLE (retry elsewhere) instead of the
    CANCELLED that a stopped gRPC server gives.

    The open-call limit replaces gRPC's own ``maximum_concurrent_rpcs``, which would also refuse
    health probes (and then a probe restarts a healthy server) and whose refusals nobody can count.
    Streaming calls (a request or response stream) have their own, lower limit within it
    (``max_open_streams``): a stream may stay open, idle, for as long as its client likes, so
    without it idle streams could take every slot and lock every unary call out.

    A call is checked and counted in one step when its handler starts, on the event loop, so a
    burst of calls cannot slip past a limit between the check and the count.

    Args:
        draining: returns True once graceful shutdown has started.
        max_open: most open non-probe calls (streams included).
        on_reject: called with (method, status code name) for each refused call (metrics).
        max_open_streams: most open non-probe streaming calls (default: ``max_open``).
    """

    def __init__(
        self,
        draining: Callable[[], bool],
        max_open: int = 1 << 30,
        on_reject: Callable[[str, str], None] | None = None,
        max_open_streams: int | None = None,
    ):
        self._draining = draining
        self._max_open = max_open
        self._max_streams = max_open if max_open_streams is None else max_open_streams
        self._on_reject = on_reject
        self._active = 0
        self._streams = 0
        self._idle = threading.Condition()

    @property
    def active(self) -> int:
        """Calls whose handler is running."""
        return self._active

    @property
    def streams(self) -> int:
        """Streaming calls whose handler is running (counted in :attr:`active` too)."""
        return self._streams

    def wait_idle(self, timeout: float) -> bool:
        """Block (any thread but the event loop's) until no call is open or ``timeout`` passed."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def over_limit(self) -> bool:
        """Whether ``max_concurrent_rpcs`` calls are open (a new one is refused)."""
        return self._active >= self._max_open

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        """Count a request of another front (the HTTP port) as an open call for its duration: it
        shares ``max_concurrent_rpcs`` and graceful shutdown (:meth:`wait_idle`) waits for it."""
        with self._idle:
            self._active += 1
        try:
            yield
        finally:
            self._leave(stream=False)

    def _enter(self, stream: bool) -> str | None:
        """Count a new call, or return why it is refused (check and count under one lock)."""
        with self._idle:
            if self._active >= self._max_open:
                return f"server has {self._active} open calls (max_concurrent_rpcs); retry later"
            if stream and self._streams >= self._max_streams:
                return (
                    f"server has {self._streams} open streaming calls (max_concurrent_streaming_rpcs); "
                    "retry later (unary calls are still accepted)"
                )
            self._active += 1
            self._streams += stream
            return None

    def _leave(self, stream: bool) -> None:
        with self._idle:
            self._active -= 1
            self._streams -= stream
            if self._active == 0:
                self._idle.notify_all()

    def _reject(self, handler, method: str, code: grpc.StatusCode, message: str):
        if self._on_reject is not None:
            self._on_reject(method, code.name)
        return _rejecting(handler, code, message)

    def _admitted(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` run as a counted call, or refused with RESOURCE_EXHAUSTED when over a limit."""
        stream = bool(handler.request_streaming or handler.response_streaming)

        @contextlib.asynccontextmanager
        async def slot(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            # No await before _enter: the check and the count happen in one step on the loop.
            refusal = self._enter(stream)
            if refusal is not None:
                if self._on_reject is not None:
                    self._on_reject(method, grpc.StatusCode.RESOURCE_EXHAUSTED.name)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            try:
                yield
            finally:
                self._leave(stream)

        return _wrap(handler, slot)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_probe(method):
            return handler
        if self._draining():
            return self._reject(
                handler,
                method,
                grpc.StatusCode.UNAVAILABLE,
                "server is shutting down; retry on another replica",
            )
        return self._admitted(handler, method)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Require a valid bearer token on every call except health checks.

    Args:
        tokens: accepted tokens (non-empty).
        on_reject: called with the method name for each rejected call (metrics).
    """

    def __init__(self, tokens: Sequence[str], on_reject: Callable[[str], None] | None = None):
        if not tokens:
            raise ValueError("AuthInterceptor needs at least one token")
        self._tokens = [t.encode() for t in tokens]
        self._on_reject = on_reject

    def _valid(self, header: str) -> bool:
        return bearer_token_valid(header, self._tokens)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_probe(method):
            return handler
        values = _metadata_values(handler_call_details, "authorization")
        if len(values) > 1:
            message = duplicate_authorization_message(len(values))
        elif values and isinstance(values[0], str) and self._valid(values[0]):
            return handler
        else:
            message = "missing or invalid bearer token (send metadata 'authorization: Bearer <token>')"
        if self._on_reject is not None:
            self._on_reject(method)
        return _rejecting(handler, grpc.StatusCode.UNAUTHENTICATED, message)


class RequestContextInterceptor(grpc.aio.ServerInterceptor):
    """Run each handler inside a log context carrying the method and the x-request-id header.

    A header longer than MAX_REQUEST_ID characters is refused (INVALID_ARGUMENT), since it would
    be copied into every log line of the call.
    """

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        request_id = _metadata(handler_call_details).get(REQUEST_ID_HEADER, "-")
        if len(request_id) > MAX_REQUEST_ID:
            return _rejecting(
                handler,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{REQUEST_ID_HEADER} header is {len(request_id)} characters long, over the limit of "
                f"{MAX_REQUEST_ID}: {quote(request_id)}",
            )
        return _wrap(handler, lambda context: _within(request_context(request_id, method)))


class OversizedMessage:
    """Stands in for a request message over the size limit (its bytes are never parsed).

    Unary calls never see one (the interceptor answers them); in a request stream each oversized
    item reaches the servicer as this object, which answers that item alone with
    RESOURCE_EXHAUSTED and goes on with the stream.
    """

    __slots__ = ("size", "limit")

    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit

    @property
    def message(self) -> str:
        return (
            f"request message is {self.size} bytes, over the server's limit of {self.limit} bytes "
            "(limits.max_message_bytes)"
        )


class MessageSizeInterceptor(grpc.aio.ServerInterceptor):
    """Refuse request messages over ``limit`` bytes with RESOURCE_EXHAUSTED, and count them.

    gRPC's own receive limit refuses a larger message before any Python code runs, so nothing
    could count it. The server therefore gives gRPC a higher ceiling (``limit`` plus some slack,
    see service/server.py) and applies the configured limit here, without parsing the bytes: a
    unary call is answered with the status gRPC would give and counted through ``on_reject``; an
    item of a request stream becomes an :class:`OversizedMessage` that the servicer answers as a
    failed item. Messages beyond gRPC's ceiling are still refused (uncounted) by gRPC itself.

    Args:
        limit: largest request message in bytes (``limits.max_message_bytes``).
        on_reject: called with (method, status code name) for each refused call or item (metrics).
    """

    def __init__(self, limit: int, on_reject: Callable[[str, str], None] | None = None):
        self._limit = limit
        self._on_reject = on_reject

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        limit, parse = self._limit, handler.request_deserializer

        def deserialize(data: bytes):
            if len(data) > limit:
                if self._on_reject is not None:
                    self._on_reject(method, grpc.StatusCode.RESOURCE_EXHAUSTED.name)
                return OversizedMessage(len(data), limit)
            return parse(data)

        args = (deserialize, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(handler.stream_unary, *args)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(handler.stream_stream, *args)
        behavior = handler.unary_unary or handler.unary_stream

        async def refuse(request, context) -> None:
            # The never-retry advice oversized answers carry too: re-sending the same bytes cannot
            # succeed, and a client that retried RESOURCE_EXHAUSTED blindly would send them again.
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                request.message,
                trailing_metadata=(("grpc-retry-pushback-ms", "-1"),),
            )

        if handler.unary_unary:

            async def unary(request, context):
                if isinstance(request, OversizedMessage):
                    await refuse(request, context)
                return await behavior(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, *args)
        if inspect.isasyncgenfunction(behavior):

            async def stream_out(request, context):
                if isinstance(request, OversizedMessage):
                    await refuse(request, context)
                async for response in behavior(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(stream_out, *args)

        async def writes(request, context):
            if isinstance(request, OversizedMessage):
                await refuse(request, context)
            return await behavior(request, context)

        return grpc.unary_stream_rpc_method_handler(writes, *args)

"""gRPC server interceptors: cross-cutting checks kept out of the servicer.

* :class:`DrainInterceptor` answers UNAVAILABLE once shutdown has begun (health and the KServe
  live/ready probes stay reachable so load balancers see "not ready" rather than a closed door).
* :class:`AuthInterceptor` checks ``authorization: Bearer <token>`` against the configured tokens
  (constant-time compare); probes (:func:`is_probe`) are exempt so they work without secrets.
* :class:`RequestContextInterceptor` tags log lines with the RPC method and the caller's
  ``x-request-id`` metadata, if any (the servicer refines it with the message's request_id).

A rejected call gets a handler of the same RPC shape that aborts at once, so clients see a clean
status and no stack trace.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Sequence

import grpc

from .logs import request_context

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


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {k.lower(): v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}


def _rejecting(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler with ``handler``'s shape that aborts with (code, message)."""

    def abort(_request, context):
        context.abort(code, message)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            abort, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            abort, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            abort, handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        abort, handler.request_deserializer, handler.response_serializer
    )


def _wrap(handler: grpc.RpcMethodHandler, unary, streaming) -> grpc.RpcMethodHandler:
    """Rebuild ``handler`` with its behaviour wrapped: ``unary`` for single responses,
    ``streaming`` for streamed ones (the wrapper must then be a generator)."""
    args = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), *args)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), *args)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), *args)
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), *args)


class DrainInterceptor(grpc.ServerInterceptor):
    """Count calls in progress and answer UNAVAILABLE to every new non-health call once draining.

    Graceful shutdown first waits (:meth:`wait_idle`) for the counted calls while the server keeps
    accepting connections, so late callers get a clean UNAVAILABLE (retry elsewhere) instead of the
    CANCELLED that a stopped gRPC server gives.

    Args:
        draining: returns True once graceful shutdown has started.
    """

    def __init__(self, draining: Callable[[], bool]):
        self._draining = draining
        self._active = 0
        self._idle = threading.Condition()

    @property
    def active(self) -> int:
        """Calls whose handler is running."""
        return self._active

    def wait_idle(self, timeout: float) -> bool:
        """Block until no call is running or ``timeout`` passed; True when idle."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def _enter(self) -> None:
        with self._idle:
            self._active += 1

    def _leave(self) -> None:
        with self._idle:
            self._active -= 1
            if self._active == 0:
                self._idle.notify_all()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or is_probe(handler_call_details.method):
            return handler
        if self._draining():
            return _rejecting(
                handler, grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another replica"
            )
        return _wrap(handler, self._counted_unary, self._counted_stream)

    def _counted_unary(self, behavior):
        def wrapped(request, context):
            self._enter()
            try:
                return behavior(request, context)
            finally:
                self._leave()

        return wrapped

    def _counted_stream(self, behavior):
        def wrapped(request, context):
            self._enter()
            try:
                yield from behavior(request, context)
            finally:
                self._leave()

        return wrapped


class AuthInterceptor(grpc.ServerInterceptor):
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
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        candidate = token.strip().encode()
        # Compare against every token so timing does not reveal which one nearly matched.
        matches = [hmac.compare_digest(candidate, t) for t in self._tokens]
        return any(matches)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_probe(method):
            return handler
        if self._valid(_metadata(handler_call_details).get("authorization", "")):
            return handler
        if self._on_reject is not None:
            self._on_reject(method)
        return _rejecting(
            handler,
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or invalid bearer token (send metadata 'authorization: Bearer <token>')",
        )


class RequestContextInterceptor(grpc.ServerInterceptor):
    """Run each handler inside a log context carrying the method and the x-request-id header."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            # Health's Watch is non-blocking (no thread held per watcher); wrapping would lose that.
            return handler
        request_id = _metadata(handler_call_details).get(REQUEST_ID_HEADER, "-")

        def unary(behavior):
            def wrapped(request, context):
                with request_context(request_id, method):
                    return behavior(request, context)

            return wrapped

        def streaming(behavior):
            def wrapped(request, context):
                with request_context(request_id, method):
                    yield from behavior(request, context)

            return wrapped

        return _wrap(handler, unary, streaming)

"""Typed client errors: a gRPC status code plus the server's human message.

Every failure the client library reports is a `ClientError` (a `pixforge.errors.PixforgeError`),
so callers catch one family and branch on `.code` or on the subclass:

    try:
        client.translate("photo.jpg", "sr-x4")
    except NotFoundError:          # unknown model
        ...
    except InvalidArgumentError as exc:   # corrupt image, bad option
        print(exc.message)

Stream items carry their status as a google.rpc.Code integer; `error_from_code` maps both forms
onto the same classes.

A request or an answer over a message-size limit fails with RESOURCE_EXHAUSTED, the code of a
busy server too; the two are told apart by the message (gRPC's own limit checks and the server's
limit say "larger than max" / "over the server's limit") and by the server's retry pushback (-1:
never), and an over-limit error is never retryable: the same message would be refused again.
"""

from __future__ import annotations

import re

import grpc

from pixforge.errors import PixforgeError

# The codes worth another try: the server could not take the call now (down, restarting, busy).
# Defined here rather than in retry.py (which re-exports it) so that retry.py can raise
# ClientConfigError without an import cycle.
RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


class ClientConfigError(PixforgeError, ValueError):
    """A client setting is invalid (bad target, unreadable certificate, negative timeout...)."""


class ClientError(PixforgeError):
    """A call failed; `.code` is the grpc.StatusCode and `.message` the server's reason.

    Attributes:
        code: the gRPC status code.
        message: the human-readable reason (the status details), possibly empty.
        target: the server target the client was talking to, when known.
        pushback_ms: the server's retry advice (grpc-retry-pushback-ms, or a stream item's
            retry_pushback_ms): 0 none, > 0 wait at least this long, < 0 never retry.
    """

    # Over a limit: the same call would fail the same way, whatever the code says.
    never_retry = False

    def __init__(
        self, code: grpc.StatusCode, message: str = "", target: str | None = None, pushback_ms: int = 0
    ):
        self.code = code
        self.message = message or ""
        self.target = target
        self.pushback_ms = int(pushback_ms)
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"{self.code.name}: {self.message}" if self.message else self.code.name
        return f"{text} (server {self.target})" if self.target else text

    @property
    def retryable(self) -> bool:
        """Whether trying the same call again may succeed: the server was unavailable or busy
        (UNAVAILABLE, RESOURCE_EXHAUSTED), not over a message limit (the client's or the
        server's) and not told "never" by the server (pushback < 0)."""
        return self.code in RETRYABLE_CODES and not self.never_retry and self.pushback_ms >= 0

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. "INVALID_ARGUMENT" (what reports and logs print)."""
        return self.code.name


class InvalidArgumentError(ClientError):
    """The server refused the input: corrupt or unsupported image, bad option (not retried)."""


class NotFoundError(ClientError):
    """Unknown model, model version or health service name."""


class FailedPreconditionError(ClientError):
    """The model exists but cannot serve (failed to load, still loading)."""


class UnavailableError(ClientError):
    """The server could not be reached or is shutting down (retried with backoff first)."""


class ResourceExhaustedError(ClientError):
    """The server is overloaded (retried with backoff first) or something is over a limit (not
    retried: see `retryable`, RequestTooLargeError and ReceiveLimitError)."""


class DeadlineExceededError(ClientError):
    """The call did not finish before its deadline."""


class UnauthenticatedError(ClientError):
    """No token, or the server refused the token."""


class PermissionDeniedError(ClientError):
    """The token is valid but not allowed to do this."""


class CancelledError(ClientError):
    """The call was cancelled (by the client closing, or the server going away mid-call)."""


class ClientClosedError(CancelledError):
    """A call was made on a client after its close() (not retried: open a new client)."""

    def __init__(self, target: str | None = None):
        super().__init__(grpc.StatusCode.CANCELLED, "the client is closed: create a new one", target)


class InternalError(ClientError):
    """The server failed unexpectedly (a bug or an engine error): see the server logs."""


class ReceiveLimitError(ResourceExhaustedError):
    """The server's answer was larger than this client's receive limit (``max_receive_bytes``).

    gRPC reports it as RESOURCE_EXHAUSTED like a busy server, but it is not retryable: the same
    request would produce the same answer. Raise the limit (0 = gRPC's largest) or ask for a
    smaller output (JPEG/WebP, a smaller input).
    """

    never_retry = True


class RequestTooLargeError(ResourceExhaustedError):
    """The request was larger than a message limit: the server's (``limits.max_message_bytes``,
    see ModelInfo.max_message_bytes) or this client's send limit (``max_message_bytes``).

    Not retryable: the same request would be refused again. Send a smaller input (a JPEG, a
    smaller image) or raise the limit that refused it.

    Attributes:
        limit: the limit in bytes the request was over, when the message says it (else 0).
    """

    never_retry = True

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str = "",
        target: str | None = None,
        pushback_ms: int = 0,
        limit: int = 0,
    ):
        super().__init__(code, message, target, pushback_ms)
        self.limit = limit


# gRPC's own size checks: "<CLIENT|SERVER>: <Received|Sent> message larger than max (X vs. Y)",
# possibly wrapped ("Stream removed (CLIENT: ...)" on a stream). The side says whose limit it is:
# CLIENT = this channel's, SERVER = the server's.
_GRPC_LIMIT = re.compile(r"\b(CLIENT|SERVER): (Received|Sent) message larger than max \((\d+) vs\. (\d+)\)")
# The pixforge server's own size check (service/interceptors.py OversizedMessage).
_SERVER_LIMIT = re.compile(r"over the server's limit of (\d+) bytes")

_BY_CODE: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}

# google.rpc.Code numbering (what TranslateStreamResponse.error_code carries) -> grpc.StatusCode.
_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def status_code_from_number(number: int) -> grpc.StatusCode:
    """Map a google.rpc.Code integer to a grpc.StatusCode (unknown numbers -> UNKNOWN)."""
    return _CODE_BY_NUMBER.get(int(number), grpc.StatusCode.UNKNOWN)


def error_from_code(
    code: grpc.StatusCode | int, message: str = "", target: str | None = None, pushback_ms: int = 0
) -> ClientError:
    """Build the typed error for a status code.

    Args:
        code: a grpc.StatusCode or its google.rpc.Code integer.
        message: the server's reason.
        target: the server target, for the error text.
        pushback_ms: the server's retry advice (< 0: never retry).

    Returns:
        An instance of the most specific ClientError subclass for the code.
    """
    if not isinstance(code, grpc.StatusCode):
        code = status_code_from_number(code)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        over_limit = _over_limit_error(message, target, pushback_ms)
        if over_limit is not None:
            return over_limit
    return _BY_CODE.get(code, ClientError)(code, message, target, pushback_ms)


def _over_limit_error(message: str, target: str | None, pushback_ms: int) -> ClientError | None:
    """The typed error for a RESOURCE_EXHAUSTED about a message size, or None (a busy server)."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    match = _GRPC_LIMIT.search(message)
    if match is not None:
        side, direction, limit = match.group(1), match.group(2), int(match.group(4))
        if (side, direction) == ("CLIENT", "Received"):
            hint = (
                "; the client's receive limit is too small for this answer (max_receive_bytes; not retried)"
            )
            return ReceiveLimitError(code, message + hint, target, pushback_ms)
        if (side, direction) == ("SERVER", "Sent"):  # the answer is over the server's send limit
            hint = "; the answer is over the server's message limit (not retried)"
            return ResourceExhaustedError(code, message + hint, target, -1)
        if side == "CLIENT":
            hint = "; the request is over this client's send limit (max_message_bytes; not retried)"
        else:
            hint = "; the request is over the server's message limit (not retried)"
        return RequestTooLargeError(code, message + hint, target, pushback_ms, limit)
    match = _SERVER_LIMIT.search(message)
    if match is not None:  # the message already says whose limit: only add what the client does
        hint = " (not retried: the same request would be refused again)"
        return RequestTooLargeError(code, message + hint, target, pushback_ms, int(match.group(1)))
    return None


def error_from_rpc(exc: grpc.RpcError, target: str | None = None) -> ClientError:
    """Turn a grpc.RpcError (sync or aio) into the typed ClientError with the server's message.

    Args:
        exc: the error raised by a stub call.
        target: the server target, for the error text.

    Returns:
        The matching ClientError subclass instance (raise it `from exc`).
    """
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    return error_from_code(code, details or "", target, pushback_from_rpc(exc))


def pushback_from_rpc(exc: grpc.RpcError) -> int:
    """The server's grpc-retry-pushback-ms trailer of a failed call (0: none or unreadable)."""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "grpc-retry-pushback-ms":
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
    return 0

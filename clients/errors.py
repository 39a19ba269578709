"""Typed client errors: a gRPC status code plus the server's human message.

Every failure the client library reports is a `ClientError` (a `pixforge.errors.PixforgeError`),
so callers catch one family and branch on `.code` or on the subclass:

    try:
        client.translate("photo.jpg", "sr4x")
    except NotFoundError:          # unknown model
        ...
    except InvalidArgumentError as exc:   # corrupt image, bad option
        print(exc.message)

Stream items carry their status as a google.rpc.Code integer; `error_from_code` maps both forms
onto the same classes.
"""

from __future__ import annotations

import grpc

from pixforge.errors import PixforgeError

from .retry import RETRYABLE_CODES


class ClientError(PixforgeError):
    """A call failed; `.code` is the grpc.StatusCode and `.message` the server's reason.

    Attributes:
        code: the gRPC status code.
        message: the human-readable reason (the status details), possibly empty.
        target: the server target the client was talking to, when known.
    """

    def __init__(self, code: grpc.StatusCode, message: str = "", target: str | None = None):
        self.code = code
        self.message = message or ""
        self.target = target
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"{self.code.name}: {self.message}" if self.message else self.code.name
        return f"{text} (server {self.target})" if self.target else text

    @property
    def retryable(self) -> bool:
        """Whether trying the same call again may succeed: the server was unavailable or busy
        (UNAVAILABLE, RESOURCE_EXHAUSTED), not over a limit of this client's."""
        return self.code in RETRYABLE_CODES and not isinstance(self, ReceiveLimitError)

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
    """The server is overloaded or the message is too large (retried with backoff first)."""


class DeadlineExceededError(ClientError):
    """The call did not finish before its deadline."""


class UnauthenticatedError(ClientError):
    """No token, or the server refused the token."""


class PermissionDeniedError(ClientError):
    """The token is valid but not allowed to do this."""


class CancelledError(ClientError):
    """The call was cancelled (by the client closing, or the server going away mid-call)."""


class InternalError(ClientError):
    """The server failed unexpectedly (a bug or an engine error): see the server logs."""


class ReceiveLimitError(ResourceExhaustedError):
    """The server's answer was larger than this client's receive limit (``max_receive_bytes``).

    gRPC reports it as RESOURCE_EXHAUSTED like a busy server, but it is not retryable: the same
    request would produce the same answer. Raise the limit (0 = gRPC's largest) or ask for a
    smaller output (JPEG/WebP, a smaller input).
    """


# What gRPC's own receive check says when an incoming message is over the channel's limit.
_RECEIVE_LIMIT_TEXT = "Received message larger than max"

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


def error_from_code(code: grpc.StatusCode | int, message: str = "", target: str | None = None) -> ClientError:
    """Build the typed error for a status code.

    Args:
        code: a grpc.StatusCode or its google.rpc.Code integer.
        message: the server's reason.
        target: the server target, for the error text.

    Returns:
        An instance of the most specific ClientError subclass for the code.
    """
    if not isinstance(code, grpc.StatusCode):
        code = status_code_from_number(code)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _RECEIVE_LIMIT_TEXT in message:
        hint = "; the client's receive limit is too small for this answer (max_receive_bytes; not retried)"
        return ReceiveLimitError(code, message + hint, target)
    return _BY_CODE.get(code, ClientError)(code, message, target)


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
    return error_from_code(code, details or "", target)

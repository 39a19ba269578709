"""`pixforge.client`: the Python client library's one public import path (torch-free).

    from pixforge.client import Client, AsyncClient, ClientError

* `Client` (sync) and `AsyncClient` (asyncio): translate, translate_many, list_models,
  get_model, health.
* `ClientConfig`, `RetryPolicy`: connection, deadline, retry and load-balancing settings.
* `TranslateParams`: one translation's settings (model, format, options, timeout), passed as
  ``params=`` instead of keyword arguments.
* `TranslateResult`, `ModelInfo`: what the calls return.
* `ClientError` and its subclasses: typed failures carrying the gRPC status code and the
  server's message.

The implementation lives in clients/ (installed as `pixforge.clients`, whose modules also hold the
`pixforge convert` and `pixforge health` commands); import the library from here.
"""

from pixforge.clients.aio import AsyncClient
from pixforge.clients.client import Client
from pixforge.clients.config import ClientConfig, ClientConfigError
from pixforge.clients.errors import (
    CancelledError,
    ClientClosedError,
    ClientError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ReceiveLimitError,
    RequestTooLargeError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from pixforge.clients.images import ImageInputError
from pixforge.clients.retry import NO_RETRY, RetryPolicy
from pixforge.clients.targets import TargetError
from pixforge.clients.types import ModelInfo, TranslateParams, TranslateResult

__all__ = [
    "Client",
    "AsyncClient",
    "ClientConfig",
    "ClientConfigError",
    "RetryPolicy",
    "NO_RETRY",
    "ModelInfo",
    "TranslateParams",
    "TranslateResult",
    "ClientError",
    "CancelledError",
    "ClientClosedError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ReceiveLimitError",
    "RequestTooLargeError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "ImageInputError",
    "TargetError",
]

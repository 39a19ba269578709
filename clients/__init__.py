"""Python client library and the batch-conversion CLI (torch-free).

Public API (also importable as `pixforge.client`):

* `Client` (sync) and `AsyncClient` (asyncio): translate, translate_many, list_models,
  get_model, health.
* `ClientConfig`, `RetryPolicy`: connection, deadline, retry and load-balancing settings.
* `TranslateResult`, `ModelInfo`: what the calls return.
* `ClientError` and its subclasses: typed failures carrying the gRPC status code and the
  server's message.

The CLI commands live in `convert` (`pixforge convert`) and `health` (`pixforge health`).
"""

from .aio import AsyncClient
from .client import Client
from .config import ClientConfig, ClientConfigError
from .errors import (
    CancelledError,
    ClientError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from .images import ImageInputError
from .retry import NO_RETRY, RetryPolicy
from .targets import TargetError
from .types import ModelInfo, TranslateResult

__all__ = [
    "Client",
    "AsyncClient",
    "ClientConfig",
    "ClientConfigError",
    "RetryPolicy",
    "NO_RETRY",
    "ModelInfo",
    "TranslateResult",
    "ClientError",
    "CancelledError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "ImageInputError",
    "TargetError",
]

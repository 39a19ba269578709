"""Typed errors of the serving core (no gRPC here).

The servicer maps these, together with :mod:`pixforge.errors`, to gRPC status codes in exactly one
place (:func:`pixforge.service.servicer.status_for_error`); everything below it raises plain Python
exceptions with a human message and never sees a status code.
"""

from __future__ import annotations

from pixforge.errors import PixforgeError


class ServiceError(PixforgeError):
    """Base class for errors raised by the serving core."""


class ServerConfigError(ServiceError):
    """The server cannot start as configured: a bad setting (YAML, env or flags), a missing model
    repository or TLS file, a port it cannot bind. Raised with one message that names the key.

    (Training's config has its own error, ``pixforge.training.config.ExperimentConfigError``,
    raised as ``(key, message)``.)
    """


# The name this error had before it got a distinct one (scripts and tests import it).
ConfigError = ServerConfigError


class InvalidRequestError(ServiceError):
    """A request is malformed: bad options, an unknown output format, an unusable image layout."""


class ModelNotFoundError(ServiceError):
    """No model (or no such version of it) exists in the repository."""


class ModelNotReadyError(ServiceError):
    """The model exists but is still loading or failed to load, so it cannot serve now."""


class ModelLoadingError(ModelNotReadyError):
    """The model's version is still loading: a transient state, so the caller should retry.

    A subclass with its own status (UNAVAILABLE, HTTP 503) because clients retry UNAVAILABLE but
    not FAILED_PRECONDITION: a server restart would otherwise fail every request that arrives
    while the models load, even with retries on.
    """


class QueueFullError(ServiceError):
    """The model's bounded request queue is full; the caller should back off and retry."""


class OutOfMemoryError(ServiceError):
    """The execution provider ran out of (GPU) memory, even after retrying with smaller tiles."""


class ShuttingDownError(ServiceError):
    """The server is shutting down (or the model was retired) and accepts no new work."""


class RequestCancelledError(ServiceError):
    """The caller cancelled the request (or, as RequestExpiredError, its deadline passed); its
    pending work was dropped."""


class RequestExpiredError(RequestCancelledError):
    """The caller's deadline passed before the request finished; its pending work was dropped.

    A subclass, so code that drops cancelled work handles both; the status differs, because a
    client told CANCELLED would believe it (not the clock) gave up.
    """


class InferenceError(ServiceError):
    """The model failed while running, or returned something that breaks its contract."""


class RepositoryUnavailableError(ServiceError):
    """The model repository cannot be read now (missing, unreadable, an unmounted volume)."""


class ModelControlDisabledError(ServiceError):
    """Explicit model load/unload was asked for, but the server's ``model_control`` setting is off."""


class NotOfferedError(ServiceError):
    """A protocol feature pixforge does not offer (Triton's shared memory, trace and log settings)."""

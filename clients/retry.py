"""Retry, load-balancing and transport settings, expressed the standard gRPC way.

Every ImageTranslation unary method is idempotent (translating the same image twice gives the
same bytes), so Translate, ListModels and GetModel are retried with exponential backoff and
jitter, within the call's deadline, honouring server push-back:

* on UNAVAILABLE by gRPC itself, from a service config passed as the "grpc.service_config"
  channel option (gRFC A6);
* on RESOURCE_EXHAUSTED by the client (`unary_retry_wait`), because that code also means "this
  message is over a size limit", and gRPC's retry policy matches codes only: it would re-send an
  oversized request `max_attempts` times. The client reads the message and never retries an
  over-limit error (ClientError.retryable), only a busy server.

The same config selects the round_robin load-balancing policy so every resolved address gets
traffic.

A TranslateStream cannot be replayed by gRPC once responses have flowed, so `translate_many`
re-sends the unanswered items of a broken stream itself, with `RetryPolicy.backoff()`.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import grpc

from .errors import RETRYABLE_CODES as RETRYABLE_CODES  # re-exported: its home before errors.py
from .errors import ClientConfigError, ClientError

SERVICE = "pixforge.v1.ImageTranslation"
IDEMPOTENT_METHODS = ("Translate", "ListModels", "GetModel")
GRPC_RETRIED_CODES = (grpc.StatusCode.UNAVAILABLE,)
"""What gRPC's own unary retries cover: never RESOURCE_EXHAUSTED, which may mean "over a limit"."""
UNARY_MAX_ATTEMPTS = 5
"""gRPC caps a unary call's attempts at 5; the client's own RESOURCE_EXHAUSTED retries match it."""
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's message lengths are int32
"""Large enough for a 4x super-resolved 24 MP photo as PNG; the server sets its own limit."""


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for UNAVAILABLE / RESOURCE_EXHAUSTED on idempotent calls.

    Attributes:
        max_attempts: tries per call including the first (gRPC caps this at 5 for unary calls);
            1 disables retries.
        initial_backoff: seconds before the first retry.
        max_backoff: ceiling on any single wait, in seconds.
        multiplier: backoff growth per attempt.
        retry_seconds: streamed items only: keep retrying past ``max_attempts`` while less than
            this many seconds have passed since the item first failed (rides out a server
            restart or model reload); 0 = attempts only. Unary retries ignore it. The default
            stays 0 for library calls, which should fail within seconds of a server going away;
            `pixforge convert`, unattended, uses 120 (--retry-seconds, convert_retry).
    """

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    retry_seconds: float = 0.0

    def __post_init__(self) -> None:
        # ClientConfigError is a ValueError too, so callers catching ValueError still do.
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ClientConfigError(f"retry max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("initial_backoff", "max_backoff"):
            if not _finite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ClientConfigError(
                    f"retry {name} must be a finite number > 0, got {getattr(self, name)!r}"
                )
        if not _finite(self.multiplier) or self.multiplier < 1:
            raise ClientConfigError(f"retry multiplier must be a finite number >= 1, got {self.multiplier!r}")
        if not _finite(self.retry_seconds) or self.retry_seconds < 0:
            raise ClientConfigError(f"retry_seconds must be a finite number >= 0, got {self.retry_seconds!r}")

    @classmethod
    def coerce(cls, value: object) -> RetryPolicy:
        """A RetryPolicy from a RetryPolicy, a dict of its fields, or None (the default policy).

        Raises:
            ClientConfigError: anything else, an unknown field or an invalid value.
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise ClientConfigError(f"unknown retry setting {unknown[0]!r}")
            return cls(**value)
        raise ClientConfigError(
            f"retry must be a RetryPolicy or a dict of its fields, got {type(value).__name__}"
        )

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based): full jitter, as gRPC does.

        Args:
            retry: 1 for the first retry, 2 for the second, ...

        Returns:
            A random wait in [0, min(max_backoff, initial_backoff * multiplier**(retry-1))].
        """
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(0, retry - 1))
        return random.uniform(0.0, cap)


NO_RETRY = RetryPolicy(max_attempts=1)


def unary_retry_wait(error: ClientError, attempt: int, retry: RetryPolicy, remaining: float) -> float | None:
    """Seconds to wait before the client re-sends a unary call itself, or None to raise `error`.

    Only RESOURCE_EXHAUSTED from a busy server is the client's to retry (gRPC retries
    UNAVAILABLE): not an over-limit error, nor one the server said never to retry (pushback < 0).

    Args:
        error: how try number `attempt` failed.
        attempt: 1 after the first try, 2 after the second, ...
        retry: the client's policy (attempts capped at UNARY_MAX_ATTEMPTS, as gRPC does).
        remaining: seconds left before the call's deadline: a wait that would reach it is not made.

    Returns:
        The policy's backoff, at least the server's pushback; or None.
    """
    if error.code != grpc.StatusCode.RESOURCE_EXHAUSTED or not error.retryable:
        return None
    if attempt >= min(retry.max_attempts, UNARY_MAX_ATTEMPTS):
        return None
    wait = max(retry.backoff(attempt), error.pushback_ms / 1000.0)
    return wait if wait < remaining else None


def service_config(retry: RetryPolicy, load_balancing: str = "round_robin") -> str:
    """Return the JSON service config for the "grpc.service_config" channel option.

    Args:
        retry: the retry policy for idempotent unary methods.
        load_balancing: "round_robin" (spread calls over every address) or "pick_first".

    Returns:
        A JSON string.
    """
    if load_balancing not in ("round_robin", "pick_first"):
        raise ValueError(f"load_balancing must be 'round_robin' or 'pick_first', got {load_balancing!r}")
    config: dict = {"loadBalancingConfig": [{load_balancing: {}}]}
    if retry.max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": SERVICE, "method": m} for m in IDEMPOTENT_METHODS],
                "retryPolicy": {
                    "maxAttempts": min(retry.max_attempts, 5),
                    "initialBackoff": f"{retry.initial_backoff:.3f}s",
                    "maxBackoff": f"{retry.max_backoff:.3f}s",
                    "backoffMultiplier": retry.multiplier,
                    "retryableStatusCodes": [c.name for c in GRPC_RETRIED_CODES],
                },
            }
        ]
    return json.dumps(config)


def channel_options(
    retry: RetryPolicy,
    load_balancing: str = "round_robin",
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    keepalive_s: float = 30.0,
    extra: tuple[tuple[str, object], ...] = (),
    max_receive_bytes: int = 0,
) -> list[tuple[str, object]]:
    """Channel options every pixforge client uses.

    Args:
        retry: retry policy (goes into the service config).
        load_balancing: "round_robin" or "pick_first".
        max_message_bytes: send limit; images are big, gRPC's default 4 MiB is not enough.
        max_receive_bytes: receive limit; 0 = gRPC's largest (2 GiB - 1), as tritonclient does:
            the server never sends more than its own ``limits.max_message_bytes`` (which it
            advertises in ModelInfo), so a fixed client cap only turns a large answer the server
            already computed into an error.
        keepalive_s: HTTP/2 ping interval while calls are active (detects dead servers behind NATs
            and load balancers); 0 disables keepalive pings.
        extra: more (name, value) options, appended last so they win.

    Returns:
        A list for grpc.insecure_channel / grpc.secure_channel (sync or aio).
    """
    options: list[tuple[str, object]] = [
        ("grpc.service_config", service_config(retry, load_balancing)),
        ("grpc.enable_retries", 1 if retry.max_attempts > 1 else 0),
        # Without this, a request bigger than 256 KiB is committed at once and never retried.
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ("grpc.retry_buffer_size", max(max_message_bytes, 256 * 1024 * 1024)),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_receive_bytes or GRPC_MAX_MESSAGE_BYTES),
    ]
    if keepalive_s > 0:
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            # Only ping while calls are in flight: servers refuse idle pings by default.
            ("grpc.keepalive_permit_without_calls", 0),
        ]
    return options + list(extra)

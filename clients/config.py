"""`ClientConfig`: everything a client needs to open a channel, validated once.

Both the sync `Client` and the `AsyncClient` are built from it, so they share targets, TLS,
token, deadlines, retries, load balancing and transport options.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .errors import ClientConfigError as ClientConfigError  # re-exported: its home before errors.py
from .retry import DEFAULT_MAX_MESSAGE_BYTES, GRPC_MAX_MESSAGE_BYTES, RetryPolicy, channel_options
from .targets import resolve_target

# gRPC metadata values may hold printable ASCII only; anything else (a token read from a file
# with its trailing newline) fails every call with INTERNAL "Invalid metadata", far from the cause.
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


def check_seconds(name: str, value: object, allow_zero: bool = False) -> None:
    """Raise ClientConfigError unless `value` is a finite number of seconds > 0 (>= 0 if allowed)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ClientConfigError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


@dataclass(frozen=True)
class ClientConfig:
    """Connection settings of a pixforge client.

    Attributes:
        target: "host:port", "dns:///host:port", another gRPC target URI, or several
            "host:port" entries (a list or a comma-separated string) to load-balance across.
        token: bearer token sent as "authorization: Bearer <token>" on every call (None: none);
            printable ASCII only (what gRPC metadata can carry).
        tls: False for plaintext; True for TLS with the system roots; or the path of a PEM file
            of root certificates to trust (a private CA).
        timeout: default deadline in seconds of every call (translate, list_models, ...).
        retry: backoff policy for UNAVAILABLE / RESOURCE_EXHAUSTED on idempotent calls (a
            RetryPolicy, or a dict of its fields, converted).
        load_balancing: "round_robin" (default: spread calls across servers) or "pick_first".
        max_message_bytes: gRPC send limit (largest request).
        max_receive_bytes: gRPC receive limit (largest answer); 0 = gRPC's largest, 2 GiB - 1:
            the server bounds its answers by its own advertised ``max_message_bytes``.
        keepalive_s: HTTP/2 keepalive ping interval during calls (0 disables).
        stream_duration: seconds one TranslateStream is fed before the client rotates to a new
            one (every stream then has a deadline of stream_duration + timeout).
        extra_options: more gRPC channel options as (name, value) pairs.
    """

    target: str | tuple[str, ...]
    token: str | None = None
    tls: bool | str = False
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    load_balancing: str = "round_robin"
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_receive_bytes: int = 0
    keepalive_s: float = 30.0
    stream_duration: float = 300.0
    extra_options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.target, list):
            object.__setattr__(self, "target", tuple(self.target))
        check_seconds("timeout", self.timeout)
        check_seconds("stream_duration", self.stream_duration)
        check_seconds("keepalive_s", self.keepalive_s, allow_zero=True)
        # Frozen: a dict of RetryPolicy fields becomes the policy in place.
        object.__setattr__(self, "retry", RetryPolicy.coerce(self.retry))
        self._check_token()
        if self.load_balancing not in ("round_robin", "pick_first"):
            raise ClientConfigError(
                f"load_balancing must be round_robin or pick_first, got {self.load_balancing!r}"
            )
        if self.max_message_bytes < 1024 * 1024:
            raise ClientConfigError(f"max_message_bytes must be at least 1 MiB, got {self.max_message_bytes}")
        if self.max_receive_bytes and not 1024 * 1024 <= self.max_receive_bytes <= GRPC_MAX_MESSAGE_BYTES:
            raise ClientConfigError(
                "max_receive_bytes must be 0 (gRPC's largest) or from 1 MiB to 2 GiB - 1, "
                f"got {self.max_receive_bytes}"
            )
        if isinstance(self.tls, str) and not Path(self.tls).is_file():
            raise ClientConfigError(f"TLS root certificate file not found: {self.tls}")

    def _check_token(self) -> None:
        if self.token is None:
            return
        if not isinstance(self.token, str):
            raise ClientConfigError(f"token must be a string, got {type(self.token).__name__}")
        if not _METADATA_VALUE.fullmatch(self.token):
            bad = next(ch for ch in self.token if not " " <= ch <= "~")
            raise ClientConfigError(
                f"token contains {bad!r}, which gRPC metadata cannot carry (printable ASCII only); "
                "a token read from a file keeps its trailing newline: strip it"
            )

    def grpc_target(self) -> tuple[str, int]:
        """Return (gRPC target string, number of servers listed); raises ClientConfigError."""
        try:
            return resolve_target(list(self.target) if isinstance(self.target, tuple) else self.target)
        except ValueError as exc:
            raise ClientConfigError(str(exc)) from None

    def options(self) -> list[tuple[str, object]]:
        """gRPC channel options (service config with retries + load balancing, limits, keepalive)."""
        return channel_options(
            self.retry,
            self.load_balancing,
            self.max_message_bytes,
            self.keepalive_s,
            self.extra_options,
            max_receive_bytes=self.max_receive_bytes,
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS channel credentials, or None for a plaintext channel."""
        if self.tls is False or self.tls is None:
            return None
        if self.tls is True:
            return grpc.ssl_channel_credentials()
        try:
            roots = Path(self.tls).read_bytes()
        except OSError as exc:
            raise ClientConfigError(f"cannot read TLS root certificates {self.tls}: {exc.strerror}") from None
        # gRPC accepts any bytes here and only fails at connect time, as UNAVAILABLE.
        if b"-----BEGIN" not in roots:
            raise ClientConfigError(
                f"TLS root certificate file {self.tls} is not PEM (no '-----BEGIN' line): "
                "convert a DER file with `openssl x509 -inform der -in FILE -out FILE.pem`"
            )
        return grpc.ssl_channel_credentials(root_certificates=roots)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata sent with every RPC (the bearer token, when set)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def make_config(
    target: str | Sequence[str],
    token: str | None = None,
    tls: bool | str | os.PathLike[str] = False,
    **kwargs,
) -> ClientConfig:
    """Build a ClientConfig from the constructor arguments of Client / AsyncClient.

    Raises:
        ClientConfigError: an invalid setting (the message names it).
    """
    tls_setting = os.fspath(tls) if isinstance(tls, os.PathLike) else tls
    if not isinstance(target, str):
        target = tuple(target)
    try:
        return ClientConfig(target=target, token=token, tls=tls_setting, **kwargs)
    except TypeError as exc:
        raise ClientConfigError(str(exc)) from None

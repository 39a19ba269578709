"""`Client`: the synchronous pixforge client.

    from pixforge.client import Client

    with Client("localhost:50051") as client:
        png = client.translate("photo.jpg", "sr-x4")                     # bytes in, bytes out
        arr = client.translate(array, "colorization", as_array=True)      # numpy in, numpy out
        for result in client.translate_many(paths, "sr-x4", concurrency=8):
            ...

Every call has a deadline (`timeout`, default from the config); idempotent calls are retried on
UNAVAILABLE (by gRPC's own retry machinery) and on RESOURCE_EXHAUSTED from a busy server (by the
client, so that a request over a size limit is never re-sent) with exponential backoff, see
retry.py; several servers are load-balanced with round_robin (see targets.py). Only the
generated stubs and the shared codec are used: no torch.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

from .config import ClientConfig, make_config
from .errors import (
    ClientClosedError,
    ClientError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    error_from_rpc,
)
from .images import ImageInput, ImageInputError, image_bytes
from .retry import unary_retry_wait
from .stream import StreamBatch
from .stream_core import BatchCore, count_streams
from .types import (
    ModelInfo,
    TranslateKeywords,
    TranslateParams,
    TranslateResult,
    TranslateSettings,
    check_call_timeout,
)

if TYPE_CHECKING:
    # Only type checkers read it (annotations are strings here), so Python 3.10 runs without
    # typing.Unpack (3.11+) and without the typing_extensions dependency.
    from typing import Unpack

HEALTH_STATUS_NAMES = {v: k for k, v in health_pb2.HealthCheckResponse.ServingStatus.items()}


class ClientBase:
    """What Client and AsyncClient share: settings, channel, stubs, and a batch's plan.

    Subclasses set `_grpc` to the module whose channels they use (grpc, or grpc.aio) and add the
    calls themselves, blocking or awaitable; see Client for the constructor's arguments. Every
    setting is checked in the constructor; the channel is opened there too, or on first use when
    `_lazy_channel` is set (a grpc.aio channel belongs to the event loop it is created in).
    """

    _grpc: ClassVar[ModuleType] = grpc
    _lazy_channel: ClassVar[bool] = False

    def __init__(
        self, target: str | Sequence[str], token: str | None = None, tls: bool | str = False, **settings
    ):
        self.config: ClientConfig = make_config(target, token, tls, **settings)
        self._target, self._listed = self.config.grpc_target()
        self._credentials = self.config.credentials()
        self._options = self.config.options()
        self._metadata = self.config.metadata()
        self._channel: Any = None
        self._closed = False
        if not self._lazy_channel:
            self._open()

    def _open(self) -> None:
        if self._credentials is None:
            self._channel = self._grpc.insecure_channel(self._target, options=self._options)
        else:
            self._channel = self._grpc.secure_channel(self._target, self._credentials, options=self._options)
        self._stub = pb_grpc.ImageTranslationStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _live(self) -> Any:
        """The channel, opened on first use.

        Raises:
            ClientClosedError: close() was called (gRPC itself would raise a bare ValueError).
        """
        if self._closed:
            raise ClientClosedError(self._target)
        if self._channel is None:
            self._open()
        return self._channel

    def _api(self) -> pb_grpc.ImageTranslationStub:
        """The ImageTranslation stub of the live channel (raises ClientClosedError)."""
        self._live()
        return self._stub

    def _health_api(self) -> health_pb2_grpc.HealthStub:
        """The grpc.health.v1 stub of the live channel (raises ClientClosedError)."""
        self._live()
        return self._health

    def _budget(self, timeout: float | None) -> float:
        """A call's deadline budget in seconds: `timeout`, or the config's for None / 0.

        Raises:
            InvalidArgumentError: a negative or non-finite timeout.
        """
        check_call_timeout(timeout)
        return timeout or self.config.timeout

    def _retry_wait(self, error: ClientError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before re-sending a failed unary call, or None: raise `error`."""
        return unary_retry_wait(error, attempt, self.config.retry, deadline - time.monotonic())

    @staticmethod
    def _health_error(error: ClientError, service: str) -> ClientError:
        # The standard health servicer answers an unknown name with NOT_FOUND and no details.
        if isinstance(error, NotFoundError) and not error.message:
            reason = f"the server has no health status for {service!r} (no such model or service)"
            return NotFoundError(error.code, reason, error.target)
        return error

    @property
    def target(self) -> str:
        """The gRPC target string the channel uses (after list -> ipv4: resolution)."""
        return self._target

    def _batch_core(
        self, params: TranslateParams, concurrency: int, ordered: bool, streams: int | None
    ) -> BatchCore:
        """Validate translate_many's batch options and plan its run (before any traffic).

        Raises:
            InvalidArgumentError: concurrency or streams below 1 (the same error type as every
                other bad option of the call, params included).
        """
        for name, value in (("concurrency", concurrency), ("streams", streams)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgumentError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be an integer >= 1, got {value!r}"
                )
        return BatchCore(
            params,
            self.config,
            concurrency=concurrency,
            streams=count_streams(streams, concurrency, self._listed),
            ordered=ordered,
            target=self._target,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r})"


class Client(ClientBase):
    """Synchronous client of a pixforge server (or several, load-balanced).

    Args:
        target: "host:port", "dns:///host:port" (every address the name resolves to is used),
            a list of "host:port" or a comma-separated string of them.
        token: bearer token for servers that require one.
        tls: False (plaintext), True (TLS, system roots) or a path to a PEM root-certificate file.
        **settings: any other ClientConfig field: timeout, retry, load_balancing,
            max_message_bytes, keepalive_s, stream_duration, extra_options.

    Raises:
        ClientConfigError: an invalid setting (bad address, missing certificate file...).
    """

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the channel; in-flight calls are cancelled, later calls raise ClientClosedError."""
        self._closed = True
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the channel is connected.

        Args:
            timeout: seconds (default: the config's timeout).

        Raises:
            UnavailableError: no server answered in time.
            ClientClosedError: the client is closed.
        """
        budget = self._budget(timeout)
        try:
            grpc.channel_ready_future(self._live()).result(timeout=budget)
        except grpc.FutureTimeoutError:
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE, "no server became reachable in time", self._target
            ) from None

    # ------------------------------------------------------------------ calls

    def _call(self, method, request, timeout: float | None):
        """One unary call within its deadline budget, re-sent while the server is busy (see retry.py)."""
        deadline = time.monotonic() + self._budget(timeout)
        attempt = 1
        while True:
            try:
                return method(request, timeout=deadline - time.monotonic(), metadata=self._metadata)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc, self._target)
            wait = self._retry_wait(error, attempt, deadline)
            if wait is None:
                raise error
            time.sleep(wait)
            self._live()  # closed meanwhile: ClientClosedError rather than gRPC's ValueError
            attempt += 1

    @overload
    def translate(
        self,
        image: ImageInput,
        model: str | None = None,
        output_format: str | None = None,
        *,
        params: TranslateParams | None = None,
        request_id: str = "",
        as_array: Literal[True],
        **options: Unpack[TranslateSettings],
    ) -> np.ndarray: ...

    @overload
    def translate(
        self,
        image: ImageInput,
        model: str | None = None,
        output_format: str | None = None,
        *,
        params: None = None,
        request_id: str = "",
        as_array: Literal[False] = False,
        **options: Unpack[TranslateSettings],
    ) -> bytes: ...

    @overload
    def translate(
        self,
        image: ImageInput,
        model: str | None = None,
        output_format: str | None = None,
        *,
        params: TranslateParams | None = None,
        request_id: str = "",
        as_array: bool = False,
        **options: Unpack[TranslateSettings],
    ) -> bytes | np.ndarray: ...

    def translate(
        self,
        image: ImageInput,
        model: str | None = None,
        output_format: str | None = None,
        *,
        params: TranslateParams | None = None,
        request_id: str = "",
        **options: Unpack[TranslateKeywords],
    ) -> bytes | np.ndarray:
        """Translate one image.

        The settings are one TranslateParams: pass it as `params`, or pass its fields as
        arguments (model, output_format and the keywords below), which build one; arguments
        given with `params` override its fields.

        Args:
            image: encoded bytes, a file path, or a uint8 array ((H, W), (H, W, 1|3|4)).
            model: model name on the server (required unless `params` names it).
            output_format: "png" (default), "jpeg"/"jpg" or "webp".
            params: a TranslateParams with every setting.
            request_id: id echoed in server logs.
            **options: other TranslateParams fields: as_array (return a decoded uint8 array
                instead of encoded bytes), version (pinned model version, 0: the served one),
                quality (JPEG/WebP 1..100, 0: server default), tile_size, tile_overlap,
                render_size (see pixforge.v1.TranslateOptions, 0: default), timeout (deadline
                in seconds, default config.timeout; retries happen within it).

        Returns:
            The translated image: bytes, or a uint8 array (H, W, C) when as_array (typed so
            for mypy: np.ndarray with as_array=True, bytes without it and without params).

        Raises:
            InvalidArgumentError: bad input or options (including a corrupt image, per the server).
            NotFoundError: unknown model. UnavailableError / ResourceExhaustedError: after retries.
            RequestTooLargeError: the request is over a message limit (never retried).
            DeadlineExceededError, UnauthenticatedError, ClientError: other failures.
            ClientClosedError: the client is closed.
            TypeError: a keyword that is no TranslateParams field.
        """
        params = TranslateParams.resolve(params, model, output_format, options)
        stub = self._api()
        try:
            data = image_bytes(image)
        except ImageInputError as exc:
            raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        response = self._call(stub.Translate, params.request(data, request_id), params.timeout)
        return params.output(response.image)

    def translate_many(
        self,
        images: Iterable[ImageInput],
        model: str | None = None,
        output_format: str | None = None,
        *,
        params: TranslateParams | None = None,
        concurrency: int = 4,
        ordered: bool = True,
        streams: int | None = None,
        **options: Unpack[TranslateKeywords],
    ) -> Generator[TranslateResult, None, None]:
        """Translate many images over TranslateStream calls, lazily, with a bounded window.

        Failures do not stop the batch: each item yields a TranslateResult whose `.error` says
        why it failed (retryable failures are retried first).

        Args:
            images: any iterable (a generator is fine; it is consumed lazily) of bytes, paths
                or arrays.
            model, output_format, params, **options: the settings of every item, as in
                translate(); options.timeout is the per-item deadline budget in seconds
                (default config.timeout).
            concurrency: the most items taken from `images` and not yet yielded (the in-flight
                window); memory use is bounded by it.
            ordered: yield results in input order (True) or as they complete (False).
            streams: concurrent TranslateStream calls (default: one per 4 in-flight items, the
                server's per-stream window, and at least one per listed server so a list of
                servers shares the work; round_robin places each stream on the next server).

        Returns:
            A generator of TranslateResult, one per input item. Breaking out of the loop (or
            calling its close()) cancels the remaining work.

        Raises:
            InvalidArgumentError: bad options (before any traffic). Exceptions raised by the
                `images` iterable itself are re-raised from the iterator.
            ClientClosedError: the client is closed.
        """
        params = TranslateParams.resolve(params, model, output_format, options)
        core = self._batch_core(params, concurrency, ordered, streams)
        return iter(StreamBatch(self._api(), core, images, self._metadata))

    def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        """Every model version the server knows, failed ones included.

        Args:
            timeout: deadline in seconds (default config.timeout).

        Returns:
            A list of ModelInfo.
        """
        response = self._call(self._api().ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in response.models]

    def get_model(self, name: str, version: int = 0, timeout: float | None = None) -> ModelInfo:
        """Describe one model.

        Args:
            name: model name.
            version: pinned version (0: the served version).
            timeout: deadline in seconds (default config.timeout).

        Returns:
            Its ModelInfo.

        Raises:
            NotFoundError: no such model or version.
        """
        response = self._call(self._api().GetModel, pb.GetModelRequest(name=name, version=version), timeout)
        return ModelInfo.from_proto(response.model)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """Ask the server's standard grpc.health.v1 service.

        Args:
            service: "" for the whole server, or a service/model name.
            timeout: deadline in seconds (default config.timeout).

        Returns:
            "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN".

        Raises:
            NotFoundError: the server does not know `service` (the message names it).
            UnavailableError, DeadlineExceededError: the server could not be reached.
        """
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = self._call(self._health_api().Check, request, timeout)
        except NotFoundError as exc:
            raise self._health_error(exc, service) from None
        return HEALTH_STATUS_NAMES.get(response.status, "UNKNOWN")

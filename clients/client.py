"""`Client`: the synchronous pixforge client.

    from pixforge.client import Client

    with Client("localhost:50051") as client:
        png = client.translate("photo.jpg", "sr4x")                      # bytes in, bytes out
        arr = client.translate(array, "colorize", as_array=True)          # numpy in, numpy out
        for result in client.translate_many(paths, "sr4x", concurrency=8):
            ...

Every call has a deadline (`timeout`, default from the config); idempotent calls are retried on
UNAVAILABLE / RESOURCE_EXHAUSTED with exponential backoff by gRPC's own retry machinery (see
retry.py); several servers are load-balanced with round_robin (see targets.py). Only the
generated stubs and the shared codec are used: no torch.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

from .config import ClientConfig, make_config
from .errors import InvalidArgumentError, UnavailableError, error_from_rpc
from .images import ImageInput, ImageInputError, image_bytes
from .stream import StreamBatch
from .stream_core import BatchCore, count_streams
from .types import ModelInfo, TranslateKeywords, TranslateParams, TranslateResult

if TYPE_CHECKING:
    # Only type checkers read it (annotations are strings here), so Python 3.10 runs without
    # typing.Unpack (3.11+) and without the typing_extensions dependency.
    from typing import Unpack

HEALTH_STATUS_NAMES = {v: k for k, v in health_pb2.HealthCheckResponse.ServingStatus.items()}


class ClientBase:
    """What Client and AsyncClient share: settings, channel, stubs, and a batch's plan.

    Subclasses set `_grpc` to the module whose channels they use (grpc, or grpc.aio) and add the
    calls themselves, blocking or awaitable; see Client for the constructor's arguments.
    """

    _grpc: ClassVar[ModuleType] = grpc

    def __init__(
        self, target: str | Sequence[str], token: str | None = None, tls: bool | str = False, **settings
    ):
        self.config: ClientConfig = make_config(target, token, tls, **settings)
        self._target, self._listed = self.config.grpc_target()
        credentials = self.config.credentials()
        options = self.config.options()
        if credentials is None:
            self._channel = self._grpc.insecure_channel(self._target, options=options)
        else:
            self._channel = self._grpc.secure_channel(self._target, credentials, options=options)
        self._stub = pb_grpc.ImageTranslationStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = self.config.metadata()

    @property
    def target(self) -> str:
        """The gRPC target string the channel uses (after list -> ipv4: resolution)."""
        return self._target

    def _batch_core(
        self, params: TranslateParams, concurrency: int, ordered: bool, streams: int | None
    ) -> BatchCore:
        """Validate translate_many's batch options and plan its run (before any traffic).

        Raises:
            InvalidArgumentError: concurrency below 1.
        """
        if concurrency < 1:
            raise InvalidArgumentError(
                grpc.StatusCode.INVALID_ARGUMENT, f"concurrency must be >= 1, got {concurrency}"
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
        """Close the channel; in-flight calls are cancelled."""
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
        """
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout or self.config.timeout)
        except grpc.FutureTimeoutError:
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE, "no server became reachable in time", self._target
            ) from None

    # ------------------------------------------------------------------ calls

    def _call(self, method, request, timeout: float | None):
        try:
            return method(request, timeout=timeout or self.config.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self._target) from None

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
            The translated image: bytes, or a uint8 array (H, W, C) when as_array.

        Raises:
            InvalidArgumentError: bad input or options (including a corrupt image, per the server).
            NotFoundError: unknown model. UnavailableError / ResourceExhaustedError: after retries.
            DeadlineExceededError, UnauthenticatedError, ClientError: other failures.
            TypeError: a keyword that is no TranslateParams field.
        """
        params = TranslateParams.resolve(params, model, output_format, options)
        try:
            data = image_bytes(image)
        except ImageInputError as exc:
            raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        response = self._call(self._stub.Translate, params.request(data, request_id), params.timeout)
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
        """
        params = TranslateParams.resolve(params, model, output_format, options)
        core = self._batch_core(params, concurrency, ordered, streams)
        return iter(StreamBatch(self._stub, core, images, self._metadata))

    def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        """Every model version the server knows, failed ones included.

        Args:
            timeout: deadline in seconds (default config.timeout).

        Returns:
            A list of ModelInfo.
        """
        response = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
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
        response = self._call(self._stub.GetModel, pb.GetModelRequest(name=name, version=version), timeout)
        return ModelInfo.from_proto(response.model)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """Ask the server's standard grpc.health.v1 service.

        Args:
            service: "" for the whole server, or a service/model name.
            timeout: deadline in seconds (default config.timeout).

        Returns:
            "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN".

        Raises:
            NotFoundError: the server does not know `service`.
            UnavailableError, DeadlineExceededError: the server could not be reached.
        """
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return HEALTH_STATUS_NAMES.get(response.status, "UNKNOWN")

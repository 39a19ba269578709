"""Plain result types the clients return, and the proto <-> Python conversions behind them.

Shared by the sync and the asyncio client so both build identical requests and results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

import grpc
import numpy as np

from pixforge.codec import normalize_format
from pixforge.errors import PixforgeError
from pixforge.v1 import translation_pb2 as pb

from .errors import ClientError, InvalidArgumentError
from .images import decode_output

_INVALID = grpc.StatusCode.INVALID_ARGUMENT

UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1
# The integer settings of TranslateParams and the range of their proto fields
# (pixforge.v1.TranslateRequest.version is int64, the TranslateOptions fields uint32).
_INT_RANGES = {
    "version": (0, INT64_MAX),
    "quality": (0, UINT32_MAX),  # and 1..100 when set, checked below
    "tile_size": (0, UINT32_MAX),
    "tile_overlap": (0, UINT32_MAX),
    "render_size": (0, UINT32_MAX),
}


def check_call_timeout(timeout: object) -> None:
    """Refuse a per-call timeout gRPC would misread (negative, nan, inf: an instant or no deadline).

    None and 0 mean "the client's config.timeout" and pass.

    Raises:
        InvalidArgumentError: not a finite number of seconds >= 0.
    """
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
        raise InvalidArgumentError(_INVALID, f"timeout must be a finite number of seconds, got {timeout!r}")
    if timeout < 0:
        raise InvalidArgumentError(_INVALID, f"timeout must be >= 0 seconds (0: the default), got {timeout}")


@dataclass(frozen=True)
class ModelInfo:
    """One model version as the server describes it.

    Attributes:
        name, version: where it lives in the repository.
        task: "super_resolution", "colorization", "style_translation", "paired_translation"
            or "unspecified".
        scale: output size / input size.
        input_channels, output_channels: 1 (luminance) or 3 (RGB).
        description: free text from the model's metadata.
        size_multiple: inputs are padded to a multiple of this.
        tile_size: recommended tile edge in input pixels.
        state: "ready", "loading", "failed" or "unspecified".
        error: why it failed to load (state "failed").
        provider: the onnxruntime execution provider serving it.
        metadata: every metadata_props entry of the ONNX file.
        precision: precision of the file that runs ("fp32", "fp16", "int8", ...).
        variants: every precision the version has on disk.
        max_message_bytes, max_input_pixels, max_output_pixels: the server's limits for this
            model (0 from a server too old to say).
    """

    name: str
    version: int
    task: str
    scale: int
    input_channels: int
    output_channels: int
    description: str
    size_multiple: int
    tile_size: int
    state: str
    error: str
    provider: str
    metadata: dict[str, str] = field(default_factory=dict)
    precision: str = ""
    variants: tuple[str, ...] = ()
    max_message_bytes: int = 0
    max_input_pixels: int = 0
    max_output_pixels: int = 0

    @property
    def ready(self) -> bool:
        """True when the version is loaded and serving."""
        return self.state == "ready"

    @classmethod
    def from_proto(cls, msg: pb.ModelInfo) -> ModelInfo:
        """Build from a pixforge.v1.ModelInfo message."""
        return cls(
            name=msg.name,
            version=int(msg.version),
            task=pb.Task.Name(msg.task).removeprefix("TASK_").lower(),
            scale=int(msg.scale),
            input_channels=int(msg.input_channels),
            output_channels=int(msg.output_channels),
            description=msg.description,
            size_multiple=int(msg.size_multiple),
            tile_size=int(msg.tile_size),
            state=pb.ModelState.Name(msg.state).removeprefix("MODEL_STATE_").lower(),
            error=msg.error,
            provider=msg.provider,
            metadata=dict(msg.metadata),
            precision=msg.precision,
            variants=tuple(msg.variants),
            max_message_bytes=int(msg.max_message_bytes),
            max_input_pixels=int(msg.max_input_pixels),
            max_output_pixels=int(msg.max_output_pixels),
        )


@dataclass
class TranslateResult:
    """The outcome of one item of `translate_many`.

    Attributes:
        index: position of the item in the input iterable (0-based).
        source: the input item exactly as given (bytes, path or array), so callers can map
            results back (the batch CLI passes paths).
        image: the translated image (bytes, or an array with as_array=True); None on failure.
        error: a ClientError when the item failed (corrupt input, server error...); None on success.
        request_id: the id sent with the item and echoed by the server.
        width, height: output size in pixels (0 on failure).
        model, version: what produced the image.
        output_format: "png", "jpeg" or "webp".
        timing_ms: server-side timing (decode, queue, inference, encode, total), when sent.
        attempts: how many times the item was sent (more than 1 after a retried stream).
    """

    index: int
    source: Any
    image: bytes | np.ndarray | None = None
    error: ClientError | None = None
    request_id: str = ""
    width: int = 0
    height: int = 0
    model: str = ""
    version: int = 0
    output_format: str = ""
    timing_ms: dict[str, float] = field(default_factory=dict)
    attempts: int = 0

    @property
    def ok(self) -> bool:
        """True when the item was translated."""
        return self.error is None


class TranslateSettings(TypedDict, total=False):
    """TranslateKeywords less ``as_array``, which translate()'s overloads spell out to type its
    return value (np.ndarray or bytes)."""

    version: int
    quality: int
    tile_size: int
    tile_overlap: int
    render_size: int
    timeout: float | None


class TranslateKeywords(TranslateSettings, total=False):
    """The keyword arguments of translate() / translate_many() that set a TranslateParams field.

    Each one is the field of the same name; only the keywords a caller passes are set (typed for
    mypy through ``**options: Unpack[TranslateKeywords]``).
    """

    as_array: bool


@dataclass(frozen=True)
class TranslateParams:
    """How to translate: the settings of one translate() call, or of every item of a translate_many().

    Pass one as ``params=`` to Client / AsyncClient.translate and translate_many, or pass the
    fields as keyword arguments, which build one (with ``params=`` too, the keywords override its
    fields). It is validated on construction the way the server would, so a mistake fails before
    any traffic.

    Attributes:
        model: model name. output_format: "png", "jpeg" (or "jpg") or "webp", kept normalised.
        version: pinned model version (0 = the served version).
        quality: JPEG/WebP quality 1..100 (0 = the server's default).
        tile_size, tile_overlap, render_size: see pixforge.v1.TranslateOptions (0 = default).
        as_array: decode outputs into uint8 numpy arrays instead of returning encoded bytes.
        timeout: deadline in seconds of a translate() call, or of each item of a
            translate_many(), counted from when the item is sent, server queueing included
            (None or 0 = the client's config.timeout).

    Raises:
        InvalidArgumentError: empty model name, unknown format, quality out of range, an
            integer setting that is no integer or out of its proto field's range (negative, or
            over 2**32 - 1 for the uint32 options, over 2**63 - 1 for version), or a negative /
            non-finite timeout.
    """

    model: str
    output_format: str = "png"
    version: int = 0
    quality: int = 0
    tile_size: int = 0
    tile_overlap: int = 0
    render_size: int = 0
    as_array: bool = False
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not self.model or not isinstance(self.model, str):
            raise InvalidArgumentError(_INVALID, "a model name is required")
        try:
            # Frozen: the normalised name ("jpg" -> "jpeg") replaces the given one in place.
            object.__setattr__(self, "output_format", normalize_format(self.output_format))
        except PixforgeError as exc:
            raise InvalidArgumentError(_INVALID, str(exc)) from None
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidArgumentError(_INVALID, f"{name} must be an integer, got {value!r}")
            if value < low:
                raise InvalidArgumentError(_INVALID, f"{name} must be >= {low}, got {value}")
            if value > high:
                raise InvalidArgumentError(_INVALID, f"{name} must be <= {high}, got {value}")
        if self.quality and not 1 <= self.quality <= 100:
            raise InvalidArgumentError(_INVALID, f"quality must be within 1..100, got {self.quality}")
        check_call_timeout(self.timeout)

    @classmethod
    def resolve(
        cls,
        params: TranslateParams | None,
        model: str | None,
        output_format: str | None,
        keywords: TranslateKeywords,
    ) -> TranslateParams:
        """The params a call runs with: `params` with the given arguments laid over it, or built
        from the arguments alone (None = not given).

        Raises:
            InvalidArgumentError: no model (neither argument nor params) or an invalid setting.
            TypeError: a keyword that is no TranslateParams setting.
        """
        unknown = sorted(set(keywords) - TranslateKeywords.__optional_keys__)
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r} (not a TranslateParams setting)")
        given: dict[str, Any] = dict(keywords)
        if model is not None:
            given["model"] = model
        if output_format is not None:
            given["output_format"] = output_format
        if params is None:
            if "model" not in given:
                raise InvalidArgumentError(_INVALID, "a model name is required (as `model` or in `params`)")
            return cls(**given)
        return replace(params, **given) if given else params

    def request(self, image: bytes, request_id: str = "") -> pb.TranslateRequest:
        """Build the TranslateRequest for one encoded image."""
        return pb.TranslateRequest(
            model=self.model,
            image=image,
            output_format=self.output_format,
            version=self.version,
            options=pb.TranslateOptions(
                tile_size=self.tile_size,
                tile_overlap=self.tile_overlap,
                quality=self.quality,
                render_size=self.render_size,
            ),
            request_id=request_id,
        )

    def output(self, data: bytes) -> bytes | np.ndarray:
        """Return the response image as bytes, or decoded when as_array was requested."""
        return decode_output(data) if self.as_array else data


def fill_result(result: TranslateResult, response: pb.TranslateResponse, params: TranslateParams) -> None:
    """Copy a successful TranslateResponse into a TranslateResult (decoding if as_array)."""
    result.image = params.output(response.image)
    result.width = int(response.width)
    result.height = int(response.height)
    result.model = response.model
    result.version = int(response.version)
    result.output_format = response.output_format or params.output_format
    if response.HasField("timing"):
        t = response.timing
        result.timing_ms = {
            "decode": t.decode_ms,
            "queue": t.queue_ms,
            "inference": t.inference_ms,
            "encode": t.encode_ms,
            "total": t.total_ms,
        }

"""Plain result types the clients return, and the proto <-> Python conversions behind them.

Shared by the sync and the asyncio client so both build identical requests and results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from pixforge.codec import normalize_format
from pixforge.errors import PixforgeError
from pixforge.v1 import translation_pb2 as pb

from .errors import ClientError, InvalidArgumentError
from .images import decode_output

_INVALID = grpc.StatusCode.INVALID_ARGUMENT


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


@dataclass(frozen=True)
class TranslateParams:
    """Per-call translation settings, validated once (shared by all items of a batch).

    Attributes:
        model: model name. version: pinned version (0 = served version).
        output_format: "png", "jpeg" or "webp". quality: 1..100 or 0 for the server default.
        tile_size, tile_overlap, render_size: see pixforge.v1.TranslateOptions (0 = default).
        as_array: decode outputs into numpy arrays instead of returning bytes.
    """

    model: str
    version: int = 0
    output_format: str = "png"
    quality: int = 0
    tile_size: int = 0
    tile_overlap: int = 0
    render_size: int = 0
    as_array: bool = False

    @classmethod
    def build(cls, model: str, output_format: str = "png", **kwargs: Any) -> TranslateParams:
        """Validate arguments the way the server would, so mistakes fail before any traffic.

        Raises:
            InvalidArgumentError: empty model name, unknown format, quality out of range or a
                negative size option.
        """
        if not model or not isinstance(model, str):
            raise InvalidArgumentError(_INVALID, "a model name is required")
        try:
            fmt = normalize_format(output_format)
        except PixforgeError as exc:
            raise InvalidArgumentError(_INVALID, str(exc)) from None
        params = cls(model=model, output_format=fmt, **kwargs)
        if params.quality and not 1 <= params.quality <= 100:
            raise InvalidArgumentError(_INVALID, f"quality must be within 1..100, got {params.quality}")
        for name in ("version", "tile_size", "tile_overlap", "render_size"):
            if getattr(params, name) < 0:
                raise InvalidArgumentError(_INVALID, f"{name} must be >= 0, got {getattr(params, name)}")
        return params

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

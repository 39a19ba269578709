"""One request end to end, without gRPC: decode -> adapt -> tile/batch -> re-attach alpha -> encode.

* Channels follow the model's metadata, so any decodable photo works with any model: RGB becomes
  luminance (BT.601) for a 1-channel model, gray is replicated for a 3-channel model, and an alpha
  channel is kept aside and re-attached (resized with INTER_LINEAR for super-resolution).
* Images are padded to the model's size multiple (and shape bucket) and cropped back, or tiled
  when larger than a tile, so the output is exactly input size x scale.
* Colourisation of photos larger than ``render_size`` (DeOldify's render_factor idea): the model
  runs once on a copy whose longest side is at most ``render_size``; its output's a/b chroma is
  upscaled to full size and joined with the original's full-resolution L (CIE Lab, OpenCV float),
  so a 24 MP photo colourises in one pass and keeps every detail of its luminance.
* :meth:`Pipeline.translate_arrays` takes batches that are already uint8 (N, H, W, C) arrays (the
  KServe v2 protocol) and shares every step after the decode with :meth:`Pipeline.translate`.

The colour conversions here are not model pre/post-processing (that lives inside the ONNX graph);
they only split and join the model's finished RGB output with the original's luminance.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import cv2
import numpy as np

from pixforge.codec import (
    OUTPUT_FORMATS,
    check_limits,
    check_output_size,
    decode_image,
    encode_image,
    normalize_format,
    probe_image,
    to_channels,
)
from pixforge.contract import ModelContract
from pixforge.errors import ImageEncodeError, ImageTooLargeError

from .batcher import TileFeed
from .config import BatchingConfig, ColorizationConfig, LimitsConfig, TilingConfig
from .errors import InvalidRequestError, RequestCancelledError, RequestExpiredError
from .norm_stats import FULL_CORE, MODE_FROZEN, image_statistics
from .repository import ModelRegistry, ModelRuntime
from .text_limits import MAX_MODEL_NAME, MAX_OUTPUT_FORMAT, MAX_REQUEST_ID, check_text, quote
from .tiling import InferTiles, TilePlan, plan_tiles, round_up, run_with_oom_retry

log = logging.getLogger("pixforge.service.pipeline")
T = TypeVar("T")

MAX_RENDER_SIZE = 8192
# Room for a response's other protobuf fields beside the image or tensor bytes.
RESPONSE_OVERHEAD_BYTES = 64 * 1024
MIB = 1024 * 1024
# The smallest an encoded output can be expected to get, as a fraction of its raw RGB(A) bytes,
# for the size check made before any compute. Deliberately optimistic (photos compress to about
# 0.3-0.6 of raw as PNG, 0.05-0.15 as JPEG at quality 95): a request refused before compute
# cannot have fitted; one that passes is checked again, exactly, after encoding.
MIN_COMPRESSION = {"png": 0.2, "webp": 0.02, "jpeg": 0.02}
COLOR_STRIP_ROWS = 256  # rows per strip when joining chroma with full-resolution luminance
# The least an image of a tensor batch costs in admission, in input pixels: each one takes its own
# worker hop, batcher slot, padding and output copy, so a batch of 1x1 images is not nearly free.
MIN_IMAGE_COST_PIXELS = 64 * 64
# Payloads larger than this are handled on the event loop's default executor, not on the loop: an
# encoded image's precheck here (reading a header costs up to ~20 ns per byte of a crafted file,
# pixforge.codec: up to ~5 ms below it, about a second at 60 MB) and a KServe HTTP body's parsing.
OFF_LOOP_BYTES = 256 * 1024


# --------------------------------------------------------------------------- domain types


@dataclass(frozen=True)
class TranslateOptions:
    """Per-request settings; 0 means "server default" (mirrors pixforge.v1.TranslateOptions)."""

    tile_size: int = 0
    tile_overlap: int = 0
    quality: int = 0
    render_size: int = 0


@dataclass(frozen=True)
class TranslateJob:
    """One image to translate (the domain form of a TranslateRequest)."""

    model: str
    image: bytes
    output_format: str = ""
    version: int = 0
    options: TranslateOptions = field(default_factory=TranslateOptions)
    request_id: str = ""


@dataclass(frozen=True)
class Timing:
    """Server-side time per stage, in milliseconds."""

    decode_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    encode_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class TranslateResult:
    """The translated image and how it was made."""

    image: bytes
    width: int
    height: int
    model: str
    version: int
    output_format: str
    request_id: str
    timing: Timing
    tiles: int = 1
    tile_size: int = 0


@dataclass(frozen=True, eq=False)
class ArrayJob:
    """A batch of already decoded images for one model (the domain form of a KServe v2 infer request).

    Attributes:
        model, version, options, request_id: as in :class:`TranslateJob`.
        images: uint8 (N, H, W, C), C being the model's input channel count.
    """

    model: str
    images: np.ndarray
    version: int = 0
    options: TranslateOptions = field(default_factory=TranslateOptions)
    request_id: str = ""


@dataclass(frozen=True, eq=False)
class ArrayResult:
    """The translated batch of an :class:`ArrayJob`.

    Attributes:
        images: uint8 (N, H*scale, W*scale, output_channels).
        timing: the images run concurrently, so queue/inference times are the slowest image's.
    """

    images: np.ndarray
    model: str
    version: int
    request_id: str
    timing: Timing
    tiles: int = 1
    tile_size: int = 0


def human_bytes(n: float) -> str:
    """``n`` bytes as MiB (or KiB below one MiB), for messages."""
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n / 1024:.0f} KiB"


def _cancel_all(futures: list[Future]) -> None:
    for f in futures:
        f.cancel()


def _run_windowed(
    executor: Executor, run: Callable[[int], T], count: int, window: int, cancel: CancelToken
) -> list[T]:
    """``[run(i) for i in range(count)]`` on ``executor``, at most ``window`` calls at a time.

    Submitting a whole batch at once would queue every image on the shared pool ahead of other
    requests' images, and none of them could be taken back. Here a new call starts only when one
    finished; after a failure or a cancellation nothing more starts, the queued calls are
    cancelled and the running ones (which stop at their next tile) are waited for, so no work of
    the request outlives it.

    Raises:
        The first call's error (after cancelling ``cancel`` so the siblings stop), else
        ``cancel``'s error if it was cancelled.
    """
    results: list = [None] * count
    running: dict[Future, int] = {}
    failure: BaseException | None = None
    started = 0
    while True:
        while started < count and len(running) < window and failure is None and not cancel.cancelled:
            running[executor.submit(run, started)] = started
            started += 1
        if not running:
            break
        done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            index = running.pop(future)
            if future.cancelled():
                continue
            error = future.exception()
            if error is None:
                results[index] = future.result()
            elif failure is None:
                failure = error
                cancel.cancel()  # the siblings stop at their next tile
        if failure is not None or cancel.cancelled:
            _cancel_all(list(running))  # the ones still queued never start
    if failure is not None:
        raise failure
    cancel.check()
    return results


def new_request_id() -> str:
    """A short random request id for requests that came without one."""
    return uuid.uuid4().hex[:16]


class CancelToken:
    """Set when the caller goes away (client cancel or deadline); callbacks drop queued work.

    It remembers why: work dropped because the deadline passed raises RequestExpiredError, so
    the caller is told DEADLINE_EXCEEDED, not CANCELLED (which would say the client gave up).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._expired = False

    @property
    def cancelled(self) -> bool:
        """Whether the caller went away."""
        return self._event.is_set()

    @property
    def expired(self) -> bool:
        """Whether it was cancelled because the caller's deadline passed."""
        return self._expired

    def cancel(self, expired: bool = False) -> None:
        """Mark cancelled (``expired``: by the deadline) and run the registered callbacks once."""
        with self._lock:
            if self._event.is_set():
                return
            self._expired = expired
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb()

    def expire(self) -> None:
        """Cancel because the caller's deadline passed."""
        self.cancel(expired=True)

    def follow(self, parent: CancelToken) -> Callable[[], None]:
        """Be cancelled, for the same reason, when ``parent`` is; returns a function that unlinks."""
        return parent.add_callback(lambda: self.cancel(parent.expired))

    def add_callback(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Run ``cb`` on cancel (at once if already cancelled); returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(cb)
                return lambda: self._remove(cb)
        cb()
        return lambda: None

    def _remove(self, cb: Callable[[], None]) -> None:
        with self._lock:
            if cb in self._callbacks:
                self._callbacks.remove(cb)

    def error(self) -> RequestCancelledError:
        """The error that reports this cancellation to the caller."""
        if self._expired:
            return RequestExpiredError("the request's deadline passed before it finished")
        return RequestCancelledError("request cancelled by the client")

    def check(self) -> None:
        """Raise :meth:`error` if cancelled."""
        if self._event.is_set():
            raise self.error()


# --------------------------------------------------------------------------- pure helpers


def adapt_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Give a decoded (H, W, C) image the channel count a model takes.

    Raises:
        InvalidRequestError: the image is neither gray nor RGB.
    """
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise InvalidRequestError(
            f"image has shape {pixels.shape}: expected gray (1 channel) or RGB (3 channels)"
        )
    return np.ascontiguousarray(to_channels(pixels, channels))


def render_shape(height: int, width: int, render_size: int, size_multiple: int) -> tuple[int, int]:
    """Size (h, w) of the copy a colourisation model runs on: longest side <= render_size.

    ``render_size`` is first rounded down to a multiple of ``size_multiple`` so the padded copy is
    never bigger than it.
    """
    limit = max(size_multiple, render_size // size_multiple * size_multiple)
    factor = min(1.0, limit / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


class RenderTarget(Protocol):
    """What :func:`render_copy` reads of a model (a ModelContract, or eval's EvaluatedModel)."""

    @property
    def task(self) -> str: ...

    @property
    def output_channels(self) -> int: ...

    @property
    def size_multiple(self) -> int: ...


def render_copy(pixels: np.ndarray, render_size: int, model: RenderTarget) -> np.ndarray | None:
    """The smaller copy a colourisation model runs on; None for other models and for photos that
    fit ``render_size``.

    Shared by the server and ``pixforge eval`` (training/model_eval/runner.py), so a local
    evaluation measures what the server returns.
    """
    h, w = pixels.shape[:2]
    if model.task != "colorization" or model.output_channels != 3 or max(h, w) <= render_size:
        return None
    rh, rw = render_shape(h, w, render_size, model.size_multiple)
    small = cv2.resize(pixels, (rw, rh), interpolation=cv2.INTER_AREA)
    return small.reshape(rh, rw, -1)


def join_chroma(original: np.ndarray, colour_small: np.ndarray) -> np.ndarray:
    """Full-resolution L of ``original`` + upscaled a/b of ``colour_small`` -> uint8 RGB.

    Works in horizontal strips so the float working set stays small for very large photos.

    Args:
        original: uint8 (H, W, 1|3), the full-size input.
        colour_small: uint8 (h, w, 3) RGB model output at render size.

    Returns:
        uint8 (H, W, 3) RGB.
    """
    height, width = original.shape[:2]
    small_lab = cv2.cvtColor(colour_small.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    ab_small = np.ascontiguousarray(small_lab[:, :, 1:])
    sh, sw = ab_small.shape[:2]
    sx, sy = sw / width, sh / height
    out = np.empty((height, width, 3), np.uint8)
    for r0 in range(0, height, COLOR_STRIP_ROWS):
        r1 = min(height, r0 + COLOR_STRIP_ROWS)
        # Same half-pixel mapping as cv2.resize(INTER_LINEAR), evaluated only for rows r0..r1.
        matrix = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, (r0 + 0.5) * sy - 0.5]], np.float64)
        ab = cv2.warpAffine(
            ab_small,
            matrix,
            (width, r1 - r0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        rgb = to_channels(original[r0:r1], 3).astype(np.float32) / 255.0
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
        lab[:, :, 1:] = ab
        back = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
        out[r0:r1] = np.clip(back * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- the pipeline


class _Stats:
    """Per-request accumulation of queue/inference time and tile counts."""

    def __init__(self) -> None:
        self.queue_ms = 0.0
        self.inference_ms = 0.0
        self.tiles = 0


class Pipeline:
    """Runs TranslateJobs against the registry's models.

    Args:
        registry: the model registry.
        tiling, limits, colorization, batching: their config sections.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        tiling: TilingConfig,
        limits: LimitsConfig,
        colorization: ColorizationConfig,
        batching: BatchingConfig,
    ):
        self.registry = registry
        self.tiling = tiling
        self.limits = limits
        self.colorization = colorization
        self.batching = batching

    # -- validation

    def _check_options(self, job: TranslateJob) -> str:
        self._check_target(job)
        check_text("output_format", job.output_format, MAX_OUTPUT_FORMAT)
        try:
            fmt = normalize_format(job.output_format)
        except ImageEncodeError:
            raise InvalidRequestError(
                f"unknown output_format {quote(job.output_format)}: choose one of {', '.join(OUTPUT_FORMATS)}"
            ) from None
        self._check_translate_options(job.options)
        return fmt

    @staticmethod
    def _check_target(job: TranslateJob | ArrayJob) -> None:
        check_text("model name", job.model, MAX_MODEL_NAME)
        check_text("request_id", job.request_id, MAX_REQUEST_ID)
        if not job.model:
            raise InvalidRequestError("request names no model")
        if job.version < 0:
            raise InvalidRequestError(f"version must be >= 0, got {job.version}")

    def _check_translate_options(self, opts: TranslateOptions) -> None:
        if not 0 <= opts.quality <= 100:
            raise InvalidRequestError(
                f"options.quality must be within 1..100 (0 = default), got {opts.quality}"
            )
        if opts.render_size and not 16 <= opts.render_size <= MAX_RENDER_SIZE:
            raise InvalidRequestError(
                f"options.render_size must be within 16..{MAX_RENDER_SIZE}, got {opts.render_size}"
            )
        if opts.tile_size and not self.tiling.min_tile_size <= opts.tile_size <= self.tiling.max_tile_size:
            raise InvalidRequestError(
                f"options.tile_size must be within {self.tiling.min_tile_size}.."
                f"{self.tiling.max_tile_size}, got {opts.tile_size}"
            )

    def _tile_settings(self, job: TranslateJob | ArrayJob, contract: ModelContract) -> tuple[int, int]:
        opts = job.options
        tile = opts.tile_size or self.tiling.tile_size or contract.tile_size
        if opts.tile_size and opts.tile_size % contract.size_multiple:
            raise InvalidRequestError(
                f"options.tile_size {opts.tile_size} is not a multiple of the model's size_multiple "
                f"{contract.size_multiple}"
            )
        # A server-wide tile size is a default for every model: round it to this model's multiple.
        tile = max(contract.size_multiple, tile // contract.size_multiple * contract.size_multiple)
        overlap = opts.tile_overlap or self.tiling.tile_overlap
        if opts.tile_overlap and opts.tile_overlap * 2 >= tile:
            raise InvalidRequestError(
                f"options.tile_overlap {opts.tile_overlap} must be less than half the tile ({tile})"
            )
        return tile, overlap

    @property
    def max_response_bytes(self) -> int:
        """Largest image or tensor a response can carry under the server's message limit."""
        return max(1, self.limits.max_message_bytes - RESPONSE_OVERHEAD_BYTES)

    def _check_output(self, contract: ModelContract, width: int, height: int) -> int:
        """Refuse (before any decode or compute) an output over the pixel limit; returns its pixels."""
        scale = contract.scale
        out_pixels = width * height * scale * scale
        if out_pixels > self.limits.max_output_pixels:
            raise ImageTooLargeError(
                f"output would be {width * scale}x{height * scale} = {out_pixels / 1e6:.1f} MP, "
                f"over the limit of {self.limits.max_output_pixels / 1e6:.1f} MP"
            )
        return out_pixels

    def precheck(self, job: TranslateJob) -> int:
        """Everything that can be refused from the request and the image header alone.

        Run before admission, so a request that cannot succeed never takes a worker or memory: the
        options, the model (unknown / not ready), the header's size against the input and output
        limits, and the smallest encoded output that could be expected against the message limit.

        Returns:
            The request's cost for admission: input + output pixels.

        Raises:
            The errors of :meth:`translate` that need no pixels.
        """
        fmt = self._check_options(job)
        row = self.registry.describe(job.model, job.version)
        if row.contract is None:
            return 0  # not ready: acquire() will say why
        info = probe_image(job.image)  # header only: the decoder's own fields, bit depth counted
        check_limits(info, self.limits.max_input_pixels)
        width, height = info.width, info.height
        out_pixels = self._check_output(row.contract, width, height)
        scale = row.contract.scale
        check_output_size(fmt, width * scale, height * scale)  # e.g. WebP: 16383 pixels a side
        raw = out_pixels * max(3, row.contract.output_channels)
        least = int(raw * MIN_COMPRESSION.get(fmt, 0.0))
        if least > self.max_response_bytes:
            raise ImageTooLargeError(
                f"the {fmt.upper()} output would be at least about {human_bytes(least)}, over the "
                f"{self._response_room()}: send a smaller image"
                + (" or ask for output_format jpeg" if fmt != "jpeg" else "")
            )
        return width * height + out_pixels

    async def precheck_async(self, job: TranslateJob) -> int:
        """:meth:`precheck` for a coroutine on the event loop: a large image is read off the loop.

        Reading a header is CPU work in Python (pixforge.codec), so an image over
        ``OFF_LOOP_BYTES`` is prechecked on the loop's default executor (as
        ``asyncio.to_thread``: the request's log context goes along) and the loop keeps answering
        other calls meanwhile; a small one is prechecked in place, sparing it the thread hop.
        """
        if len(job.image) <= OFF_LOOP_BYTES:
            return self.precheck(job)
        return await asyncio.to_thread(self.precheck, job)

    def _response_room(self) -> str:
        """The limit responses are compared against, in words (the value compared, and where from)."""
        return (
            f"{human_bytes(self.max_response_bytes)} a response can carry "
            f"({human_bytes(self.limits.max_message_bytes)} limits.max_message_bytes less "
            f"{human_bytes(RESPONSE_OVERHEAD_BYTES)} for its other fields)"
        )

    def check_array_batch(self, model: str, n: int) -> None:
        """Refuse a tensor batch of more images than the advertised ``max_batch_size`` (as Triton does).

        ModelConfig advertises ``batching.max_batch_size``; a larger batch would hold a worker,
        memory and the image pool for as long as the client likes.

        Raises:
            InvalidRequestError: ``n`` is over the limit.
        """
        limit = self.batching.max_batch_size
        if n > limit:
            raise InvalidRequestError(
                f"inference request batch-size must be <= {limit} for {quote(model)} "
                f"(batching.max_batch_size), got {n}: send at most {limit} images per request"
            )

    def check_array_response(self, contract: ModelContract, shape: tuple[int, ...]) -> int:
        """Refuse, before compute, a tensor batch whose output cannot fit one response.

        Returns:
            The request's cost for admission: input + output pixels of the padded images, at least
            :data:`MIN_IMAGE_COST_PIXELS` (and its output) per image.
        """
        n, h, w, _ = shape
        out_pixels = self._check_output(contract, w, h)
        out_bytes = n * out_pixels * contract.output_channels
        limit = self.max_response_bytes
        if out_bytes > limit:
            raise ImageTooLargeError(
                f"output tensor would be {human_bytes(out_bytes)}, over the {self._response_room()}: "
                "send fewer or smaller images per request"
            )
        # The model runs on the image padded to its size multiple, never on fewer pixels than that.
        multiple = contract.size_multiple
        padded = round_up(h, multiple) * round_up(w, multiple)
        in_pixels = max(padded, MIN_IMAGE_COST_PIXELS)
        return n * in_pixels * (1 + contract.scale * contract.scale)

    # -- running

    def translate(self, job: TranslateJob, cancel: CancelToken | None = None) -> TranslateResult:
        """Translate one image.

        Args:
            job: the request.
            cancel: set when the caller goes away; queued work is dropped and the call raises.

        Returns:
            The TranslateResult.

        Raises:
            InvalidRequestError, ImageDecodeError: bad request or image (INVALID_ARGUMENT).
            ImageTooLargeError, QueueFullError, OutOfMemoryError: RESOURCE_EXHAUSTED.
            ModelNotFoundError / ModelNotReadyError: NOT_FOUND / FAILED_PRECONDITION.
            RequestCancelledError: the caller cancelled.
            InferenceError: the model failed.
        """
        start = time.perf_counter()
        cancel = cancel or CancelToken()
        request_id = job.request_id or new_request_id()
        fmt = self._check_options(job)
        with self.registry.acquire(job.model, job.version) as runtime:
            contract = runtime.contract
            tile, overlap = self._tile_settings(job, contract)
            cancel.check()

            t = time.perf_counter()
            decoded = decode_image(
                job.image,
                max_pixels=self.limits.max_input_pixels,
                # The output limit is checked from the header too, before the decode spends memory.
                check=lambda info: self._check_output(contract, info.width, info.height),
            )
            decode_ms = (time.perf_counter() - t) * 1000.0
            stats = _Stats()
            out, used_tile = self._translate_pixels(
                decoded.pixels, runtime, job.options, tile, overlap, stats, cancel
            )
            # The decoded input is not needed any more: free it before the encoder's buffers exist.
            alpha = decoded.alpha
            del decoded
            cancel.check()

            t = time.perf_counter()
            if alpha is not None and alpha.shape != out.shape[:2]:
                alpha = cv2.resize(alpha, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_LINEAR)
            out_height, out_width = out.shape[:2]
            # `out` is ours and encoded once: the encoder may swap its channels in place rather
            # than make a full-size BGR copy.
            data = encode_image(out, fmt, job.options.quality or 95, alpha=alpha, overwrite=True)
            del out, alpha
            encode_ms = (time.perf_counter() - t) * 1000.0
            if len(data) > self.max_response_bytes:
                # Sending it would fail in gRPC after the fact (and clients would retry the whole
                # computation): refuse with the reason instead.
                raise ImageTooLargeError(
                    f"the encoded {fmt.upper()} output is {human_bytes(len(data))}, over the "
                    f"{self._response_room()}: send a smaller image or ask for output_format jpeg"
                )
            version = runtime.version
        total_ms = (time.perf_counter() - start) * 1000.0
        return TranslateResult(
            image=data,
            width=int(out_width),
            height=int(out_height),
            model=job.model,
            version=version,
            output_format=fmt,
            request_id=request_id,
            timing=Timing(decode_ms, stats.queue_ms, stats.inference_ms, encode_ms, total_ms),
            tiles=stats.tiles,
            tile_size=used_tile,
        )

    def translate_arrays(
        self,
        job: ArrayJob,
        cancel: CancelToken | None = None,
        executor: Executor | None = None,
        window: int = 0,
    ) -> ArrayResult:
        """Translate a batch of decoded images: each one takes exactly :meth:`translate`'s path.

        The batch is admitted once (one ``queue_size`` slot, like one Translate call); its images
        run concurrently on ``executor`` so the batcher can put them into shared inference calls,
        at most ``window`` at a time. The protocol fronts refuse batches over ``max_batch_size``
        first (:meth:`check_array_batch`); the window keeps any batch from filling the shared pool.

        Args:
            job: the request; ``job.images`` is uint8 (N, H, W, C) with C the model's input channels.
            cancel: set when the caller goes away or its deadline passes; images not started yet are
                never started, queued work is dropped and the call raises.
            executor: runs the images concurrently (None: one after the other). Its tasks only wait
                on the batcher, so it must not be a pool whose tasks call this method themselves.
            window: most images of this batch on ``executor`` at once (0: ``batching.max_batch_size``,
                enough to fill one inference call).

        Returns:
            The ArrayResult with uint8 (N, H*scale, W*scale, output_channels) images.

        Raises:
            Same as :meth:`translate`; InvalidRequestError also for a wrong dtype, rank or channel count.
        """
        start = time.perf_counter()
        cancel = cancel or CancelToken()
        request_id = job.request_id or new_request_id()
        self._check_target(job)
        self._check_translate_options(job.options)
        images = job.images
        if images.dtype != np.uint8 or images.ndim != 4 or 0 in images.shape:
            raise InvalidRequestError(
                f"images must be a non-empty uint8 array (N, H, W, C), got {images.dtype} {images.shape}"
            )
        n, h, w, c = images.shape
        if h * w > self.limits.max_input_pixels:
            raise ImageTooLargeError(
                f"image is {w}x{h} = {w * h / 1e6:.1f} MP, over the limit of "
                f"{self.limits.max_input_pixels / 1e6:.1f} MP"
            )
        with self.registry.acquire(job.model, job.version) as runtime:
            contract = runtime.contract
            if c != contract.input_channels:
                raise InvalidRequestError(
                    f"model {job.model!r} takes {contract.input_channels}-channel images "
                    f"(N, H, W, {contract.input_channels}), got {c} channels"
                )
            tile, overlap = self._tile_settings(job, contract)
            cancel.check()
            stats = [_Stats() for _ in range(n)]
            # A child token: a failing image cancels its siblings without cancelling the caller's
            # token, which a stream shares between all of its requests.
            local = CancelToken()
            unregister = local.follow(cancel)

            def one(i: int) -> tuple[np.ndarray, int]:
                # The deadline may have passed (or a sibling failed) while this image waited for a
                # thread: an image whose caller is gone is never started.
                local.check()
                return self._translate_pixels(images[i], runtime, job.options, tile, overlap, stats[i], local)

            try:
                if executor is None or n == 1:
                    results = [one(i) for i in range(n)]
                else:
                    results = _run_windowed(executor, one, n, window or self.batching.max_batch_size, local)
            finally:
                unregister()
            cancel.check()
            version = runtime.version
        out = np.stack([r[0] for r in results])
        total_ms = (time.perf_counter() - start) * 1000.0
        timing = Timing(
            0.0,
            max(st.queue_ms for st in stats),
            max(st.inference_ms for st in stats),
            0.0,
            total_ms,
        )
        return ArrayResult(
            images=out,
            model=job.model,
            version=version,
            request_id=request_id,
            timing=timing,
            tiles=sum(st.tiles for st in stats),
            tile_size=results[0][1],
        )

    def _translate_pixels(
        self,
        pixels: np.ndarray,
        runtime: ModelRuntime,
        options: TranslateOptions,
        tile: int,
        overlap: int,
        stats: _Stats,
        cancel: CancelToken,
    ) -> tuple[np.ndarray, int]:
        """One decoded (H, W, C) image through the model: output limit, render size, tiles/batches.

        Shared by :meth:`translate` (decoded from bytes) and :meth:`translate_arrays` (tensors), so
        both protocols give byte-identical pixels for the same image.
        """
        contract = runtime.contract
        h, w = pixels.shape[:2]
        self._check_output(contract, w, h)
        render = options.render_size or self.colorization.render_size
        small = render_copy(pixels, render, contract)
        if small is not None:
            small_out, used_tile = self._run_model(small, runtime, tile, overlap, stats, cancel)
            return join_chroma(pixels, small_out), used_tile
        return self._run_model(pixels, runtime, tile, overlap, stats, cancel)

    def _run_model(
        self,
        pixels: np.ndarray,
        runtime: ModelRuntime,
        tile: int,
        overlap: int,
        stats: _Stats,
        cancel: CancelToken,
    ) -> tuple[np.ndarray, int]:
        contract = runtime.contract
        image = adapt_channels(pixels, contract.input_channels)
        h, w = image.shape[:2]

        def make_plan(t: int):
            return plan_tiles(
                h,
                w,
                tile=t,
                overlap=overlap,
                size_multiple=contract.size_multiple,
                bucket=self.batching.shape_bucket,
                scale=contract.scale,
                radius=contract.receptive_radius,
            )

        def plain(tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
            return [r.output for r in self._infer(runtime, tiles, stats, cancel)]

        def whole_image_statistics(plan: TilePlan) -> InferTiles:
            """Tiles normalised with the whole image's statistics (models with norm layers)."""
            method = self.tiling.norm_statistics
            if plan.n_tiles == 1 or not contract.norm_channels or method == "per_tile":
                return plain
            channels = contract.norm_channels

            def run_stats(tiles, modes, frozen, cores) -> list[np.ndarray]:
                feeds = [TileFeed(modes, frozen, core) for core in cores]
                return [r.sums for r in self._infer(runtime, tiles, stats, cancel, feeds, count=False)]

            frozen = image_statistics(image, plan, channels, run_stats, method)
            modes = np.full(len(channels), MODE_FROZEN, np.float32)

            def infer(tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
                feeds = [TileFeed(modes, frozen, FULL_CORE)] * len(tiles)
                return [r.output for r in self._infer(runtime, tiles, stats, cancel, feeds)]

            return infer

        return run_with_oom_retry(
            image,
            tile=tile,
            min_tile=self.tiling.min_tile_size,
            size_multiple=contract.size_multiple,
            make_plan=make_plan,
            infer=plain,
            infer_for_plan=whole_image_statistics,
        )

    def _infer(
        self,
        runtime: ModelRuntime,
        tiles: Sequence[np.ndarray],
        stats: _Stats,
        cancel: CancelToken,
        feeds: Sequence[TileFeed] | None = None,
        count: bool = True,
    ) -> list:
        """Send tiles through the model's batcher, at most max_batch_size queued at a time.

        Returns the batcher's ItemResults (``output``, and ``sums`` for statistics runs). Their
        queue and inference times always count; ``count=False`` (statistics passes) leaves them
        out of the request's tile count, which reports the tiles of the output.
        """
        outputs: list = []
        window = runtime.max_batch_size
        for i in range(0, len(tiles), window):
            cancel.check()
            part = None if feeds is None else feeds[i : i + window]
            futures = runtime.batcher.submit_many(tiles[i : i + window], part)
            unregister = cancel.add_callback(functools.partial(_cancel_all, futures))
            try:
                # Future.result() (unlike futures.wait()) wakes up when a pending future is cancelled.
                results = [f.result() for f in futures]
            except concurrent.futures.CancelledError:
                raise cancel.error() from None
            finally:
                unregister()
                for f in futures:  # on any error, drop the siblings still queued
                    f.cancel()
            stats.queue_ms += max(r.queue_ms for r in results)
            # Tiles that shared a call are slices of one output array: count that call once.
            stats.inference_ms += sum({id(r.output.base): r.inference_ms for r in results}.values())
            stats.tiles += len(results) if count else 0
            outputs.extend(results)
        return outputs

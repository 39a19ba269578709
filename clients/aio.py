"""`AsyncClient`: the asyncio pixforge client (grpc.aio), same API as `Client` but awaitable.

    import asyncio, contextlib
    from pixforge.client import AsyncClient

    async def main():
        async with AsyncClient("localhost:50051") as client:
            png = await client.translate("photo.jpg", "sr4x")
            async with contextlib.aclosing(client.translate_many(paths, "sr4x", concurrency=16)) as results:
                async for result in results:
                    ...

    asyncio.run(main())

Create it inside a running event loop (grpc.aio channels bind to the loop that first uses
them). Channel settings, retries, deadlines and load balancing are those of `Client`
(`ClientConfig`). `translate_many` follows the same algorithm as the sync client (see stream.py):
a bounded window of outstanding items over one or more TranslateStream calls, per-item results,
re-sending unanswered items of a broken stream with backoff.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
import grpc.aio
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

from .client import HEALTH_STATUS_NAMES
from .config import ClientConfig, make_config
from .errors import ClientError, InternalError, InvalidArgumentError, UnavailableError, error_from_rpc
from .images import ImageInput, ImageInputError, decode_output, image_bytes
from .retry import RetryPolicy
from .stream import (
    BatchItem,
    _Stream,
    input_error,
    make_batch,
    result_for_error,
    result_for_response,
    retry_at,
)
from .types import ModelInfo, TranslateParams, TranslateResult


async def _read_input(image: ImageInput) -> bytes:
    # Bytes are free; file reads and PNG encoding leave the event loop.
    if isinstance(image, (bytes, bytearray, memoryview)):
        return image_bytes(image)
    return await asyncio.to_thread(image_bytes, image)


class AsyncClient:
    """Asyncio client of a pixforge server (or several, load-balanced).

    Args:
        target: "host:port", "dns:///host:port", a list of "host:port" or a comma-separated string.
        token: bearer token for servers that require one.
        tls: False (plaintext), True (TLS, system roots) or a path to a PEM root-certificate file.
        **settings: any other ClientConfig field (timeout, retry, load_balancing, ...).

    Raises:
        ClientConfigError: an invalid setting.
    """

    def __init__(
        self, target: str | Sequence[str], token: str | None = None, tls: bool | str = False, **settings
    ):
        self.config: ClientConfig = make_config(target, token, tls, **settings)
        self._target, self._listed = self.config.grpc_target()
        credentials = self.config.credentials()
        options = self.config.options()
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(self._target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(self._target, credentials, options=options)
        self._stub = pb_grpc.ImageTranslationStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = self.config.metadata()

    @property
    def target(self) -> str:
        """The gRPC target string the channel uses."""
        return self._target

    async def close(self) -> None:
        """Close the channel, cancelling in-flight calls."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def _call(self, method, request, timeout: float | None):
        try:
            return await method(request, timeout=timeout or self.config.timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self._target) from None

    async def translate(
        self,
        image: ImageInput,
        model: str,
        output_format: str = "png",
        *,
        as_array: bool = False,
        version: int = 0,
        quality: int = 0,
        tile_size: int = 0,
        tile_overlap: int = 0,
        render_size: int = 0,
        request_id: str = "",
        timeout: float | None = None,
    ) -> bytes | np.ndarray:
        """Translate one image (see Client.translate for arguments, returns and errors)."""
        params = TranslateParams.build(
            model,
            output_format,
            version=version,
            quality=quality,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            render_size=render_size,
            as_array=as_array,
        )
        try:
            data = await _read_input(image)
        except ImageInputError as exc:
            raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        response = await self._call(self._stub.Translate, params.request(data, request_id), timeout)
        if as_array:
            return await asyncio.to_thread(decode_output, response.image)
        return response.image

    def translate_many(
        self,
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        model: str,
        output_format: str = "png",
        *,
        concurrency: int = 4,
        ordered: bool = True,
        streams: int | None = None,
        as_array: bool = False,
        version: int = 0,
        quality: int = 0,
        tile_size: int = 0,
        tile_overlap: int = 0,
        render_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[TranslateResult]:
        """Translate many images over TranslateStream calls (see Client.translate_many).

        `images` may be a sync or an async iterable. Use `contextlib.aclosing` (or exhaust the
        iterator) so that breaking out of the loop cancels the remaining work at once.

        Returns:
            An async iterator of TranslateResult, one per input item.

        Raises:
            InvalidArgumentError: bad options (raised before any traffic).
        """
        batch = make_batch(
            AsyncStreamBatch,
            self,
            images,
            model,
            output_format,
            concurrency=concurrency,
            ordered=ordered,
            streams=streams,
            as_array=as_array,
            version=version,
            quality=quality,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            render_size=render_size,
            timeout=timeout,
        )
        return batch.run()

    async def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        """Every model version the server knows (see Client.list_models)."""
        response = await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in response.models]

    async def get_model(self, name: str, version: int = 0, timeout: float | None = None) -> ModelInfo:
        """Describe one model (see Client.get_model); raises NotFoundError."""
        response = await self._call(
            self._stub.GetModel, pb.GetModelRequest(name=name, version=version), timeout
        )
        return ModelInfo.from_proto(response.model)

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        """grpc.health.v1 status of the server or of `service` (see Client.health)."""
        response = await self._call(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout
        )
        return HEALTH_STATUS_NAMES.get(response.status, "UNKNOWN")

    def __repr__(self) -> str:
        return f"AsyncClient({self._target!r})"


_END = object()


class AsyncStreamBatch:
    """One `AsyncClient.translate_many` run; `run()` is the async generator of results.

    Same arguments and algorithm as stream.StreamBatch, on asyncio tasks instead of threads.
    """

    def __init__(
        self,
        stub,
        params: TranslateParams,
        images: Iterable[Any] | AsyncIterable[Any],
        *,
        concurrency: int,
        streams: int,
        ordered: bool,
        timeout: float,
        stream_duration: float,
        retry: RetryPolicy,
        metadata: tuple[tuple[str, str], ...],
        target: str,
    ):
        self._stub = stub
        self._params = params
        if isinstance(images, AsyncIterable):
            self._aiter: AsyncIterator[Any] | None = aiter(images)
            self._iter = None
        else:
            self._aiter = None
            self._iter = iter(images)
        self._next_index = 0
        self._concurrency = concurrency
        self._streams = max(1, min(streams, concurrency))
        self._ordered = ordered
        self._timeout = timeout
        self._stream_duration = stream_duration
        self._retry = retry
        self._metadata = metadata
        self._target = target
        self._prefix = uuid.uuid4().hex[:12]

        self._outstanding = 0
        self._in_flight = 0
        self._exhausted = False
        self._source_busy = False
        self._retry_queue: list[BatchItem] = []
        self._stop = False
        self._fatal: BaseException | None = None
        self._calls: set = set()
        self._results: asyncio.Queue[TranslateResult | None] = asyncio.Queue()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ signalling

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, seconds: float) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout=max(seconds, 0.001))
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ caller side

    async def run(self) -> AsyncIterator[TranslateResult]:
        """Yield TranslateResults (in input order when ordered=True)."""
        workers = [asyncio.create_task(self._worker()) for _ in range(self._streams)]

        async def close_when_done() -> None:
            await asyncio.gather(*workers, return_exceptions=True)
            await self._results.put(None)

        closer = asyncio.create_task(close_when_done())
        buffer: dict[int, TranslateResult] = {}
        next_index = 0
        try:
            while True:
                result = await self._results.get()
                if result is None:
                    if self._fatal is not None:
                        raise self._fatal
                    break
                if not self._ordered:
                    self._release()
                    yield result
                    continue
                buffer[result.index] = result
                while next_index in buffer:
                    ready = buffer.pop(next_index)
                    next_index += 1
                    self._release()
                    yield ready
        finally:
            self._stop = True
            self._notify()
            for call in list(self._calls):
                call.cancel()
            for task in workers:
                task.cancel()
            closer.cancel()
            await asyncio.gather(*workers, closer, return_exceptions=True)

    def _release(self) -> None:
        self._outstanding -= 1
        self._notify()

    # ------------------------------------------------------------------ feeding

    def _deliver(self, result: TranslateResult) -> None:
        self._in_flight -= 1
        self._notify()
        self._results.put_nowait(result)

    def _register(self, stream: _Stream, item: BatchItem) -> BatchItem:
        item.attempts += 1
        stream.pending[item.request_id] = item
        return item

    async def _next_source(self) -> tuple[int, Any]:
        if self._aiter is not None:
            source = await anext(self._aiter)
        else:
            # A StopIteration must not cross a coroutine boundary (it becomes RuntimeError).
            source = next(self._iter, _END)  # type: ignore[arg-type]
            if source is _END:
                raise StopAsyncIteration
        index = self._next_index
        self._next_index += 1
        return index, source

    async def _take(self, stream: _Stream) -> BatchItem | None:
        """Next item to send on `stream`, or None when the stream should half-close."""
        while True:
            while True:
                if self._stop or stream.closing:
                    return None
                now = time.monotonic()
                if now >= stream.feed_until:
                    return None
                for i, queued in enumerate(self._retry_queue):
                    if queued.not_before <= now:
                        return self._register(stream, self._retry_queue.pop(i))
                if not self._exhausted and not self._source_busy and self._outstanding < self._concurrency:
                    self._source_busy = True
                    self._outstanding += 1
                    self._in_flight += 1
                    break
                if self._exhausted and not self._retry_queue:
                    return None
                wait = 0.25
                if self._retry_queue:
                    wait = min(wait, min(i.not_before for i in self._retry_queue) - now)
                await self._wait(min(wait, stream.feed_until - now))
            try:
                index, source = await self._next_source()
            except StopAsyncIteration:
                self._exhausted = True
                self._source_busy = False
                self._outstanding -= 1
                self._in_flight -= 1
                self._notify()
                continue
            except Exception as exc:  # the caller's iterable failed: surface it to the caller
                self._fatal = exc
                self._stop = True
                self._source_busy = False
                self._outstanding -= 1
                self._in_flight -= 1
                self._notify()
                return None
            self._source_busy = False
            self._notify()
            try:
                data = await _read_input(source)
            except ImageInputError as exc:
                self._deliver(input_error(index, source, exc))
                continue
            item = BatchItem(index=index, source=source, request_id=f"{self._prefix}-{index}", data=data)
            if stream.closing or self._stop:
                self._retry_queue.append(item)
                self._notify()
                return None
            return self._register(stream, item)

    # ------------------------------------------------------------------ streams

    async def _worker(self) -> None:
        try:
            while True:
                stream = _Stream()
                first = await self._take(stream)
                if first is None:
                    if self._stop or (self._exhausted and self._in_flight == 0):
                        return
                    await self._wait(0.25)
                    continue
                stream.feed_until = time.monotonic() + self._stream_duration
                await self._run_stream(stream, first)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not hang the caller: hand it over
            self._fatal = exc
            self._stop = True
            self._notify()

    async def _run_stream(self, stream: _Stream, first: BatchItem) -> None:
        call = self._stub.TranslateStream(
            timeout=self._stream_duration + self._timeout, metadata=self._metadata
        )
        self._calls.add(call)

        write_failed = False

        async def write_all() -> None:
            nonlocal write_failed
            item: BatchItem | None = first
            try:
                while item is not None:
                    await call.write(
                        pb.TranslateStreamRequest(request=self._params.request(item.data, item.request_id))
                    )
                    item = await self._take(stream)
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                write_failed = True  # the call failed; the reader below reports it

        writer = asyncio.create_task(write_all())
        rpc_error: grpc.aio.AioRpcError | None = None
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                item = stream.pending.pop(response.request_id, None)
                if item is None and stream.pending:
                    _, item = stream.pending.popitem(last=False)
                if item is None:
                    continue
                if self._params.as_array and not response.error_code:
                    result, retryable = await asyncio.to_thread(
                        result_for_response, item, response, self._params, self._target
                    )
                else:
                    result, retryable = result_for_response(item, response, self._params, self._target)
                if retryable:
                    self._fail_or_retry(item, result.error)
                else:
                    self._deliver(result)
        except grpc.aio.AioRpcError as exc:
            rpc_error = exc
        finally:
            self._calls.discard(call)
            stream.closing = True
            self._notify()
            if self._stop:
                writer.cancel()
            # The writer wakes up on `closing` and ends by itself; cancel only a stuck one.
            done, _ = await asyncio.wait({writer}, timeout=2.0)
            if not done:
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        error: ClientError | None = None
        if rpc_error is not None:
            error = error_from_rpc(rpc_error, self._target)
            if error.code == grpc.StatusCode.INTERNAL and write_failed:
                # grpc.aio race: when the server ends a stream while a write is in flight, the
                # failed write overwrites the server's status with INTERNAL "Internal error from
                # Core". The stream broke in transport, so treat it like UNAVAILABLE (re-send).
                reason = f"the stream broke while sending ({error.message})"
                error = UnavailableError(grpc.StatusCode.UNAVAILABLE, reason, self._target)
        leftovers = list(stream.pending.values())
        stream.pending.clear()
        if leftovers:
            error = error or InternalError(
                grpc.StatusCode.INTERNAL,
                "the server ended the stream without answering every item",
                self._target,
            )
            for item in leftovers:
                self._fail_or_retry(item, error)

    def _fail_or_retry(self, item: BatchItem, error: ClientError | None) -> None:
        assert error is not None
        when = retry_at(item, error, self._retry, self._stop)
        if when is not None:
            item.not_before = when
            self._retry_queue.append(item)
            self._notify()
            return
        self._deliver(result_for_error(item, error))

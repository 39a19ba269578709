"""`AsyncClient`: the asyncio pixforge client (grpc.aio), same API as `Client` but awaitable.

    import asyncio, contextlib
    from pixforge.client import AsyncClient

    async def main():
        async with AsyncClient("localhost:50051") as client:
            png = await client.translate("photo.jpg", "sr-x4")
            async with contextlib.aclosing(client.translate_many(paths, "sr-x4", concurrency=16)) as results:
                async for result in results:
                    ...

    asyncio.run(main())

It may be created anywhere (settings are checked at once); its channel opens on first use, in
the running event loop, and belongs to that loop (grpc.aio channels do): use it from that loop
only, or a clear RuntimeError says so. Channel settings, retries, deadlines and load balancing
are those of `Client` (`ClientConfig`). `translate_many` runs the same algorithm as the sync
client, the one in stream_core.py (a bounded window of outstanding items over one or more
TranslateStream calls, per-item results, re-sending unanswered items of a broken stream with
backoff): AsyncStreamBatch is its asyncio front end, as stream.StreamBatch is its threaded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

import grpc
import grpc.aio
import numpy as np
from grpc_health.v1 import health_pb2

from pixforge.v1 import translation_pb2 as pb

from .client import HEALTH_STATUS_NAMES, ClientBase
from .errors import (
    ClientClosedError,
    ClientError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    error_from_rpc,
)
from .images import ImageInput, ImageInputError, decode_output, image_bytes
from .stream_core import IDLE_WAIT_S, BatchCore, BatchItem, Pull, StreamState, Wait
from .types import ModelInfo, TranslateKeywords, TranslateParams, TranslateResult, TranslateSettings

if TYPE_CHECKING:
    # Only type checkers read it (annotations are strings here), so Python 3.10 runs without
    # typing.Unpack (3.11+) and without the typing_extensions dependency.
    from typing import Unpack

P = ParamSpec("P")
T = TypeVar("T")


async def _read_input(image: ImageInput) -> bytes:
    # Bytes are free; file reads and PNG encoding leave the event loop.
    if isinstance(image, (bytes, bytearray, memoryview)):
        return image_bytes(image)
    return await asyncio.to_thread(image_bytes, image)


class AsyncClient(ClientBase):
    """Asyncio client of a pixforge server (or several, load-balanced).

    Args:
        target: "host:port", "dns:///host:port", a list of "host:port" or a comma-separated string.
        token: bearer token for servers that require one.
        tls: False (plaintext), True (TLS, system roots) or a path to a PEM root-certificate file.
        **settings: any other ClientConfig field (timeout, retry, load_balancing, ...).

    Raises:
        ClientConfigError: an invalid setting.
    """

    _grpc = grpc.aio
    # Opened on first use, inside the running loop: constructing the client outside one (at
    # import time, before asyncio.run) must not bind the channel to a loop that never runs it.
    _lazy_channel = True
    _loop: asyncio.AbstractEventLoop | None = None

    def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        super()._open()

    def _live(self) -> Any:
        """The channel, opened on first use in the running loop (see ClientBase._live).

        Raises:
            ClientClosedError: the client is closed.
            RuntimeError: called from another event loop than the one the channel belongs to.
        """
        channel = super()._live()
        if self._loop is not asyncio.get_running_loop():
            raise RuntimeError(
                "this AsyncClient's channel belongs to another event loop (grpc.aio channels are "
                "bound to the loop that opened them): create one client per event loop"
            )
        return channel

    async def close(self) -> None:
        """Close the channel, cancelling in-flight calls; later calls raise ClientClosedError."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the channel is connected (see Client.wait_ready).

        Raises:
            UnavailableError: no server answered in time.
            ClientClosedError: the client is closed.
        """
        budget = self._budget(timeout)
        try:
            await asyncio.wait_for(self._live().channel_ready(), timeout=budget)
        except asyncio.TimeoutError:
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE, "no server became reachable in time", self._target
            ) from None

    async def _call(self, method, request, timeout: float | None):
        """One unary call within its deadline budget, re-sent while the server is busy (see retry.py)."""
        deadline = time.monotonic() + self._budget(timeout)
        attempt = 1
        while True:
            try:
                return await method(request, timeout=deadline - time.monotonic(), metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                error = error_from_rpc(exc, self._target)
            wait = self._retry_wait(error, attempt, deadline)
            if wait is None:
                raise error
            await asyncio.sleep(wait)
            self._live()  # closed meanwhile: ClientClosedError rather than gRPC's UsageError
            attempt += 1

    @overload
    async def translate(
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
    async def translate(
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
    async def translate(
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

    async def translate(
        self,
        image: ImageInput,
        model: str | None = None,
        output_format: str | None = None,
        *,
        params: TranslateParams | None = None,
        request_id: str = "",
        **options: Unpack[TranslateKeywords],
    ) -> bytes | np.ndarray:
        """Translate one image (see Client.translate for arguments, returns and errors)."""
        params = TranslateParams.resolve(params, model, output_format, options)
        stub = self._api()
        try:
            data = await _read_input(image)
        except ImageInputError as exc:
            raise InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        response = await self._call(stub.Translate, params.request(data, request_id), params.timeout)
        if params.as_array:
            return await asyncio.to_thread(decode_output, response.image)
        return response.image

    def translate_many(
        self,
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        model: str | None = None,
        output_format: str | None = None,
        *,
        params: TranslateParams | None = None,
        concurrency: int = 4,
        ordered: bool = True,
        streams: int | None = None,
        **options: Unpack[TranslateKeywords],
    ) -> AsyncIterator[TranslateResult]:
        """Translate many images over TranslateStream calls (see Client.translate_many).

        `images` may be a sync or an async iterable. Use `contextlib.aclosing` (or exhaust the
        iterator) so that breaking out of the loop cancels the remaining work at once.

        Returns:
            An async iterator of TranslateResult, one per input item.

        Raises:
            InvalidArgumentError: bad options (raised before any traffic).
            ClientClosedError: the client is closed.
        """
        params = TranslateParams.resolve(params, model, output_format, options)
        core = self._batch_core(params, concurrency, ordered, streams)
        if self._closed:
            raise ClientClosedError(self._target)
        return self._run_batch(core, images)

    async def _run_batch(
        self, core: BatchCore, images: Iterable[ImageInput] | AsyncIterable[ImageInput]
    ) -> AsyncIterator[TranslateResult]:
        # translate_many itself is no coroutine and may run outside the loop: the channel opens
        # here, in the loop that iterates; aclosing forwards an early exit to the batch at once.
        batch = AsyncStreamBatch(self._api(), core, images, self._metadata)
        async with contextlib.aclosing(batch.run()) as results:
            async for result in results:
                yield result

    async def list_models(self, timeout: float | None = None) -> list[ModelInfo]:
        """Every model version the server knows (see Client.list_models)."""
        response = await self._call(self._api().ListModels, pb.ListModelsRequest(), timeout)
        return [ModelInfo.from_proto(m) for m in response.models]

    async def get_model(self, name: str, version: int = 0, timeout: float | None = None) -> ModelInfo:
        """Describe one model (see Client.get_model); raises NotFoundError."""
        response = await self._call(
            self._api().GetModel, pb.GetModelRequest(name=name, version=version), timeout
        )
        return ModelInfo.from_proto(response.model)

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        """grpc.health.v1 status of the server or of `service` (see Client.health)."""
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = await self._call(self._health_api().Check, request, timeout)
        except NotFoundError as exc:
            raise self._health_error(exc, service) from None
        return HEALTH_STATUS_NAMES.get(response.status, "UNKNOWN")


_END = object()


class AsyncStreamBatch:
    """One `AsyncClient.translate_many` run; `run()` is the async generator of results.

    The asyncio front end of stream_core.BatchCore (same arguments as stream.StreamBatch): one
    task per TranslateStream call, plus a writer task per call, plus a watchdog task that wakes at
    the earliest per-item deadline and cancels the calls BatchCore.watch names; every BatchCore
    event is followed by a notification that wakes the waiting senders.
    """

    def __init__(
        self,
        stub,
        core: BatchCore,
        images: Iterable[Any] | AsyncIterable[Any],
        metadata: tuple[tuple[str, str], ...],
    ):
        self._stub = stub
        self._core = core
        if isinstance(images, AsyncIterable):
            self._aiter: AsyncIterator[Any] | None = aiter(images)
            self._iter = None
        else:
            self._aiter = None
            self._iter = iter(images)
        self._metadata = metadata
        self._calls: dict[StreamState, Any] = {}  # the live gRPC call of each stream
        self._results: asyncio.Queue[TranslateResult | None] = asyncio.Queue()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ signalling

    def _event(self, handler: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one BatchCore event, queue what it delivered and wake the waiting senders."""
        value = handler(*args, **kwargs)
        for result in self._core.drain():
            self._results.put_nowait(result)
        self._changed.set()
        self._changed = asyncio.Event()
        return value

    async def _wait(self, seconds: float) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ caller side

    async def run(self) -> AsyncGenerator[TranslateResult, None]:
        """Yield TranslateResults (in input order when ordered=True)."""
        workers = [asyncio.create_task(self._worker()) for _ in range(self._core.streams)]  # capped
        workers.append(asyncio.create_task(self._watchdog()))

        async def close_when_done() -> None:
            await asyncio.gather(*workers, return_exceptions=True)
            await self._results.put(None)

        closer = asyncio.create_task(close_when_done())
        try:
            while True:
                result = await self._results.get()
                if result is None:
                    if self._core.fatal is not None:
                        raise self._core.fatal
                    break
                for ready in self._event(self._core.arrived, result):
                    self._event(self._core.release)
                    yield ready
        finally:
            self._event(self._core.stop)
            for call in list(self._calls.values()):
                call.cancel()
            for task in workers:
                task.cancel()
            closer.cancel()
            await asyncio.gather(*workers, closer, return_exceptions=True)

    # ------------------------------------------------------------------ feeding

    async def _next_source(self) -> Any:
        if self._aiter is not None:
            return await anext(self._aiter)
        # A StopIteration must not cross a coroutine boundary (it becomes RuntimeError).
        source = next(self._iter, _END)  # type: ignore[arg-type]
        if source is _END:
            raise StopAsyncIteration
        return source

    async def _take(self, stream: StreamState) -> BatchItem | None:
        """Next item to send on `stream`, or None when the stream should half-close."""
        while True:
            step = self._core.next_step(stream, time.monotonic())
            while isinstance(step, Wait):
                await self._wait(step.seconds)
                step = self._core.next_step(stream, time.monotonic())
            if isinstance(step, BatchItem):
                self._event(lambda: None)  # a new deadline: the watchdog re-computes its wait
            if not isinstance(step, Pull):
                return step  # an item to send, or None: half-close
            try:
                source = await self._next_source()
            except StopAsyncIteration:
                self._event(self._core.source_ended)
                continue
            except Exception as exc:  # the caller's iterable failed: surface it to the caller
                self._event(self._core.source_failed, exc)
                return None
            index = self._event(self._core.pulled)
            try:
                data = await _read_input(source)
            except ImageInputError as exc:
                self._event(self._core.unreadable, index, source, exc)
                continue
            if self._event(self._core.oversized, index, source, data):
                continue
            return self._event(self._core.admit, stream, index, source, data, time.monotonic())

    # ------------------------------------------------------------------ streams

    async def _watchdog(self) -> None:
        """Cancel the calls of streams holding an item past its deadline (BatchCore.watch)."""
        try:
            while True:
                changed = self._changed  # before watch: a later event must wake the wait below
                cancel, wait = self._core.watch(time.monotonic())
                if cancel:
                    self._event(lambda: None)  # queue the expired items' results, wake senders
                    # A stream with no call yet is cancelled by its task as soon as it has one.
                    for stream in cancel:
                        call = self._calls.get(stream)
                        if call is not None:
                            call.cancel()
                if wait is None:
                    return
                if not cancel:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(changed.wait(), timeout=wait)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not hang the caller: hand it over
            self._event(self._core.crashed, exc)

    async def _worker(self) -> None:
        try:
            while True:
                stream = StreamState()
                first = await self._take(stream)
                if first is None:
                    if self._core.senders_done:
                        return
                    await self._wait(IDLE_WAIT_S)
                    continue
                self._event(self._core.start_stream, stream, time.monotonic())
                await self._run_stream(stream, first)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not hang the caller: hand it over
            self._event(self._core.crashed, exc)

    async def _run_stream(self, stream: StreamState, first: BatchItem) -> None:
        core = self._core
        call = self._stub.TranslateStream(timeout=core.call_timeout, metadata=self._metadata)
        self._calls[stream] = call
        if stream.cancelled:  # an item passed its deadline before the call existed
            call.cancel()

        write_failed = False

        async def write_all() -> None:
            nonlocal write_failed
            item: BatchItem | None = first
            try:
                while item is not None:
                    await call.write(core.request(item))
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
                item = self._event(core.match, stream, response.request_id)
                if item is None:
                    continue
                if core.params.as_array and not response.error_code:
                    result, retryable = await asyncio.to_thread(core.result_for, item, response)
                else:
                    result, retryable = core.result_for(item, response)
                self._event(core.settle, item, result, retryable, time.monotonic())
        except grpc.aio.AioRpcError as exc:
            rpc_error = exc
        except asyncio.CancelledError:
            # The watchdog cancelled the call (an item passed its deadline; the core has already
            # settled every item of the stream): the stream is over, this task goes on. Any other
            # cancellation (the batch is torn down: stop() came first) propagates.
            if not stream.cancelled or core.stopping:
                raise
        finally:
            self._calls.pop(stream, None)
            self._event(core.close_stream, stream)
            if core.stopping or stream.cancelled:
                writer.cancel()  # a write pending on a cancelled call may never return
            # The writer wakes up on `closing` and ends by itself; cancel only a stuck one.
            done, _ = await asyncio.wait({writer}, timeout=2.0)
            if not done:
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        error: ClientError | None = None
        if rpc_error is not None:
            error = error_from_rpc(rpc_error, core.target)
            if error.code == grpc.StatusCode.INTERNAL and write_failed:
                # grpc.aio race: when the server ends a stream while a write is in flight, the
                # failed write overwrites the server's status with INTERNAL "Internal error from
                # Core". The stream broke in transport, so treat it like UNAVAILABLE (re-send).
                reason = f"the stream broke while sending ({error.message})"
                error = UnavailableError(grpc.StatusCode.UNAVAILABLE, reason, core.target)
        self._event(core.end_stream, stream, error, time.monotonic())

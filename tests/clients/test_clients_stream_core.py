"""BatchCore, the I/O-free core of translate_many, driven with fake events and a fake clock.

No server, no threads, no event loop: each test plays what a front end would report (an input
pulled, a response, a stream's end, the time) and checks the core's decisions and deliveries.
"""

from __future__ import annotations

import sys
import tracemalloc

import grpc
import pytest

from pixforge.client import (
    CancelledError,
    ClientConfig,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    RetryPolicy,
    UnavailableError,
)
from pixforge.clients.errors import RequestTooLargeError, error_from_code
from pixforge.clients.images import ImageInputError
from pixforge.clients.stream_core import (
    IDLE_WAIT_S,
    MAX_STREAMS,
    PULL,
    BatchCore,
    BatchItem,
    StreamState,
    Wait,
    count_streams,
)
from pixforge.clients.types import TranslateParams
from pixforge.v1 import translation_pb2 as pb

FAST = RetryPolicy(max_attempts=3, initial_backoff=0.5, max_backoff=0.5)
UNAVAILABLE = UnavailableError(grpc.StatusCode.UNAVAILABLE, "server restarting", "t")


def make_core(
    *,
    concurrency: int = 2,
    streams: int = 1,
    ordered: bool = True,
    retry: RetryPolicy = FAST,
    timeout: float | None = None,
) -> BatchCore:
    config = ClientConfig("127.0.0.1:1", timeout=5.0, stream_duration=10.0, retry=retry)
    params = TranslateParams("invert", timeout=timeout)
    return BatchCore(
        params, config, concurrency=concurrency, streams=streams, ordered=ordered, target="t", prefix="b"
    )


def send_new(core: BatchCore, stream: StreamState, now: float = 0.0) -> BatchItem:
    """Play one PULL: the input gives an item, it is encoded and admitted on `stream`."""
    assert core.next_step(stream, now) is PULL
    index = core.pulled()
    item = core.admit(stream, index, f"src{index}", b"data", now)
    assert item is not None
    return item


def answer(index: int, request_id: str, code: grpc.StatusCode | None = None, pushback_ms: int = 0):
    if code is None:
        return pb.TranslateStreamResponse(
            request_id=request_id, response=pb.TranslateResponse(image=f"out{index}".encode(), width=1)
        )
    return pb.TranslateStreamResponse(
        request_id=request_id, error_code=code.value[0], error_message="no", retry_pushback_ms=pushback_ms
    )


def settle(core: BatchCore, stream: StreamState, response, now: float = 0.0) -> None:
    item = core.match(stream, response.request_id)
    assert item is not None
    result, retryable = core.result_for(item, response)
    core.settle(item, result, retryable, now)


def test_the_window_bounds_what_is_taken_and_a_release_frees_a_slot():
    core = make_core(concurrency=2)
    stream = StreamState()
    first, second = send_new(core, stream), send_new(core, stream)
    assert (first.request_id, second.request_id) == ("b-0", "b-1") and first.attempts == 1
    assert core.outstanding == core.in_flight == 2
    assert core.next_step(stream, 0.0) == Wait(IDLE_WAIT_S)  # the window is full
    settle(core, stream, answer(0, "b-0"))
    assert core.in_flight == 1 and core.outstanding == 2  # delivered, not yet handed out
    (result,) = core.drain()
    assert result.ok and result.image == b"out0" and result.source == "src0"
    assert core.arrived(result) == [result]
    core.release()
    assert core.next_step(stream, 0.0) is PULL


def test_one_sender_pulls_at_a_time():
    core = make_core(concurrency=4, streams=2)
    a, b = StreamState(), StreamState()
    assert core.next_step(a, 0.0) is PULL
    assert isinstance(core.next_step(b, 0.0), Wait)  # a is still pulling
    core.pulled()
    assert core.next_step(b, 0.0) is PULL


def test_the_end_of_the_input_half_closes_and_finishes_the_batch():
    core = make_core()
    stream = StreamState()
    send_new(core, stream)
    assert core.next_step(stream, 0.0) is PULL
    core.source_ended()
    assert core.exhausted and core.outstanding == core.in_flight == 1
    assert core.next_step(stream, 0.0) is None and not core.finished and not core.senders_done
    settle(core, stream, answer(0, "b-0"))
    assert core.finished and core.senders_done and len(core.drain()) == 1


def test_a_response_without_a_known_id_answers_the_oldest_pending_item():
    core = make_core()
    stream = StreamState()
    send_new(core, stream)
    send_new(core, stream)
    assert core.match(stream, "").index == 0
    assert core.match(stream, "b-1").index == 1
    assert core.match(stream, "") is None  # a stray response


def test_a_broken_stream_requeues_its_items_with_backoff_then_resends_them():
    core = make_core()
    stream = StreamState()
    core.start_stream(stream, 100.0)
    send_new(core, stream, 100.0), send_new(core, stream, 100.0)
    core.end_stream(stream, UNAVAILABLE, now=100.0)
    assert stream.closing and not stream.pending and core.drain() == []
    fresh = StreamState()
    early = core.next_step(fresh, 100.0)
    # Full-jitter backoff in [0, 0.5]: either already due or a wait within it.
    assert isinstance(early, (Wait, BatchItem))
    if isinstance(early, Wait):
        assert early.seconds <= 0.5
    resent = [early] if isinstance(early, BatchItem) else []
    while len(resent) < 2:
        step = core.next_step(fresh, 100.5)
        assert isinstance(step, BatchItem)
        resent.append(step)
    assert sorted(i.index for i in resent) == [0, 1] and {i.attempts for i in resent} == {2}
    assert set(fresh.pending) == {"b-0", "b-1"} and core.in_flight == 2


def test_retries_give_up_after_max_attempts():
    core = make_core(retry=RetryPolicy(max_attempts=1))
    stream = StreamState()
    send_new(core, stream)
    core.end_stream(stream, UNAVAILABLE, now=0.0)
    (result,) = core.drain()
    assert result.error is UNAVAILABLE and result.attempts == 1 and core.in_flight == 0


def test_retry_seconds_keep_retrying_past_max_attempts_for_a_while():
    core = make_core(
        retry=RetryPolicy(max_attempts=1, initial_backoff=0.1, max_backoff=0.1, retry_seconds=30)
    )
    stream = StreamState()
    item = send_new(core, stream, 100.0)
    core.end_stream(stream, UNAVAILABLE, now=100.0)  # first failure: retried though attempts are used up
    assert core.drain() == [] and item.first_failure == 100.0
    again = StreamState()
    assert core.next_step(again, 101.0) is item
    core.end_stream(again, UNAVAILABLE, now=129.0)  # still within 30 s of the first failure
    assert core.drain() == []
    last = StreamState()
    assert core.next_step(last, 130.0) is item
    core.end_stream(last, UNAVAILABLE, now=131.0)
    (result,) = core.drain()
    assert result.attempts == 3 and not result.ok


def test_item_errors_are_delivered_unless_retryable_and_a_negative_pushback_means_never():
    core = make_core(concurrency=3)
    stream = StreamState()
    for _ in range(3):
        send_new(core, stream)
    settle(core, stream, answer(0, "b-0", grpc.StatusCode.INVALID_ARGUMENT))
    settle(core, stream, answer(1, "b-1", grpc.StatusCode.RESOURCE_EXHAUSTED, pushback_ms=-1))
    settle(core, stream, answer(2, "b-2", grpc.StatusCode.RESOURCE_EXHAUSTED, pushback_ms=2000), now=5.0)
    delivered = core.drain()
    assert [r.index for r in delivered] == [0, 1]
    assert [r.error.code_name for r in delivered] == ["INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"]
    # The server's pushback is the least wait: not due before t=7.
    assert core.next_step(StreamState(), 6.9) == Wait(pytest.approx(0.1))
    assert core.next_step(StreamState(), 7.0).index == 2


def test_failed_precondition_is_delivered_and_unavailable_is_retried():
    # "Model still loading" is UNAVAILABLE (retried); a model that cannot serve is final.
    core = make_core(concurrency=2)
    stream = StreamState()
    send_new(core, stream)
    send_new(core, stream)
    settle(core, stream, answer(0, "b-0", grpc.StatusCode.FAILED_PRECONDITION))
    settle(core, stream, answer(1, "b-1", grpc.StatusCode.UNAVAILABLE), now=1.0)
    (delivered,) = core.drain()
    assert delivered.index == 0 and delivered.error.code_name == "FAILED_PRECONDITION"
    assert core.next_step(StreamState(), 2.0).index == 1  # re-sent after the backoff


def test_a_stream_killed_by_an_oversized_request_fails_that_item_only():
    core = make_core(concurrency=2)
    stream = StreamState()
    big = send_new(core, stream)
    assert core.next_step(stream, 0.0) is PULL
    small = core.admit(stream, core.pulled(), "small", b"x", 0.0)
    big.data = b"x" * 500  # over the limit below; the other item is not
    error = error_from_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "SERVER: Received message larger than max (520 vs. 100)", "t"
    )
    assert isinstance(error, RequestTooLargeError) and error.limit == 100
    core.end_stream(stream, error, now=0.0)
    (failed,) = core.drain()
    assert failed.index == big.index and failed.error is error and failed.attempts == 1
    assert core.next_step(StreamState(), 1.0) is small  # the bystander is re-sent


def test_an_item_over_the_clients_send_limit_is_delivered_unsent():
    core = make_core()
    stream = StreamState()
    assert core.next_step(stream, 0.0) is PULL
    assert core.oversized(core.pulled(), "big", b"x" * (core.max_message_bytes + 1))
    (result,) = core.drain()
    assert isinstance(result.error, RequestTooLargeError) and result.attempts == 0
    assert not result.error.retryable and core.in_flight == 0
    assert core.next_step(stream, 0.0) is PULL
    assert not core.oversized(core.pulled(), "small", b"x")


def test_a_stream_that_ends_cleanly_with_items_unanswered_fails_them_as_internal():
    core = make_core()
    stream = StreamState()
    send_new(core, stream)
    core.end_stream(stream, None, now=0.0)
    (result,) = core.drain()
    assert isinstance(result.error, InternalError) and "without answering" in result.error.message


def test_streams_rotate_after_stream_duration():
    core = make_core(concurrency=4)
    stream = StreamState()
    core.start_stream(stream, 0.0)
    send_new(core, stream, 0.0)
    assert core.next_step(stream, 9.9) is PULL
    core.pulled()
    assert core.next_step(stream, 10.0) is None  # fed long enough: half-close
    assert core.call_timeout == 15.0  # stream_duration + the per-item timeout


def test_an_item_encoded_after_its_stream_closed_goes_to_the_next_stream():
    core = make_core()
    stream = StreamState()
    assert core.next_step(stream, 0.0) is PULL
    index = core.pulled()
    core.close_stream(stream)
    assert core.admit(stream, index, "src0", b"data", 0.0) is None
    other = StreamState()
    item = core.next_step(other, 0.0)
    assert isinstance(item, BatchItem) and item.index == 0 and item.attempts == 1


def test_ordered_results_wait_for_earlier_ones_unordered_do_not():
    ordered, unordered = make_core(concurrency=3), make_core(concurrency=3, ordered=False)
    for core in (ordered, unordered):
        stream = StreamState()
        for _ in range(3):
            send_new(core, stream)
        for i in (2, 0, 1):
            settle(core, stream, answer(i, f"b-{i}"))
    o = ordered.drain()
    assert [[r.index for r in ordered.arrived(r)] for r in o] == [[], [0], [1, 2]]
    u = unordered.drain()
    assert [[r.index for r in unordered.arrived(r)] for r in u] == [[2], [0], [1]]


def test_unreadable_inputs_fail_alone_and_a_failing_input_stops_the_batch():
    core = make_core()
    stream = StreamState()
    assert core.next_step(stream, 0.0) is PULL
    core.unreadable(core.pulled(), "bad.png", ImageInputError("cannot read image file bad.png"))
    (result,) = core.drain()
    assert isinstance(result.error, InvalidArgumentError) and result.index == 0
    assert core.next_step(stream, 0.0) is PULL
    boom = RuntimeError("disk on fire")
    core.source_failed(boom)
    assert core.fatal is boom and core.finished and core.next_step(stream, 0.0) is None


def test_after_stop_failures_are_delivered_not_retried():
    core = make_core()
    stream = StreamState()
    send_new(core, stream)
    core.stop()
    assert core.next_step(stream, 0.0) is None
    core.end_stream(stream, UNAVAILABLE, now=0.0)
    assert [r.error for r in core.drain()] == [UNAVAILABLE]


@pytest.mark.parametrize(
    "requested, concurrency, listed, expected",
    [
        (None, 4, 1, 1),
        (None, 16, 1, 4),
        (None, 4, 3, 3),
        (None, 2, 5, 2),
        (8, 3, 1, 3),
        (2, 16, 1, 2),
        # Capped at MAX_STREAMS (64), however big the window or the explicit request...
        (None, 10**7, 1, 64),
        (None, 257, 1, 64),
        (10**6, 10**7, 1, 64),
        # ...but one stream per listed server always.
        (None, 10**7, 100, 100),
        (200, 10**7, 100, 100),
    ],
)
def test_count_streams(requested, concurrency, listed, expected):
    assert count_streams(requested, concurrency, listed) == expected


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="streams"):
        count_streams(0, 4, 1)
    with pytest.raises(ValueError, match="concurrency"):
        make_core(concurrency=0)


# --------------------------------------------------------------------------- the stream cap


def test_a_huge_window_plans_capped_streams_and_allocates_nothing_per_slot():
    assert MAX_STREAMS == 64
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        core = make_core(concurrency=10**7, streams=count_streams(None, 10**7, 1))
        streams = [StreamState() for _ in range(core.streams)]
        for stream in streams[:3]:
            send_new(core, stream)
        grown = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert core.streams == MAX_STREAMS
    assert grown < 200_000, grown  # a few items' worth, not 10**7 slots
    for name, value in vars(core).items():
        if hasattr(value, "__len__") and not isinstance(value, str):
            assert len(value) <= MAX_STREAMS, name
        assert sys.getsizeof(value) < 10_000, name
    assert core.next_step(streams[3], 0.0) is PULL  # the window is far from full


# --------------------------------------------------------------------------- per-item deadlines


def test_an_item_past_its_deadline_fails_alone_and_its_streams_other_items_are_resent():
    core = make_core(concurrency=3)  # timeout 5 s (the config's)
    stream = StreamState()
    core.start_stream(stream, 0.0)
    for now in (0.0, 1.0, 2.0):
        send_new(core, stream, now)
    assert core.next_deadline() == 5.0  # counted from when each item was sent
    assert core.expire(4.99) == [] and core.drain() == []
    assert core.watch(4.9) == ([], pytest.approx(0.1))
    assert core.expire(5.0) == [stream]  # the front end cancels this stream's call
    assert stream.cancelled and stream.closing and not stream.pending
    (late,) = core.drain()
    assert late.index == 0 and isinstance(late.error, DeadlineExceededError)
    assert late.error.code == grpc.StatusCode.DEADLINE_EXCEEDED and late.attempts == 1
    assert not late.error.retryable and "per-item timeout of 5 s" in late.error.message
    assert core.in_flight == 2 and core.next_step(stream, 5.0) is None  # send nothing more on it
    # The others did not fail: due at once (no backoff) on another stream, each with a fresh
    # deadline counted from the new send; `attempts` counts that send.
    fresh = StreamState()
    resent = [core.next_step(fresh, 5.5), core.next_step(fresh, 5.5)]
    assert [i.index for i in resent] == [1, 2] and [i.attempts for i in resent] == [2, 2]
    assert all(i.first_failure == 0.0 for i in resent)  # the retry policy was not consulted
    assert core.next_deadline() == 10.5
    # The cancelled call ends (CANCELLED) and a late answer on it is ignored.
    assert core.match(stream, "b-0") is None
    core.end_stream(stream, CancelledError(grpc.StatusCode.CANCELLED, "cancelled", "t"), 5.6)
    assert core.drain() == [] and core.expire(10.0) == []
    settle(core, fresh, answer(1, "b-1"), 6.0)
    settle(core, fresh, answer(2, "b-2"), 6.0)
    assert [r.ok for r in core.drain()] == [True, True] and core.in_flight == 0


def test_every_item_past_its_deadline_fails_at_once():
    core = make_core(concurrency=4, streams=2, timeout=1.0)  # params.timeout wins over config's
    a, b = StreamState(), StreamState()
    send_new(core, a, 0.0)
    send_new(core, a, 0.5)
    send_new(core, b, 0.2)
    send_new(core, a, 1.2)
    assert core.next_deadline() == 1.0
    assert set(core.expire(1.5)) == {a, b}
    assert sorted(r.index for r in core.drain()) == [0, 1, 2]
    assert core.next_step(StreamState(), 1.5).index == 3  # not yet due: re-sent
    assert core.in_flight == 1


def test_an_item_expires_while_its_stream_is_still_connecting():
    # A frozen server that accepted the connection but never answers: the first item is handed
    # to the call before the call has started (or ever connects); its deadline still runs.
    core = make_core(concurrency=1, timeout=0.5)
    stream = StreamState()
    send_new(core, stream, 100.0)  # no start_stream, no response: the call is still connecting
    assert core.watch(100.3) == ([], pytest.approx(0.2))
    cancel, wait = core.watch(100.5)
    assert cancel == [stream] and stream.cancelled
    assert wait is not None  # the input is not exhausted: the watchdog keeps watching
    (result,) = core.drain()
    assert result.error.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_resent_item_gets_a_fresh_deadline_and_an_answered_one_none():
    core = make_core(concurrency=2)
    stream = StreamState()
    send_new(core, stream, 0.0)
    send_new(core, stream, 1.0)
    core.end_stream(stream, UNAVAILABLE, now=2.0)  # retried with backoff <= 0.5 s
    fresh = StreamState()
    resent = [core.next_step(fresh, 3.0), core.next_step(fresh, 3.0)]
    assert [i.deadline for i in resent] == [8.0, 8.0]
    settle(core, fresh, answer(0, "b-0"), 4.0)
    assert core.next_deadline() == 8.0 and core.expire(7.9) == []
    settle(core, fresh, answer(1, "b-1"), 4.0)
    assert core.next_deadline() == float("inf") and core.expire(100.0) == []


def test_the_watchdog_waits_for_the_earliest_deadline_and_stops_with_the_batch():
    core = make_core(concurrency=2, timeout=0.1)
    stream = StreamState()
    assert core.watch(0.0) == ([], IDLE_WAIT_S)  # nothing in flight: idle wake-ups only
    send_new(core, stream, 0.0)
    assert core.watch(0.04) == ([], pytest.approx(0.06))
    assert core.next_step(stream, 0.05) is PULL
    core.source_ended()
    settle(core, stream, answer(0, "b-0"), 0.05)
    assert core.finished and core.watch(0.06) == ([], None)
    stopped = make_core()
    send_new(stopped, StreamState(), 0.0)
    stopped.stop()
    assert stopped.watch(100.0) == ([], None)  # torn down: the front end cancels everything

"""The request runner (service/runner.py): work runs on a worker bound to the caller's deadline,
and the error it raises says whether the deadline passed or the client went away."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pixforge.service.admission import Admission
from pixforge.service.errors import RequestCancelledError, RequestExpiredError
from pixforge.service.pipeline import CancelToken
from pixforge.service.runner import DEADLINE_SLACK_S, RequestRunner, interrupted_code


def make_runner() -> RequestRunner:
    return RequestRunner(Admission(max_running=1, max_queued=4, max_queued_seconds=10), workers=1)


def test_runs_the_work_and_returns_its_result():
    runner = make_runner()
    try:
        result, waited_ms = asyncio.run(runner.run("m", 1, None, lambda token: 41 + 1))
        assert result == 42 and waited_ms >= 0
    finally:
        runner.close()


def test_expired_on_arrival_is_deadline_exceeded_and_never_runs():
    runner = make_runner()
    ran = []
    try:
        with pytest.raises(RequestExpiredError):
            asyncio.run(runner.run("m", 1, 0.0, lambda token: ran.append(1)))
        assert ran == [] and runner.admission.running == 0
    finally:
        runner.close()


def test_deadline_passing_mid_work_is_deadline_exceeded():
    runner = make_runner()
    started = threading.Event()

    def work(token: CancelToken) -> None:
        started.set()
        for _ in range(500):  # a tiled request: checks its token between tiles
            token.check()
            threading.Event().wait(0.01)
        raise AssertionError("the deadline never cancelled the work")

    try:
        with pytest.raises(RequestExpiredError):
            asyncio.run(runner.run("m", 1, 0.2, work))
        assert started.is_set()
    finally:
        runner.close()


def test_a_cancelled_parent_is_a_cancel_not_a_deadline():
    runner = make_runner()
    parent = CancelToken()
    parent.cancel()
    try:
        with pytest.raises(RequestCancelledError) as info:
            asyncio.run(runner.run("m", 1, 30.0, lambda token: token.check(), parent))
        assert not isinstance(info.value, RequestExpiredError)
    finally:
        runner.close()


def test_a_call_cancelled_at_its_deadline_counts_as_expired():
    now = time.perf_counter()
    assert interrupted_code(None, now - 100) == "CANCELLED"  # no deadline: the client cancelled
    assert interrupted_code(30.0, now) == "CANCELLED"  # long before the deadline
    assert interrupted_code(1.0, now - 1.0) == "DEADLINE_EXCEEDED"
    # The client's clock runs the deadline out a transit time before the server's copy.
    assert interrupted_code(1.0, now - 1.0 + DEADLINE_SLACK_S / 2) == "DEADLINE_EXCEEDED"

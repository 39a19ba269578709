"""Timing loops and their summaries: warm-up, time budget, p50/p99, interleaved comparisons.

On a shared or noisy machine absolute numbers drift; ratios taken *within one run* drift much
less, especially when the cases are interleaved (A B A B ...) so that every case sees the same
background load. :func:`interleave` does that and :func:`round_ratios` turns it into one robust
ratio per pair (the median of the per-round ratios).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

_T0 = time.perf_counter()


def progress(message: str) -> None:
    """One progress line on stderr (stdout is kept for the figures)."""
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation); NaN for no values."""
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, np.float64), q))


def summarize(latencies_s: list[float], items_per_call: int = 1) -> dict:
    """Latency percentiles (ms) and throughput (items/s) of sequential calls.

    Args:
        latencies_s: seconds per call.
        items_per_call: images each call processed (the batch size).

    Returns:
        ``{"n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "images_per_s"}``; with fewer
        than 100 calls p99 is interpolated between the slowest calls, which the report says.
    """
    if not latencies_s:
        return {"n": 0}
    mean = sum(latencies_s) / len(latencies_s)
    return {
        "n": len(latencies_s),
        "p50_ms": round(percentile(latencies_s, 50) * 1000, 3),
        "p90_ms": round(percentile(latencies_s, 90) * 1000, 3),
        "p99_ms": round(percentile(latencies_s, 99) * 1000, 3),
        "mean_ms": round(mean * 1000, 3),
        "min_ms": round(min(latencies_s) * 1000, 3),
        "images_per_s": round(items_per_call / mean, 3) if mean > 0 else math.inf,
    }


def time_calls(
    fn: Callable[[], object],
    *,
    duration: float,
    min_calls: int = 2,
    max_calls: int = 10_000,
    warmup: int = 1,
) -> list[float]:
    """Call ``fn`` repeatedly for about ``duration`` seconds (at least ``min_calls`` times).

    Args:
        fn: the call to time; its result is discarded.
        duration: time budget in seconds for the timed calls.
        min_calls / max_calls: bounds on the number of timed calls.
        warmup: untimed calls first (allocation, kernel selection, lazy initialisation).

    Returns:
        Seconds per timed call.
    """
    for _ in range(warmup):
        fn()
    out: list[float] = []
    end = time.perf_counter() + duration
    while len(out) < max_calls and (len(out) < min_calls or time.perf_counter() < end):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


@dataclass
class Interleaved:
    """What :func:`interleave` measured: all latencies and the mean latency of every round."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    round_means: dict[str, list[float]] = field(default_factory=dict)


def interleave(
    cases: dict[str, Callable[[], object]],
    *,
    duration: float,
    rounds: int = 4,
    min_calls_per_round: int = 1,
    warmup: int = 1,
    on_round: Callable[[int], None] | None = None,
) -> Interleaved:
    """Time several cases A B C A B C ...: each round gives every case ``duration / rounds`` seconds.

    Args:
        cases: name -> call.
        duration: total seconds of timed calls per case.
        rounds: how many times the cases alternate.
        min_calls_per_round: at least this many timed calls per case and round.
        warmup: untimed calls per case before the first round.
        on_round: called with the round index after each round (progress).

    Returns:
        The :class:`Interleaved` latencies.
    """
    result = Interleaved({k: [] for k in cases}, {k: [] for k in cases})
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    per_round = duration / max(1, rounds)
    for r in range(rounds):
        for name, fn in cases.items():
            lat = time_calls(fn, duration=per_round, min_calls=min_calls_per_round, warmup=0)
            result.latencies[name].extend(lat)
            result.round_means[name].append(sum(lat) / len(lat))
        if on_round is not None:
            on_round(r)
    return result


def round_ratios(measured: Interleaved, baseline: str, case: str) -> dict:
    """How much faster ``case`` is than ``baseline`` (>1: faster), round by round.

    Returns:
        ``{"median": float, "min": float, "max": float, "rounds": [per-round ratios]}``.
    """
    base, other = measured.round_means[baseline], measured.round_means[case]
    ratios = [b / o for b, o in zip(base, other, strict=True) if o > 0]
    if not ratios:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "rounds": []}
    return {
        "median": round(float(np.median(ratios)), 3),
        "min": round(min(ratios), 3),
        "max": round(max(ratios), 3),
        "rounds": [round(x, 3) for x in ratios],
    }


def parse_int_list(text: str | None, default: list[int]) -> list[int]:
    """'1,4,16' -> [1, 4, 16]; None -> default.

    Raises:
        ValueError: a value that is not a positive integer (message names it).
    """
    if not text:
        return list(default)
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"expected positive integers separated by commas, got {part!r} in {text!r}")
        out.append(int(part))
    if not out:
        raise ValueError(f"no values in {text!r}")
    return out


def parse_name_list(text: str | None, default: list[str]) -> list[str]:
    """'a,b' -> ['a', 'b']; None -> default."""
    if not text:
        return list(default)
    return [p.strip() for p in text.split(",") if p.strip()]

"""Timing helpers of the benchmarks on known numbers (no timing assertions)."""

from __future__ import annotations

import math

import pytest

from pixforge.bench.stats import (
    Interleaved,
    interleave,
    parse_int_list,
    parse_name_list,
    percentile,
    round_ratios,
    summarize,
    time_calls,
)


def test_percentile_interpolates_and_handles_empty():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 100) == 5.0
    assert percentile([0.0, 10.0], 25) == 2.5
    assert math.isnan(percentile([], 50))


def test_summarize_known_latencies():
    s = summarize([0.1, 0.2, 0.3], items_per_call=2)
    assert s["n"] == 3
    assert s["p50_ms"] == pytest.approx(200.0)
    assert s["mean_ms"] == pytest.approx(200.0)
    assert s["min_ms"] == pytest.approx(100.0)
    assert s["p99_ms"] == pytest.approx(298.0)
    assert s["images_per_s"] == pytest.approx(10.0)  # 2 images per 0.2 s call
    assert summarize([]) == {"n": 0}


def test_round_ratios_is_the_median_of_per_round_ratios():
    measured = Interleaved(round_means={"eager": [2.0, 2.0, 3.0], "ort": [1.0, 0.5, 3.0]})
    r = round_ratios(measured, "eager", "ort")
    assert r["rounds"] == [2.0, 4.0, 1.0]
    assert (r["median"], r["min"], r["max"]) == (2.0, 1.0, 4.0)


def test_time_calls_honours_warmup_and_min_calls():
    calls = []
    lat = time_calls(lambda: calls.append(1), duration=0.0, min_calls=5, warmup=2)
    assert len(lat) == 5 and len(calls) == 7
    assert all(x >= 0 for x in lat)


def test_interleave_alternates_cases_round_by_round():
    order = []
    measured = interleave(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")},
        duration=0.0,
        rounds=3,
        min_calls_per_round=1,
        warmup=1,
    )
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-up, then A B per round
    assert len(measured.round_means["a"]) == len(measured.round_means["b"]) == 3
    assert len(measured.latencies["a"]) == 3


def test_list_parsers():
    assert parse_int_list("1, 4,16", [9]) == [1, 4, 16]
    assert parse_int_list(None, [9]) == [9]
    with pytest.raises(ValueError, match="positive integers"):
        parse_int_list("1,2.5", [])
    with pytest.raises(ValueError, match="no values"):
        parse_int_list(",", [])
    assert parse_name_list(" a, b ,", []) == ["a", "b"]

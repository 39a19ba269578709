"""benchmarks.md rendering from a hand-made suite record (tables, goals, plots, machine lines)."""

from __future__ import annotations

import json

import pytest

from pixforge.bench.report import (
    Plot,
    ReportError,
    SuiteRecord,
    Table,
    fmt,
    load_suite_jsons,
    write_report,
    write_suite_json,
)

RUN = {
    "started": "2026-11-23T00:00:00+00:00",
    "duration_s": 12.0,
    "load_start": [0.1, 0.1, 0.1],
    "load_end": [0.2, 0.1, 0.1],
    "command": "pixforge bench serving",
    "environment": {
        "machine": {
            "cpu": "Test CPU 9000",
            "cpus_available": 2,
            "logical_cpus": 4,
            "memory_gib": 8.0,
            "gpus": [],
        },
        "versions": {"python": "3.11.0", "onnxruntime": "1.0"},
    },
}


def _record(plot: bool) -> SuiteRecord:
    return SuiteRecord(
        suite="serving",
        title="Serving test suite",
        description="A hand-made record.",
        quick=False,
        settings={"threads": 2},
        tables=[
            Table("Per level", ["clients", "images/s", "ok"], [[1, 12.345, True], [4, 0.5, None]], "a note")
        ],
        plots=[
            Plot(
                "serving_test.png",
                "T",
                "clients",
                "images/s",
                [{"label": "a", "x": [1, 4], "y": [1.0, None]}],
                logx=True,
            )
        ]
        if plot
        else [],
        notes=["first note"],
        goals=[
            {"goal": "served >= 90 % of raw", "value": "95%", "met": True},
            {"goal": "p99 below 1 s", "value": "2 s", "met": False},
        ],
    )


def test_cell_format():
    assert [fmt(123.4), fmt(12.34), fmt(1.234), fmt(0.1234), fmt(None), fmt(True), fmt("a|b")] == [
        "123",
        "12.3",
        "1.23",
        "0.123",
        "–",
        "yes",
        "a\\|b",
    ]


def test_report_contains_tables_goals_and_machine(tmp_path):
    path = write_suite_json(_record(plot=False), tmp_path, RUN)
    assert path == tmp_path / "bench" / "serving.json"
    assert json.loads(path.read_text())["format"] == "pixforge.bench/1"
    md = write_report(tmp_path).read_text()
    assert md.startswith("# Benchmarks")
    assert "pixforge bench all --out docs" in md
    assert "## Serving test suite" in md
    assert "| clients | images/s | ok |" in md
    assert "| 1 | 12.3 | yes |" in md and "| 4 | 0.500 | – |" in md
    assert "| serving | served >= 90 % of raw | 95% | met |" in md
    assert "| serving | p99 below 1 s | 2 s | MISSED |" in md
    assert "Test CPU 9000 (2 CPUs available of 4" in md
    assert "- first note" in md
    assert "machine load was not controlled" not in md  # the load stayed low


def test_busy_machine_and_quick_runs_are_flagged(tmp_path):
    record = _record(plot=False)
    record.quick = True
    write_suite_json(record, tmp_path, {**RUN, "load_start": [3.5, 2.0, 1.0]})
    md = write_report(tmp_path).read_text()
    assert "machine load was not controlled" in md
    assert "quick smoke run" in md and "| serving (quick) |" in md


def test_plot_png_written(tmp_path):
    pytest.importorskip("matplotlib")
    write_suite_json(_record(plot=True), tmp_path, RUN)
    md = write_report(tmp_path).read_text()
    png = tmp_path / "bench" / "serving_test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![serving_test.png](bench/serving_test.png)" in md


def test_tagged_run_is_kept_beside_the_untagged_one(tmp_path):
    pytest.importorskip("matplotlib")
    write_suite_json(_record(plot=True), tmp_path, RUN)
    gpu = _record(plot=True)
    gpu.apply_tag("gpu")
    assert write_suite_json(gpu, tmp_path, RUN) == tmp_path / "bench" / "serving-gpu.json"
    md = write_report(tmp_path).read_text()
    assert md.index("## Serving test suite\n") < md.index("## Serving test suite [gpu]")
    assert "![serving_test-gpu.png](bench/serving_test-gpu.png)" in md
    assert (tmp_path / "bench" / "serving_test.png").exists()
    assert (tmp_path / "bench" / "serving_test-gpu.png").exists()
    assert "| serving-gpu | served >= 90 % of raw | 95% | met |" in md


def test_report_without_results_is_an_error(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "other.json").write_text('{"format": "something else"}')
    assert load_suite_jsons(tmp_path) == []
    with pytest.raises(ReportError, match="run a suite first"):
        write_report(tmp_path)

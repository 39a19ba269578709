"""`pixforge bench` end to end on the smallest cases (quick runs; figures are not asserted)."""

from __future__ import annotations

import json

import pytest

from pixforge.cli import main

pytest.importorskip("torch")


def test_engine_quick_writes_json_and_report(tmp_path):
    rc = main(["bench", "engine", "--quick", "--out", str(tmp_path), "--threads", "1", "--duration", "0.2"])
    assert rc == 0
    data = json.loads((tmp_path / "bench" / "engine.json").read_text())
    assert data["suite"] == "engine" and data["quick"] is True
    engines = {r["engine"] for r in data["results"] if "engine" in r}
    assert {"eager", "ort", "ort_uint8", "ort_uint8_fp16", "ort_uint8_int8"} <= engines
    assert all(r["n"] >= 1 and r["images_per_s"] > 0 for r in data["results"] if "engine" in r)
    assert data["goals"] and data["goals"][0]["met"] in (True, False)
    assert data["goals"][1]["met"] is None  # --quick runs no torch.compile: served-vs-compile not measured
    assert data["run"]["environment"]["machine"]["cpus_available"] >= 1
    md = (tmp_path / "benchmarks.md").read_text()
    assert "## Inference engines" in md and "| unet_tiny | 64 | 1 | ort |" in md


def test_serving_quick_through_the_real_server(tmp_path):
    rc = main(
        [
            "bench",
            "serving",
            "--quick",
            "--out",
            str(tmp_path),
            "--threads",
            "1",
            "--duration",
            "0.3",
            "--concurrency",
            "1,2",
            "--no-report",
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "bench" / "serving.json").read_text())
    levels = {(r["protocol"], r.get("concurrency")) for r in data["results"] if "protocol" in r}
    assert {
        ("translate_png", 1),
        ("translate_png", 2),
        ("kserve_raw", 1),
        ("kserve_raw", 2),
        ("raw", None),
    } <= levels
    assert all(
        r["errors"] == 0 for r in data["results"] if r.get("protocol") in ("translate_png", "kserve_raw")
    )
    assert len(data["goals"]) == 2
    assert not (tmp_path / "benchmarks.md").exists()  # --no-report


def test_tiling_quick_through_real_servers(tmp_path):
    """Each size gets its own server process configured by the bench (its limits must be valid)."""
    rc = main(["bench", "tiling", "--quick", "--out", str(tmp_path), "--threads", "1", "--no-report"])
    assert rc == 0
    data = json.loads((tmp_path / "bench" / "tiling.json").read_text())
    assert data["suite"] == "tiling" and data["quick"] is True
    rows = [r for r in data["results"] if "tiles" in r]
    assert len(rows) >= 2 and all(r["working_mib"] is not None and r["times_s"] for r in rows)

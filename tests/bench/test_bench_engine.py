"""The engine suite's pieces: the MAC counter on a known network, GFLOP/s, the served-vs-compile goal,
the CPU line, and a quick run with the precision variants and the goal row."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixforge.bench.env import flag_summary

torch = pytest.importorskip("torch")
nn = torch.nn

from pixforge.bench.engine import (  # noqa: E402 - after the torch skip
    SERVED_GOAL_RATIO,
    _engines,
    gflops,
    served_engine,
    served_goal,
)
from pixforge.bench.models import count_macs, smooth_images  # noqa: E402
from pixforge.cli import main  # noqa: E402


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.up(torch.relu(self.grouped(self.conv(x)))))


def test_count_macs_exact_on_a_known_network():
    # (1, 3, 16, 16) -> conv (1, 8, 16, 16) -> grouped stride 2 (1, 8, 8, 8) -> transpose (1, 4, 16, 16)
    # -> linear over the last axis (1, 4, 16, 5)
    conv = 8 * 16 * 16 * 3 * 9  # output elements x in_channels x kernel area
    grouped = 8 * 8 * 8 * (8 // 2) * 9
    transpose = 8 * 8 * 8 * 4 * 16  # *input* elements x out_channels x kernel area
    linear = 4 * 16 * 5 * 16  # output elements x in_features
    assert conv + grouped + transpose + linear == 111_616
    module = _Tiny().eval()
    assert count_macs(module, (1, 3, 16, 16)) == 111_616
    assert count_macs(module, (2, 3, 16, 16)) == 2 * 111_616  # per call: the batch counts
    assert not module.conv._forward_hooks  # the hooks are removed again


def test_count_macs_includes_the_functional_bicubic_convolution():
    from pixforge.training.networks.edsr import BicubicPhases

    layer = BicubicPhases(3, 2)
    k = layer.weight.shape[-1]
    assert count_macs(layer, (1, 3, 8, 8)) == 12 * 8 * 8 * 3 * k * k


def test_openvino_variant_only_where_onnxruntime_has_it(monkeypatch):
    import types

    import onnxruntime

    settings = types.SimpleNamespace(engines=None, quick=False)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "ort_uint8_openvino" not in _engines(settings, False, False, False)  # skipped silently
    listed = ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: listed)
    assert "ort_uint8_openvino" in _engines(settings, False, False, False)


def test_gflops_from_macs_and_throughput():
    assert gflops(10**9, 5.0) == 10.0  # 2 FLOPs per MAC x 1 GMAC x 5 images/s
    assert gflops(None, 5.0) is None and gflops(10**9, None) is None


def test_served_engine_follows_the_server_order():
    measured = {"ort_uint8": 1, "ort_uint8_int8": 1, "ort_uint8_fp16": 1}
    assert served_engine(measured, ("int8", "fp32", "bf16", "fp16")) == ("int8", "ort_uint8_int8")
    assert served_engine(measured, ("fp32", "int8", "bf16", "fp16")) == ("fp32", "ort_uint8")
    assert served_engine({"ort_uint8"}, ("int8", "fp32")) == ("fp32", "ort_uint8")  # int8 failed
    assert served_engine({"eager", "compile"}, ("fp32",)) is None


def test_served_engine_follows_the_recorded_int8_speedup_rule():
    available = {"ort_uint8", "ort_uint8_int8", "ort_uint8_fp16", "compile"}
    fixed = ("fp32", "int8", "bf16", "fp16")
    ms = {"ort_uint8": 140.0, "ort_uint8_int8": 118.0, "ort_uint8_fp16": 100.0, "compile": 120.0}
    # int8 >= 1.05x faster than fp32: what an export records, so the server runs it; fp16 never on CPU
    assert served_engine(available, fixed, ms) == ("int8", "ort_uint8_int8")
    assert served_engine(available, fixed, {**ms, "ort_uint8_int8": 136.0}) == ("fp32", "ort_uint8")
    # a VNNI / AMX CPU: int8 first whatever its speed
    assert served_engine(available, ("int8", "fp32"), {**ms, "ort_uint8_int8": 200.0}) == (
        "int8",
        "ort_uint8_int8",
    )


def test_served_goal_row():
    cases = [{"case": "a 256²", "ratio": 1.2}, {"case": "a 512²", "ratio": 1.0}]
    ok = served_goal(cases, "every shipped model")
    assert ok["met"] is True and "1.10x geometric mean" in ok["value"] and "every shipped model" in ok["goal"]
    assert f">= {SERVED_GOAL_RATIO}x torch.compile fp32" in ok["goal"]
    bad = served_goal([{"case": "a 256²", "ratio": 1.2}, {"case": "b 512²", "ratio": 0.9}], "x")
    assert bad["met"] is False and bad["detail"] == "missed in b 512² (0.90x)"
    none = served_goal([], "x")
    assert none["met"] is None and none["value"] is None and "compile" in none["detail"]


def test_flag_summary_names_present_and_missing_families():
    assert flag_summary(["avx2"]) == "AVX2; no AVX-512, no VNNI, no AMX"
    assert flag_summary(["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"]) == (
        "AVX2, AVX-512F, AVX-512 VNNI, AMX, AMX-INT8"
    )
    assert flag_summary([]).startswith("none of")


def test_smooth_calibration_images():
    images = smooth_images(32, 3, count=2)
    assert len(images) == 2 and images[0].shape == (32, 32, 3) and images[0].dtype == np.uint8
    assert not np.array_equal(images[0], images[1])
    assert np.abs(np.diff(images[0].astype(int), axis=0)).max() < 40  # smooth, not noise


def test_engine_quick_with_precision_variants_and_the_compile_goal(tmp_path, monkeypatch, capsys):
    # torch.compile itself takes tens of seconds per shape: replaced by the module (an eager call), so
    # this checks the plumbing of the served-vs-compile goal, not inductor.
    monkeypatch.setattr(torch, "compile", lambda module, **_: module)
    argv = ["bench", "engine", "--quick", "--out", str(tmp_path), "--threads", "1", "--duration", "0.1"]
    engines = "eager,compile,ort_uint8,ort_uint8_fp16,ort_uint8_int8"
    assert main([*argv, "--engines", engines, "--models", "resnet_tiny"]) == 0
    printed = capsys.readouterr().out
    assert "\nCPU: " in printed and "practical fp32 peak:" in printed
    assert "Served model vs torch.compile fp32" in printed and "GFLOP/s" in printed

    data = json.loads((tmp_path / "bench" / "engine.json").read_text())
    rows = [r for r in data["results"] if "engine" in r]
    assert {r["engine"] for r in rows} == set(engines.split(","))
    assert all(r["gflops"] > 0 and r["percent_of_peak"] > 0 for r in rows)
    macs = [r for r in data["results"] if "macs_per_image" in r]
    assert len(macs) == 1 and macs[0]["macs_per_image"] > 0
    assert data["settings"]["peak"]["gflops"] > 0 and data["settings"]["peak"]["matrix"] == 2048
    assert data["headline"][0].startswith("CPU: ")
    goal = data["goals"][1]
    assert "torch.compile fp32" in goal["goal"] and goal["met"] in (True, False)
    served = next(t for t in data["tables"] if t["title"].startswith("Served model vs torch.compile"))
    assert len(served["rows"]) == 1 and served["rows"][0][3] in ("ort_uint8 (fp32)", "ort_uint8_int8 (int8)")
    md = (tmp_path / "benchmarks.md").read_text()
    assert "| GFLOP/s | % peak |" in md and "**Multiply-accumulates per model**" in md
    assert "- CPU: " in md


def test_served_row_counts_shipped_models_at_batch_1_only():
    from pixforge.bench.engine import _served_row
    from pixforge.bench.models import model_specs
    from pixforge.bench.stats import Interleaved

    facades, tiny = model_specs(["facades", "unet_tiny"])
    measured = Interleaved(
        round_means={"compile": [2.0, 2.0], "ort_uint8": [1.0, 1.0], "ort_uint8_int8": [4.0, 4.0]}
    )
    summaries = {
        "compile": {"images_per_s": 0.5},
        "ort_uint8": {"images_per_s": 1.0},
        "ort_uint8_int8": {"images_per_s": 0.25},
    }
    calls = dict.fromkeys(measured.round_means)
    order = ("fp32", "int8")
    row, case = _served_row(facades, 256, 1, measured, summaries, calls, order, True)
    assert (
        row[3] == "ort_uint8 (fp32)" and row[6] == 2.0 and row[9] == "ort_uint8 (2.00x)" and row[10] == "met"
    )
    assert case == {"model": "facades", "case": "facades 256²", "ratio": 2.0}
    row, case = _served_row(facades, 256, 4, measured, summaries, calls, ("int8", "fp32"), True)
    assert row[3] == "ort_uint8_int8 (int8)" and row[6] == 0.5 and case is None and row[10] == "– (batch > 1)"
    row, case = _served_row(tiny, 64, 1, measured, summaries, calls, order, True)
    assert case is None and row[10] == "– (reference model)"
    assert _served_row(tiny, 64, 1, measured, summaries, calls, order, False)[1] is not None

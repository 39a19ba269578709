"""Precision variants: which file of a model version the engine runs, and where the server says so."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from prometheus_client import generate_latest
from service_helpers import build_invert, rgb_image, test_config

from pixforge.cli import main
from pixforge.contract import read_metadata
from pixforge.errors import ContractError
from pixforge.service.config import EngineConfig
from pixforge.service.engine import (
    AUTO_ORDER,
    Engine,
    auto_order,
    choose_model_file,
    model_files,
    recorded_int8_speedup,
)
from pixforge.service.errors import ServerConfigError
from pixforge.service.metrics import Metrics
from pixforge.service.repository import ModelRegistry
from pixforge.service.servicer import model_info

CPU_ONLY = EngineConfig(providers=("cpu",), intra_op_threads=1, warmup=False)


def _version(tmp_path, reference: str, *variants: str):
    """<tmp>/m/1/ with model.onnx of precision `reference` and one model.<p>.onnx per variant."""
    folder = tmp_path / "m" / "1"
    build_invert(folder / "model.onnx", precision=reference)
    for p in variants:
        build_invert(folder / f"model.{p}.onnx", precision=p)
    return folder / "model.onnx"


@pytest.mark.parametrize(
    ("reference", "variants", "order", "requested", "expected"),
    [
        ("fp16", ("fp32",), "cpu", "auto", "fp32"),  # the shipped fp16 file never runs on CPU beside fp32
        ("fp32", ("fp16",), "cpu", "auto", "fp32"),
        ("fp32", ("fp16",), "gpu", "auto", "fp16"),
        ("fp32", ("int8", "fp16"), "cpu_int8", "auto", "int8"),  # VNNI / AMX
        ("fp32", ("int8", "fp16"), "cpu", "auto", "fp32"),  # plain AVX2: int8 is slower
        ("fp16", ("int8",), "cpu", "auto", "int8"),
        ("fp32", ("int8", "fp16"), "gpu", "auto", "fp16"),
        ("fp16", (), "cpu", "auto", "fp16"),  # nothing else: the reference runs, whatever it is
        ("fp32", ("fp16",), "cpu", "fp16", "fp16"),  # asked for explicitly
        ("fp32", ("fp16",), "cpu", "int8", "fp32"),  # asked for but absent: auto's choice
    ],
)
def test_choose_model_file(tmp_path, reference, variants, order, requested, expected):
    files = model_files(_version(tmp_path, reference, *variants))
    precision, path = choose_model_file(files, AUTO_ORDER[order], requested)
    assert precision == expected
    assert path.name == (
        "model.onnx" if expected == reference and expected not in variants else f"model.{expected}.onnx"
    )


def test_cpu_engine_runs_fp32_variant_and_lists_all(tmp_path):
    engine = Engine(_version(tmp_path, "fp16", "fp32"), CPU_ONLY)
    try:
        assert (engine.precision, engine.path.name, engine.variants) == (
            "fp32",
            "model.fp32.onnx",
            ("fp32", "fp16"),
        )
        image = rgb_image(8, 8)[None]
        assert np.array_equal(engine.run(image), 255 - image)
    finally:
        engine.close()


def _int8_version(tmp_path, speedup: str | None):
    """fp32 reference + int8 variant whose metadata records ``speedup`` ("no-vnni:1.12")."""
    folder = tmp_path / "m" / "1"
    build_invert(folder / "model.onnx", precision="fp32")
    extra = {"int8_speedup": speedup} if speedup is not None else {}
    build_invert(folder / "model.int8.onnx", precision="int8", **extra)
    return folder / "model.onnx"


@pytest.mark.parametrize(
    ("speedup", "expected"),
    [
        ("no-vnni:1.12", "int8"),  # measured faster on a CPU like this one
        ("no-vnni:1.03", "fp32"),  # under the 5 % margin: the reference quality stays
        ("vnni:1.90", "fp32"),  # measured on another class of CPU: not trusted here
        ("vnni:1.9, no-vnni:1.2", "int8"),
        ("no-vnni:fast", "fp32"),  # unparsable: ignored, the model still loads
        (None, "fp32"),  # an int8 file from before the measurement
    ],
)
def test_cpu_without_vnni_runs_int8_only_where_its_export_measured_it_faster(
    tmp_path, monkeypatch, speedup, expected
):
    monkeypatch.setattr("pixforge.service.engine.fast_int8", lambda: False)
    monkeypatch.setattr("pixforge.hardware.fast_int8", lambda: False)
    reference = _int8_version(tmp_path, speedup)
    engine = Engine(reference, CPU_ONLY)
    try:
        assert engine.precision == expected
        image = rgb_image(8, 8)[None]
        assert np.array_equal(engine.run(image), 255 - image)
    finally:
        engine.close()
    # every process on the machine decides the same from the same files: no timing at load
    assert auto_order(False, model_files(reference))[0] == expected


def test_recorded_speedup_is_read_for_this_cpu_class(tmp_path, monkeypatch):
    reference = _int8_version(tmp_path, "vnni:1.9,no-vnni:1.2")
    int8 = reference.parent / "model.int8.onnx"
    monkeypatch.setattr("pixforge.hardware.fast_int8", lambda: False)
    assert recorded_int8_speedup(int8) == pytest.approx(1.2)
    monkeypatch.setattr("pixforge.hardware.fast_int8", lambda: True)
    assert recorded_int8_speedup(int8) == pytest.approx(1.9)
    assert recorded_int8_speedup(reference) == 0.0


def test_a_chosen_variant_that_does_not_load_falls_back_to_the_reference(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("pixforge.service.engine.fast_int8", lambda: True)  # int8 first
    reference = _int8_version(tmp_path, None)
    (reference.parent / "model.int8.onnx").write_bytes(b"not an onnx file")
    engine = Engine(reference, CPU_ONLY)
    try:
        assert (engine.precision, engine.path.name) == ("fp32", "model.onnx")
        assert "model.int8.onnx left out" in caplog.text
    finally:
        engine.close()
    with pytest.raises(ContractError):  # asked for explicitly: no silent substitute
        Engine(reference, replace(CPU_ONLY, precision="int8"))


def test_auto_order_follows_the_cpu(monkeypatch):
    monkeypatch.setattr("pixforge.service.engine.fast_int8", lambda: True)
    assert auto_order(False)[0] == "int8" and auto_order(True)[0] == "fp16"
    monkeypatch.setattr("pixforge.service.engine.fast_int8", lambda: False)
    assert auto_order(False)[0] == "fp32"


def test_misnamed_variant_is_refused(tmp_path):
    folder = tmp_path / "m" / "1"
    build_invert(folder / "model.onnx", precision="fp32")
    build_invert(folder / "model.int8.onnx", precision="fp32")  # says fp32, named int8
    with pytest.raises(ContractError, match="precision"):
        Engine(folder / "model.onnx", replace(CPU_ONLY, precision="int8"))


def test_list_models_and_metrics_name_the_precision(tmp_path):
    _version(tmp_path, "fp32", "fp16")
    cfg = test_config(tmp_path, **{"engine.warmup": False, "engine.providers": ["cpu"]})
    registry = ModelRegistry(tmp_path, cfg.engine, cfg.batching, engine_factory=None)
    registry.reload()
    try:
        row = registry.describe("m")
        info = model_info(row)
        assert (info.precision, list(info.variants), info.provider) == (
            "fp32",
            ["fp32", "fp16"],
            "CPUExecutionProvider",
        )
        metrics = Metrics()
        metrics.set_ready("m", True, row.version, row.provider, row.precision)
        text = generate_latest(metrics.registry).decode()
        assert (
            'pixforge_model_info{model="m",precision="fp32",provider="CPUExecutionProvider",version="1"} 1.0'
            in text
        )
        metrics.set_ready("m", None)
        assert "pixforge_model_info{" not in generate_latest(metrics.registry).decode()
    finally:
        registry.close()


def test_a_new_variant_is_a_change_that_reloads(tmp_path):
    _version(tmp_path, "fp16")
    cfg = test_config(tmp_path, **{"engine.warmup": False, "engine.providers": ["cpu"]})
    registry = ModelRegistry(tmp_path, cfg.engine, cfg.batching, engine_factory=None)
    registry.reload()
    try:
        assert registry.describe("m").precision == "fp16"
        build_invert(tmp_path / "m" / "1" / "model.fp32.onnx", precision="fp32")
        summary = registry.reload()
        assert summary.loaded == ["m/1"]
        assert registry.describe("m").precision == "fp32"
    finally:
        registry.close()


def test_engine_precision_setting_is_validated(tmp_path):
    with pytest.raises(ServerConfigError, match="engine.precision"):
        test_config(tmp_path, **{"engine.precision": "fp8"})


def test_models_list_validates_variants(tmp_path, capsys):
    _version(tmp_path, "fp32", "fp16")
    assert main(["models", "list", "--repo", str(tmp_path)]) == 0
    assert "fp32+fp16" in capsys.readouterr().out
    build_invert(tmp_path / "m" / "1" / "model.int8.onnx", precision="fp16")
    assert main(["models", "list", "--repo", str(tmp_path)]) == 1
    assert "file name says 'int8'" in capsys.readouterr().out


def test_read_metadata_matches_onnx(tmp_path):
    path = build_invert(tmp_path / "model.onnx", precision="bf16", description="ünïcode")
    expected = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert read_metadata(path) == expected
    (tmp_path / "bad.onnx").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ContractError):
        read_metadata(tmp_path / "bad.onnx")

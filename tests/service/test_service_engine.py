"""Engine: provider selection, session options, contract checks, warm-up, OOM detection."""

from __future__ import annotations

import numpy as np
import pytest
from service_helpers import (
    build_float_input,
    build_invert,
    build_no_metadata,
    build_sr2,
    rgb_image,
    write_garbage,
)

import pixforge.service.engine as engine_module
from pixforge.errors import ContractError
from pixforge.service.config import EngineConfig, available_cpus
from pixforge.service.engine import (
    Engine,
    GpuStatus,
    describe_providers,
    expected_provider,
    gpu_log_line,
    is_out_of_memory,
    probe_gpu,
    select_providers,
    session_options,
)
from pixforge.service.errors import InferenceError, OutOfMemoryError

CPU_ONLY = EngineConfig(providers=("cpu",), intra_op_threads=1)


def test_select_providers_order_and_options(tmp_path):
    cfg = EngineConfig(providers=("tensorrt", "cuda", "cpu"), fp16=True, gpu_mem_limit_mb=256)
    providers, skipped = select_providers(cfg, GpuStatus(cuda=True, tensorrt=True, reason=""), tmp_path)
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    assert (
        names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        and not skipped
    )
    trt, cuda = providers[0][1], providers[1][1]
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_fp16_enable"] is True
    assert cuda["cudnn_conv_algo_search"] == "HEURISTIC" and cuda["cudnn_conv_use_max_workspace"] == "1"
    assert cuda["do_copy_in_default_stream"] == "1" and cuda["gpu_mem_limit"] == 256 * 1024 * 1024


def test_select_providers_without_gpu_falls_back_quietly():
    no_gpu = GpuStatus(cuda=False, tensorrt=False, reason="no NVIDIA driver")
    providers, skipped = select_providers(EngineConfig(), no_gpu)
    assert providers == ["CPUExecutionProvider"]
    assert skipped == ["cuda (no NVIDIA driver)"]
    assert select_providers(EngineConfig(providers=("cuda",)), no_gpu)[0] == []


NO_GPU = GpuStatus(cuda=False, tensorrt=False, reason="no NVIDIA driver")
OPENVINO = "OpenVINOExecutionProvider"


def _ort_lists(monkeypatch, *names):
    # onnxruntime-openvino is not installed in CI: pretend about what onnxruntime reports.
    listed = [*names, "CPUExecutionProvider"]
    monkeypatch.setattr(engine_module.ort, "get_available_providers", lambda: listed)


def test_select_providers_openvino_in_order_with_the_session_threads(monkeypatch):
    _ort_lists(monkeypatch, OPENVINO)
    cfg = EngineConfig(providers=("cuda", "openvino", "cpu"), intra_op_threads=3)
    providers, skipped = select_providers(cfg, GpuStatus(cuda=True, tensorrt=False, reason=""))
    assert providers[0][0] == "CUDAExecutionProvider" and providers[2] == "CPUExecutionProvider"
    assert providers[1] == (OPENVINO, {"device_type": "CPU", "num_of_threads": 3}) and not skipped
    # intra_op_threads 0: OpenVINO gets the same count the session's intra-op pool does
    auto = EngineConfig(providers=("openvino", "cpu"))
    providers, skipped = select_providers(auto, NO_GPU)
    assert providers == [
        (OPENVINO, {"device_type": "CPU", "num_of_threads": session_options(auto).intra_op_num_threads}),
        "CPUExecutionProvider",
    ]
    assert providers[0][1]["num_of_threads"] == available_cpus() and not skipped
    assert expected_provider(auto) == OPENVINO


def test_openvino_skipped_with_a_note_when_not_installed(monkeypatch, tmp_path):
    _ort_lists(monkeypatch)
    providers, skipped = select_providers(EngineConfig(providers=("openvino", "cpu")), NO_GPU)
    assert providers == ["CPUExecutionProvider"]
    assert skipped == ["openvino (onnxruntime-openvino is not installed)"]
    path = build_sr2(tmp_path / "sr" / "1" / "model.onnx")
    with pytest.raises(RuntimeError, match=r"none of the configured providers \(openvino\).*not installed"):
        Engine(path, EngineConfig(providers=("openvino",)))


class _ReportsOpenVINO:
    """A real CPU session that reports the providers it was asked for, as an OpenVINO one would."""

    opened: list[list[str]] = []

    def __init__(self, path, sess_options=None, providers=()):
        self.names = [p[0] if isinstance(p, tuple) else p for p in providers]
        self.opened.append(self.names)
        self._real = _REAL_SESSION(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    def get_providers(self):
        return self.names

    def __getattr__(self, name):
        return getattr(self._real, name)


_REAL_SESSION = engine_module.ort.InferenceSession


def test_engine_runs_openvino_as_a_cpu_provider_but_not_for_norm_models(monkeypatch, tmp_path, caplog):
    _ort_lists(monkeypatch, OPENVINO)
    monkeypatch.setattr(engine_module.ort, "InferenceSession", _ReportsOpenVINO)
    monkeypatch.setattr(_ReportsOpenVINO, "opened", [])
    path = build_sr2(tmp_path / "sr" / "1" / "model.onnx")
    engine = Engine(path, EngineConfig(providers=("openvino", "cpu"), intra_op_threads=1))
    assert engine.provider == OPENVINO and engine.output_device is None  # host memory, no IO binding
    assert engine.run(np.stack([rgb_image(6, 8, 0)])).shape == (1, 12, 16, 3)
    # A model with tiling-statistics inputs (norm layers): OpenVINO would ignore those feeds. Its
    # metadata says so before any session exists, so the model is opened once, without OpenVINO.
    real_metadata = engine_module.read_metadata
    monkeypatch.setattr(engine_module, "read_metadata", lambda p: {**real_metadata(p), "norm_channels": "4"})
    _ReportsOpenVINO.opened.clear()
    norm = Engine(path, EngineConfig(providers=("openvino", "cpu"), intra_op_threads=1))
    assert norm.provider == "CPUExecutionProvider"
    assert _ReportsOpenVINO.opened == [["CPUExecutionProvider"]]
    assert "openvino (ignores this model's tiling-statistics inputs)" in norm.skipped
    assert "OpenVINO provider ignores" in caplog.text
    only = Engine(path, EngineConfig(providers=("openvino",), intra_op_threads=1))
    assert only.provider == "CPUExecutionProvider"  # onnxruntime's implicit CPU fallback


def test_log_line_names_openvino(monkeypatch):
    monkeypatch.setattr(engine_module, "_gpu_status", NO_GPU)
    _ort_lists(monkeypatch, OPENVINO)
    ov = EngineConfig(providers=("openvino", "cpu"))
    assert gpu_log_line(ov) == "execution provider: OpenVINO CPU (configured)"
    assert gpu_log_line(EngineConfig(providers=("cuda", "openvino", "cpu"))) == (
        "execution provider: OpenVINO CPU (cuda unavailable: no NVIDIA driver)"
    )
    _ort_lists(monkeypatch)
    assert gpu_log_line(ov) == (
        "execution provider: CPU (openvino unavailable: onnxruntime-openvino is not installed)"
    )


def test_session_options_sized_to_the_machine():
    opts = session_options(EngineConfig())
    assert opts.intra_op_num_threads == available_cpus()
    assert session_options(EngineConfig(intra_op_threads=3)).intra_op_num_threads == 3
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_engine_runs_validates_and_warms_up(tmp_path):
    engine = Engine(build_sr2(tmp_path / "sr" / "1" / "model.onnx"), CPU_ONLY)
    assert engine.name == "sr" and engine.provider == "CPUExecutionProvider"
    assert engine.contract.scale == 2 and engine.contract.task == "super_resolution"
    assert engine.warmup() >= 0 and engine.warmup_ms >= 0
    batch = np.stack([rgb_image(6, 8, s) for s in range(3)])
    out = engine.run(batch)
    assert out.shape == (3, 12, 16, 3) and out.dtype == np.uint8
    with pytest.raises(InferenceError, match="expected uint8"):
        engine.run(batch.astype(np.float32))
    with pytest.raises(InferenceError, match="expected uint8"):
        engine.run(batch[..., :1])
    assert describe_providers([engine]) == "CPUExecutionProvider"


def test_io_binding_path_gives_the_same_output(tmp_path):
    # On a GPU the engine binds I/O explicitly; the same code path is checked here with CPU memory.
    engine = Engine(build_sr2(tmp_path / "sr" / "1" / "model.onnx"), CPU_ONLY)
    batch = np.stack([rgb_image(6, 10, s) for s in range(2)])
    plain = engine.run(batch)
    engine.output_device = "cpu"
    np.testing.assert_array_equal(engine.run(batch), plain)


def test_engine_refuses_contract_breakers(tmp_path):
    with pytest.raises(ContractError, match="uint8"):
        Engine(build_float_input(tmp_path / "a" / "1" / "model.onnx"), CPU_ONLY)
    with pytest.raises(ContractError, match="metadata"):
        Engine(build_no_metadata(tmp_path / "b" / "1" / "model.onnx"), CPU_ONLY)
    with pytest.raises(ContractError, match="not a loadable ONNX model"):
        Engine(write_garbage(tmp_path / "c" / "1" / "model.onnx"), CPU_ONLY)


def test_engine_maps_runtime_failures(tmp_path):
    engine = Engine(build_invert(tmp_path / "inv" / "1" / "model.onnx"), CPU_ONLY)

    def oom(batch):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory")

    def other(batch):
        raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : something else\nsecond line")

    def wrong_shape(batch):
        return batch[:, :2]

    x = np.zeros((1, 4, 4, 3), np.uint8)
    for fn, error, text in (
        (oom, OutOfMemoryError, "out of memory"),
        (other, InferenceError, "something else"),
        (wrong_shape, InferenceError, "broke its contract"),
    ):
        engine._run_session = fn
        with pytest.raises(error, match=text):
            engine.run(x)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Failed to allocate memory for requested buffer of size 123", True),
        ("CUDA failure 2: out of memory ; GPU=0", True),
        ("CUBLAS_STATUS_ALLOC_FAILED", True),
        ("Available memory of 0 is smaller than requested bytes of 4", True),
        ("Invalid input name: foo", False),
    ],
)
def test_out_of_memory_detection(message, expected):
    assert is_out_of_memory(RuntimeError(message)) is expected
    assert is_out_of_memory(MemoryError())


def test_gpu_probe_and_log_line_are_quiet_and_clear(capfd):
    status = probe_gpu()
    assert status is probe_gpu()  # probed once per process
    line = gpu_log_line(EngineConfig())
    assert line.startswith("execution provider: ")
    if not status.cuda:
        assert "CPU" in line and status.reason in line
    assert gpu_log_line(EngineConfig(providers=("cpu",))) == "execution provider: CPU (configured)"
    assert expected_provider(EngineConfig(providers=("cpu",))) == "CPUExecutionProvider"
    out, err = capfd.readouterr()
    assert "EP Error" not in out + err

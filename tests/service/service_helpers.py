"""Helpers for the service tests: tiny contract-valid ONNX models built with onnx.helper (no torch),
images, configs, and an engine wrapper that counts, gates and fails inference calls on demand."""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import onnx
from loopback import loopback_values
from onnx import TensorProto, helper
from onnx_models import contract_metadata as _meta
from onnx_models import save_model as _save

from pixforge.service.config import build_config
from pixforge.service.engine import Engine

# --------------------------------------------------------------------------- models


def _const(name: str, values, dims) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, dims, list(np.asarray(values, np.float32).ravel()))


def _to_uint8(src: str) -> list:
    return [
        helper.make_node("Round", [src], ["r"]),
        helper.make_node("Clip", ["r", "lo", "hi"], ["c"]),
        helper.make_node("Cast", ["c"], ["image_out"], to=TensorProto.UINT8),
    ]


_CLIP = [_const("lo", [0.0], []), _const("hi", [255.0], [])]


def build_invert(
    path: Path, size_multiple: int = 4, tile: int = 64, task: str = "paired_translation", **extra_meta: str
) -> Path:
    """255 - x, RGB -> RGB (``extra_meta`` overrides metadata, e.g. precision="fp16")."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["k255", "f"], ["g"]),
    ] + _to_uint8("g")
    return _save(
        path,
        nodes,
        [_const("k255", [255.0], [])] + _CLIP,
        3,
        3,
        _meta(task, 1, 3, 3, size_multiple, tile, **extra_meta),
    )


def build_sr2(path: Path, size_multiple: int = 2, tile: int = 32) -> Path:
    """Nearest-neighbour x2 (output[y, x] = input[y // 2, x // 2])."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node(
            "Resize",
            ["f", "", "scales"],
            ["g"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
    ] + _to_uint8("g")
    return _save(
        path,
        nodes,
        [_const("scales", [1, 2, 2, 1], [4])] + _CLIP,
        3,
        3,
        _meta("super_resolution", 2, 3, 3, size_multiple, tile),
    )


def build_gray_in(path: Path) -> Path:
    """1-channel in, 3 out: (255 - y) replicated; exercises RGB -> luminance adaptation."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["k255", "f"], ["g1"]),
        helper.make_node("Concat", ["g1", "g1", "g1"], ["g"], axis=3),
    ] + _to_uint8("g")
    return _save(
        path, nodes, [_const("k255", [255.0], [])] + _CLIP, 1, 3, _meta("paired_translation", 1, 1, 3, 4, 64)
    )


COLOR_MATRIX = np.array(
    # rows: input R, G, B; columns: output R, G, B. Output = luma * tint + bias (a sepia-like tint).
    [
        [0.299 * 1.0, 0.299 * 0.85, 0.299 * 0.6],
        [0.587 * 1.0, 0.587 * 0.85, 0.587 * 0.6],
        [0.114 * 1.0, 0.114 * 0.85, 0.114 * 0.6],
    ],
    np.float32,
)
COLOR_BIAS = np.array([30.0, 20.0, 10.0], np.float32)


def color_reference(rgb: np.ndarray) -> np.ndarray:
    """What build_color's graph computes, in numpy."""
    out = rgb.astype(np.float32) @ COLOR_MATRIX + COLOR_BIAS
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def build_color(path: Path, size_multiple: int = 8, tile: int = 256) -> Path:
    """Colourisation-like: RGB -> luminance -> a fixed warm tint (deterministic chroma)."""
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["f", "m"], ["t"]),
        helper.make_node("Add", ["t", "b"], ["g"]),
    ] + _to_uint8("g")
    inits = [_const("m", COLOR_MATRIX, [3, 3]), _const("b", COLOR_BIAS, [3])] + _CLIP
    return _save(path, nodes, inits, 3, 3, _meta("colorization", 1, 3, 3, size_multiple, tile))


def build_blur(path: Path, size_multiple: int = 8, tile: int = 32) -> Path:
    """3x3 box blur (zero padding) per channel: a small receptive field for the tiling test."""
    weight = np.full((3, 1, 3, 3), 1.0 / 9.0, np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["conv"], group=3, pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Transpose", ["conv"], ["g"], perm=[0, 2, 3, 1]),
    ] + _to_uint8("g")
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [3, 1, 3, 3], list(weight.ravel()))] + _CLIP
    return _save(path, nodes, inits, 3, 3, _meta("style_translation", 1, 3, 3, size_multiple, tile))


def build_float_input(path: Path) -> Path:
    """Breaks the contract: float32 input."""
    nodes = [helper.make_node("Cast", ["image"], ["image_out"], to=TensorProto.UINT8)]
    return _save(
        path, nodes, [], 3, 3, _meta("paired_translation", 1, 3, 3, 1, 64), in_type=TensorProto.FLOAT
    )


def build_no_metadata(path: Path) -> Path:
    """Breaks the contract: no metadata_props."""
    nodes = [helper.make_node("Identity", ["image"], ["image_out"])]
    return _save(path, nodes, [], 3, 3, None)


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an onnx file")
    return path


def build_repo(repo: Path) -> Path:
    """The standard test repository."""
    build_invert(repo / "invert" / "1" / "model.onnx")
    build_sr2(repo / "sr2" / "1" / "model.onnx")
    build_gray_in(repo / "grayin" / "1" / "model.onnx")
    build_color(repo / "color" / "1" / "model.onnx")
    build_blur(repo / "blur" / "1" / "model.onnx")
    build_float_input(repo / "floatin" / "1" / "model.onnx")
    build_no_metadata(repo / "nometa" / "1" / "model.onnx")
    return repo


# --------------------------------------------------------------------------- images


def rgb_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth_image(h: int, w: int) -> np.ndarray:
    """A smooth colour gradient (so downscaled chroma matches full-resolution chroma)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 40 + 160 * x / max(1, w - 1)
    g = 60 + 120 * y / max(1, h - 1)
    b = 100 + 80 * (x + y) / max(1, w + h - 2)
    return np.clip(np.dstack([r, g, b]) + 0.5, 0, 255).astype(np.uint8)


def png(pixels: np.ndarray, alpha: np.ndarray | None = None) -> bytes:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    img = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        img = np.dstack([img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), alpha])
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    """PNG bytes -> RGB(A) or gray array as the server wrote them."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img


def five_channel_tiff(h: int = 4, w: int = 4) -> bytes:
    """A baseline little-endian TIFF with 5 samples per pixel (neither gray nor RGB(A))."""
    spp = 5
    pixels = bytes(i % 256 for i in range(h * w * spp))
    entries = 10
    ifd_offset = 8
    ifd_size = 2 + entries * 12 + 4
    bps_offset = ifd_offset + ifd_size
    data_offset = bps_offset + 2 * spp
    tags = [
        (256, 3, 1, w),
        (257, 3, 1, h),
        (258, 3, spp, bps_offset),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, data_offset),
        (277, 3, 1, spp),
        (278, 3, 1, h),
        (279, 4, 1, len(pixels)),
        (284, 3, 1, 1),
    ]
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_offset))
    out += struct.pack("<H", entries)
    for tag, typ, count, value in tags:
        if typ == 3 and count == 1:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    out += struct.pack("<I", 0)
    out += struct.pack("<" + "H" * spp, *([8] * spp))
    out += pixels
    return bytes(out)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` every 10 ms until it is true (True) or ``timeout`` seconds pass (False)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


# --------------------------------------------------------------------------- tritonclient

TRITON_CLIENT = Path(__file__).resolve().parent / "kserve_triton_client.py"


def run_triton_client(*args: str, timeout: float) -> str:
    """Run kserve_triton_client.py with these arguments and return its stdout (it must succeed).

    tritonclient runs in a subprocess: its stubs and pixforge's define the same ``inference.*``
    protobuf symbols, so the pytest process never imports it.
    """
    proc = subprocess.run(
        [sys.executable, str(TRITON_CLIENT), *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# --------------------------------------------------------------------------- configs and engines


def test_config(repo: Path, **overrides):
    """A loopback, ephemeral-port, single-thread config for tests (environment ignored)."""
    values = loopback_values(repo, grace_seconds=5)
    values.update({"batching.max_queue_delay_ms": 2, "tiling.min_tile_size": 8})
    values.update(overrides)
    return build_config(values, source="test")


# Size limits that small test images can cross (test_config overrides: **SMALL_LIMITS).
SMALL_LIMITS = {
    "limits.max_input_pixels": 200_000,
    "limits.max_output_pixels": 400_000,
    "limits.max_message_bytes": 1 << 20,
}


test_config.__test__ = False  # not a pytest test despite its name


class EngineControl:
    """Shared switchboard for ControlledEngine instances: counts, gates and injected failures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.batches: dict[str, list[int]] = {}
        self.gates: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.oom_above: dict[str, int] = {}  # model -> pixels per batch above which we "run out of memory"
        self.load_gates: dict[str, threading.Event] = {}

    def gate(self, model: str) -> threading.Event:
        """Close a gate: the model's next runs block until the returned event is set."""
        event = threading.Event()
        self.gates[model] = event
        self.entered[model] = threading.Event()
        return event

    def open(self, model: str) -> None:
        event = self.gates.pop(model, None)
        if event is not None:
            event.set()

    def before_run(self, name: str, batch: np.ndarray) -> None:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            self.batches.setdefault(name, []).append(int(batch.shape[0]))
        gate = self.gates.get(name)
        if gate is not None:
            self.entered[name].set()
            assert gate.wait(30), "test gate never opened"
        limit = self.oom_above.get(name)
        if limit is not None and batch.shape[0] * batch.shape[1] * batch.shape[2] > limit:
            raise RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                "running Conv node. Failed to allocate memory for requested buffer of size 1048576"
            )

    def reset_counts(self) -> None:
        with self.lock:
            self.calls.clear()
            self.batches.clear()

    def factory(self):
        control = self

        class ControlledEngine(Engine):
            def __init__(self, path, config, name="", cache_dir=None):
                gate = control.load_gates.get(name)
                if gate is not None:
                    assert gate.wait(30), "test load gate never opened"
                super().__init__(path, config, name=name, cache_dir=cache_dir)

            def _run_session(self, batch):
                control.before_run(self.name, batch)
                return super()._run_session(batch)

        return ControlledEngine


# --------------------------------------------------------------------------- KServe requests


def kserve_raw_request(model: str, array: np.ndarray, **fields):
    """A KServe v2 gRPC ModelInferRequest carrying ``array`` as the raw UINT8 ``image`` input."""
    from pixforge.kserve.v2 import grpc_service_pb2 as kpb

    tensor = kpb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8", shape=list(array.shape))
    return kpb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[array.tobytes()], **fields
    )


def kserve_json_request(array: np.ndarray, **extra) -> dict:
    """A KServe v2 HTTP/REST infer body carrying ``array`` as JSON ``data`` of the ``image`` input."""
    tensor = {
        "name": "image",
        "shape": list(array.shape),
        "datatype": "UINT8",
        "data": array.ravel().tolist(),
    }
    return {"inputs": [tensor], **extra}


def expect_rpc_error(code, fn, *args) -> str:
    """Call ``fn(*args)``; it must fail with ``code`` and a message without a traceback (returned)."""
    import grpc
    import pytest

    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert "Traceback" not in (info.value.details() or "")
    return info.value.details()

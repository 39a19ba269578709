"""Helpers for the client tests: a tiny ONNX model builder, a scripted fake server, test images.

Imported by tests/clients/conftest.py and the test files (pytest puts this folder on sys.path);
the unique module name avoids clashing with other areas' helpers.

* `build_invert_model` writes a tiny contract-valid ONNX model, "invert" (255 - x, RGB,
  scale 1), with onnx.helper (no torch): what the real server serves in these tests.
* `FakeServer` is a small scripted ImageTranslation servicer (same invert behaviour) used only
  where a real server cannot be made to misbehave on cue: injected UNAVAILABLE /
  RESOURCE_EXHAUSTED, broken streams, per-server call counts for load balancing, NOT_SERVING.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pixforge.codec import decode_image, encode_image
from pixforge.errors import PixforgeError
from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- images


def make_image(seed: int, h: int = 24, w: int = 32, channels: int = 3) -> np.ndarray:
    """A deterministic uint8 test image."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def png(seed: int, h: int = 24, w: int = 32) -> bytes:
    return encode_image(make_image(seed, h, w), "png")


# --------------------------------------------------------------------------- tiny ONNX model


def build_invert_model(path: Path) -> Path:
    """Write a contract-valid uint8 NHWC "invert" model (out = 255 - in) with onnx.helper."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["c255", "x"], ["y"]),
        helper.make_node("Cast", ["y"], ["image_out"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "invert",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("image_out", TensorProto.UINT8, ["N", "H", "W", 3])],
        initializer=[helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "pixforge.contract": "1",
        "task": "style_translation",
        "scale": "1",
        "input_channels": "3",
        "output_channels": "3",
        "size_multiple": "1",
        "tile_size": "256",
        "description": "test model: 255 - x",
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------- fake server


class FakeServicer(pb_grpc.ImageTranslationServicer):
    """Inverts images like the real "invert" model; misbehaves on cue.

    Attributes:
        calls: per-method call counts.
        fail_codes: status codes the next Translate calls abort with, in order.
        stream_break_after: abort the next stream with UNAVAILABLE after this many responses.
        seen_metadata: invocation metadata of the last call.
        stream_deadlines: seconds each TranslateStream call had left when it arrived (None: no
            deadline).
    """

    def __init__(self):
        self.calls = {"Translate": 0, "TranslateStream": 0, "ListModels": 0, "GetModel": 0}
        self.stream_items = 0
        self.fail_codes: list[grpc.StatusCode] = []
        self.stream_break_after: int | None = None
        self.seen_metadata: dict[str, str] = {}
        self.stream_deadlines: list[float | None] = []
        self.lock = threading.Lock()

    def _count(self, method: str, context) -> None:
        with self.lock:
            self.calls[method] += 1
            self.seen_metadata = dict(context.invocation_metadata())

    @staticmethod
    def _invert(request: pb.TranslateRequest):
        if request.model != "invert":
            return None, (grpc.StatusCode.NOT_FOUND, f"model {request.model!r} not found")
        try:
            decoded = decode_image(request.image)
        except PixforgeError as exc:
            return None, (grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        fmt = request.output_format or "png"
        out = encode_image(255 - decoded.pixels, fmt)
        return pb.TranslateResponse(
            image=out,
            width=decoded.width,
            height=decoded.height,
            model="invert",
            version=1,
            request_id=request.request_id,
            output_format=fmt,
        ), None

    def Translate(self, request, context):
        self._count("Translate", context)
        with self.lock:
            code = self.fail_codes.pop(0) if self.fail_codes else None
        if code is not None:
            context.abort(code, "injected failure")
        response, error = self._invert(request)
        if error:
            context.abort(*error)
        return response

    def TranslateStream(self, request_iterator, context):
        self._count("TranslateStream", context)
        with self.lock:
            self.stream_deadlines.append(context.time_remaining())
        sent = 0
        for item in request_iterator:
            with self.lock:
                brk = self.stream_break_after is not None and sent >= self.stream_break_after
                if brk:
                    self.stream_break_after = None
                self.stream_items += 1
            if brk:
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected stream break")
            response, error = self._invert(item.request)
            sent += 1
            if error:
                yield pb.TranslateStreamResponse(
                    request_id=item.request.request_id, error_code=error[0].value[0], error_message=error[1]
                )
            else:
                yield pb.TranslateStreamResponse(request_id=item.request.request_id, response=response)

    def ListModels(self, request, context):
        self._count("ListModels", context)
        return pb.ListModelsResponse(models=[_fake_info()])

    def GetModel(self, request, context):
        self._count("GetModel", context)
        if request.name != "invert":
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} not found")
        return pb.GetModelResponse(model=_fake_info())


def _fake_info() -> pb.ModelInfo:
    return pb.ModelInfo(
        name="invert",
        version=1,
        task=pb.TASK_STYLE_TRANSLATION,
        scale=1,
        input_channels=3,
        output_channels=3,
        size_multiple=1,
        tile_size=256,
        state=pb.MODEL_STATE_READY,
        metadata={"pixforge.contract": "1"},
    )


class FakeServer:
    """A running fake server: `.port`, `.servicer`, `.health` (grpc_health HealthServicer)."""

    def __init__(self):
        self.servicer = FakeServicer()
        self.health = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_ImageTranslationServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0).wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed right after binding)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env() -> dict[str, str]:
    """Environment for `python -m pixforge.cli` subprocesses (no token leaking in from outside)."""
    env = dict(os.environ)
    env.pop("PIXFORGE_TOKEN", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_server(repo: Path, load_seconds: float = 0.0, **overrides):
    """Start the real pixforge server in-process on 127.0.0.1 (free port), CPU, small pools.

    Args:
        repo: model repository.
        load_seconds: > 0: each model takes this much longer to load, and the call returns while
            they load (the port answers meanwhile, as a restarted server's does).
        **overrides: more dotted config keys with "." written as "__" (batching__max_queue_delay_ms=60).

    Returns:
        The ServerHandle (`.address`, `.port`, `.stop(grace)`).
    """
    from loopback import loopback_values

    from pixforge.service.config import load_config
    from pixforge.service.engine import Engine
    from pixforge.service.server import serve

    class SlowLoadingEngine(Engine):
        def __init__(self, *args, **kwargs):
            time.sleep(load_seconds)
            super().__init__(*args, **kwargs)

    values = loopback_values(repo, grace_seconds=0.5, log_level="WARNING", **overrides)
    config = load_config(overrides=values, env={})
    if load_seconds > 0:
        return serve(config, engine_factory=SlowLoadingEngine, wait_for_models=False)
    return serve(config)

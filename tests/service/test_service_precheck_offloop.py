"""A slow header read cannot stall the server: a large image's precheck (probe_image) runs off the
event loop, so health checks, ListModels and other Translates are answered meanwhile.

The probe is held on an event (no timing): the other calls must complete while it is still held.
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import png, rgb_image, test_config

import pixforge.service.pipeline as pipeline_module
from pixforge.service.pipeline import Pipeline
from pixforge.v1 import translation_pb2 as pb

BIG = 1 << 20  # an image over this is the one held (the off-loop threshold is well below it)


@pytest.fixture(scope="module")
def server(start_server, model_repo):
    config = test_config(model_repo, metrics_port=-1, strict_readiness=False)
    return start_server(config)


class HeldProbe:
    """probe_image that, for images over BIG, waits until released (it says when it is waiting)."""

    def __init__(self, real):
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, data: bytes):
        if len(data) > BIG:
            self.entered.set()
            self.release.wait(60)  # a safety net only: the test releases it
        return self.real(data)


@pytest.mark.parametrize("method", ["Translate", "TranslateStream"])
def test_a_held_probe_does_not_block_other_calls(server, monkeypatch, method):
    handle, stub = server
    probe = HeldProbe(pipeline_module.probe_image)
    monkeypatch.setattr(pipeline_module, "probe_image", probe)
    pixels = rgb_image(640, 640, seed=3)
    big = png(pixels)
    assert len(big) > BIG
    outcome = {}

    def send_big():
        request = pb.TranslateRequest(model="invert", image=big)
        try:
            if method == "Translate":
                outcome["big"] = stub.Translate(request, timeout=120)
            else:
                item = pb.TranslateStreamRequest(request=request)
                (response,) = stub.TranslateStream(iter([item]), timeout=120)
                outcome["big"] = response.response
        except grpc.RpcError as exc:
            outcome["big"] = exc

    sender = threading.Thread(target=send_big)
    sender.start()
    try:
        assert probe.entered.wait(60), "the large image's probe never started"
        # The probe is held now. With it on the event loop, nothing below could be answered.
        with grpc.insecure_channel(handle.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert {m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=20).models} >= {"invert"}
        small = stub.Translate(pb.TranslateRequest(model="invert", image=png(rgb_image(16, 16))), timeout=20)
        assert (small.width, small.height) == (16, 16)
        assert not probe.release.is_set() and "big" not in outcome  # all of it while the probe was held
    finally:
        probe.release.set()
        sender.join(120)
    result = outcome["big"]
    assert not isinstance(result, grpc.RpcError), result
    assert (result.width, result.height) == (640, 640)


def _recording(pipeline_thread: list[int]):
    def precheck(job):
        pipeline_thread.append(threading.get_ident())
        return 7

    return SimpleNamespace(precheck=precheck)


@pytest.mark.parametrize("size", ["tiny", "at the threshold", "over it"])
def test_precheck_async_leaves_the_loop_for_large_images(size):
    """Small images are prechecked in place (no thread hop); larger ones on the default executor."""
    limit = pipeline_module.OFF_LOOP_BYTES
    n, off_loop = {"tiny": (1, False), "at the threshold": (limit, False), "over it": (limit + 1, True)}[size]
    seen: list[int] = []
    job = SimpleNamespace(image=b"\0" * n)

    async def main():
        return await Pipeline.precheck_async(_recording(seen), job), threading.get_ident()

    pixels, loop_thread = asyncio.run(main())
    assert pixels == 7
    assert (seen[0] != loop_thread) is off_loop

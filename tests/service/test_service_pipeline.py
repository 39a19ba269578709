"""The grpc-free core: registry states and pins, channel adaptation, colourisation render size."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from service_helpers import (
    build_color,
    build_invert,
    color_reference,
    decode,
    png,
    rgb_image,
    smooth_image,
    test_config,
    write_garbage,
)

from pixforge.service.engine import Engine
from pixforge.service.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    QueueFullError,
    RequestCancelledError,
    RequestExpiredError,
)
from pixforge.service.pipeline import (
    CancelToken,
    Pipeline,
    TranslateJob,
    TranslateOptions,
    adapt_channels,
    join_chroma,
    render_shape,
)
from pixforge.service.repository import ModelRegistry, ModelState


def make_registry(repo, factory=None, **overrides) -> tuple[ModelRegistry, Pipeline]:
    cfg = test_config(repo, **overrides)
    registry = ModelRegistry(repo, cfg.engine, cfg.batching, pins=cfg.pins, engine_factory=factory)
    registry.reload()
    return registry, Pipeline(registry, cfg.tiling, cfg.limits, cfg.colorization, cfg.batching)


def counting_engine(calls: list) -> type[Engine]:
    """An Engine class that appends each model call's batch shape to `calls`."""

    class Counting(Engine):
        def _run_session(self, batch):
            calls.append(batch.shape)
            return super()._run_session(batch)

    return Counting


# --------------------------------------------------------------------------- registry


def test_ready_only_after_warmup_and_warmup_failure_is_failed(tmp_path):
    build_invert(tmp_path / "good" / "1" / "model.onnx")
    build_invert(tmp_path / "coldfail" / "1" / "model.onnx")
    events = []

    class Probe(Engine):
        def warmup(self, size=0):
            events.append(self.name)
            if self.name == "coldfail":
                raise RuntimeError("warm-up exploded")
            return super().warmup(size)

    registry, _ = make_registry(tmp_path, Probe)
    try:
        states = {r.name: r for r in registry.versions()}
        assert states["good"].state is ModelState.READY and "good" in events
        assert (
            states["coldfail"].state is ModelState.FAILED and "warm-up exploded" in states["coldfail"].error
        )
    finally:
        registry.close()


def test_highest_ready_version_wins_unless_pinned(tmp_path):
    build_invert(tmp_path / "m" / "1" / "model.onnx")
    build_invert(tmp_path / "m" / "2" / "model.onnx")
    write_garbage(tmp_path / "m" / "3" / "model.onnx")
    registry, _ = make_registry(tmp_path)
    try:
        with registry.acquire("m") as row:
            assert row.version == 2  # 3 failed
        with registry.acquire("m", 1) as row:
            assert row.version == 1
        with pytest.raises(ModelNotReadyError, match="failed to load"):
            with registry.acquire("m", 3):
                pass
        with pytest.raises(ModelNotFoundError, match="no version 9"):
            registry.describe("m", 9)
        with pytest.raises(ModelNotFoundError, match="unknown model"):
            registry.describe("zzz")
    finally:
        registry.close()
    pinned, _ = make_registry(tmp_path, pins={"m": 1})
    try:
        with pinned.acquire("m") as row:
            assert row.version == 1
    finally:
        pinned.close()


def test_admission_is_bounded_per_model(tmp_path):
    build_invert(tmp_path / "m" / "1" / "model.onnx")
    registry, _ = make_registry(tmp_path, **{"batching.queue_size": 2})
    try:
        with registry.acquire("m"), registry.acquire("m"):
            with pytest.raises(QueueFullError, match="busy"):
                with registry.acquire("m"):
                    pass
        with registry.acquire("m"):  # slots come back
            pass
    finally:
        registry.close()


# --------------------------------------------------------------------------- pure helpers


def test_adapt_channels():
    rgb = rgb_image(4, 5)
    np.testing.assert_array_equal(adapt_channels(rgb, 3), rgb)
    gray = adapt_channels(rgb, 1)
    np.testing.assert_array_equal(gray[:, :, 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    np.testing.assert_array_equal(adapt_channels(gray, 3), np.repeat(gray, 3, axis=2))
    with pytest.raises(InvalidRequestError, match="gray .* or RGB"):
        adapt_channels(np.zeros((4, 4, 2), np.uint8), 3)


def test_render_shape():
    assert render_shape(4000, 6000, 512, 8) == (341, 512)
    assert render_shape(300, 200, 512, 8) == (300, 200)  # never upscaled
    assert render_shape(1000, 1000, 500, 32) == (480, 480)  # render size rounded to the multiple


def test_join_chroma_keeps_luminance_and_takes_colour():
    big = smooth_image(300, 500)
    colour = color_reference(cv2.resize(big, (100, 60), interpolation=cv2.INTER_AREA))
    out = join_chroma(big, colour)
    lab_big = cv2.cvtColor(big.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    lab_out = cv2.cvtColor(out.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    lab_ref = cv2.cvtColor(color_reference(big).astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    assert np.abs(lab_out[..., 0] - lab_big[..., 0]).max() < 1.0
    assert np.abs(lab_out[..., 1:] - lab_ref[..., 1:])[5:-5, 5:-5].max() < 2.5


# --------------------------------------------------------------------------- pipeline


def test_large_photo_colourises_in_one_pass(tmp_path):
    build_color(tmp_path / "color" / "1" / "model.onnx")
    calls: list[tuple[int, ...]] = []
    Counting = counting_engine(calls)

    registry, pipeline = make_registry(tmp_path, Counting)
    try:
        photo = smooth_image(1200, 1800)
        calls.clear()
        result = pipeline.translate(
            TranslateJob("color", png(photo), options=TranslateOptions(render_size=256))
        )
        assert len(calls) == 1 and max(calls[0][1:3]) <= 256  # one model call at render size
        out = decode(result.image)
        assert out.shape == photo.shape and (result.width, result.height) == (1800, 1200)
        lab_in = cv2.cvtColor(photo.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
        lab_out = cv2.cvtColor(out.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
        assert np.abs(lab_out[..., 0] - lab_in[..., 0]).max() < 1.0  # full-resolution luminance
        gray = pipeline.translate(
            TranslateJob("color", png(photo[:, :, :1]), options=TranslateOptions(render_size=256))
        )
        gray_out = decode(gray.image)
        assert gray_out.ndim == 3 and gray_out.shape == photo.shape  # a gray photo gets colour too:
        gray3 = np.repeat(photo[:, :, :1], 3, axis=2)  # the model's tint of it, as the model sees it
        lab_ref = cv2.cvtColor(color_reference(gray3).astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
        lab_gray = cv2.cvtColor(gray_out.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
        assert np.abs(lab_ref[..., 1:]).mean() > 5  # the tint is a colour, not gray
        assert np.abs(lab_gray[..., 1:] - lab_ref[..., 1:])[5:-5, 5:-5].max() < 2.5
    finally:
        registry.close()


@pytest.mark.parametrize("expired", [False, True], ids=["client_cancel", "deadline"])
def test_cancelled_token_stops_before_work(tmp_path, expired):
    build_invert(tmp_path / "m" / "1" / "model.onnx")
    calls: list[tuple[int, ...]] = []
    Counting = counting_engine(calls)

    registry, pipeline = make_registry(tmp_path, Counting)
    try:
        calls.clear()  # the warm-up's run
        token = CancelToken()
        token.cancel(expired=expired)
        with pytest.raises(RequestCancelledError) as info:
            pipeline.translate(TranslateJob("m", png(rgb_image(8, 8))), token)
        # The error (so the status) says whether the deadline or the client ended the work.
        assert isinstance(info.value, RequestExpiredError) is expired
        assert calls == []  # the model never ran
        assert registry.runtime("m").in_flight == 0
        fired = []
        token2 = CancelToken()
        token2.add_callback(lambda: fired.append(1))
        token2.cancel()
        token2.cancel()
        token2.add_callback(lambda: fired.append(2))  # already cancelled: runs at once
        assert fired == [1, 2]
        # A child token (a stream item's, a batch's images) reports its parent's reason.
        parent, child = CancelToken(), CancelToken()
        child.follow(parent)
        parent.cancel(expired=expired)
        assert isinstance(child.error(), RequestExpiredError) is expired
    finally:
        registry.close()

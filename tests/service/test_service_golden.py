"""Golden outputs of the six shipped models (models/): contract, pipeline, a pinned output crop.

Each model is loaded by the server's own registry (Engine on CPU, one thread, the reference
model.onnx of each version), its contract is compared with the recorded one, and a fixed synthetic
image goes through Pipeline.translate (PNG in, PNG out, the server's whole path). A small centre
crop of the output and the per-channel mean of the whole output must match
golden/shipped_models.json within 1 grey level (onnxruntime versions may round differently).

A model file that changed since the expectations were recorded fails with the command that
records them again; after replacing or retraining a model (and checking its samples):

    .venv/bin/python -m pytest tests/service/test_service_golden.py --update-golden
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from service_helpers import decode, png, test_config

from pixforge.service.pipeline import Pipeline, TranslateJob
from pixforge.service.repository import ModelRegistry, ModelState

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
GOLDEN = Path(__file__).parent / "golden" / "shipped_models.json"
SHIPPED = ("sr-x4", "sr-x4-gan", "colorization", "facades", "apple2orange", "orange2apple")
UPDATE = "python -m pytest tests/service/test_service_golden.py --update-golden"
CROP = 8  # side of the pinned output crop (all channels)
TOLERANCE = 1  # grey levels, crop and means


def golden_input(h: int, w: int) -> np.ndarray:
    """A deterministic photo-like RGB image: smooth gradients, a bright disc and diagonal stripes."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 30 + 170 * x / max(1, w - 1)
    g = 50 + 140 * y / max(1, h - 1)
    b = 120 + 60 * np.sin((x + 2 * y) / 5.0)
    disc = ((y - 0.4 * h) ** 2 + (x - 0.6 * w) ** 2) < (0.22 * min(h, w)) ** 2
    rgb = np.dstack([r, g, b])
    rgb[disc] = rgb[disc] * 0.4 + np.float32([150, 140, 60])
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def input_size(scale: int, size_multiple: int) -> tuple[int, int]:
    """(h, w): non-square, multiples of the model's size multiple; small (SR inputs are 1/4 size)."""
    if scale > 1:
        return 24, 32
    m = max(size_multiple, 32)
    return m, 2 * m


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pipeline():
    missing = [name for name in SHIPPED if not (MODELS / name / "1" / "model.onnx").is_file()]
    if missing:
        pytest.fail(f"shipped models missing from models/: {missing}")
    # The reference model.onnx of each version, always: a CPU server may run a version's int8
    # variant instead, and int8 kernels round differently between CPUs (VNNI or not).
    cfg = test_config(MODELS, **{"engine.warmup": False, "engine.precision": "fp32"})
    registry = ModelRegistry(MODELS, cfg.engine, cfg.batching, engine_factory=None)
    registry.reload()
    try:
        yield registry, Pipeline(registry, cfg.tiling, cfg.limits, cfg.colorization, cfg.batching)
    finally:
        registry.close()


def measure(registry: ModelRegistry, pipe: Pipeline, name: str) -> dict:
    """What the golden file records for one model (also what the test compares)."""
    row = registry.describe(name)
    assert row.state is ModelState.READY and row.contract is not None, f"{name}: {row.state} {row.error}"
    c = row.contract
    h, w = input_size(c.scale, c.size_multiple)
    result = pipe.translate(TranslateJob(name, png(golden_input(h, w)), output_format="png"))
    out = decode(result.image)
    if out.ndim == 2:
        out = out[:, :, None]
    oh, ow = out.shape[:2]
    y0, x0 = (oh - CROP) // 2, (ow - CROP) // 2
    return {
        "model_sha256": _sha256(row.path),
        "contract": {
            "task": c.task,
            "scale": c.scale,
            "input_channels": c.input_channels,
            "output_channels": c.output_channels,
            "size_multiple": c.size_multiple,
        },
        "input_hw": [h, w],
        "output_shape": list(out.shape),
        "crop_yx": [y0, x0],
        # One line per crop row in the file: (CROP, CROP * channels), pixels' channels side by side.
        "crop": out[y0 : y0 + CROP, x0 : x0 + CROP].reshape(CROP, -1).tolist(),
        "channel_means": [round(float(v), 3) for v in out.reshape(-1, out.shape[2]).mean(axis=0)],
    }


def _load_golden() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}


def _dump_golden(golden: dict) -> str:
    """Indented JSON with every list of numbers on one line (reviewable diffs)."""
    text = json.dumps(dict(sorted(golden.items())), indent=1)
    return re.sub(r"\[[^\[\]{}]*\]", lambda m: json.dumps(json.loads(m.group(0))), text) + "\n"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_output_matches_golden(pipeline, name, request):
    registry, pipe = pipeline
    got = measure(registry, pipe, name)
    if request.config.getoption("--update-golden"):
        golden = _load_golden()
        golden[name] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(_dump_golden(golden))
        return
    want = _load_golden().get(name)
    assert want is not None, f"no golden output recorded for {name}: run {UPDATE}"
    assert got["model_sha256"] == want["model_sha256"], (
        f"models/{name}/1/model.onnx changed since its golden output was recorded: check the new "
        f"model's samples, then run {UPDATE}"
    )
    assert got["contract"] == want["contract"]
    assert got["output_shape"] == want["output_shape"] and got["crop_yx"] == want["crop_yx"]
    diff = np.abs(np.int16(got["crop"]) - np.int16(want["crop"]))
    assert diff.max() <= TOLERANCE, (
        f"{name}: output crop differs by up to {diff.max()} grey levels "
        f"({int((diff > TOLERANCE).sum())} of {diff.size} samples over {TOLERANCE})"
    )
    np.testing.assert_allclose(got["channel_means"], want["channel_means"], atol=TOLERANCE)

"""int8 variant: calibrated on the given images, judged by the task metric, refused when it misses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from export_helpers import KINDS, ort_run, quiet, tiny_generator

from pixforge.cli import main
from pixforge.codec import encode_image
from pixforge.contract import check_variant, load_contract, parse_speedups
from pixforge.hardware import int8_cpu_class
from pixforge.training.export import ExportConfig, ParityError, export_generator, quantize
from pixforge.training.export.parity import psnr


def _photos(n: int = 3, size: int = 96) -> list[np.ndarray]:
    """Smooth, photo-like RGB images (gradients and blobs): what calibration should see."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.5, 3.0, 3)
        img = np.stack([np.sin(a * x + b * y), np.cos(b * x * y * 3), np.sin(c * (x - y))], -1)
        out.append(((img * 0.5 + 0.5) * 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("kind", ["sr_edsr", "resnet"])
def test_int8_variant_is_written_within_tolerance(kind, repo):
    gen_kwargs, export_kwargs = KINDS[kind]
    generator = tiny_generator(**gen_kwargs)
    cfg = ExportConfig(**export_kwargs, int8=True)
    result = export_generator(generator, cfg, repo, "m8", calibration_images=_photos(), log=quiet)

    variant = result.path.parent / "model.int8.onnx"
    assert result.variants == ("int8",) and variant.is_file()
    reference, quantized = load_contract(result.path), load_contract(variant)
    check_variant(reference, quantized, "int8", variant)  # same model, another precision
    assert quantized.metadata["precision"] == "int8"
    report = result.int8
    assert report.passed and report.quantized >= 1
    sidecar = json.loads((result.path.parent / "model.json").read_text())
    assert sidecar["variants"]["int8"]["int8"]["metric"] == report.metric
    # the speed-up over fp32 measured here, under this CPU's class: what a CPU server follows
    recorded = parse_speedups(quantized.metadata["int8_speedup"])
    assert list(recorded) == [int8_cpu_class()] and recorded[int8_cpu_class()] > 0
    timed = sidecar["variants"]["int8"]["int8"]["speedup"]
    assert timed["cpu_class"] == int8_cpu_class()
    assert timed["ratio"] == pytest.approx(recorded[int8_cpu_class()], abs=0.01)
    assert set(timed["ms"]) == {"fp32", "int8"} and timed["edge"] > 0
    import onnx

    ops = {n.op_type for n in onnx.load(str(variant)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # uint8 in and out, the same size, close to fp32
    batch = np.stack(_photos(2, 64))
    out8, out32 = ort_run(variant, batch), ort_run(result.path, batch)
    assert out8.dtype == np.uint8 and out8.shape == out32.shape
    assert psnr(out8, out32) >= 30.0


def test_int8_refused_when_the_metric_misses(repo, monkeypatch):
    gen_kwargs, export_kwargs = KINDS["resnet"]
    monkeypatch.setitem(quantize.TOLERANCES, "style_translation", ("PSNR vs fp32 output (dB)", "floor", 99.0))
    cfg = ExportConfig(**export_kwargs, int8=True)
    with pytest.raises(ParityError, match="int8 variant misses its tolerance"):
        export_generator(
            tiny_generator(**gen_kwargs), cfg, repo, "refused", calibration_images=_photos(), log=quiet
        )
    assert not (repo / "refused" / "1").exists()  # nothing written


def test_int8_needs_calibration_images(tmp_path, capsys):
    from test_export_cli import _pixforge_checkpoint

    ckpt = tmp_path / "G.pt"
    _pixforge_checkpoint(ckpt)
    argv = ["export", str(ckpt), "--name", "sr", "--repo", str(tmp_path / "models"), "--int8"]
    assert main(argv) == 2
    assert "--int8 needs --calibration" in capsys.readouterr().err
    assert main([*argv, "--calibration", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(encode_image(_photos(1)[0]))
    assert main([*argv[:-1], "--calibration", str(photos)]) == 2  # without --int8
    assert "--calibration applies to --int8 only" in capsys.readouterr().err


@pytest.mark.parametrize(
    "task,channels", [("style_translation", 3), ("super_resolution", 3), ("colorization", 1)]
)
def test_calibration_images_take_the_models_channels(task, channels):
    # A calibration folder may hold gray and colour photos: each reaches the model as the server
    # would give it (gray repeated to RGB, colour reduced to luma), not with its own channel count.
    from pixforge.contract import ModelContract

    scale = 2 if task == "super_resolution" else 1
    contract = ModelContract(task, scale, channels, 3, 8, 64, {}, "2")
    colour = _photos(1, 64)[0]
    gray = colour[:, :, :1].copy()
    for sample in quantize.task_samples([colour, gray, gray[:, :, 0]], contract):
        assert sample.input.ndim == 3 and sample.input.shape[2] == channels


def test_int8_export_prints_no_quantizer_noise(tmp_path, capfd, caplog):
    # onnxruntime's quantiser advised running quant_pre_process (twice per trial, on the root
    # logger) and its calibration session warned about the tiling inputs' default values (three
    # lines per trial, from C++ straight to stderr): ~35 lines of noise a user cannot act on.
    from test_export_cli import _pixforge_checkpoint

    ckpt = tmp_path / "G.pt"
    _pixforge_checkpoint(ckpt)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(_photos()):
        (photos / f"{i}.png").write_bytes(encode_image(image))
    argv = ["export", str(ckpt), "--name", "sr", "--repo", str(tmp_path / "models"), "--tile-size", "64"]
    caplog.set_level("INFO")
    assert main([*argv, "--int8", "--calibration", str(photos)]) == 0
    out, err = capfd.readouterr()
    assert "int8, every convolution quantised" in out  # the quantiser did run
    assert "pre-processing" not in caplog.text and "pre-processing" not in err
    assert "appears in graph inputs" not in err
    assert err == "", err


def test_quiet_quantizer_drops_only_the_preprocessing_advice(capsys, caplog):
    import logging

    root = logging.getLogger()
    with quantize.quiet_quantizer():
        logging.warning("Please consider to run pre-processing before quantization. Refer to ...")
        logging.warning("Please consider pre-processing before quantization. See ...")
        logging.warning("Please use QuantFormat.QDQ for activation type QInt8 and weight type QInt8.")
    assert [r.getMessage() for r in caplog.records] == [
        "Please use QuantFormat.QDQ for activation type QInt8 and weight type QInt8."
    ]
    assert not root.filters
    # Without a root handler (a plain `pixforge export` process), logging.warning() would install a
    # "WARNING:root:" handler for good (basicConfig); the others still print as they would.
    kept, root.handlers = root.handlers, []
    try:
        with quantize.quiet_quantizer():
            logging.warning("Please consider pre-processing before quantization. See ...")
            logging.warning("another warning")
        assert root.handlers == [] and not root.filters
    finally:
        root.handlers = kept
    assert capsys.readouterr().err == "another warning\n"

"""fp16 variant: written beside the fp32 model.onnx, uint8 I/O kept, fp16 weights inside, PSNR
against the fp32 graph reported."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from export_helpers import KINDS, ort_run, quiet, tiny_generator

from pixforge.contract import load_contract
from pixforge.training.export import ExportConfig, ParityError, export_generator
from pixforge.training.export.parity import fp16_psnr, parity_batch, psnr


@pytest.mark.parametrize("kind", ["sr_pixelshuffle", "colorization"])
def test_export_fp16_keeps_uint8_io_and_reports_psnr(kind, repo):
    gen_kwargs, export_kwargs = KINDS[kind]
    generator = tiny_generator(**gen_kwargs)
    fp32 = export_generator(generator, ExportConfig(**export_kwargs), repo, "m32", log=quiet)
    fp16 = export_generator(generator, ExportConfig(**export_kwargs, fp16=True), repo, "m16", log=quiet)
    variant = fp16.path.parent / "model.fp16.onnx"
    assert fp16.variants == ("fp16",) and variant.is_file()
    # the reference stays fp32: a CPU server runs it, a GPU server the variant
    assert load_contract(fp16.path).metadata["precision"] == "fp32"
    assert np.array_equal(
        ort_run(fp16.path, parity_batch(64, 64, 3, seed=9)),
        ort_run(fp32.path, parity_batch(64, 64, 3, seed=9)),
    )

    model = onnx.load(str(variant))
    io = [model.graph.input[0], model.graph.output[0]]
    assert [v.type.tensor_type.elem_type for v in io] == [onnx.TensorProto.UINT8] * 2
    weight_types = {init.data_type for init in model.graph.initializer if len(init.dims) == 4}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    assert load_contract(variant).metadata["precision"] == "fp16"

    assert fp16.parity.fp16_psnr_db >= 45.0
    sidecar = json.loads((fp16.path.parent / "model.json").read_text())
    assert sidecar["parity"]["fp16_psnr_db"] == pytest.approx(fp16.parity.fp16_psnr_db)
    assert sidecar["variants"]["fp16"]["file"] == "model.fp16.onnx"

    batch = parity_batch(64, 64, 3, seed=9)
    out16, out32 = ort_run(variant, batch), ort_run(fp32.path, batch)
    assert out16.dtype == np.uint8 and out16.shape == out32.shape
    assert psnr(out16, out32) >= 45.0


def test_export_psnr_helper_and_fp16_threshold(repo):
    a = np.zeros((4, 4), np.uint8)
    assert psnr(a, a) == 100.0
    assert psnr(a, a + 1) == pytest.approx(48.13, abs=0.01)
    gen_kwargs, export_kwargs = KINDS["resnet"]
    g = tiny_generator(**gen_kwargs)
    m32 = onnx.load(str(export_generator(g, ExportConfig(**export_kwargs), repo, "a", log=quiet).path))
    other = tiny_generator(seed=1, **gen_kwargs)
    m_other = onnx.load(
        str(export_generator(other, ExportConfig(**export_kwargs), repo, "b", log=quiet).path)
    )
    inputs = [("x", parity_batch(32, 32, 3))]
    with pytest.raises(ParityError, match="PSNR"):
        fp16_psnr(m32, m_other, inputs)  # a different network is far below 45 dB

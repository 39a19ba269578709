"""Sub-pixel rewrites (training/export/subpixel.py): same function, other ops, weights kept by name."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
import torch
from export_helpers import KINDS, TINY, ort_run, quiet, tiny_generator
from torch import nn

from pixforge.training.export import ExportConfig, export_generator
from pixforge.training.export.onnx_build import optimize_offline
from pixforge.training.export.parity import make_session
from pixforge.training.export.pipeline import generator_config_json
from pixforge.training.export.subpixel import interleave_nodes, subpixel_rewrites
from pixforge.training.legacy import load_pixforge_onnx
from pixforge.training.registry import GeneratorConfig

# The legacy exporter's notices, which the product's own export filters too (onnx_build._quiet_export).
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"
    ),
    pytest.mark.filterwarnings("ignore:Constant folding - Only steps=1:UserWarning"),
]


class _Transposed(nn.Module):
    def __init__(self, c_out: int = 8):
        super().__init__()
        self.up = nn.ConvTranspose2d(6, c_out, 4, stride=2, padding=1)

    def forward(self, x):
        return self.up(x)


class _UpsampleConv(nn.Module):
    def __init__(self, c_out: int = 8, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(6, c_out, 3, padding=1, bias=bias)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class _NarrowHead(nn.Module):
    def __init__(self, k: int = 7):
        super().__init__()
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv = nn.Conv2d(16, 3, k)

    def forward(self, x):
        return torch.tanh(self.conv(self.pad(x)))


def _onnx(module: nn.Module, channels: int = 6) -> onnx.ModelProto:
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (torch.zeros(2, channels, 8, 12),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "oh", 3: "ow"}},
        )
    model, _ = optimize_offline(onnx.load_from_string(buffer.getvalue()))
    return model


def _probes(channels: int, sizes=((8, 10), (10, 8))) -> list[dict]:
    return [{"x": np.zeros((1, channels, h, w), np.float32)} for h, w in sizes]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model).run(None, {"x": x})[0]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _weights(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer if len(i.dims) == 4 and not i.name.startswith("subpixel")}


@pytest.mark.parametrize(
    ("module", "channels", "gone"),
    [
        (_Transposed(), 6, "ConvTranspose 4x4"),
        (_UpsampleConv(), 6, "Resize"),
        (_UpsampleConv(bias=False), 6, "Resize"),
        (_NarrowHead(), 16, "7x7 Conv"),
        (_NarrowHead(k=5), 16, "5x5 Conv"),
    ],
    ids=["transposed", "upsample_conv", "upsample_conv_no_bias", "narrow_7x7", "narrow_5x5"],
)
def test_rewrite_keeps_the_function_and_the_weights(module, channels, gone):
    model = _onnx(module, channels)
    rewritten, notes = subpixel_rewrites(model, _probes(channels))
    assert len(notes) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    # the pattern is gone: only the interleave copy (one-hot, kernel = stride) is a ConvTranspose
    assert "Resize" not in _ops(rewritten)
    copies = interleave_nodes(rewritten)
    assert len(copies) == 1 and _ops(rewritten).count("ConvTranspose") == 1
    convs = [n for n in rewritten.graph.node if n.op_type == "Conv"]
    kernels = [list(a.ints) for n in convs for a in n.attribute if a.name == "kernel_shape"]
    if gone.endswith("Conv"):  # the narrow conv became a stride-2 one with a (k+1) x (k+1) kernel
        k = int(gone.split("x")[0])
        strides = [list(a.ints) for n in convs for a in n.attribute if a.name == "strides"]
        assert kernels == [[k + 1, k + 1]] and strides == [[2, 2]]
    else:
        assert kernels and all(ks == [2, 2] for ks in kernels)
    # the weights keep their names and values: a re-export reads them from the file
    assert _weights(model) <= _weights(rewritten)
    rng = np.random.default_rng(1)
    for h, w in ((8, 12), (16, 20), (24, 8)):
        x = rng.normal(size=(2, channels, h, w)).astype(np.float32)
        want, got = _run(model, x), _run(rewritten, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()))


def test_narrow_rewrite_needs_even_sizes_at_every_probe():
    model = _onnx(_NarrowHead(), 16)
    # an odd probe size: the stride-2 phases would not cover the output, so the conv stays as it is
    _, notes = subpixel_rewrites(model, _probes(16, ((8, 10), (9, 8))))
    assert notes == []
    _, notes = subpixel_rewrites(model, [])  # no probes: never
    assert notes == []


def test_phases_with_fewer_channels_than_a_block_are_left_alone():
    # (and an even kernel: its output on an even-sized input is odd-sized, not 2 phases per axis)
    for module, channels in ((_Transposed(c_out=4), 6), (_UpsampleConv(c_out=4), 6), (_NarrowHead(k=4), 16)):
        model = _onnx(module, channels)
        rewritten, notes = subpixel_rewrites(model, _probes(channels))
        assert notes == [] and _ops(rewritten) == _ops(model)


def test_onnxruntime_folds_the_phase_kernels_into_constant_weights():
    rewritten, _ = subpixel_rewrites(_onnx(_Transposed(c_out=16)), _probes(6))
    folded, done = optimize_offline(rewritten)
    assert done
    convs = [n for n in folded.graph.node if n.op_type == "Conv"]
    constants = {i.name for i in folded.graph.initializer}
    assert len(convs) == 4 and all(n.input[1] in constants for n in convs)
    assert not {"Gather", "Transpose", "MatMul"} & set(_ops(folded))


@pytest.mark.parametrize("kind", ["resnet_resize_conv", "unet", "colorization"])
def test_export_rewrites_and_passes_parity(kind, repo):
    gen_kwargs, export_kwargs = KINDS[kind]
    fields = {**gen_kwargs, "ngf": 8}
    generator = tiny_generator(**fields)
    with torch.no_grad():  # distinct biases: the offline pass would merge identical (zero) ones by name
        for name, p in generator.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.1, 0.1)
    provenance = {"generator_config": generator_config_json(GeneratorConfig(**{**TINY, **fields}))}
    result = export_generator(
        generator, ExportConfig(**export_kwargs), repo, "m", provenance=provenance, log=quiet
    )
    assert result.parity is not None and result.parity.passed
    sidecar = json.loads((result.path.parent / "model.json").read_text())
    rewrites = sidecar["onnx"]["subpixel_rewrites"]
    assert rewrites and interleave_nodes(onnx.load(str(result.path)))
    # the same generator without the rewrite: the same pixels (to one grey level)
    plain = export_generator(
        generator, ExportConfig(**export_kwargs, subpixel=False), repo, "plain", log=quiet
    )
    assert json.loads((plain.path.parent / "model.json").read_text())["onnx"]["subpixel_rewrites"] == []
    assert not interleave_nodes(onnx.load(str(plain.path)))
    channels = 3
    batch = np.random.default_rng(2).integers(0, 256, (2, 64, 128, channels), dtype=np.uint8)
    a, b = ort_run(result.path, batch), ort_run(plain.path, batch)
    assert np.abs(a.astype(int) - b).max() <= 1
    # a re-export (--from onnx) reads the weights back from the rewritten file
    _, state, _ = load_pixforge_onnx(result.path)
    for key, value in generator.state_dict().items():
        if key in state:
            torch.testing.assert_close(state[key], value.float())

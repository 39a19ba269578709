"""The generators the suites measure, built from the registry, and their ONNX exports.

Full runs use the junyanz reference architectures (``unet_256`` as pix2pix trains it, with batch
norm and dropout, and CycleGAN's ``resnet_9blocks`` with instance norm, both ngf 64) and the
generators of our shipped training configs (``facades``, ``style_translation``,
``super_resolution_x4``, ``colorization``: the architectures of every model under models/, sized for
a CPU). ``--quick`` uses tiny widths so a smoke run takes seconds. Weights are random (seeded):
speed does not depend on their values.

Two ONNX graphs per generator: the *served* one, written by the real exporter
(:func:`pixforge.training.export.export_generator`: uint8 NHWC in/out, pixel conversions inside),
and the *raw* float NCHW graph of the same network in the same inference semantics, exported with
the same exporter settings, so the cost of the uint8 wrapper can be told apart from the network.
The served graph's precision variants (``model.fp16.onnx`` from the exporter, an int8 QDQ graph
from the exporter's quantiser) are measured as well.

:func:`count_macs` counts a generator's multiply-accumulates per image, from which the engine suite
derives GFLOP/s.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from pixforge.training.config import load_config
from pixforge.training.export import (
    ExportConfig,
    export_generator,
    to_inference_semantics,
)
from pixforge.training.export.onnx_build import optimize_offline
from pixforge.training.export.subpixel import probe_shapes, subpixel_rewrites
from pixforge.training.registry import GeneratorConfig, build_generator, generator_preset

CONFIG_DIR = Path(__file__).resolve().parent.parent / "training" / "configs"
OPSET = 17
FLOAT_INPUT = "input"


@dataclass(frozen=True)
class ModelSpec:
    """One generator to benchmark.

    Attributes:
        name: short key used on the command line and in tables.
        description: one line for the report.
        config: the registry GeneratorConfig.
        task: the export task (decides the contract metadata).
        color_space: "rgb", or "lab" for colourisation (the generator maps L -> ab; the served
            graph takes and returns RGB).
        shipped: the architecture of a model under models/ (the served-vs-compile goal is about these).
    """

    name: str
    description: str
    config: GeneratorConfig
    task: str = "paired_translation"
    color_space: str = "rgb"
    shipped: bool = False

    @property
    def scale(self) -> int:
        """Output pixels per input pixel."""
        return self.config.scale

    @property
    def served_channels(self) -> int:
        """Channels of the served graph's uint8 input (RGB for a Lab model)."""
        return 3 if self.color_space == "lab" else self.config.in_channels


def _config_generator(stem: str) -> GeneratorConfig:
    path = CONFIG_DIR / f"{stem}.yaml"
    return load_config(path).generator


def _catalogue() -> dict[str, ModelSpec]:
    # junyanz trains unet_256 with batch norm + dropout; exported (and here measured) in pixforge's
    # inference semantics: per-image norm statistics, dropout off (training/export/wrapper.py).
    unet_jz = dataclasses.replace(generator_preset("unet_256"), norm="batch", dropout=True)
    return {
        "unet_256": ModelSpec("unet_256", "junyanz pix2pix unet_256 (ngf 64, 8 levels, batch norm)", unet_jz),
        "resnet_9blocks": ModelSpec(
            "resnet_9blocks",
            "junyanz CycleGAN resnet_9blocks (ngf 64, instance norm)",
            generator_preset("resnet_9blocks"),
            "style_translation",
        ),
        "facades": ModelSpec(
            "facades",
            "our facades.yaml generator (U-Net ngf 32, 6 levels; models/facades)",
            _config_generator("facades"),
            shipped=True,
        ),
        "style_translation": ModelSpec(
            "style_translation",
            "our style_translation.yaml generator (ResNet ngf 16, 6 blocks; "
            "models/apple2orange, orange2apple)",
            _config_generator("style_translation"),
            "style_translation",
            shipped=True,
        ),
        "super_resolution_x4": ModelSpec(
            "super_resolution_x4",
            "our super_resolution_x4.yaml generator (EDSR width 24, 6 blocks, bicubic skip, x4; "
            "models/sr-x4, sr-x4-gan)",
            _config_generator("super_resolution_x4"),
            "super_resolution",
            shipped=True,
        ),
        "colorization": ModelSpec(
            "colorization",
            "our colorization.yaml generator (U-Net ngf 32, 6 levels, L -> ab; models/colorization)",
            _config_generator("colorization"),
            "colorization",
            color_space="lab",
            shipped=True,
        ),
        "unet_tiny": ModelSpec(
            "unet_tiny",
            "tiny U-Net (ngf 8, 4 levels; --quick)",
            GeneratorConfig(arch="unet", ngf=8, depth=4, norm="batch"),
        ),
        "resnet_tiny": ModelSpec(
            "resnet_tiny",
            "tiny ResNet (ngf 8, 2 blocks; --quick)",
            GeneratorConfig(arch="resnet", ngf=8, n_blocks=2),
            "style_translation",
        ),
        "sr_tiny": ModelSpec(
            "sr_tiny",
            "small x4 super-resolution ResNet (ngf 16, 2 blocks, pixel shuffle)",
            GeneratorConfig(arch="resnet", ngf=16, n_blocks=2, norm="none", scale=4, upsample="pixelshuffle"),
            "super_resolution",
        ),
    }


FULL_MODELS = [
    "unet_256",
    "resnet_9blocks",
    "facades",
    "style_translation",
    "super_resolution_x4",
    "colorization",
]
QUICK_MODELS = ["unet_tiny", "resnet_tiny"]


def model_specs(names: list[str]) -> list[ModelSpec]:
    """Specs for the given names.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    catalogue = _catalogue()
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(catalogue)}")
    return [catalogue[n] for n in names]


def build(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """The generator with random (seeded) weights, in training form (as the registry builds it)."""
    torch.manual_seed(seed)
    return build_generator(spec.config)


def inference_module(generator: nn.Module) -> nn.Module:
    """The float NCHW network in pixforge's inference semantics (what the served graph contains)."""
    module, _ = to_inference_semantics(generator)
    return module


def export_served(
    generator: nn.Module, spec: ModelSpec, repo: Path, name: str | None = None, fp16: bool = False
) -> Path:
    """Export with the real exporter into ``repo/<name>/1/model.onnx`` (parity check skipped: speed only).

    Args:
        fp16: also write the fp16 variant ``model.fp16.onnx`` beside it (:func:`variant_path`):
            fp16 weights and activations inside the graph, uint8 I/O and pixel conversions as fp32.

    Returns:
        The (fp32) model.onnx path.
    """
    cfg = ExportConfig(
        task=spec.task,
        color_space=spec.color_space,
        scale=spec.scale,
        verify=False,
        description=spec.description,
        fp16=fp16,
    )
    result = export_generator(generator, cfg, repo, name or spec.name, version=1, log=lambda *_: None)
    return result.path


def export_float(generator: nn.Module, spec: ModelSpec, path: Path) -> Path:
    """Export the raw float NCHW network (input ``input``, dynamic N/H/W) like the real exporter does.

    Same exporter (TorchScript, opset 17, constant folding), the same offline BASIC optimisation
    as :mod:`pixforge.training.export.onnx_build` and the same sub-pixel rewrites, so only the uint8
    wrapper differs.
    """
    module = inference_module(generator)
    multiple = int(generator.size_multiple)
    # batch 2 and H != W, so neither gets baked into the traced graph (as the real exporter does);
    # at least 64 px so the reflection pads of ResNet blocks fit the bottleneck's feature maps.
    edge = -(-64 // multiple) * multiple
    example = torch.zeros(2, spec.config.in_channels, edge, 2 * edge)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[FLOAT_INPUT],
            output_names=["output"],
            dynamic_axes={
                FLOAT_INPUT: {0: "batch", 2: "height", 3: "width"},
                "output": {0: "batch", 2: "out_height", 3: "out_width"},
            },
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model, _ = optimize_offline(model)
    # the exporter's sub-pixel rewrites, probed as the exporter probes them
    probes = [
        {FLOAT_INPUT: np.zeros((1, spec.config.in_channels, h, w), np.float32)}
        for h, w in probe_shapes(edge, multiple)
    ]
    model, _ = subpixel_rewrites(model, probes)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def variant_path(served: Path, precision: str) -> Path:
    """The precision variant written beside a served ``model.onnx`` (``model.fp16.onnx``)."""
    from pixforge.repository import variant_file

    return served.parent / variant_file(precision)


def smooth_images(size: int, channels: int, count: int = 2, seed: int = 0) -> list[np.ndarray]:
    """``count`` uint8 (size, size, channels) images of low-frequency waves: photo-like smooth content
    to calibrate int8 activation ranges on (speed does not depend on the ranges)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for _ in range(count):
        planes = []
        for _ in range(channels):
            fx, fy = rng.uniform(0.5, 3.0, 2)
            px, py = rng.uniform(0.0, 2 * np.pi, 2)
            plane = 0.5 + 0.25 * np.sin(2 * np.pi * fx * xx + px) + 0.25 * np.cos(2 * np.pi * fy * yy + py)
            planes.append(plane)
        out.append(np.clip(np.stack(planes, -1) * 255 + 0.5, 0, 255).astype(np.uint8))
    return out


def quantize_served(served: Path, dst: Path, calibration: list[np.ndarray]) -> Path:
    """The int8 QDQ variant of a served graph, made by the exporter's quantiser (every convolution in
    int8, per channel, MinMax ranges from ``calibration``: uint8 HWC images). No metric gate: the
    benchmark measures speed, and the exporter's refusal rules need real images.

    Returns:
        ``dst``.
    """
    import onnxruntime as ort

    from pixforge.training.export.quantize import _quantize, quantizable

    ort.set_default_logger_severity(3)  # initializer-as-input warnings of the norm-statistics inputs
    logging.disable(logging.WARNING)  # onnxruntime.quantization's "consider pre-processing" advice
    try:
        with tempfile.TemporaryDirectory(prefix="pixforge-bench-int8-") as tmp:
            source, _, copies = quantizable(served, Path(tmp))
            _quantize(source, dst, calibration, exclude=copies)
    finally:
        logging.disable(logging.NOTSET)
    return dst


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on a zero input of ``input_shape``, counted by forward
    hooks on the layers that hold (nearly) all of a generator's arithmetic:

    - ``nn.Conv2d`` (and 1-D/3-D): output elements x in_channels / groups x kernel area;
    - ``nn.ConvTranspose2d`` (and 1-D/3-D): input elements x out_channels / groups x kernel area;
    - ``nn.Linear``: output elements x in_features;
    - EDSR's ``BicubicPhases`` (a fixed-weight convolution called functionally): output elements x
      its weight's in_channels x kernel area.

    Normalisation, activations, padding, resampling and pixel conversions are not counted (a few
    operations per element against hundreds of MACs per convolution output).
    """
    from pixforge.training.networks.edsr import BicubicPhases

    total = 0

    def conv(mod, inputs, output) -> None:
        nonlocal total
        kernel = int(np.prod(mod.kernel_size))
        total += output.numel() * (mod.in_channels // mod.groups) * kernel

    def conv_transpose(mod, inputs, output) -> None:
        nonlocal total
        kernel = int(np.prod(mod.kernel_size))
        total += inputs[0].numel() * (mod.out_channels // mod.groups) * kernel

    def linear(mod, inputs, output) -> None:
        nonlocal total
        total += output.numel() * mod.in_features

    def fixed_conv(mod, inputs, output) -> None:
        nonlocal total
        weight = mod.weight
        total += output.numel() * int(weight.shape[1]) * int(np.prod(weight.shape[2:]))

    hooks = []
    for layer in module.modules():
        if isinstance(layer, nn.modules.conv._ConvTransposeNd):
            hooks.append(layer.register_forward_hook(conv_transpose))
        elif isinstance(layer, nn.modules.conv._ConvNd):
            hooks.append(layer.register_forward_hook(conv))
        elif isinstance(layer, nn.Linear):
            hooks.append(layer.register_forward_hook(linear))
        elif isinstance(layer, BicubicPhases):
            hooks.append(layer.register_forward_hook(fixed_conv))
    try:
        param = next(module.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        with torch.no_grad():
            module(torch.zeros(input_shape, dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return int(total)

"""One export: generator -> uint8 ONNX graph -> parity check -> validated repository entry.

Steps (each fails loudly with the step named): wrap the generator in its inference semantics and the
uint8 pixel conversions; check it maps the example to the promised shape; export with the
TorchScript exporter, onnx.checker + shape inference, offline BASIC optimisation; compare with
PyTorch at two sizes (and fp16 vs fp32 PSNR); write ``<repo>/<name>/<version>/`` atomically and
read it back through ``pixforge.contract.load_contract``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from pixforge import __version__
from pixforge.contract import (
    INPUT_NAME,
    KEY_INT8_SPEEDUP,
    OUTPUT_NAME,
    TASKS,
    ModelContract,
    contract_from_session,
)
from pixforge.errors import ContractError, PixforgeError
from pixforge.hardware import int8_cpu_class
from pixforge.repository import variant_file

from . import parity as parity_mod
from .int8_speed import int8_speedup
from .norm_stats import NormStatsError, add_norm_statistics_io
from .onnx_build import export_onnx
from .parity import ParityReport, round_up
from .quantize import Int8Report, int8_variant
from .receptive_field import receptive_radius
from .subpixel import probe_shapes, subpixel_rewrites
from .tile_size import measured_tile_size
from .wrapper import COLOR_SPACES, INFERENCE_SEMANTICS, SelfEnsemble, build_export_module
from .writer import SIDECAR_FILE, check_name, choose_version, write_model_version

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Resize(cubic) half-pixel semantics and the ops the wrapper uses are stable from 13

# Bounds of a recommended tile. Above the server's default tiling.max_tile_size (2048) a server
# warms the model up at a size no request may ask for (a 100000-pixel tile asked it for 28 GiB);
# below 16 the overlap of every tile outweighs its content and a photo takes thousands of calls.
MIN_TILE_SIZE = 16
MAX_TILE_SIZE = 2048


def _max_opset() -> int:
    """The newest opset torch's exporter (the TorchScript one, which export uses) can write.

    Asked before the export so that `--opset 1000` is one line, not torch's graph dump and error.
    """
    try:
        from torch.onnx import _constants  # private, so read defensively

        return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):
        return 10_000  # unknown: leave the check to the exporter


class ExportError(PixforgeError, RuntimeError):
    """The export cannot proceed (bad configuration or a generator that breaks the contract)."""


@dataclass(frozen=True)
class ExportConfig:
    """What one export produces.

    Attributes:
        task: one of pixforge.contract.TASKS.
        color_space: "rgb", or "lab" for colourisation (G maps L/50-1 -> ab/110; the served model takes
            and returns RGB, see docs/model-contract.md).
        scale: output/input size ratio (super-resolution factor; 1 otherwise).
        input_channels / output_channels: channels of the served model's uint8 images.
        tile_size: recommended tile edge in input pixels (None: about 512 output pixels).
        measure_tile_size: choose the tile edge by timing the exported graph on this CPU
            (tile_size.py: the smallest edge about as fast per pixel as any larger one);
            overrides ``tile_size``.
        fp16: also write the fp16 variant ``model.fp16.onnx`` (generator weights and activations in
            fp16, I/O and pixel conversions uint8/fp32) beside the fp32 ``model.onnx``; servers on
            GPU run it, CPU servers the fp32 file (docs/serving.md, "Precision variants").
        int8: also write the int8 variant ``model.int8.onnx`` (quantize.py), calibrated and judged
            on the ``calibration_images`` given to :func:`export_generator`.
        opset: ONNX opset.
        verify: run the parity check (refuse to write a model that fails it).
        description: one line for `pixforge models show`.
        min_fp16_psnr: fp16 exports below this PSNR vs fp32 (dB) are refused.
        self_ensemble: export the x8 geometric self-ensemble of the generator (8 runs per image;
            generators without normalisation layers only).
        subpixel: rewrite transposed convolutions, nearest x2 + 3x3 convolutions and narrow
            stride-1 convolutions of the fp32 graph into phase convolutions (subpixel.py: same
            function, run at the speed of onnxruntime's CPU convolutions); the fp16 variant is left
            as exported.
    """

    task: str
    color_space: str = "rgb"
    scale: int = 1
    input_channels: int = 3
    output_channels: int = 3
    tile_size: int | None = None
    measure_tile_size: bool = False
    fp16: bool = False
    int8: bool = False
    opset: int = DEFAULT_OPSET
    verify: bool = True
    description: str = ""
    min_fp16_psnr: float = parity_mod.MIN_FP16_PSNR_DB
    self_ensemble: bool = False
    subpixel: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ExportError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.color_space not in COLOR_SPACES:
            raise ExportError(
                f"color_space must be one of {', '.join(COLOR_SPACES)}, got {self.color_space!r}"
            )
        if self.color_space == "lab" and (self.input_channels, self.output_channels) != (3, 3):
            raise ExportError(
                "a Lab (colourisation) model takes and returns 3-channel RGB images "
                f"(got input_channels={self.input_channels}, output_channels={self.output_channels})"
            )
        for key in ("input_channels", "output_channels"):
            if getattr(self, key) not in (1, 3):
                raise ExportError(f"{key} must be 1 or 3, got {getattr(self, key)}")
        if self.scale < 1 or (self.task != "super_resolution" and self.scale != 1):
            raise ExportError(
                f"scale must be >= 1 and 1 unless task is super_resolution, got {self.scale} for {self.task}"
            )
        if self.opset < MIN_OPSET:
            raise ExportError(f"--opset must be >= {MIN_OPSET}, got {self.opset}")
        top = _max_opset()
        if self.opset > top:
            raise ExportError(f"--opset must be <= {top} (this torch's exporter), got {self.opset}")
        if self.tile_size is not None and not MIN_TILE_SIZE <= self.tile_size <= MAX_TILE_SIZE:
            raise ExportError(
                f"tile size must be within {MIN_TILE_SIZE}..{MAX_TILE_SIZE} input pixels, "
                f"got {self.tile_size}"
            )

    @property
    def generator_channels(self) -> tuple[int, int]:
        """(in, out) channels of the generator tensor (Lab: L -> ab)."""
        return (1, 2) if self.color_space == "lab" else (self.input_channels, self.output_channels)


@dataclass
class ExportResult:
    """What was written and how it was verified."""

    path: Path
    version: int
    contract: ModelContract
    parity: ParityReport | None
    notes: list[str] = field(default_factory=list)
    optimized: bool = False
    variants: tuple[str, ...] = ()  # precision variants written beside model.onnx
    int8: Int8Report | None = None


def default_tile_size(size_multiple: int, scale: int) -> int:
    """About 512 output pixels per tile edge, a multiple of size_multiple."""
    return round_up(max(512 // scale, 64, size_multiple), size_multiple)


def _size_multiple(generator: nn.Module) -> int:
    value = getattr(generator, "size_multiple", None)
    if not isinstance(value, int) or value < 1:
        raise ExportError(
            f"{type(generator).__name__} has no positive int `size_multiple` attribute "
            "(every registry generator must have one)"
        )
    return value


def _check_generator(generator: nn.Module, cfg: ExportConfig, size_multiple: int) -> None:
    gen_in, gen_out = cfg.generator_channels
    h = w = round_up(32, size_multiple)
    x = torch.zeros(1, gen_in, h, w)
    try:
        with torch.no_grad():
            y = generator(x)
    except Exception as exc:  # the generator's own error (wrong channels, size) in its words
        raise ExportError(
            f"the generator cannot run on a {tuple(x.shape)} input ({cfg.color_space} model takes "
            f"{gen_in} channel(s)): {exc}"
        ) from exc
    want = (1, gen_out, h * cfg.scale, w * cfg.scale)
    if tuple(y.shape) != want:
        raise ExportError(
            f"the generator maps {tuple(x.shape)} to {tuple(y.shape)}, but task={cfg.task} "
            f"scale={cfg.scale} color_space={cfg.color_space} needs {want}"
        )


def _metadata(
    cfg: ExportConfig, size_multiple: int, tile: int, radius: int, provenance: dict[str, str]
) -> ModelContract:
    meta = {k: str(v) for k, v in provenance.items() if v is not None and v != ""}
    meta.update(
        {
            "export_date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pixforge_version": __version__,
            "precision": "fp32",  # the reference; variants say their own
            "color_space": cfg.color_space,
            "inference_semantics": INFERENCE_SEMANTICS,
        }
    )
    if cfg.description:
        meta["description"] = cfg.description
    return ModelContract(
        task=cfg.task,
        scale=cfg.scale,
        input_channels=cfg.input_channels,
        output_channels=cfg.output_channels,
        size_multiple=size_multiple,
        tile_size=tile,
        metadata=meta,
        receptive_radius=radius,
    )


def _sidecar(
    contract: ModelContract,
    model: onnx.ModelProto,
    cfg: ExportConfig,
    report: ParityReport | None,
    notes: list[str],
    optimized: bool,
    variants: dict[str, onnx.ModelProto],
    int8_report: Int8Report | None,
) -> dict:
    import onnxruntime

    def sha256(m: onnx.ModelProto) -> str:
        return hashlib.sha256(m.SerializeToString()).hexdigest()

    described: dict[str, dict] = {}
    for precision, variant in variants.items():
        entry: dict = {"file": variant_file(precision), "sha256": sha256(variant)}
        if precision == "fp16" and report is not None:
            entry["psnr_vs_fp32_db"] = report.fp16_psnr_db
        if precision == "int8" and int8_report is not None:
            entry["int8"] = int8_report.to_dict()
        described[precision] = entry

    return {
        "format": "pixforge.model/1",
        "metadata": contract.to_metadata(),
        "io": {
            "input": {
                "name": model.graph.input[0].name,
                "dtype": "uint8",
                "shape": ["batch", "height", "width", contract.input_channels],
            },
            "output": {
                "name": model.graph.output[0].name,
                "dtype": "uint8",
                "shape": [
                    "batch",
                    f"height*{contract.scale}",
                    f"width*{contract.scale}",
                    contract.output_channels,
                ],
            },
        },
        "parity": report.to_dict() if report else None,
        # the precision variants beside model.onnx (docs/model-contract.md "Precision")
        "variants": described,
        "inference_semantics": notes or ["no normalisation or dropout changes needed"],
        "onnx": {
            "opset": cfg.opset,
            "exporter": "torch.onnx TorchScript (dynamo=False)",
            "ort_offline_optimization": "basic" if optimized else "none",
            "model_sha256": sha256(model),
            "torch_version": str(torch.__version__),
            "onnx_version": onnx.__version__,
            "onnxruntime_version": onnxruntime.__version__,
        },
    }


def _contract_in_memory(model: onnx.ModelProto) -> ModelContract:
    return contract_from_session(parity_mod.make_session(model))


def export_generator(
    generator: nn.Module,
    cfg: ExportConfig,
    repo: str | Path,
    name: str,
    *,
    version: int | None = None,
    provenance: dict[str, str] | None = None,
    parity_images: list[np.ndarray] = (),
    calibration_images: list[np.ndarray] = (),
    log=print,
) -> ExportResult:
    """Export ``generator`` as ``<repo>/<name>/<version>/model.onnx`` (+ model.json), with the
    precision variants ``cfg`` asks for beside it.

    Args:
        generator: a registry generator with a ``size_multiple`` attribute (not modified).
        cfg: the export's ExportConfig.
        repo: model repository folder (created if missing).
        name: model name (folder name).
        version: version number; default highest existing + 1. An existing version is refused.
        provenance: optional metadata (training_config, metrics, training_data,
            source_checkpoint_sha256, arch, generator_config, ...), stored verbatim as strings.
        parity_images: extra uint8 HWC images for the parity check.
        calibration_images: uint8 HWC images that calibrate and judge the int8 variant.
        log: progress printer.

    Returns:
        ExportResult.

    Raises:
        ExportError, parity.ParityError, onnx_build.OnnxExportError, writer.RepositoryWriteError,
        pixforge.errors.ContractError, quantize.QuantizationError.
    """
    check_name(name)
    repo = Path(repo)
    if cfg.int8 and not calibration_images:
        raise ExportError("--int8 needs calibration images (--calibration DIR): the model's real inputs")
    version = choose_version(repo, name, version)  # fail before minutes of work on a taken version
    if cfg.self_ensemble:
        try:
            generator = SelfEnsemble(generator)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        provenance = {**(provenance or {}), "self_ensemble": "x8 (flips and 90-degree rotations, averaged)"}
        log("self-ensemble: the graph averages the generator over 8 flips/rotations (8 runs per image)")
    size_multiple = _size_multiple(generator)
    tile = cfg.tile_size or default_tile_size(size_multiple, cfg.scale)
    if tile % size_multiple:
        raise ExportError(
            f"tile size {tile} is not a multiple of the generator's size_multiple {size_multiple}"
        )
    wrapper, notes = build_export_module(generator, cfg.color_space)
    _check_generator(wrapper.generator, cfg, size_multiple)
    radius = receptive_radius(wrapper.generator, cfg.generator_channels[0], size_multiple, cfg.scale)
    log(f"receptive radius: {radius} input pixels (tiles overlap enough to make tiling exact)")
    contract = _metadata(cfg, size_multiple, tile, radius, dict(provenance or {}))
    metadata = contract.to_metadata()

    h = round_up(max(32, size_multiple), size_multiple)
    example = torch.from_numpy(parity_mod.parity_batch(h, h + size_multiple, cfg.input_channels)[:2].copy())
    for note in notes:
        log(f"inference semantics: {note}")
    # the fp32 and the fp16 graph: same example, opset, channels and metadata
    export = functools.partial(
        export_onnx,
        example=example,
        opset=cfg.opset,
        input_channels=cfg.input_channels,
        output_channels=cfg.output_channels,
        metadata=metadata,
    )
    log(f"exporting fp32 graph (opset {cfg.opset}, dynamic batch/height/width)")
    model, optimized = export(wrapper)
    rewrites: list[str] = []
    if cfg.subpixel:
        probes = [
            {INPUT_NAME: parity_mod.parity_batch(hh, ww, cfg.input_channels)[:1]}
            for hh, ww in probe_shapes(h, size_multiple)
        ]
        model, rewrites = subpixel_rewrites(model, probes)
        for line in rewrites:
            log(f"sub-pixel rewrite: {line}")

    report = None
    inputs = parity_mod.parity_inputs(size_multiple, cfg.input_channels, list(parity_images))
    if cfg.verify:
        log("parity check: ONNX (onnxruntime CPU) vs PyTorch")
        report = parity_mod.check_parity(wrapper, model, inputs)
        for line in report.lines():
            log(line)
    else:
        log("WARNING: parity check skipped (--no-verify): the graph is not compared with PyTorch")

    variants: dict[str, onnx.ModelProto] = {}
    if cfg.fp16:
        wrapper16, _ = build_export_module(generator, cfg.color_space, fp16=True)
        log("exporting the fp16 variant (uint8 I/O, fp32 pixel conversions, fp16 generator)")
        # As exported: the BASIC offline pass would bake the CPU provider's fp32 fallback casts.
        model16, _ = export(wrapper16, optimize=False, metadata={**metadata, "precision": "fp16"})
        if cfg.verify:
            psnr = parity_mod.fp16_psnr(model, model16, inputs, cfg.min_fp16_psnr)
            report.fp16_psnr_db = psnr
            log(f"  fp16 vs fp32 PSNR: {psnr:.2f} dB (onnxruntime CPU)")
        variants["fp16"] = model16

    model, contract = make_tiling_invariant(model, contract, inputs, log)
    for precision, variant in variants.items():
        variant_contract = dataclasses.replace(
            contract, metadata={**contract.metadata, "precision": precision}
        )
        variants[precision] = make_tiling_invariant(variant, variant_contract, inputs, log)[0]
    try:
        _contract_in_memory(model)
    except ContractError as exc:
        raise ExportError(f"the exported graph breaks the model contract: {exc}") from exc
    tile_costs = None
    if cfg.measure_tile_size:
        tile, tile_costs = measured_tile_size(model, size_multiple, cfg.scale, cfg.input_channels, log)
        contract = dataclasses.replace(contract, tile_size=tile)
        _set_metadata(model, contract.to_metadata())
        for precision, variant in variants.items():
            _set_metadata(variant, {**contract.to_metadata(), "precision": precision})
    int8_report = None
    if cfg.int8:
        log(f"int8 variant: calibrating on {len(calibration_images)} image(s), judged by the task metric")
        model8, int8_report = int8_variant(model, contract, list(calibration_images), log)
        for line in int8_report.lines():
            log(line)
        if model8 is None:
            raise parity_mod.ParityError(
                f"the int8 variant misses its tolerance ({int8_report.metric} {int8_report.int8_value:.3f} "
                f"< {int8_report.threshold:.3f}) even with half its convolutions in fp32; nothing written. "
                "Export without --int8, or calibrate on more (and more typical) images."
            )
        speedup, timing = int8_speedup(model, model8, contract)
        cpu_class = int8_cpu_class()
        int8_report.speedup = {"cpu_class": cpu_class, "ratio": round(speedup, 2), **timing}
        metadata8 = {p.key: p.value for p in model8.metadata_props}
        _set_metadata(model8, {**metadata8, KEY_INT8_SPEEDUP: f"{cpu_class}:{speedup:.2f}"})
        log(
            f"  int8 speed-up over fp32 on this CPU ({cpu_class}, {timing['edge']}x{timing['edge']}): "
            f"{speedup:.2f}x ({timing['ms']['fp32']} vs {timing['ms']['int8']} ms)"
        )
        variants["int8"] = model8
    sidecar = _sidecar(contract, model, cfg, report, notes, optimized, variants, int8_report)
    sidecar["onnx"]["subpixel_rewrites"] = rewrites
    if tile_costs is not None:
        sidecar["tile_size_measurement"] = {
            "ms_per_output_megapixel_cpu": {str(e): round(c, 1) for e, c in tile_costs.items()},
            "chosen": contract.tile_size,
            "rule": "smallest edge within 10 % of the best cost per pixel",
        }
    path, written = write_model_version(repo, name, version, model, sidecar, variants)
    log(f"wrote {path} (+ {SIDECAR_FILE}{''.join(f', {variant_file(p)}' for p in variants)})")
    return ExportResult(path, version, written, report, notes, optimized, tuple(variants), int8_report)


def _set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata)


def make_tiling_invariant(
    model: onnx.ModelProto, contract: ModelContract, inputs: list[tuple[str, np.ndarray]], log=print
) -> tuple[onnx.ModelProto, ModelContract]:
    """Give every per-image norm layer the statistics I/O (norm_stats.py) and record the layers.

    The rewritten graph must give the same pixels as before when only ``image`` is fed; that is
    checked on the parity inputs (fp32: identical; fp16: within one grey level, onnxruntime may
    fuse the fp16 casts differently inside the If branches).

    Raises:
        ExportError: the rewrite changed the default output.
    """
    try:
        rewritten, channels = add_norm_statistics_io(model)
    except NormStatsError as exc:
        raise ExportError(f"cannot make the graph tiling-invariant: {exc}") from exc
    contract = dataclasses.replace(contract, norm_channels=tuple(channels))
    _set_metadata(rewritten, contract.to_metadata())
    if channels:
        before, after = parity_mod.make_session(model), parity_mod.make_session(rewritten)
        worst = 0
        for _label, batch in inputs:
            a = before.run([OUTPUT_NAME], {INPUT_NAME: batch})[0].astype(np.int16)
            b = after.run([OUTPUT_NAME], {INPUT_NAME: batch})[0].astype(np.int16)
            worst = max(worst, int(np.abs(a - b).max()))
        if worst > 1:
            raise ExportError(f"the tiling statistics rewrite changed the output by {worst} grey levels")
        log(
            f"tiling statistics: {len(channels)} norm layer(s) expose their statistics (default output "
            f"{'unchanged' if worst == 0 else 'within 1 grey level'})"
        )
    return rewritten, contract


def config_summary(config: dict | None) -> str:
    """The training config as compact JSON for the metadata ('' when unknown)."""
    if not config:
        return ""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def generator_config_json(cfg) -> str:
    """A GeneratorConfig (dataclass or dict) as compact JSON."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))

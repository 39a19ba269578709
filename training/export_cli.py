"""`pixforge export`: a generator checkpoint -> ``<repo>/<name>/<version>/model.onnx``.

The model obeys docs/model-contract.md.

Reads a pixforge checkpoint (``"format": "pixforge.generator/1"``, written by `pixforge train`;
read as a ``checkpoint.GeneratorCheckpoint``, older files through ``pixforge.training.legacy``), a
junyanz ``latest_net_G.pth`` (``--from junyanz``) or a model.onnx of an earlier pixforge export
(``--from onnx``; both converted by ``pixforge.training.legacy``), builds the generator through the
registry and hands it to ``pixforge.training.export.export_generator``.

Exit codes: 0 written; 1 the parity check failed (nothing written); 2 bad input (message, no traceback).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from pixforge.contract import TASKS
from pixforge.errors import PixforgeError, UsageError

from . import legacy
from .checkpoint import CheckpointFormatError, GeneratorCheckpoint
from .data.files import file_sha256
from .export import (
    ExportConfig,
    ExportError,
    OnnxExportError,
    ParityError,
    RepositoryWriteError,
    export_generator,
)
from .export.pipeline import config_summary, generator_config_json
from .export.wrapper import PreUpsampled
from .registry import GeneratorConfig, build_generator, generator_preset, list_generators

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def arch_name(cfg: GeneratorConfig) -> str:
    """Preset name when the layout matches one (e.g. "unet_256"), else a short description."""
    for name in list_generators():
        p = generator_preset(name)
        if p.arch == cfg.arch and (p.depth if cfg.arch == "unet" else p.n_blocks) == (
            cfg.depth if cfg.arch == "unet" else cfg.n_blocks
        ):
            base = name
            break
    else:
        base = f"unet(depth={cfg.depth})" if cfg.arch == "unet" else f"resnet(n_blocks={cfg.n_blocks})"
    if cfg.scale > 1:
        base += f"+{cfg.upsample}x{cfg.scale}"
    return base


def _load_error(exc: Exception) -> str:
    """One line for a checkpoint torch.load could not read (its own message is a paragraph that
    suggests weights_only=False, which is not the fix for a file that is no checkpoint at all)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if isinstance(exc, EOFError) or any(ln.startswith("Unsupported operand") for ln in lines):
        return "the file holds no torch.save data (empty, truncated or another kind of file)"
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip() or " ".join(lines[i + 1 : i + 2])
            return (
                f"WeightsUnpickler error: {detail} (checkpoints must hold plain types only: dicts, "
                "lists, numbers, strings, tensors)"
            )
    # The type says what broke where the text alone is a bare number or nothing ("KeyError: 101").
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _junyanz_only(args, records: str) -> None:
    """Refuse the flags that describe a junyanz file when the input records them itself."""
    for flag, value in (("--arch", args.arch), ("--norm", args.norm), ("--task", args.task)):
        if value is not None:
            raise UsageError(f"{flag} applies to --from junyanz only; {records}")


def _output_options(args) -> dict:
    """The command's ExportConfig fields that do not describe the model: tiling, precision, opset,
    parity check, description."""
    return {
        "tile_size": None if args.tile_size in (None, "auto") else int(args.tile_size),
        # measured unless given; a re-export (--from onnx) keeps the file's unless asked
        "measure_tile_size": args.tile_size == "auto" or (args.tile_size is None and args.source != "onnx"),
        "fp16": args.fp16,
        "int8": getattr(args, "int8", False),
        "opset": args.opset,
        "verify": not args.no_verify,
        "description": args.description or "",
        "subpixel": not getattr(args, "no_subpixel", False),
    }


def load_pixforge_checkpoint(path: Path, args) -> tuple[torch.nn.Module, ExportConfig, dict[str, str]]:
    """A pixforge generator checkpoint -> (generator with weights, export config, provenance)."""
    _junyanz_only(args, "a pixforge checkpoint records it")
    if args.scale != 1:
        raise UsageError("--scale applies to --from junyanz only; a pixforge checkpoint records its scale")
    try:
        ckpt = GeneratorCheckpoint.load(path)
        gen_cfg, generator = ckpt.generator_cfg(), ckpt.build_generator()
    except CheckpointFormatError as exc:  # wrong format, missing or mistyped entries, unfitting weights
        hint = " (a junyanz latest_net_G.pth? add --from junyanz --arch ...)" if exc.foreign else ""
        raise UsageError(f"{exc}{hint}") from exc
    except Exception as exc:  # pickle/zip errors of many types
        raise UsageError(f"cannot read {path} as a pixforge checkpoint: {_load_error(exc)}") from exc
    lab = ckpt.color_space == "lab"
    try:
        cfg = ExportConfig(
            task=ckpt.task,
            color_space=ckpt.color_space,
            scale=ckpt.scale,
            # Colourisation models take and return RGB photos (the graph does RGB <-> Lab).
            input_channels=3 if lab else ckpt.input_channels,
            output_channels=3 if lab else ckpt.output_channels,
            **_output_options(args),
            self_ensemble=bool(getattr(args, "self_ensemble", False)),
        )
    except ExportError as exc:
        raise UsageError(f"checkpoint does not describe an exportable model: {exc}") from exc
    provenance = {
        "arch": arch_name(gen_cfg),
        "generator_config": generator_config_json(gen_cfg),
        "training_config": config_summary(ckpt.training_config),
        "metrics": json.dumps(ckpt.metrics, sort_keys=True),
        "training_data": ckpt.training_data,
        "training_step": str(ckpt.step),
        "source_format": ckpt.FORMAT,
        "source_checkpoint_sha256": file_sha256(path),
        "direction": ckpt.direction or "",
        "generator_name": ckpt.name,
    }
    return generator, cfg, provenance


def load_junyanz_checkpoint(path: Path, args) -> tuple[torch.nn.Module, ExportConfig, dict[str, str]]:
    """A junyanz ``*_net_G*.pth`` -> (generator with weights, export config, provenance)."""
    try:
        gen_cfg, state = legacy.load_junyanz_generator(path, arch=args.arch, norm=args.norm)
    except legacy.LegacyCheckpointError as exc:
        raise UsageError(str(exc)) from exc
    generator = build_generator(gen_cfg)
    generator.load_state_dict(state, strict=True)
    colour = (gen_cfg.in_channels, gen_cfg.out_channels) == (1, 2)
    task = args.task or ("colorization" if colour else None)
    if task is None:
        raise UsageError(f"--task is required with --from junyanz (one of {', '.join(TASKS)})")
    if task not in TASKS:
        raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "colorization" and not colour:
        raise UsageError(
            "a junyanz colorization generator maps L (1 channel) to ab (2 channels); "
            f"this one maps {gen_cfg.in_channels} -> {gen_cfg.out_channels}"
        )
    if args.scale < 1 or (args.scale > 1 and task != "super_resolution"):
        raise UsageError(f"--scale {args.scale} needs --task super_resolution (and scale >= 1)")
    if args.scale > 1:
        # junyanz has no upscaling generator: SR with pix2pix runs on the bicubic-upsampled input.
        generator = PreUpsampled(generator, args.scale)
    try:
        cfg = ExportConfig(
            task=task,
            color_space="lab" if task == "colorization" else "rgb",
            scale=args.scale,
            input_channels=3 if colour else gen_cfg.in_channels,
            output_channels=3 if colour else gen_cfg.out_channels,
            **_output_options(args),
        )
    except ExportError as exc:
        raise UsageError(str(exc)) from exc
    provenance = {
        "arch": arch_name(gen_cfg) + (f"+bicubic_input_x{args.scale}" if args.scale > 1 else ""),
        "generator_config": generator_config_json(gen_cfg),
        "source_format": "junyanz",
        "source_checkpoint_sha256": file_sha256(path),
        "training_data": "junyanz/pytorch-CycleGAN-and-pix2pix checkpoint",
    }
    return generator, cfg, provenance


def load_onnx_model(path: Path, args) -> tuple[torch.nn.Module, ExportConfig, dict[str, str]]:
    """A model.onnx of an earlier pixforge export -> (generator with weights, export config, provenance).

    Re-exporting rebuilds the graph under the current contract (receptive radius, tiling
    statistics); the task, scale, colour space, tile size and description are the file's. The
    reference is written in fp32 whatever the file's precision (an fp16 file's weights widen
    exactly); --fp16 / --int8 add those variants beside it.
    """
    _junyanz_only(args, "the ONNX file records it")
    try:
        gen_cfg, state, meta = legacy.load_pixforge_onnx(path)
    except legacy.LegacyCheckpointError as exc:
        raise UsageError(str(exc)) from exc
    generator = build_generator(gen_cfg)
    generator.load_state_dict(state, strict=True)
    options = _output_options(args)
    try:
        # the file's own tiling and description, unless the command overrides them
        options.update(
            tile_size=options["tile_size"] or int(meta.get("tile_size", "0")) or None,
            description=args.description or meta.get("description", ""),
        )
        cfg = ExportConfig(
            task=meta.get("task", ""),
            color_space=meta.get("color_space", "rgb"),
            scale=int(meta.get("scale", "1")),
            input_channels=int(meta.get("input_channels", "3")),
            output_channels=int(meta.get("output_channels", "3")),
            **options,
        )
    except (ExportError, ValueError) as exc:
        raise UsageError(f"{path} does not describe an exportable model: {exc}") from exc
    keep = (
        "arch",
        "generator_config",
        "training_config",
        "metrics",
        "training_data",
        "training_step",
        "direction",
        "generator_name",
        "source_checkpoint_sha256",
    )
    provenance = {k: meta[k] for k in keep if meta.get(k)}
    provenance["source_format"] = f"pixforge.onnx (contract {meta.get('pixforge.contract', '?')})"
    provenance["source_onnx_sha256"] = file_sha256(path)
    return generator, cfg, provenance


def load_images(folder: str | None, flag: str, most: int) -> list[np.ndarray]:
    """Decoded images (sorted by name, at most ``most``) from ``folder``, for ``flag``."""
    if not folder:
        return []
    from pixforge.codec import decode_image

    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{flag} {folder} is not a folder")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:most]
    if not files:
        raise UsageError(f"{flag} {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    try:
        return [decode_image(p.read_bytes()).pixels for p in files]
    except PixforgeError as exc:
        raise UsageError(f"{flag}: {exc}") from exc


PARITY_IMAGES = 8
CALIBRATION_IMAGES = 16  # enough for MinMax ranges; each also runs in every int8 trial


def run(args) -> int:
    """Entry point of `pixforge export` (see module docstring for exit codes)."""
    path = Path(args.checkpoint)
    try:
        if not path.is_file():
            raise UsageError(f"checkpoint not found: {path}")
        loaders = {"junyanz": load_junyanz_checkpoint, "onnx": load_onnx_model}
        loader = loaders.get(args.source, load_pixforge_checkpoint)
        generator, cfg, provenance = loader(path, args)
        images = load_images(getattr(args, "parity_images", None), "--parity-images", PARITY_IMAGES)
        calibration = load_images(getattr(args, "calibration", None), "--calibration", CALIBRATION_IMAGES)
        if cfg.int8 and not calibration:
            raise UsageError("--int8 needs --calibration DIR: images like the ones the model will serve")
        if calibration and not cfg.int8:
            raise UsageError("--calibration applies to --int8 only (it calibrates the int8 variant)")
        torch.manual_seed(0)
        result = export_generator(
            generator,
            cfg,
            args.repo,
            args.name,
            version=args.version,
            provenance=provenance,
            parity_images=images,
            calibration_images=calibration,
        )
    except ParityError as exc:
        print(f"pixforge export: parity check FAILED, nothing written\n{exc}", file=sys.stderr)
        return 1
    except (UsageError, ExportError, OnnxExportError, RepositoryWriteError, PixforgeError, OSError) as exc:
        print(f"pixforge export: {exc}", file=sys.stderr)
        return 2
    c = result.contract
    print(
        f"model: {args.name} version {result.version}: task={c.task} scale={c.scale} "
        f"channels={c.input_channels}->{c.output_channels} size_multiple={c.size_multiple} "
        f"tile={c.tile_size} precision={'+'.join(['fp32', *result.variants])}"
    )
    print(f"exported: {result.path}")
    return 0

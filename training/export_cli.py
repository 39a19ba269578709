"""`pixforge export`: a generator checkpoint -> ``<repo>/<name>/<version>/model.onnx``.

The model obeys docs/model-contract.md.

Reads a pixforge checkpoint (``"format": "pixforge.generator/1"``, written by `pixforge train`;
read as a ``checkpoint.GeneratorCheckpoint``, older files through ``pixforge.training.legacy``), a
junyanz ``latest_net_G.pth`` (``--from junyanz``) or a model.onnx of an earlier pixforge export
(``--from onnx``; both converted by ``pixforge.training.legacy``), builds the generator through the
registry and hands it to ``pixforge.training.export.export_generator``.

Exit codes: 0 written; 1 the parity check failed (nothing written); 2 bad input. Errors are one
`pixforge export: error: ...` line (no traceback) that says what to give instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from pixforge.contract import TASKS
from pixforge.errors import PixforgeError, UsageError, one_line

from . import legacy
from .checkpoint import RESUME_FORMAT, CheckpointFormatError, GeneratorCheckpoint, step_file
from .data.files import file_sha256
from .export import (
    ExportConfig,
    ExportError,
    OnnxExportError,
    ParityError,
    RepositoryWriteError,
    export_generator,
)
from .export.pipeline import MAX_TILE_SIZE, MIN_TILE_SIZE, config_summary, generator_config_json
from .export.wrapper import PreUpsampled
from .registry import GeneratorConfig, build_generator, generator_preset, list_generators

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
WHAT_TO_EXPORT = "the generator checkpoint `pixforge train` printed last (`checkpoint: PATH`)"
JUNYANZ_FILE = "a junyanz generator file (latest_net_G.pth)"


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


def newest_generator_checkpoints(*folders: Path) -> list[Path]:
    """The generator checkpoints (``<prefix>-stepNNNNNNN.pt``) of the highest step found directly in
    ``folders``: one file for pix2pix, G_A and G_B for CycleGAN; [] when there are none."""
    found = []
    for folder in folders:
        try:
            entries = list(folder.iterdir()) if folder.is_dir() else []
        except OSError:  # unreadable folder: nothing to suggest from it
            entries = []
        found += [(named[1], p) for p in entries if (named := step_file(p.name)) and p.is_file()]
    if not found:
        return []
    top = max(step for step, _ in found)
    return sorted(p for step, p in found if step == top)


def _suggest(files: list[Path], where: str) -> str:
    """'export A (the newest generator checkpoint <where>)'; CycleGAN: 'export A or B (...)'."""
    plural = "s" if len(files) > 1 else ""
    return f"export {' or '.join(str(p) for p in files)} (the newest generator checkpoint{plural} {where})"


def directory_message(path: Path, source: str) -> str:
    """The error for a folder given where a file is expected, naming the file to give instead."""
    head = f"{path} is a directory, not a checkpoint file"
    if source == "onnx":
        model = path / "model.onnx"
        return f"{head}; export {model}" if model.is_file() else f"{head}; give a model.onnx file"
    if source == "junyanz":
        found = sorted(path.glob("*_net_G*.pth"))[:4]
        if found:
            return f"{head}; export {' or '.join(str(p) for p in found)}"
        return f"{head}; give {JUNYANZ_FILE}"
    newest = newest_generator_checkpoints(path, path / "checkpoints")  # a run dir, or its checkpoints/
    return f"{head}; {_suggest(newest, 'in it')}" if newest else f"{head}; give {WHAT_TO_EXPORT}"


def not_found_message(path: Path, source: str) -> str:
    """The error for a path that does not exist; a run's checkpoints/ folder prunes old steps, so
    name the newest generator checkpoint left beside it, if any."""
    newest = newest_generator_checkpoints(path.parent) if source == "pixforge" else []
    message = f"checkpoint not found: {path}"
    return f"{message}; {_suggest(newest, 'in that folder')}" if newest else message


def resume_state_message(path: Path) -> str:
    """The error for a run's resume-state.pt given where a generator checkpoint is expected."""
    head = (
        f"{path} is a training resume state (optimiser state and networks for `pixforge train "
        "--resume`), not a generator checkpoint"
    )
    newest = newest_generator_checkpoints(path.parent)
    if newest:
        return f"{head}; {_suggest(newest, 'next to it')}"
    return f"{head}; give {WHAT_TO_EXPORT}, a generator-step*.pt file"


# First bytes of what torch.load reads: a zip archive (torch >= 1.6) or a pickle of protocol >= 2
# (older torch.save files, junyanz checkpoints of that era); tar (torch < 0.4) has "ustar" at 257.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
_OTHER_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image"}
_HEAD_BYTES = 4096


def not_torch_file(path: Path) -> str | None:
    """What a file is whose first bytes show it holds no torch.save data ("a text file", "an empty
    file", ...); None when it may be a torch file (then torch's own error says more). Asked only
    after torch.load failed, so a real checkpoint is never judged by its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if head.startswith(_TORCH_MAGIC) or head[257:262] == b"ustar":
        return None
    if path.suffix.lower() == ".onnx":
        return "an ONNX model"
    for magic, what in _OTHER_MAGIC.items():
        if head.startswith(magic):
            return what
    if b"\0" not in head:
        try:
            head.decode("utf-8")
            return "a text file"
        except UnicodeDecodeError as exc:
            if len(head) == _HEAD_BYTES and exc.start >= len(head) - 3:  # a character cut at the end
                return "a text file"
    return "another kind of file"


def not_a_checkpoint_message(path: Path, what: str, source: str) -> str:
    """The error for a file that holds no torch.save data (``what``: see `not_torch_file`)."""
    if what == "an ONNX model" and source == "pixforge":
        return f"{path} is an ONNX model, not a checkpoint; to re-export it, add --from onnx"
    advice = JUNYANZ_FILE if source == "junyanz" else WHAT_TO_EXPORT
    return f"{path} is not a checkpoint: it holds no torch.save data ({what}); give {advice}"


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


def check_output_options(args) -> None:
    """Refuse bad tiling / opset flags before any file is read (they do not depend on the model)."""
    tile = args.tile_size
    if tile not in (None, "auto") and (
        not isinstance(tile, int) or isinstance(tile, bool) or not MIN_TILE_SIZE <= tile <= MAX_TILE_SIZE
    ):
        raise UsageError(
            f"--tile-size must be 'auto' or a whole number of input pixels within "
            f"{MIN_TILE_SIZE}..{MAX_TILE_SIZE}, got {tile!r}"
        )
    try:
        ExportConfig(task=TASKS[0], **_output_options(args))
    except ExportError as exc:
        raise UsageError(str(exc)) from exc


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
        data = legacy.load_weights_only(path)  # GeneratorCheckpoint.load, in two steps
    except Exception as exc:  # pickle/zip errors of many types ("KeyError: 101" for a text file)
        what = not_torch_file(path)
        if what is not None:
            raise UsageError(not_a_checkpoint_message(path, what, "pixforge")) from exc
        raise UsageError(f"cannot read {path} as a pixforge checkpoint: {_load_error(exc)}") from exc
    fmt = data.get("format") if isinstance(data, Mapping) else None
    if fmt == RESUME_FORMAT or fmt in legacy.RESUME_UPGRADES:
        raise UsageError(resume_state_message(path))
    try:
        ckpt = GeneratorCheckpoint.from_dict(data, source=str(path))
        gen_cfg, generator = ckpt.generator_cfg(), ckpt.build_generator()
    except CheckpointFormatError as exc:  # wrong format, missing or mistyped entries, unfitting weights
        hint = " (a junyanz latest_net_G.pth? add --from junyanz --arch ...)" if exc.foreign else ""
        raise UsageError(f"{exc}{hint}") from exc
    except Exception as exc:  # a generator the registry cannot build from the entries
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
        what = not_torch_file(path)  # else a text file reads as "cannot read ...: 101"
        raise UsageError(not_a_checkpoint_message(path, what, "junyanz") if what else str(exc)) from exc
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
        check_output_options(args)
        if path.is_dir():
            raise UsageError(directory_message(path, args.source))
        if not path.is_file():
            raise UsageError(not_found_message(path, args.source))
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
        print(f"pixforge export: error: parity check FAILED, nothing written\n{exc}", file=sys.stderr)
        return 1
    except (UsageError, ExportError, OnnxExportError, RepositoryWriteError, PixforgeError, OSError) as exc:
        print(f"pixforge export: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    c = result.contract
    print(
        f"model: {args.name} version {result.version}: task={c.task} scale={c.scale} "
        f"channels={c.input_channels}->{c.output_channels} size_multiple={c.size_multiple} "
        f"tile={c.tile_size} precision={'+'.join(['fp32', *result.variants])}"
    )
    print(f"exported: {result.path}")
    return 0

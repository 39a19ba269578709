"""Checkpoint formats: deployable generator files, a separate resume-state file, `latest` pointers.

- Generator checkpoint (`pixforge.generator/1`, docs/training.md "Checkpoints and resume"): one
  `GeneratorCheckpoint`, saved as a dict of plain types only (architecture config, task, channels,
  colour space, weights, resolved config, metrics, step, versions). `pixforge export` takes it; it
  loads with `torch.load(..., weights_only=True)`. `GeneratorCheckpoint.load` checks the format tag
  and every entry's type; files of earlier pixforge versions go through `legacy.py`.
- Resume state (`pixforge.resume/2`, `checkpoints/resume-state.pt`): `step`, data position
  (`epoch`, `batch_in_epoch`, `steps_per_epoch`), `nets` (the weights the generator checkpoints
  of the same step do not hold: pix2pix D, plus G when EMA is on; CycleGAN D_A, D_B, plus G_A, G_B
  when EMA is on), `nets_in_checkpoints` ({net key: generator checkpoint file name} for the rest:
  G or G_ema; G_A/G_B or their EMA), Adam `optimizers` (two moments per parameter: the bulk),
  `schedulers`, GradScaler `scaler`, CycleGAN image `pools`, `metrics`, `skipped_files` and `rng`
  (python, numpy, torch, cuda; tensors/plain types, so it loads with weights_only=True).
  `load_resume_state` reads the named generator checkpoints back into `nets` (each must be of the
  same step); `pixforge.resume/1` files, which hold every network inline, are read by legacy.py.
  Size ~ 4 bytes x (3 x parameters of every net + parameters of the nets kept inline only for EMA)
  + pools: default presets (fp32, from parameter counts) facades / colorization 67 MB (was 96),
  super_resolution_x4 9 MB, style_translation 25 MB + up to 20 MB of pools (was 29 + pools);
  junyanz-sized nets: pix2pix unet_256 ~468 MB (was 686), CycleGAN resnet_9blocks ~238 MB (was 329).
  Deployable weights never carry optimizer or RNG state, so a shipped generator file stays small
  and reveals nothing of the training run.
- `checkpoints/latest.json` names the newest files; it is written last, so it never points at a
  half-written file. `<name>-latest.pt` is a hard link to the newest generator checkpoint, a stable
  path for scripts; the step-numbered files never change once written. Every write is atomic:
  temp file in the same folder + `os.replace`.

Run-level snapshot writing (which networks go where, DDP) is snapshots.py; this module is the
file formats only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import re
import shutil
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pixforge import __version__
from pixforge.errors import PixforgeError

from . import legacy
from .registry import GeneratorConfig, build_generator

GENERATOR_FORMAT = "pixforge.generator/1"
RESUME_FORMAT = "pixforge.resume/2"
RESUME_FILE = "resume-state.pt"
LATEST_FILE = "latest.json"


class CheckpointFormatError(PixforgeError, ValueError):
    """A file is not a pixforge generator checkpoint, or an entry is missing, mistyped or unusable.

    Attributes:
        foreign: no pixforge format tag at all (another kind of file, e.g. a junyanz state dict),
            as opposed to a pixforge checkpoint with a broken entry.
    """

    def __init__(self, message: str, *, foreign: bool = False):
        super().__init__(message)
        self.foreign = foreign


def _runtime_types(hint: Any) -> tuple[type, ...]:
    """The isinstance() classes of an annotation: dict[str, Any] -> (dict,), str | None -> (str, NoneType)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _runtime_types(arg))
    return (typing.get_origin(hint) or hint,)


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Field name -> the classes its value may have, from the dataclass annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: _runtime_types(hints[f.name]) for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratorCheckpoint:
    """One deployable generator checkpoint (`pixforge.generator/1`).

    The fields are the file's entries, in the order they are written (after "format"); `direction`
    is written only when set (pix2pix on aligned data, CycleGAN). Construction checks each entry's
    type (CheckpointFormatError), copies `generator_config` and stores `metrics` as floats, as the
    files always held them.
    """

    FORMAT: ClassVar[str] = GENERATOR_FORMAT

    generator_config: dict[str, Any]  # registry.GeneratorConfig as a dict
    task: str
    scale: int
    input_channels: int  # what the served model takes (colorization: 1, the L channel)
    output_channels: int
    color_space: str  # "rgb", or "lab" for colorization (the export wraps RGB <-> Lab around it)
    state_dict: dict[str, torch.Tensor]
    training_config: dict[str, Any]  # the resolved ExperimentConfig (blends add their parents)
    metrics: dict[str, float]  # the last validation's
    training_data: str
    step: int
    pixforge_version: str = __version__
    torch_version: str = dataclasses.field(default_factory=lambda: str(torch.__version__))
    name: str  # file prefix: "generator", "G_A", "G_B", "<name>-blend<alpha>"
    direction: str | None = None  # "AtoB" / "BtoA"

    def __post_init__(self) -> None:
        for name, expected in _field_types(type(self)).items():
            value = getattr(self, name)
            # bool is an int subclass, but True is no scale or step.
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
                want = " or ".join("None" if t is type(None) else t.__name__ for t in expected)
                raise CheckpointFormatError(
                    f"checkpoint entry {name!r} has type {type(value).__name__} (expected {want})"
                )
        bad = [k for k, v in self.state_dict.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointFormatError(
                f"checkpoint state_dict entries are not tensors: {', '.join(bad[:3])}"
            )
        try:
            metrics = {str(k): float(v) for k, v in self.metrics.items()}
        except (TypeError, ValueError) as exc:
            raise CheckpointFormatError(f"checkpoint metrics must be numbers: {exc}") from None
        object.__setattr__(self, "metrics", metrics)
        object.__setattr__(self, "generator_config", dict(self.generator_config))

    # --- the file -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The on-disk dict: "format" first, then the fields in order (no "direction" when None)."""
        out: dict[str, Any] = {"format": self.FORMAT}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)  # not dataclasses.asdict: that would deep-copy the weights
            if not (f.name == "direction" and value is None):
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "checkpoint") -> GeneratorCheckpoint:
        """Check and wrap a loaded checkpoint dict; `source` (the path) prefixes error messages.

        Entries this version does not know are ignored, so a newer writer's additions still load.

        Raises:
            CheckpointFormatError: not a `pixforge.generator/1` dict (`foreign`), a required entry
                missing, or an entry of the wrong type.
        """
        if not isinstance(data, Mapping) or data.get("format") != cls.FORMAT:
            raise CheckpointFormatError(f"{source} is not a {cls.FORMAT} checkpoint", foreign=True)
        data = legacy.upgrade_generator_entries(data)
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data and n != "direction"]
        if missing:
            raise CheckpointFormatError(f"{source} lacks keys: {', '.join(missing)}")
        try:
            return cls(**{n: data[n] for n in names if n in data})
        except CheckpointFormatError as exc:
            raise CheckpointFormatError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> GeneratorCheckpoint:
        """Read and check a generator checkpoint file (weights_only: no code runs while loading).

        Raises:
            CheckpointFormatError: see `from_dict`.
            OSError, pickle/zip errors: the file cannot be read as a torch file at all.
        """
        return cls.from_dict(legacy.load_weights_only(path), source=str(path))

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename); returns `path`."""
        atomic_torch_save(self.to_dict(), path)
        return Path(path)

    # --- the network ----------------------------------------------------------------------------

    def generator_cfg(self) -> GeneratorConfig:
        """`generator_config` as the registry's config.

        Raises:
            CheckpointFormatError: the entry is not a valid generator config.
        """
        try:
            return GeneratorConfig.from_dict(self.generator_config)
        except (TypeError, ValueError) as exc:
            raise CheckpointFormatError(f"checkpoint generator_config is invalid: {exc}") from exc

    def build_generator(self) -> nn.Module:
        """The generator this checkpoint describes, with its weights (strict load).

        Raises:
            CheckpointFormatError: an invalid generator_config, or weights that do not fit it.
        """
        generator = build_generator(self.generator_cfg())
        try:
            generator.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise CheckpointFormatError(
                f"checkpoint weights do not fit its generator_config: {str(exc).splitlines()[0]}"
            ) from exc
        return generator


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temp file next to `path`, then rename over it (readers never see a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (temp file + os.replace)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state as contiguous CPU tensors, for saving at once (channels_last weights become
    plain NCHW).

    GPU and channels_last tensors are copied by ``.cpu()`` / ``.contiguous()``; plain CPU tensors
    are the live ones, not cloned: the checkpoint is written before the next optimiser step, and a
    clone held a second copy of the weights during every save (218 MB for junyanz's U-Net).
    """
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as weights_only-loadable plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of capture_rng_state."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- resume + pointers


def save_resume_state(path: str | os.PathLike, state: dict) -> None:
    """Atomically save the resume state (adds the format tag and RNG states).

    `state["nets_in_checkpoints"]` ({net key: generator checkpoint file name in the same folder})
    names the networks that are not stored inline because that generator checkpoint, written for
    the same step, already holds exactly these weights.
    """
    atomic_torch_save({"format": RESUME_FORMAT, "rng": capture_rng_state(), **state}, path)


def load_resume_state(path: str | os.PathLike) -> dict:
    """Load a resume state file (`pixforge.resume/2`, or an older one legacy.py reads).

    Networks listed in `nets_in_checkpoints` are read back from their generator checkpoints, so
    `state["nets"]` always holds every network, whichever layout the file has.

    Raises:
        FileNotFoundError / ValueError: missing or not a pixforge resume state, or a generator
            checkpoint it refers to is missing or of another step.
    """
    path = Path(path)
    state = legacy.load_weights_only(path)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt in legacy.RESUME_UPGRADES:
        state = legacy.RESUME_UPGRADES[fmt](state)
    elif fmt != RESUME_FORMAT:
        raise ValueError(f"{path} is not a {RESUME_FORMAT} file")
    for key, name in state.get("nets_in_checkpoints", {}).items():
        gen_path = path.with_name(name)
        if not gen_path.is_file():
            raise FileNotFoundError(
                f"{path} keeps the {key} weights in {name} (the generator checkpoint of step "
                f"{state['step']}), which is missing; it must stay next to the resume state"
            )
        gen = GeneratorCheckpoint.load(gen_path)
        if gen.step != state["step"]:
            raise ValueError(f"{gen_path} is of step {gen.step}, the resume state of step {state['step']}")
        state["nets"][key] = gen.state_dict
    return state


def write_latest(ckpt_dir: str | os.PathLike, pointers: dict) -> None:
    """Point `latest.json` at the newest files (names relative to the checkpoint folder)."""
    atomic_write_json(pointers, Path(ckpt_dir) / LATEST_FILE)


def prune_checkpoints(ckpt_dir: str | os.PathLike, prefix: str, keep: int) -> list[Path]:
    """Delete all but the newest `keep` `<prefix>-stepNNNNNNN.pt` files (keep=0: delete none)."""
    if keep <= 0:
        return []
    found = sorted(
        (named[1], p) for p in Path(ckpt_dir).iterdir() if (named := step_file(p.name)) and named[0] == prefix
    )
    removed = [p for _, p in found[:-keep]]
    for p in removed:
        p.unlink()
    return removed


def generator_filename(prefix: str, step: int) -> str:
    return f"{prefix}-step{step:07d}.pt"


_STEP_FILE = re.compile(r"^(?P<prefix>.+)-step(?P<step>\d+)\.pt$")


def step_file(name: str) -> tuple[str, int] | None:
    """(prefix, step) of a file name :func:`generator_filename` makes ("G_A-step0000200.pt"), else None."""
    m = _STEP_FILE.match(name)
    return (m["prefix"], int(m["step"])) if m else None


def update_latest_link(path: Path, prefix: str) -> Path:
    """Make `<prefix>-latest.pt` next to `path` the same file (hard link; copy where links fail)."""
    latest = path.with_name(f"{prefix}-latest.pt")
    tmp = path.with_name(f".{latest.name}.tmp{os.getpid()}")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(path, tmp)
    except OSError:  # filesystems without hard links
        shutil.copyfile(path, tmp)
    os.replace(tmp, latest)
    return latest

"""Checkpoints: deployable generator files, a separate resume-state file, `latest` pointers.

- Generator checkpoint (`pixforge.generator/1`, docs/training.md "Checkpoints and resume"): a
  dict of plain types only (architecture config, task, channels, colour space, weights, resolved
  config, metrics, step, versions). `pixforge export` takes it; it loads with
  `torch.load(..., weights_only=True)`.
- Resume state (`pixforge.resume/2`, `checkpoints/resume-state.pt`): `step`, data position
  (`epoch`, `batch_in_epoch`, `steps_per_epoch`), `nets` (the weights the generator checkpoints
  of the same step do not hold: pix2pix D, plus G when EMA is on; CycleGAN D_A, D_B, plus G_A, G_B
  when EMA is on), `nets_in_checkpoints` ({net key: generator checkpoint file name} for the rest:
  G or G_ema; G_A/G_B or their EMA), Adam `optimizers` (two moments per parameter: the bulk),
  `schedulers`, GradScaler `scaler`, CycleGAN image `pools`, `metrics`, `skipped_files` and `rng`
  (python, numpy, torch, cuda; tensors/plain types, so it loads with weights_only=True).
  `load_resume_state` reads the named generator checkpoints back into `nets` (each must be of the
  same step), and still reads `pixforge.resume/1` files, which hold every network inline.
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
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixforge import __version__

GENERATOR_FORMAT = "pixforge.generator/1"
RESUME_FORMAT = "pixforge.resume/2"
# /1: every network inline, also the one the generator checkpoint of the same step holds
RESUME_FORMATS_READ = ("pixforge.resume/1", RESUME_FORMAT)
RESUME_FILE = "resume-state.pt"
LATEST_FILE = "latest.json"
GENERATOR_KEYS = (
    "format",
    "generator_config",
    "task",
    "scale",
    "input_channels",
    "output_channels",
    "color_space",
    "state_dict",
    "training_config",
    "metrics",
    "training_data",
    "step",
    "pixforge_version",
    "torch_version",
    "name",
)


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
    """Contiguous CPU copies of a module's state (channels_last weights become plain NCHW)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def generator_checkpoint(
    *,
    generator_config: dict,
    state_dict: dict,
    task: str,
    scale: int,
    input_channels: int,
    output_channels: int,
    color_space: str,
    training_config: dict,
    metrics: dict,
    training_data: str,
    step: int,
    name: str,
    direction: str | None = None,
) -> dict:
    """The deployable generator checkpoint dict (docs/training.md "Checkpoints and resume")."""
    ckpt = {
        "format": GENERATOR_FORMAT,
        "generator_config": dict(generator_config),
        "task": task,
        "scale": int(scale),
        "input_channels": int(input_channels),
        "output_channels": int(output_channels),
        "color_space": color_space,
        "state_dict": state_dict,
        "training_config": training_config,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "training_data": str(training_data),
        "step": int(step),
        "pixforge_version": __version__,
        "torch_version": str(torch.__version__),  # TorchVersion is not weights_only-loadable
        "name": name,
    }
    if direction is not None:
        ckpt["direction"] = direction
    return ckpt


def load_generator_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a generator checkpoint (weights_only=True).

    Raises:
        ValueError: not a pixforge generator checkpoint.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != GENERATOR_FORMAT:
        raise ValueError(f"{path} is not a {GENERATOR_FORMAT} checkpoint")
    missing = [k for k in GENERATOR_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path} lacks keys: {', '.join(missing)}")
    return ckpt


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
    """Load a resume state file (`pixforge.resume/2`, or the older `/1` with every net inline).

    Networks listed in `nets_in_checkpoints` are read back from their generator checkpoints, so
    `state["nets"]` always holds every network, whichever layout the file has.

    Raises:
        FileNotFoundError / ValueError: missing or not a pixforge resume state, or a generator
            checkpoint it refers to is missing or of another step.
    """
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") not in RESUME_FORMATS_READ:
        raise ValueError(f"{path} is not a {RESUME_FORMAT} file")
    for key, name in state.get("nets_in_checkpoints", {}).items():
        gen_path = path.with_name(name)
        if not gen_path.is_file():
            raise FileNotFoundError(
                f"{path} keeps the {key} weights in {name} (the generator checkpoint of step "
                f"{state['step']}), which is missing; it must stay next to the resume state"
            )
        gen = load_generator_checkpoint(gen_path)
        if gen["step"] != state["step"]:
            raise ValueError(f"{gen_path} is of step {gen['step']}, the resume state of step {state['step']}")
        state["nets"][key] = gen["state_dict"]
    return state


def write_latest(ckpt_dir: str | os.PathLike, pointers: dict) -> None:
    """Point `latest.json` at the newest files (names relative to the checkpoint folder)."""
    atomic_write_json(pointers, Path(ckpt_dir) / LATEST_FILE)


def prune_checkpoints(ckpt_dir: str | os.PathLike, prefix: str, keep: int) -> list[Path]:
    """Delete all but the newest `keep` `<prefix>-stepNNNNNNN.pt` files (keep=0: delete none)."""
    if keep <= 0:
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}-step(\d+)\.pt$")
    found = sorted((int(m.group(1)), p) for p in Path(ckpt_dir).iterdir() if (m := pattern.match(p.name)))
    removed = [p for _, p in found[:-keep]]
    for p in removed:
        p.unlink()
    return removed


def generator_filename(prefix: str, step: int) -> str:
    return f"{prefix}-step{step:07d}.pt"


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

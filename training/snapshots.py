"""A run's snapshots: what the loops write into `checkpoints/` and read back on `--resume`.

A snapshot is one generator checkpoint per deployable generator (checkpoint.GeneratorCheckpoint),
the resume state holding everything else, then `latest.json`; rank 0 writes, the other ranks wait
at a barrier so that no rank runs ahead of a snapshot that might be the last one. The file formats
themselves are checkpoint.py's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import ExperimentConfig, config_to_dict
from .data import DataError
from .optim import Optimizers
from .run_context import RunContext
from .runtime import barrier, broadcast_object
from .train_data import TrainData


def generator_meta(cfg: ExperimentConfig) -> dict:
    """Task fields of the generator checkpoint (docs/training.md "Checkpoints and resume")."""
    return {
        "task": cfg.task,
        "scale": cfg.generator.scale,
        "input_channels": 1 if cfg.task == "colorization" else 3,
        "output_channels": 3,
        "color_space": cfg.color_space,
    }


def generator_checkpoint(
    ctx: RunContext, step: int, name: str, module: torch.nn.Module, direction: str | None, metrics: dict
) -> ckpt.GeneratorCheckpoint:
    """The deployable checkpoint of `module` at `step` (its weights copied to the CPU)."""
    resolved = config_to_dict(ctx.cfg)
    return ckpt.GeneratorCheckpoint(
        generator_config=resolved["generator"],
        state_dict=ckpt.cpu_state_dict(module),
        training_config=resolved,
        metrics=metrics,
        training_data=str(ctx.data_root),
        step=step,
        name=name,
        direction=direction,
        **generator_meta(ctx.cfg),
    )


def resume_entries(step: int, data: TrainData, nets: dict, opt: Optimizers, metrics: dict, **extra) -> dict:
    """The resume state of a loop at `step` (the RNG states are added when it is written).

    Args:
        nets: every network's state dict by resume key ("G", "D", "G_ema", ...).
        extra: loop-specific entries (CycleGAN: "pools").
    """
    return {
        "epoch": step // data.steps_per_epoch,
        "batch_in_epoch": step % data.steps_per_epoch,
        "steps_per_epoch": data.steps_per_epoch,
        "nets": nets,
        **opt.state_dict(),
        **extra,
        "metrics": metrics,
        "skipped_files": dict(data.tracker.files),
    }


def save_snapshot(
    ctx: RunContext,
    step: int,
    generators: dict[str, tuple[str, torch.nn.Module, str | None]],
    resume_state: dict,
    metrics: dict[str, float],
    nets_in_checkpoints: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write generator checkpoint(s), the resume state and latest.json (rank 0; others wait).

    Args:
        generators: pointer key -> (file prefix / checkpoint "name", module to save, direction).
        resume_state: everything else to resume (see `resume_entries`); RNG states are added here.
        nets_in_checkpoints: resume net key -> generator pointer key, for networks whose weights
            the generator checkpoint already holds: they are dropped from `resume_state["nets"]`
            and the resume state names the checkpoint file instead (no second copy on disk).

    Returns:
        pointer key -> generator checkpoint path.
    """
    paths = {}
    if ctx.rt.is_main:
        pointers: dict = {"step": step}
        for key, (name, module, direction) in generators.items():
            path = ctx.ckpt_dir / ckpt.generator_filename(name, step)
            generator_checkpoint(ctx, step, name, module, direction, metrics).save(path)
            ckpt.update_latest_link(path, name)
            pointers[key] = path.name
            paths[key] = path
        shared = nets_in_checkpoints or {}
        resume_state = {
            **resume_state,
            "nets": {k: v for k, v in resume_state["nets"].items() if k not in shared},
            "nets_in_checkpoints": {net: paths[key].name for net, key in shared.items()},
        }
        ckpt.save_resume_state(ctx.ckpt_dir / ckpt.RESUME_FILE, {"step": step, **resume_state})
        pointers["resume"] = ckpt.RESUME_FILE
        ckpt.write_latest(ctx.ckpt_dir, pointers)  # last: never points at a half-written file
        for name, _, _ in generators.values():
            ckpt.prune_checkpoints(ctx.ckpt_dir, name, ctx.cfg.train.keep_checkpoints)
    barrier(ctx.rt)
    paths = broadcast_object(ctx.rt, {k: str(v) for k, v in paths.items()})
    return {k: Path(v) for k, v in paths.items()}


def load_resume(ctx: RunContext, data: TrainData, opt: Optimizers) -> tuple[dict, int, dict]:
    """Read the run's resume state (every rank reads the same file) and restore what every loop
    has: optimisers, schedules, loss scale and the skipped-file record.

    The networks, the image pools and, last of all, the RNG states are the loop's to restore.

    Returns:
        (the state, its step, its metrics)

    Raises:
        DataError: the resume state or a generator checkpoint it refers to is missing or unusable,
            or the data changed since the run started.
    """
    try:
        state = ckpt.load_resume_state(ctx.ckpt_dir / ckpt.RESUME_FILE)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"cannot resume: {exc}") from exc
    # The run's length as the loop resolves it: train.steps, or n_epochs x steps per epoch when
    # steps is 0 (the epoch presets), so the raw train.steps is not the bound.
    steps = data.total_steps
    if int(state["step"]) > steps:
        # The loop would stop at once and config.json would then describe a shorter run than
        # the checkpoints hold.
        raise DataError(
            f"cannot resume: this config trains {steps} steps, below the run's step {int(state['step'])}; "
            "pass a larger train.steps (or train.n_epochs) to train on"
        )
    check_resume_layout(state, data)
    opt.load_state_dict(state)
    data.tracker.files.update(state.get("skipped_files", {}))
    return state, int(state["step"]), dict(state.get("metrics", {}))


def check_resume_layout(state: dict, data: TrainData) -> None:
    """Refuse to resume onto different data: the batch position would not mean the same thing."""
    if state.get("steps_per_epoch") != data.steps_per_epoch:
        raise DataError(
            f"the data changed since this run started: {state.get('steps_per_epoch')} steps per "
            f"epoch then, {data.steps_per_epoch} now; resume with the same --data and batch size, or "
            "start a new run from this one's generator with --set train.init_from=CHECKPOINT"
        )

"""Helpers shared by the pix2pix and CycleGAN loops: run directory, data, optimisers, snapshots.

The loops themselves (loop_pix2pix.py, loop_cyclegan.py) stay one readable function each; what
they have in common lives here so neither copies it.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .config import ExperimentConfig, config_to_dict, save_config_json
from .data import (
    DataError,
    EpochSampler,
    SkipTracker,
    build_datasets,
    load_eval_items,
    make_train_loader,
)
from .metrics import FIDScorer
from .run_log import RunLog
from .runtime import Runtime, barrier, broadcast_object
from .schedules import step_plateau


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    checkpoint: Path  # the generator checkpoint (G_A for CycleGAN)
    other_checkpoints: dict[str, Path]  # e.g. {"G_B": path}
    step: int
    total_steps: int
    metrics: dict[str, float]
    skipped_files: int
    data_summary: list[str] = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM after a whole step (resumable)
    # why no validation ran ("train.val_every is 0" / "no validation images"); None = validation on
    validation_off: str | None = None


class StopRequest:
    """Ctrl-C / SIGTERM ask the loop to stop after the current step and snapshot, so `--resume`
    continues exactly there (a second Ctrl-C stops immediately). Under DDP the ranks agree on the
    flag every step, so they all stop after the same step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def should_stop(self, rt: Runtime) -> bool:
        if not rt.distributed:
            return self.requested
        flag = torch.tensor([int(self.requested)], device=rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


@dataclass
class RunContext:
    """Everything a loop needs besides its networks."""

    cfg: ExperimentConfig
    rt: Runtime
    run_dir: Path
    data_root: Path
    log: RunLog
    stop: StopRequest = field(default_factory=StopRequest)

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"


# ----------------------------------------------------------------------------- run directory

_RUN_RE = re.compile(r"^(?P<stem>.+)-(?P<num>\d{3,})$")


def next_run_dir(runs_root: Path, stem: str) -> Path:
    """runs_root/<stem>-NNN with NNN one above the highest existing number (001 first)."""
    nums = [
        int(m.group("num"))
        for p in runs_root.glob(f"{stem}-*")
        if (m := _RUN_RE.match(p.name)) and m.group("stem") == stem
    ]
    return runs_root / f"{stem}-{max(nums, default=0) + 1:03d}"


def latest_run_dir(runs_root: Path, stem: str) -> Path | None:
    """The highest-numbered runs_root/<stem>-NNN, or None."""
    found = sorted(
        (int(m.group("num")), p)
        for p in runs_root.glob(f"{stem}-*")
        if (m := _RUN_RE.match(p.name)) and m.group("stem") == stem and p.is_dir()
    )
    return found[-1][1] if found else None


def open_run_dir(
    rt: Runtime, cfg: ExperimentConfig, run_dir: Path | None, runs_root: Path, stem: str, resume: bool
) -> Path:
    """Create (or, on resume, reuse) the run directory on rank 0 and share its path with all ranks.

    Raises:
        DataError: resuming a folder without a resume state, or starting over an existing run.
    """
    problem = None
    if rt.is_main:
        if run_dir is None:
            run_dir = next_run_dir(runs_root, stem)
        run_dir = Path(run_dir)
        if resume:
            if not (run_dir / "checkpoints" / ckpt.RESUME_FILE).is_file():
                problem = f"nothing to resume in {run_dir} (no checkpoints/{ckpt.RESUME_FILE})"
        elif (run_dir / "config.json").exists():
            problem = f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        if problem is None:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "samples").mkdir(exist_ok=True)
            save_config_json(cfg, run_dir / "config.json")
    run_dir, problem = broadcast_object(rt, (str(run_dir), problem))
    if problem:
        raise DataError(problem)
    return Path(run_dir)


# ----------------------------------------------------------------------------- data


@dataclass
class TrainData:
    loader: torch.utils.data.DataLoader
    sampler: EpochSampler
    val_items: list[dict]
    steps_per_epoch: int
    total_steps: int
    tracker: SkipTracker
    summary: list[str]


def build_train_data(ctx: RunContext, size_multiple: int) -> TrainData:
    """Datasets, the resumable sampler/loader, cached validation items and the run length.

    Raises:
        DataError: no usable data, or fewer images than one batch.
    """
    cfg, rt = ctx.cfg, ctx.rt
    data_cfg, t = cfg.data, cfg.train
    needed = size_multiple * (data_cfg.scale if cfg.task == "super_resolution" else 1)
    if data_cfg.preprocess != "none" and data_cfg.crop_size % needed:
        raise DataError(
            f"data.crop_size {data_cfg.crop_size} must be a multiple of {needed} "
            f"(the generator's size multiple{' x scale' if needed != size_multiple else ''})"
        )
    bundle = build_datasets(data_cfg, ctx.data_root, size_multiple=size_multiple, seed=t.seed)
    sampler = EpochSampler(len(bundle.train), t.batch_size, t.seed, rt.rank, rt.world_size)
    steps_per_epoch = sampler.batches_per_epoch()
    if steps_per_epoch == 0:
        raise DataError(
            f"{len(bundle.train)} training images cannot fill one batch of "
            f"{t.batch_size} x {rt.world_size} process(es); lower train.batch_size"
        )
    loader = make_train_loader(bundle.train, sampler, t.num_workers, pin_memory=rt.device.type == "cuda")
    tracker = SkipTracker()
    val_items = load_eval_items(bundle.val, tracker) if rt.is_main else []
    total = t.steps if t.steps > 0 else t.n_epochs * steps_per_epoch
    return TrainData(loader, sampler, val_items, steps_per_epoch, total, tracker, bundle.summary)


def make_fid(ctx: RunContext) -> FIDScorer | None:
    """The FID scorer when train.fid_inception_weights is set (rank 0 only)."""
    path = ctx.cfg.train.fid_inception_weights
    if not path or not ctx.rt.is_main:
        return None
    return FIDScorer(path, device=str(ctx.rt.device))


def adam(params, lr: float, t) -> torch.optim.Adam:
    """Adam with the config's betas (pix2pix/CycleGAN: beta1 = 0.5)."""
    return torch.optim.Adam(params, lr=lr, betas=(t.beta1, t.beta2))


# ----------------------------------------------------------------------------- bookkeeping


class LossMeter:
    """Running means of detached scalar losses between log lines (one host sync per log)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def pop(self) -> dict[str, float]:
        out = {k: round(float(v) / max(1, self.count), 6) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


class Throughput:
    """Images per second over the last log interval."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.images = 0

    def add(self, n: int) -> None:
        self.images += n

    def pop(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(1e-9, now - self.t0)
        self.t0, self.images = now, 0
        return round(rate, 3)


def due(step: int, every: int) -> bool:
    """True when a cadence of `every` steps (0 = never) fires at `step`."""
    return every > 0 and step % every == 0


def progress_bar(ctx: RunContext, initial: int, total: int):
    """tqdm bar on rank 0 (disabled elsewhere or when train.progress is false)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not (ctx.rt.is_main and ctx.cfg.train.progress),
        dynamic_ncols=True,
        unit="step",
        leave=True,
    )


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if not math.isnan(v)) or "(none)"


# ----------------------------------------------------------------------------- snapshots


def generator_meta(cfg: ExperimentConfig) -> dict:
    """Task fields of the generator checkpoint (docs/training.md "Checkpoints and resume")."""
    return {
        "task": cfg.task,
        "scale": cfg.generator.scale,
        "input_channels": 1 if cfg.task == "colorization" else 3,
        "output_channels": 3,
        "color_space": cfg.color_space,
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
        resume_state: everything else to resume (see checkpoint.py); RNG states are added here.
        nets_in_checkpoints: resume net key -> generator pointer key, for networks whose weights
            the generator checkpoint already holds: they are dropped from `resume_state["nets"]`
            and the resume state names the checkpoint file instead (no second copy on disk).

    Returns:
        pointer key -> generator checkpoint path.
    """
    paths = {}
    if ctx.rt.is_main:
        cfg = ctx.cfg
        pointers: dict = {"step": step}
        for key, (name, module, direction) in generators.items():
            data = ckpt.generator_checkpoint(
                generator_config=config_to_dict(cfg)["generator"],
                state_dict=ckpt.cpu_state_dict(module),
                training_config=config_to_dict(cfg),
                metrics=metrics,
                training_data=str(ctx.data_root),
                step=step,
                name=name,
                direction=direction,
                **generator_meta(cfg),
            )
            path = ctx.ckpt_dir / ckpt.generator_filename(name, step)
            ckpt.atomic_torch_save(data, path)
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
            ckpt.prune_checkpoints(ctx.ckpt_dir, name, cfg.train.keep_checkpoints)
    barrier(ctx.rt)
    paths = broadcast_object(ctx.rt, {k: str(v) for k, v in paths.items()})
    return {k: Path(v) for k, v in paths.items()}


def load_resume(ctx: RunContext) -> dict:
    """The run's resume state (every rank reads the same file).

    Raises:
        DataError: the resume state or a generator checkpoint it refers to is missing or unusable.
    """
    try:
        return ckpt.load_resume_state(ctx.ckpt_dir / ckpt.RESUME_FILE)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"cannot resume: {exc}") from exc


def check_resume_layout(state: dict, data: TrainData) -> None:
    """Refuse to resume onto different data: the batch position would not mean the same thing."""
    if state.get("steps_per_epoch") != data.steps_per_epoch:
        raise DataError(
            f"the data changed since this run started: {state.get('steps_per_epoch')} steps per "
            f"epoch then, {data.steps_per_epoch} now; resume with the same --data and batch size"
        )


@dataclass
class StepHooks:
    """The per-step bookkeeping both loops share: log, evaluate, sample grid, checkpoint.

    `evaluate(items)` returns an object with `.metrics`, `.rows` and `.monitor` (the value plateau
    schedules follow); `snapshot()` writes the checkpoints. `metrics` and `last_val_step` carry the
    latest validation across steps.
    """

    ctx: RunContext
    rt: Any
    data: TrainData
    evaluate: Callable[[list], Any]
    snapshot: Callable[[], dict]
    schedulers: list
    optimizers: tuple  # (opt_g, opt_d): their current learning rates are logged
    metrics: dict = field(default_factory=dict)
    last_val_step: int = -1
    # perf_counter() of the last snapshot (or the loop's start): the wall-clock checkpoint cadence
    last_snapshot_time: float = field(default_factory=time.perf_counter)

    def after_step(
        self,
        step: int,
        stop_at: int,
        epoch: int,
        meter: LossMeter,
        speed: Throughput,
        bar,
        extra_stats: dict | None = None,
    ) -> bool:
        """Run the hooks due at `step`; return True when the loop must stop."""
        t, ctx, rt, data = self.ctx.cfg.train, self.ctx, self.rt, self.data
        # --- log
        if due(step, t.log_every) or step == stop_at:
            values = meter.pop()
            ips = speed.pop()
            bar.set_postfix({**{k: f"{v:.3g}" for k, v in values.items()}, "img/s": f"{ips:.2f}"})
            opt_g, opt_d = self.optimizers
            ctx.log.stats(
                step,
                {
                    "epoch": epoch,
                    **(extra_stats or {}),
                    **values,
                    "img_per_s": ips,
                    "lr_g": opt_g.param_groups[0]["lr"],
                    "lr_d": opt_d.param_groups[0]["lr"],
                    "skipped_files": data.tracker.count,
                },
            )
        # --- evaluate (validation metrics; plateau schedules follow the validation monitor value)
        if data.val_items and due(step, t.val_every):
            result = self.evaluate(data.val_items) if rt.is_main else None
            if rt.is_main:
                self.metrics = result.metrics
                ctx.log.metrics(step, self.metrics, len(data.val_items))
                ctx.log.sample_grid(step, result.rows)
            step_plateau(self.schedulers, broadcast_object(rt, result.monitor if result else None))
            self.last_val_step = step
        # --- snapshot (sample grid from the fixed validation images, then checkpoints)
        if due(step, t.sample_every) and self.last_val_step != step and rt.is_main and data.val_items:
            ctx.log.sample_grid(step, self.evaluate(data.val_items[: t.n_samples]).rows)
        if step != stop_at and (due(step, t.checkpoint_every) or self._clock_due(t.checkpoint_minutes)):
            self.snapshot()
            self.last_snapshot_time = time.perf_counter()
        return step >= stop_at or ctx.stop.should_stop(rt)

    def _clock_due(self, minutes: float) -> bool:
        """True when `minutes` (> 0) of wall time passed since the last snapshot. Under DDP rank 0's
        clock decides for every rank, since all ranks must enter the snapshot together."""
        if minutes <= 0:
            return False
        elapsed = time.perf_counter() - self.last_snapshot_time
        return bool(broadcast_object(self.rt, elapsed >= minutes * 60.0))

    @property
    def validation_off(self) -> str | None:
        """Why this run does not validate, or None when it does (rank 0's view)."""
        if self.ctx.cfg.train.val_every <= 0:
            return "train.val_every is 0"
        if not self.data.val_items:
            return "no validation images"
        return None

    def finish(self, step: int, stop_at: int) -> tuple[dict, dict, bool]:
        """Final evaluation and snapshot. The final evaluation is skipped when validation is off
        (`val_every: 0` or no validation data), when the last step just validated, or when the run
        was interrupted; the checkpoint then carries the last validation's metrics (none when off).

        Returns:
            (checkpoint paths, metrics, interrupted)
        """
        interrupted = step < stop_at
        data = self.data
        if self.validation_off is None and self.rt.is_main and self.last_val_step != step and not interrupted:
            result = self.evaluate(data.val_items)
            self.metrics = result.metrics
            self.ctx.log.metrics(step, self.metrics, len(data.val_items))
            self.ctx.log.sample_grid(step, result.rows)
        self.metrics = broadcast_object(self.rt, self.metrics)
        return self.snapshot(), self.metrics, interrupted

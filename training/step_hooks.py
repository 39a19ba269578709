"""The step bookkeeping both loops share: walking the epochs, then after every step logging,
validation, sample grids, snapshots and the decision to stop.

A loop is

    hooks = StepHooks(ctx, data, evaluate, snapshot, opt, step=step, stop_at=stop_at)
    for batch in hooks.batches():
        ...one optimisation step...
        step += 1
        hooks.end_step(step, losses, images=batch_size)
    return hooks.finish()

`batches()` starts at the run's position (epoch and batch within it, so a resumed run reads
exactly the batches the uninterrupted one would) and ends once `end_step` has decided to stop: at
`stop_at`, or after a Ctrl-C / SIGTERM (runtime.StopRequest). `finish()` runs the final validation
and snapshot and returns the TrainResult.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .meters import LossMeter, Throughput, due, progress_bar
from .optim import Optimizers
from .run_context import RunContext, TrainResult
from .runtime import broadcast_object
from .schedules import step_plateau
from .train_data import TrainData


@dataclass
class StepHooks:
    """Per-step bookkeeping of one run.

    `evaluate(items)` returns an object with `.metrics`, `.rows` and `.monitor` (the value plateau
    schedules follow); `snapshot()` writes the checkpoints and returns {pointer key: path}.
    `metrics` and `last_val_step` carry the latest validation across steps.
    """

    ctx: RunContext
    data: TrainData
    evaluate: Callable[[list], Any]
    snapshot: Callable[[], dict[str, Path]]
    opt: Optimizers  # its learning rates are logged
    step: int  # the last finished step: 0, or the resume state's, then what end_step was given
    stop_at: int
    metrics: dict = field(default_factory=dict)
    last_val_step: int = -1
    # perf_counter() of the last snapshot (or the loop's start): the wall-clock checkpoint cadence
    last_snapshot_time: float = field(default_factory=time.perf_counter)
    epoch: int = field(init=False, default=0)  # of the batch being trained on
    stopping: bool = field(init=False, default=False)  # set by end_step; batches() then ends
    meter: LossMeter = field(init=False, default_factory=LossMeter)
    speed: Throughput = field(init=False, default_factory=Throughput)
    bar: Any = field(init=False, default=None)  # tqdm; prints on rank 0 when train.progress is on

    def __post_init__(self) -> None:
        self.bar = progress_bar(self.step, self.stop_at, self.ctx.rt.is_main and self.ctx.cfg.train.progress)
        self.stopping = self.step >= self.stop_at

    def batches(self) -> Iterator[dict]:
        """Training batches from the current position, epoch after epoch, until the run stops."""
        epoch, position = divmod(self.step, self.data.steps_per_epoch)
        while not self.stopping:
            self.epoch = epoch
            self.data.sampler.set_epoch(epoch, position)
            for batch in self.data.loader:
                self.data.tracker.record(batch["skipped"])
                yield batch
                if self.stopping:
                    return
            epoch, position = epoch + 1, 0

    def end_step(
        self, step: int, losses: dict[str, torch.Tensor], images: int, extra_stats: dict | None = None
    ) -> None:
        """Account for the finished `step` (`images` per rank) and run the hooks due at it."""
        ctx, rt, data, t = self.ctx, self.ctx.rt, self.data, self.ctx.cfg.train
        self.step = step
        self.meter.add(losses)
        self.speed.add(images * rt.world_size)
        self.bar.update(1)
        # --- log
        if due(step, t.log_every) or step == self.stop_at:
            values = self.meter.pop()
            ips = self.speed.pop()
            self.bar.set_postfix({**{k: f"{v:.3g}" for k, v in values.items()}, "img/s": f"{ips:.2f}"})
            ctx.log.stats(
                step,
                {
                    "epoch": self.epoch,
                    **(extra_stats or {}),
                    **values,
                    "img_per_s": ips,
                    **self.opt.learning_rates(),
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
            step_plateau(self.opt.schedulers, broadcast_object(rt, result.monitor if result else None))
            self.last_val_step = step
        # --- snapshot (sample grid from the fixed validation images, then checkpoints)
        if due(step, t.sample_every) and self.last_val_step != step and rt.is_main and data.val_items:
            ctx.log.sample_grid(step, self.evaluate(data.val_items[: t.n_samples]).rows)
        if step != self.stop_at and (due(step, t.checkpoint_every) or self._clock_due(t.checkpoint_minutes)):
            self.snapshot()
            self.last_snapshot_time = time.perf_counter()
        self.stopping = step >= self.stop_at or ctx.stop.should_stop(rt)

    def _clock_due(self, minutes: float) -> bool:
        """True when `minutes` (> 0) of wall time passed since the last snapshot. Under DDP rank 0's
        clock decides for every rank, since all ranks must enter the snapshot together."""
        if minutes <= 0:
            return False
        elapsed = time.perf_counter() - self.last_snapshot_time
        return bool(broadcast_object(self.ctx.rt, elapsed >= minutes * 60.0))

    @property
    def validation_off(self) -> str | None:
        """Why this run does not validate, or None when it does (rank 0's view)."""
        if self.ctx.cfg.train.val_every <= 0:
            return "train.val_every is 0"
        if not self.data.val_items:
            return "no validation images"
        return None

    def finish(self, *other_checkpoints: str) -> TrainResult:
        """Final evaluation and snapshot; the result names the "generator" checkpoint and the
        `other_checkpoints` pointer keys (CycleGAN: "G_B").

        The final evaluation is skipped when validation is off (`val_every: 0` or no validation
        data), when the last step just validated, or when the run was interrupted; the checkpoint
        then carries the last validation's metrics (none when off).
        """
        self.bar.close()
        interrupted = self.step < self.stop_at
        data, rt = self.data, self.ctx.rt
        if self.validation_off is None and rt.is_main and self.last_val_step != self.step and not interrupted:
            result = self.evaluate(data.val_items)
            self.metrics = result.metrics
            self.ctx.log.metrics(self.step, self.metrics, len(data.val_items))
            self.ctx.log.sample_grid(self.step, result.rows)
        self.metrics = broadcast_object(rt, self.metrics)
        paths = self.snapshot()
        return TrainResult(
            run_dir=self.ctx.run_dir,
            checkpoint=paths["generator"],
            other_checkpoints={key: paths[key] for key in other_checkpoints},
            step=self.step,
            total_steps=data.total_steps,
            metrics=self.metrics,
            skipped_files=data.tracker.count,
            data_summary=data.summary,
            interrupted=interrupted,
            validation_off=self.validation_off,
        )

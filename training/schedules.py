"""Learning-rate schedules, stepped once per optimisation step (plateau: once per validation).

- linear: constant for the first `lr_decay_start` fraction of training, then linear decay to 0
  at the last step (junyanz "linear": 100 constant + 100 decaying epochs = lr_decay_start 0.5).
- step: multiply by `lr_gamma` every `lr_step_size` steps.
- cosine: cosine annealing from the initial lr to `lr_min` over the whole run.
- plateau: multiply by `lr_gamma` when the validation loss (L1 for pix2pix, cycle L1 for
  CycleGAN) has not improved by `lr_threshold` (relative) for `lr_patience` validations.

The total length is fixed by the config (train.steps or n_epochs), never by `--max-steps`, so a run
stopped early and resumed follows the same schedule as an uninterrupted one.
"""

from __future__ import annotations

import warnings

from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched


def make_scheduler(opt: Optimizer, cfg, total_steps: int):
    """Build the scheduler `cfg.lr_schedule` (a TrainConfig) for a run of `total_steps` steps."""
    kind = cfg.lr_schedule
    if kind == "linear":
        start = int(round(cfg.lr_decay_start * total_steps))
        decay = max(1, total_steps - start)

        def factor(step: int) -> float:
            return 1.0 - max(0, step - start) / float(decay)

        return sched.LambdaLR(opt, factor)
    if kind == "step":
        return sched.StepLR(opt, step_size=cfg.lr_step_size, gamma=cfg.lr_gamma)
    if kind == "cosine":
        return sched.CosineAnnealingLR(opt, T_max=max(1, total_steps), eta_min=cfg.lr_min)
    if kind == "plateau":
        return sched.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.lr_gamma, patience=cfg.lr_patience, threshold=cfg.lr_threshold
        )
    raise ValueError(f"unknown lr schedule {kind!r}")


def is_plateau(scheduler) -> bool:
    return isinstance(scheduler, sched.ReduceLROnPlateau)


def step_schedulers(schedulers: list) -> None:
    """Per-step advance of every non-plateau scheduler.

    Schedules follow the global step even when their optimizer did not step (D during NoGAN
    pre-training, or a GradScaler-skipped fp16 step), so PyTorch's "scheduler before optimizer"
    warning is expected here and silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        for s in schedulers:
            if not is_plateau(s):
                s.step()


def step_plateau(schedulers: list, value: float) -> None:
    """Per-validation advance of plateau schedulers with the monitored loss."""
    for s in schedulers:
        if is_plateau(s):
            s.step(value)

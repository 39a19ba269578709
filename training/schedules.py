"""Learning-rate schedules, stepped once per optimisation step (plateau: once per validation).

- linear: constant for the first `lr_decay_start` fraction of training, then linear decay to 0
  at the last step (junyanz "linear": 100 constant + 100 decaying epochs = lr_decay_start 0.5).
- step: multiply by `lr_gamma` every `lr_step_size` steps.
- cosine: cosine annealing from the initial lr to `lr_min` over the whole run (closed form of the
  step, so a run resumed with a longer `train.steps` follows the new length).
- plateau: multiply by `lr_gamma` when the validation loss (L1 for pix2pix, cycle L1 for
  CycleGAN) has not improved by `lr_threshold` (relative) for `lr_patience` validations.

The total length is fixed by the config (train.steps or n_epochs), never by `--max-steps`, so a run
stopped early and resumed follows the same schedule as an uninterrupted one. Step-driven schedules
are LambdaLR functions of the global step: their saved state is just that step, so resuming with a
changed `train.steps` (e.g. a fine-tuning phase appended to a finished run) uses the new length.
"""

from __future__ import annotations

import math
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
        total = max(1, total_steps)

        def cosine(base_lr: float):
            floor = cfg.lr_min / base_lr

            def factor(step: int) -> float:
                return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

            return factor

        return sched.LambdaLR(opt, [cosine(g["lr"]) for g in opt.param_groups])
    if kind == "plateau":
        return sched.ReduceLROnPlateau(
            opt, mode="min", factor=cfg.lr_gamma, patience=cfg.lr_patience, threshold=cfg.lr_threshold
        )
    raise ValueError(f"unknown lr schedule {kind!r}")


def load_scheduler_states(schedulers: list, states: list[dict]) -> None:
    """Restore schedulers from a resume state.

    A LambdaLR schedule is a pure function of the step, so only the step counters are taken: the
    base lrs stay those of the current config, so a resume with a changed `train.lr_g`/`lr_d` or
    `train.steps` follows the new settings from the next step on (and unchanged settings resume
    bit-exactly). This also reads states saved by the former CosineAnnealingLR implementation.
    """
    if len(schedulers) != len(states):
        raise ValueError(f"resume state has {len(states)} schedulers, the run has {len(schedulers)}")
    for s, sd in zip(schedulers, states, strict=True):
        if isinstance(s, sched.LambdaLR):
            skip = ("lr_lambdas", "base_lrs", "_last_lr")
            s.__dict__.update({k: v for k, v in sd.items() if k in s.__dict__ and k not in skip})
            s._last_lr = [base * f(s.last_epoch) for base, f in zip(s.base_lrs, s.lr_lambdas, strict=True)]
            for group, lr in zip(s.optimizer.param_groups, s._last_lr, strict=True):
                group["lr"] = lr
        else:
            s.load_state_dict(sd)


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

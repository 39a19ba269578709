"""Learning-rate schedules: closed-form values, and resuming with a changed run length."""

from __future__ import annotations

import math

import pytest
import torch

from pixforge.training.config import TrainConfig
from pixforge.training.schedules import load_scheduler_states, make_scheduler, step_schedulers


def _opt(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _advance(scheduler, opt, n: int) -> None:
    for _ in range(n):
        opt.step()
        step_schedulers([scheduler])


def test_cosine_follows_closed_form_down_to_lr_min():
    cfg = TrainConfig(lr_schedule="cosine", lr_min=1e-5)
    opt = _opt()
    s = make_scheduler(opt, cfg, total_steps=100)
    _advance(s, opt, 25)
    expected = 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)
    _advance(s, opt, 100)  # past the end it stays at the floor instead of rising again
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_resume_with_a_longer_run_uses_the_new_length(kind):
    cfg = TrainConfig(lr_schedule=kind)
    opt = _opt()
    s = make_scheduler(opt, cfg, total_steps=100)
    _advance(s, opt, 100)
    saved = s.state_dict()

    opt2 = _opt()
    s2 = make_scheduler(opt2, cfg, total_steps=200)  # e.g. a fine-tuning phase appended
    load_scheduler_states([s2], [saved])
    _advance(s2, opt2, 1)

    fresh_opt = _opt()
    fresh = make_scheduler(fresh_opt, cfg, total_steps=200)
    _advance(fresh, fresh_opt, 101)
    assert opt2.param_groups[0]["lr"] == pytest.approx(fresh_opt.param_groups[0]["lr"])
    assert 0 < opt2.param_groups[0]["lr"] < 1e-3


def test_reads_a_cosine_annealing_state_from_older_runs():
    opt = _opt()
    legacy = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    _advance(legacy, opt, 40)
    opt2 = _opt()
    s = make_scheduler(opt2, TrainConfig(lr_schedule="cosine"), total_steps=100)
    load_scheduler_states([s], [legacy.state_dict()])
    _advance(s, opt2, 1)
    _advance(legacy, opt, 1)
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_scheduler_count_mismatch_is_an_error():
    opt = _opt()
    s = make_scheduler(opt, TrainConfig(lr_schedule="linear"), total_steps=10)
    with pytest.raises(ValueError, match="2 schedulers"):
        load_scheduler_states([s], [s.state_dict(), s.state_dict()])


def test_resume_with_a_changed_lr_uses_the_new_lr_at_once():
    opt = _opt(lr=1e-3)
    s = make_scheduler(opt, TrainConfig(lr_schedule="linear", lr_decay_start=0.5), total_steps=100)
    _advance(s, opt, 10)
    saved_opt, saved = opt.state_dict(), s.state_dict()

    opt2 = _opt(lr=1e-4)  # the resumed config asks for a 10x lower lr
    s2 = make_scheduler(opt2, TrainConfig(lr_schedule="linear", lr_decay_start=0.5), total_steps=100)
    opt2.load_state_dict(saved_opt)  # the loops restore the optimizer first, then the schedules
    load_scheduler_states([s2], [saved])
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-4)
    _advance(s2, opt2, 50)  # step 60 of a decay that starts at 50
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.8)

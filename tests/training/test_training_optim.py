"""The shared optimisation state: an update releases its gradients, in both training loops."""

from __future__ import annotations

import pytest
import torch
from training_helpers import tiny_config

from pixforge.training.config import TrainConfig
from pixforge.training.loop import train
from pixforge.training.optim import Optimizers


def test_step_updates_the_weights_and_drops_the_gradients():
    g, d = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    opt = Optimizers.build(g.parameters(), d.parameters(), TrainConfig(lr_g=0.1), 10, "cpu")
    before = g.weight.detach().clone()
    g(torch.ones(4, 3)).sum().backward()
    opt.step(opt.g)
    assert not torch.equal(g.weight, before)
    assert all(p.grad is None for p in g.parameters())


@pytest.mark.parametrize("kind", ["aligned", "unaligned"])
def test_no_gradient_outlives_its_update(kind, aligned_data, unaligned_data, tmp_path, monkeypatch):
    # The next step's forward pass is where the memory peak is: gradients (as large as the
    # weights) still held then would add to it. At the end of every step none may be left.
    held = []
    end_step = Optimizers.end_step

    def checked_end_step(self):
        params = [p for o in (self.g, self.d) for group in o.param_groups for p in group["params"]]
        held.append(sum(p.grad is not None for p in params))
        end_step(self)

    monkeypatch.setattr(Optimizers, "end_step", checked_end_step)
    data = aligned_data if kind == "aligned" else unaligned_data
    train(tiny_config(kind, steps=3, val_every=0), data, run_dir=tmp_path / "run")
    assert held == [0, 0, 0]

"""Exponential moving average of generator weights (what checkpoints and evaluation use when on).

The EMA copy is a plain module on the training device, never wrapped or all-reduced: every rank
applies the same update to the same (already averaged) weights, so copies stay identical.
Early steps use the warm-up decay min(decay, (1 + step) / (10 + step)) so the average is not
dominated by the random initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Shadow copy of a network updated as ema = decay * ema + (1 - decay) * weights."""

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(net).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        for ema_p, p in zip(self.module.parameters(), net.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), net.buffers(), strict=True):
            ema_b.copy_(b)  # BatchNorm running stats are not averaged, just followed

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)

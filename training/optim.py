"""The optimisation state both loops share: an Adam for the generator side and one for the
discriminator side, their learning-rate schedules (schedules.py) and the fp16 GradScaler.

Adam's beta1 is 0.5 in the presets, as in pix2pix and CycleGAN (after DCGAN: the default 0.9
makes adversarial training oscillate); `train.lr_g != train.lr_d` gives TTUR (Heusel et al.).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .config import TrainConfig
from .schedules import load_scheduler_states, make_scheduler, step_schedulers


def adam(params: Iterable[torch.nn.Parameter], lr: float, t: TrainConfig) -> torch.optim.Adam:
    """Adam with the config's betas."""
    return torch.optim.Adam(params, lr=lr, betas=(t.beta1, t.beta2))


@dataclass
class Optimizers:
    """`g` steps every generator, `d` every discriminator; one schedule each, one shared scaler."""

    g: torch.optim.Adam
    d: torch.optim.Adam
    schedulers: list
    scaler: torch.amp.GradScaler

    @classmethod
    def build(
        cls,
        g_params: Iterable[torch.nn.Parameter],
        d_params: Iterable[torch.nn.Parameter],
        t: TrainConfig,
        total_steps: int,
        device_type: str,
    ) -> Optimizers:
        """Optimisers, schedules over `total_steps` (the config's run length) and the scaler."""
        opt_g, opt_d = adam(g_params, t.lr_g, t), adam(d_params, t.lr_d, t)
        schedulers = [make_scheduler(opt_g, t, total_steps), make_scheduler(opt_d, t, total_steps)]
        return cls(opt_g, opt_d, schedulers, torch.amp.GradScaler(device_type, enabled=t.amp == "fp16"))

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Apply one optimiser's update (through the scaler), then drop its gradients.

        Dropped here, not at the next step's zero_grad: the gradients are as large as the weights
        (218 MB for pix2pix's 54 M-parameter U-Net) and nothing reads them after the update, while
        the next step's forward pass, where the memory peak is, would otherwise run beside them.
        Between steps every `.grad` is therefore None, so a backward starts from no gradients.
        """
        self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    def end_step(self) -> None:
        """After both updates of a step: adapt the loss scale once, advance the schedules."""
        self.scaler.update()
        step_schedulers(self.schedulers)

    def learning_rates(self) -> dict[str, float]:
        """The current learning rates, as logged: {"lr_g": ..., "lr_d": ...}."""
        return {"lr_g": self.g.param_groups[0]["lr"], "lr_d": self.d.param_groups[0]["lr"]}

    def state_dict(self) -> dict:
        """The resume-state entries `optimizers`, `schedulers` and `scaler`."""
        return {
            "optimizers": {"G": self.g.state_dict(), "D": self.d.state_dict()},
            "schedulers": [s.state_dict() for s in self.schedulers],
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from a resume state (reads the entries `state_dict` writes)."""
        self.g.load_state_dict(state["optimizers"]["G"])
        self.d.load_state_dict(state["optimizers"]["D"])
        load_scheduler_states(self.schedulers, state["schedulers"])
        self.scaler.load_state_dict(state["scaler"])

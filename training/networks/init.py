"""Weight initialisation (junyanz `init_weights`): conv/linear weights by `init_type`, biases 0,
affine norm weights ~ N(1, gain) and biases 0."""

from __future__ import annotations

from torch import nn
from torch.nn import init

from ..vocab import INIT_TYPES

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
_NORMS = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise `net` in place and return it.

    normal: N(0, gain); xavier: xavier_normal with `gain`; kaiming: kaiming_normal (fan_in, a=0;
    gain unused, as in junyanz); orthogonal: orthogonal with `gain`.
    """
    if init_type not in INIT_TYPES:
        raise ValueError(f"unknown init_type {init_type!r}; valid: {', '.join(INIT_TYPES)}")
    for m in net.modules():
        if isinstance(m, _WEIGHTED):
            if init_type == "normal":
                init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                init.zeros_(m.bias)
        elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
            init.normal_(m.weight, 1.0, gain)
            init.zeros_(m.bias)
    return net

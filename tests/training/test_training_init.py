"""Every init type runs and gives roughly the expected weight statistics."""

import math

import pytest
import torch
from torch import nn

from pixforge.training.networks.init import init_weights


def _net():
    return nn.Sequential(
        nn.Conv2d(64, 64, 3), nn.BatchNorm2d(64), nn.ConvTranspose2d(64, 32, 4), nn.InstanceNorm2d(32)
    )


FAN_IN = 64 * 9
EXPECTED_STD = {
    "normal": 0.02,
    "xavier": 0.02 * math.sqrt(2.0 / (FAN_IN + 64 * 9)),
    "kaiming": math.sqrt(2.0 / FAN_IN),
    "orthogonal": 0.02 / math.sqrt(FAN_IN),  # 64 orthonormal rows of length 576, scaled by gain
}


@pytest.mark.parametrize("init_type", sorted(EXPECTED_STD))
def test_init_types(init_type):
    net = init_weights(_net(), init_type, 0.02)
    conv, bn = net[0], net[1]
    assert conv.weight.std().item() == pytest.approx(EXPECTED_STD[init_type], rel=0.1)
    assert conv.bias.abs().max().item() == 0.0 and net[2].bias.abs().max().item() == 0.0
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.01)
    assert bn.weight.std().item() == pytest.approx(0.02, rel=0.35)
    assert bn.bias.abs().max().item() == 0.0
    if init_type == "orthogonal":
        rows = conv.weight.flatten(1)
        torch.testing.assert_close(rows @ rows.T, 0.02**2 * torch.eye(64), atol=1e-6, rtol=0)


def test_unknown_init_type():
    with pytest.raises(ValueError, match="orthogonal"):
        init_weights(_net(), "uniform")

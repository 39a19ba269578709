"""Discriminators: PatchGAN (junyanz NLayerDiscriminator), pixel (1x1) and pix2pixHD multi-scale.

Every discriminator returns list[list[Tensor]]: one list per scale holding the intermediate feature
maps (after each LeakyReLU) with the raw prediction map (logits) last, so the GAN loss reads `[-1]`
and feature matching reads `[:-1]`.

The LeakyReLUs run in place, as junyanz's: the conv or norm output they overwrite is read by no
backward, and a separate output would only free it again mid-forward (a hole in glibc's heap).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import conv_uses_bias, make_norm


class PatchGANDiscriminator(nn.Module):
    """n_layers stride-2 4x4 convs + one stride-1 conv + a 1-channel 4x4 conv.

    Receptive field: n_layers=1 -> 16, 2 -> 34, 3 -> 70 (pix2pix "70x70"), 4 -> 142 pixels.
    """

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"PatchGAN n_layers must be >= 1, got {n_layers}")
        bias = conv_uses_bias(norm)
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)
            )
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers.append(
                nn.Sequential(
                    nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                    make_norm(norm, ndf * mult),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.layers = nn.ModuleList(layers)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return [self.features(x)]


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN ("PixelGAN"): judges each pixel's colour independently."""

    def __init__(self, in_channels: int, ndf: int = 64, norm: str = "batch"):
        super().__init__()
        bias = conv_uses_bias(norm)
        self.layers = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(in_channels, ndf, 1), nn.LeakyReLU(0.2, inplace=True)),
                nn.Sequential(
                    nn.Conv2d(ndf, ndf * 2, 1, bias=bias),
                    make_norm(norm, ndf * 2),
                    nn.LeakyReLU(0.2, inplace=True),
                ),
                nn.Conv2d(ndf * 2, 1, 1),
            ]
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return [feats]


class MultiScaleDiscriminator(nn.Module):
    """pix2pixHD: `num_scales` independent PatchGANs; scale k sees the input avg-pooled k times."""

    def __init__(
        self, in_channels: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance", num_scales: int = 2
    ):
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        self.scales = nn.ModuleList(
            PatchGANDiscriminator(in_channels, ndf, n_layers, norm) for _ in range(num_scales)
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for i, disc in enumerate(self.scales):
            if i > 0:
                # pix2pixHD's downsampler: 3x3 average, stride 2, padding excluded from the mean.
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(disc.features(x))
        return out

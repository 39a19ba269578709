"""U-Net generator (pix2pix), laid out level by level so junyanz checkpoints map by a flat table.

junyanz builds the same network as nested `UnetSkipConnectionBlock`s; level 0 here is their outermost
block and level depth-1 their innermost. Per level:

    down:  [LeakyReLU(0.2) unless level 0] -> Conv4x4 s2 -> [norm unless outermost/innermost]
    up:    ReLU -> ConvTranspose4x4 s2 -> [norm unless outermost] -> [Dropout(0.5) on levels 4..depth-2]
           (upsample_conv="resize": nearest x2 + Conv3x3 instead of the transposed convolution)

The up path of level i reads cat([down_i, up_{i+1}]) (innermost: its own down output), exactly as
junyanz. Widths are ngf * min(2**i, 8).

Super-resolution (scale > 1):
- upsample="bicubic": the LR input is bicubic-upsampled inside the module, the U-Net runs at HR and
  its output is a *residual* added to the bicubic image (then clamped to [-1, 1]) when
  in_channels == out_channels. Residual learning converges much faster than predicting the whole
  image and starts out as plain bicubic instead of noise.
- upsample="pixelshuffle": the U-Net runs at LR, its outermost up-conv yields ngf feature maps and a
  conv + PixelShuffle head produces the HR image (cheaper, fully learned upsampling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import EncoderDecoderGenerator, OutputHead, upsample_conv
from .norm import conv_uses_bias, make_norm

# junyanz puts Dropout in the 8*ngf blocks between the four outer levels and the innermost one.
_FIRST_DROPOUT_LEVEL = 4


def level_channels(ngf: int, level: int) -> int:
    """Feature width produced by the down conv of `level` (junyanz caps it at 8 * ngf)."""
    return ngf * min(2**level, 8)


class UNetLevel(nn.Module):
    """One encoder/decoder level; holds parameters only (the U-Net wires the skips)."""

    def __init__(
        self,
        in_ch: int,
        inner_ch: int,
        up_in_ch: int,
        up_out_ch: int,
        *,
        norm: str,
        outermost: bool,
        innermost: bool,
        dropout: bool,
        up_kind: str = "transpose",
    ):
        super().__init__()
        bias = conv_uses_bias(norm)
        self.outermost = outermost
        self.down_conv = nn.Conv2d(in_ch, inner_ch, 4, stride=2, padding=1, bias=bias)
        self.down_norm = nn.Identity() if (outermost or innermost) else make_norm(norm, inner_ch)
        # The outermost up conv feeds the output activation, so it always has a bias.
        up_bias = bias or outermost
        self.up_conv = upsample_conv(
            up_kind,
            up_in_ch,
            up_out_ch,
            up_bias,
            nn.ConvTranspose2d(up_in_ch, up_out_ch, 4, stride=2, padding=1, bias=up_bias)
            if up_kind == "transpose"
            else None,
        )
        self.up_norm = nn.Identity() if outermost else make_norm(norm, up_out_ch)
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()

    def down(self, x: torch.Tensor) -> torch.Tensor:
        if not self.outermost:
            # In place, as junyanz's LeakyReLU(0.2, True): x is the level above's skip, so the up
            # path then reads leaky(skip), and relu(leaky(s)) == relu(s) gives the same output.
            # Training keeps one tensor per level instead of two (the norm above saved its input,
            # not x; autograd refuses the backward if a saved tensor was overwritten).
            x = F.leaky_relu(x, 0.2, inplace=True)
        return self.down_norm(self.down_conv(x))

    def up(self, x: torch.Tensor) -> torch.Tensor:
        # In place, as junyanz's ReLU(True): x is a fresh concatenation (or the innermost conv's
        # output) that no backward reads, so a separate ReLU output would only free it again
        # mid-forward, a hole in glibc's heap per level.
        return self.dropout(self.up_norm(self.up_conv(F.relu(x, inplace=True))))


class UNetGenerator(EncoderDecoderGenerator):
    """pix2pix U-Net; maps (N, in_channels, H, W) in [-1, 1] to (N, out_channels, H*scale, W*scale)."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        depth: int = 8,
        norm: str = "batch",
        dropout: bool = False,
        scale: int = 1,
        upsample: str = "bicubic",
        final_activation_kind: str = "tanh",
        up_kind: str = "transpose",
    ):
        if depth < 2:
            raise ValueError(f"U-Net depth must be >= 2, got {depth}")
        super().__init__(in_channels, out_channels, scale, upsample, final_activation_kind, 2**depth)
        pixelshuffle = self.upsample == "pixelshuffle"

        levels = []
        for i in range(depth):
            outer, inner = i == 0, i == depth - 1
            in_ch = in_channels if outer else level_channels(ngf, i - 1)
            inner_ch = level_channels(ngf, i)
            up_in = inner_ch if inner else 2 * inner_ch
            if outer:
                up_out = ngf if pixelshuffle else out_channels
            else:
                up_out = level_channels(ngf, i - 1)
            use_dropout = dropout and _FIRST_DROPOUT_LEVEL <= i < depth - 1
            levels.append(
                UNetLevel(
                    in_ch,
                    inner_ch,
                    up_in,
                    up_out,
                    norm=norm,
                    outermost=outer,
                    innermost=inner,
                    dropout=use_dropout,
                    up_kind=up_kind,
                )
            )
        self.levels = nn.ModuleList(levels)
        self.head = OutputHead(ngf, out_channels, 3, scale) if pixelshuffle else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.network_input(x)
        skips = []
        h = base
        for level in self.levels:
            h = level.down(h)
            skips.append(h)
        last = len(self.levels) - 1
        for i in range(last, -1, -1):
            inp = skips[i] if i == last else torch.cat([skips[i], h], 1)
            h = self.levels[i].up(inp)
        if self.head is not None:
            h = self.head(F.relu(h))
        return self.output(base, h)

"""ResNet generator (CycleGAN / Johnson et al.), one named module per junyanz layer.

    stem   ReflectionPad(3) -> Conv7x7 -> norm -> ReLU                      (their model.1/.2)
    down   2 x [Conv3x3 s2 -> norm -> ReLU]                                 (model.4/.5, .7/.8)
    blocks n_blocks x ResnetBlock(reflect-pad, Conv3x3, norm, ReLU, [Dropout], pad, Conv3x3, norm)
    up     2 x [ConvTranspose3x3 s2 (output_padding=1) -> norm -> ReLU]
           (upsample_conv="resize": nearest x2 + Conv3x3 instead of the transposed convolution)
    head   ReflectionPad(3) -> Conv7x7 [-> PixelShuffle] -> tanh

Super-resolution (scale > 1): upsample="bicubic" runs the network on the bicubic-upsampled input and
predicts a residual over it (see unet.py for why); upsample="pixelshuffle" runs it at LR and the head
conv emits out_channels * scale**2 maps followed by PixelShuffle.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import EncoderDecoderGenerator, OutputHead, upsample_conv
from .norm import conv_uses_bias, make_norm

N_DOWNSAMPLING = 2


class ConvNormReLU(nn.Module):
    """conv -> norm -> ReLU with an optional reflection pad in front."""

    def __init__(self, conv: nn.Module, norm: nn.Module, pad: int = 0):
        super().__init__()
        self.pad = nn.ReflectionPad2d(pad) if pad else nn.Identity()
        self.conv = conv
        self.norm = norm
        # In place, as junyanz's: the norm's output is not kept for its backward, so a separate
        # ReLU output only frees it again mid-forward, a hole in glibc's heap per layer (CycleGAN at
        # their architecture: +10 % peak RSS at equal live memory, docs/training.md).
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.pad(x))))


class ResnetBlock(nn.Module):
    """x + conv-norm-relu-conv-norm(x), reflection padded."""

    def __init__(self, channels: int, norm: str, dropout: bool):
        super().__init__()
        bias = conv_uses_bias(norm)
        self.pad1 = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(channels, channels, 3, bias=bias)
        self.norm1 = make_norm(norm, channels)
        self.act = nn.ReLU(inplace=True)  # as ConvNormReLU's
        self.dropout = nn.Dropout(0.5) if dropout else nn.Identity()
        self.pad2 = nn.ReflectionPad2d(1)
        self.conv2 = nn.Conv2d(channels, channels, 3, bias=bias)
        self.norm2 = make_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.act(self.norm1(self.conv1(self.pad1(x)))))
        return x + self.norm2(self.conv2(self.pad2(h)))


class ResNetGenerator(EncoderDecoderGenerator):
    """Maps (N, in_channels, H, W) in [-1, 1] to (N, out_channels, H*scale, W*scale)."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        dropout: bool = False,
        scale: int = 1,
        upsample: str = "bicubic",
        final_activation_kind: str = "tanh",
        up_kind: str = "transpose",
    ):
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        super().__init__(in_channels, out_channels, scale, upsample, final_activation_kind, 2**N_DOWNSAMPLING)
        bias = conv_uses_bias(norm)

        self.stem = ConvNormReLU(nn.Conv2d(in_channels, ngf, 7, bias=bias), make_norm(norm, ngf), pad=3)
        self.down = nn.ModuleList()
        for i in range(N_DOWNSAMPLING):
            c_in, c_out = ngf * 2**i, ngf * 2 ** (i + 1)
            self.down.append(
                ConvNormReLU(
                    nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=bias), make_norm(norm, c_out)
                )
            )
        width = ngf * 2**N_DOWNSAMPLING
        self.blocks = nn.ModuleList(ResnetBlock(width, norm, dropout) for _ in range(n_blocks))
        self.up = nn.ModuleList()
        for i in range(N_DOWNSAMPLING):
            c_in, c_out = ngf * 2 ** (N_DOWNSAMPLING - i), ngf * 2 ** (N_DOWNSAMPLING - i - 1)
            transpose = (
                nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=bias)
                if up_kind == "transpose"
                else None
            )
            conv = upsample_conv(up_kind, c_in, c_out, bias, transpose)
            self.up.append(ConvNormReLU(conv, make_norm(norm, c_out)))
        head_scale = scale if self.upsample == "pixelshuffle" else 1
        self.head = OutputHead(ngf, out_channels, 7, head_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.network_input(x)
        h = self.stem(base)
        for layer in self.down:
            h = layer(h)
        for block in self.blocks:
            h = block(h)
        for layer in self.up:
            h = layer(h)
        return self.output(base, self.head(h))

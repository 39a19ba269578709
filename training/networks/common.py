"""Small helpers shared by the generators: input-size checks, SR upsampling, output activation, and
`EncoderDecoderGenerator`, the super-resolution plumbing of the U-Net and the ResNet generator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pixforge.errors import PixforgeError

from ..vocab import FINAL_ACTIVATIONS, UPSAMPLE_CONVS


class InputSizeError(PixforgeError, ValueError):
    """An input's height or width is not a multiple of the generator's `size_multiple`."""


def check_input_size(x: torch.Tensor, multiple: int, name: str) -> None:
    """Raise InputSizeError unless H and W of `x` are multiples of `multiple`.

    Skipped while tracing/exporting: the check would be frozen into the graph as constants.
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % multiple or w % multiple:

        def up(v: int) -> int:
            return -(-v // multiple) * multiple

        raise InputSizeError(
            f"{name}: input size {h}x{w} is not a multiple of {multiple}; pad or crop it to e.g. "
            f"{up(h)}x{up(w)} (size_multiple={multiple})"
        )


def lr_size_multiple(hr_multiple: int, scale: int) -> int:
    """Input-pixel multiple when a net needing `hr_multiple` runs on the input upsampled by `scale`."""
    return hr_multiple // math.gcd(hr_multiple, scale)


def bicubic_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic (a=-0.75, half-pixel centres) upsampling; exports as ONNX Resize(cubic)."""
    return F.interpolate(x, scale_factor=float(scale), mode="bicubic", align_corners=False)


def final_activation(kind: str) -> nn.Module:
    """Output activation module for `kind` ("tanh" keeps outputs in [-1, 1])."""
    if kind == "tanh":
        return nn.Tanh()
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown final_activation {kind!r}; valid: {', '.join(FINAL_ACTIVATIONS)}")


def add_residual(base: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Bicubic image + predicted residual, clamped back to the [-1, 1] image range.

    The clamp only zeroes gradients on pixels that already saturate, which targets in [-1, 1] do not
    push further.
    """
    return torch.clamp(base + residual, -1.0, 1.0)


class OutputHead(nn.Module):
    """Reflection-padded conv to `out_channels * scale**2` maps, then PixelShuffle when scale > 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, scale: int = 1):
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv = nn.Conv2d(in_channels, out_channels * scale * scale, kernel_size)
        self.shuffle = nn.PixelShuffle(scale) if scale > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(self.pad(x)))


class ResizeConv(nn.Module):
    """x2 nearest-neighbour resize, then a convolution: the drop-in for a stride-2 transposed
    convolution that cannot make checkerboard artefacts (Odena et al., "Deconvolution and
    Checkerboard Artifacts", 2016). A transposed convolution with kernel 4 / stride 2 gives every
    other output pixel a different subset of its weights, a 2-pixel pattern that training has to
    cancel; resize + convolution applies the same weights everywhere.

    Same output size as the transposed convolution it replaces (2H x 2W), so the two are
    interchangeable in the decoders.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def upsample_conv(
    kind: str, in_channels: int, out_channels: int, bias: bool, transpose: nn.Module | None
) -> nn.Module:
    """The decoder's x2 upsampling layer: `transpose` as given, or a ResizeConv of the same widths."""
    if kind == "transpose" and transpose is not None:
        return transpose
    if kind == "resize":
        return ResizeConv(in_channels, out_channels, 3, bias)
    raise ValueError(f"unknown upsample_conv {kind!r}; valid: {', '.join(UPSAMPLE_CONVS)}")


class EncoderDecoderGenerator(nn.Module):
    """Base of the U-Net and ResNet generators: their super-resolution modes, size check and output.

    With scale > 1, upsample="bicubic" runs the network on the bicubic-upsampled input and, when
    in_channels == out_channels, adds its output as a residual to that bicubic image (clamped to
    [-1, 1]); upsample="pixelshuffle" runs it at the input size and the subclass's head upsamples.
    Subclasses build their layers, call `network_input(x)` first and `output(base, h)` last.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        upsample: str,
        final_activation_kind: str,
        net_multiple: int,
    ):
        """`net_multiple`: the size multiple the network itself needs (2 ** its downsamplings)."""
        super().__init__()
        self.scale = scale
        self.upsample = upsample if scale > 1 else "none"
        self.residual = self.upsample == "bicubic" and in_channels == out_channels
        self.out_act = final_activation(final_activation_kind)
        # bicubic: the network runs at scale x the input size, so the input needs less divisibility.
        self.size_multiple = (
            lr_size_multiple(net_multiple, scale) if self.upsample == "bicubic" else net_multiple
        )

    def network_input(self, x: torch.Tensor) -> torch.Tensor:
        """Check `x`'s size; return what the network runs on (bicubic-upsampled `x` or `x`)."""
        check_input_size(x, self.size_multiple, type(self).__name__)
        return bicubic_upsample(x, self.scale) if self.upsample == "bicubic" else x

    def output(self, base: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The final activation of the network's output `h`, plus the residual skip from `base`."""
        out = self.out_act(h)
        if self.residual:
            out = add_residual(torch.clamp(base, -1.0, 1.0), out)
        return out

"""LR-space super-resolution generator (EDSR-style): residual blocks on the low-resolution image.

    x (LR) -> conv3x3 -> [ResBlock] * n_blocks -> conv3x3 (+ long skip) -> conv3x3 -> PixelShuffle -> r
    output = clamp(skip(x) + r, -1, 1)

- Every convolution runs at the LR resolution, so the cost per
  output pixel is about scale**2 times lower than a network that runs on the bicubic-upsampled
  image (the U-Net `upsample="bicubic"` mode).
- No normalisation layers (EDSR, Lim et al. 2017): batch statistics shift the colour range of SR
  outputs, and per-image statistics would make tiled inference differ from whole-image inference.
- Upsampling by one sub-pixel convolution (ESPCN, Shi et al. 2016): a 3x3 conv at LR emits
  out_channels * scale**2 maps that PixelShuffle rearranges into the HR image. EDSR's wide
  multi-stage upsampler (conv to 4 * width maps at LR, then again at 2x LR) would cost more than
  the whole residual body at the widths a CPU can train (~350 k of ~500 k MACs per LR pixel at
  width 32); here it costs 3 % and the compute goes into the residual blocks instead.
- Global skip: the network predicts a residual over a fixed upsampling of its input (`skip`:
  "bicubic" or "nearest"; "none" predicts the whole image). The untrained network then already
  outputs that upsampling and training only has to learn the missing high frequencies. The bicubic
  skip is computed as a fixed depthwise convolution at LR whose scale**2 output channels are the
  sub-pixel phases of `F.interpolate(mode="bicubic")` (exactly equal, borders included), added to
  the residual before the PixelShuffle: onnxruntime's cubic Resize took ~430 ms of a 620 ms
  256-pixel x4 run on 2 CPU cores, the convolution takes a few.
- `res_scale` multiplies each block's residual branch (EDSR uses 0.1 for wide models to keep
  training stable; 1.0 is fine for the small widths a CPU can train).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..vocab import SKIP_MODES
from .common import add_residual, check_input_size


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, added to the input (no normalisation)."""

    def __init__(self, channels: int, res_scale: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(x)))
        return x + r * self.res_scale if self.res_scale != 1.0 else x + r


def _bicubic_phase_taps(scale: int) -> tuple[torch.Tensor, int]:
    """1-D weights of `F.interpolate(mode="bicubic", align_corners=False)` by output phase.

    Returns:
        (taps of shape (scale, 2 * radius + 1), radius): output pixel `scale * i + p` is
        sum_k taps[p, k] * x[i + k - radius], with x clamped at the borders (replicate padding).
    """
    radius = 2  # the cubic kernel reaches 2 pixels; the phase offsets stay within +-0.5 pixel
    size = 4 * radius + 1
    centre = size // 2
    delta = torch.zeros(1, 1, size, size, dtype=torch.float64)
    delta[0, 0, centre, centre] = 1.0
    # Bicubic upsampling is separable: one row of the 2-D impulse response is the 1-D response
    # times one vertical weight. Every phase of an interpolation kernel sums to 1, so dividing
    # each phase by its sum (below) removes that factor.
    row = F.interpolate(delta, scale_factor=float(scale), mode="bicubic", align_corners=False)[
        0, 0, scale * centre + scale // 2
    ]
    taps = torch.zeros(scale, 2 * radius + 1, dtype=torch.float64)
    for p in range(scale):
        for k in range(-radius, radius + 1):
            taps[p, k + radius] = row[scale * (centre - k) + p]
    return taps / taps.sum(dim=1, keepdim=True), radius


class BicubicPhases(nn.Module):
    """Bicubic x`scale` upsampling as (N, C * scale**2, h, w) sub-pixel phases in PixelShuffle's
    channel order: a depthwise convolution with fixed weights over the replicate-padded input."""

    def __init__(self, channels: int, scale: int):
        super().__init__()
        taps, radius = _bicubic_phase_taps(scale)
        # kernel[(py, px)] = outer(taps[py], taps[px]); channel c's phases at c * scale**2 + py * scale + px
        kernel = torch.einsum("ak,bl->abkl", taps, taps).reshape(scale * scale, *taps.shape[1:] * 2)
        # A dense convolution with a block-diagonal kernel, not a grouped one: onnxruntime's CPU
        # grouped convolution took longer than the dense one with C times the multiply-adds.
        weight = torch.zeros(channels * scale * scale, channels, *kernel.shape[1:], dtype=torch.float64)
        for c in range(channels):
            weight[c * scale * scale : (c + 1) * scale * scale, c] = kernel
        self.register_buffer("weight", weight.float(), persistent=False)
        self.radius = radius
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.radius,) * 4, mode="replicate")
        return F.conv2d(x, self.weight)


class EDSRGenerator(nn.Module):
    """Maps (N, C, h, w) in [-1, 1] to (N, C, h*scale, w*scale); runs on any input size."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 32,
        n_blocks: int = 8,
        scale: int = 4,
        skip: str = "bicubic",
        res_scale: float = 1.0,
    ):
        super().__init__()
        if skip not in SKIP_MODES:
            raise ValueError(f"skip={skip!r} is not valid; choose one of: {', '.join(SKIP_MODES)}")
        if skip != "none" and in_channels != out_channels:
            raise ValueError(f"skip={skip!r} needs in_channels == out_channels")
        self.scale = scale
        self.skip = skip if scale > 1 else "none"
        self.head = nn.Conv2d(in_channels, width, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(width, res_scale) for _ in range(n_blocks)])
        self.body_tail = nn.Conv2d(width, width, 3, padding=1)
        self.tail = nn.Conv2d(width, out_channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale) if scale > 1 else nn.Identity()
        self.bicubic = BicubicPhases(in_channels, scale) if self.skip == "bicubic" else None
        # Every layer is a same-padded convolution: any input size works.
        self.size_multiple = 1

    def receptive_radius(self) -> int:
        """LR pixels on each side that can influence one output pixel.

        Each 3x3 convolution (all at LR) reaches one more pixel; the bicubic skip runs in parallel
        and reaches 2 LR pixels. Tiling with at least this overlap is exact.
        """
        convs = sum(1 for m in self.modules() if isinstance(m, nn.Conv2d))
        return max(convs, 2 if self.skip == "bicubic" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.size_multiple, "EDSRGenerator")
        h = self.head(x)
        h = h + self.body_tail(self.body(h))
        r = self.tail(h)
        if self.skip == "none":
            return self.shuffle(r)
        if self.bicubic is not None:
            # Residual and skip are added in the sub-pixel layout (LR size, C * scale**2 channels);
            # clamping commutes with PixelShuffle, so this equals clamp(bicubic(x) + shuffle(r)).
            return self.shuffle(add_residual(torch.clamp(self.bicubic(x), -1.0, 1.0), r))
        base = F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
        return add_residual(base, self.shuffle(r))

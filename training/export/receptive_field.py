"""Measure a generator's receptive radius: how far (in input pixels) an input change can reach.

Written into the model's metadata (``receptive_radius``) so the server can choose a tile overlap
that makes tiled inference equal whole-image inference: with the normalisation statistics of the
whole image frozen (see norm_stats.py), an output pixel depends only on the input pixels within
this radius, so a tile whose blended pixels lie at least this far from its inner edges computes
them exactly.

Measured, not derived from the layer list: the gradient of one output pixel with respect to the
input is exactly zero outside the receptive field, whatever the architecture (U-Net skips, ResNet
blocks, PixelShuffle, a bicubic skip). Normalisation statistics are held constant during the
measurement (they are frozen at inference time for tiling), otherwise every pixel would depend on
every other through the image mean.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

# Largest probe edge (input pixels). A network that sees farther than half of it (e.g. the
# 8-level U-Net, which sees the whole image) gets the half probe edge as a lower bound.
MAX_PROBE = 768


@contextlib.contextmanager
def _frozen_norm_statistics(module: nn.Module):
    """Instance norms compute their statistics without gradient for the duration, and clamps and
    tanh pass gradients straight through: a saturated output pixel (tanh of a large value is exactly
    1.0 in float32, and its gradient exactly 0) would otherwise hide its whole field."""
    originals = {}
    clamp, tanh, tanh_forward = torch.clamp, torch.tanh, nn.Tanh.forward

    def straight_through(x, min=None, max=None):  # noqa: A002 - torch.clamp's own argument names
        return x + (clamp(x, min, max) - x).detach()

    def linear_tanh(self_or_x, x=None):
        x = self_or_x if x is None else x
        return x + (tanh(x) - x).detach()

    def forward(self, x):
        with torch.no_grad():
            mean = x.mean(dim=(2, 3), keepdim=True)
            var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y

    for m in module.modules():
        if isinstance(m, nn.InstanceNorm2d):
            originals[m] = m.forward
            m.forward = forward.__get__(m)
    torch.clamp, torch.tanh, nn.Tanh.forward = straight_through, linear_tanh, linear_tanh
    try:
        yield
    finally:
        torch.clamp, torch.tanh, nn.Tanh.forward = clamp, tanh, tanh_forward
        for m, fwd in originals.items():
            m.forward = fwd


def receptive_radius(generator: nn.Module, in_channels: int, size_multiple: int, scale: int = 1) -> int:
    """Input pixels on each side of a pixel that can change the generator's output at that pixel.

    Args:
        generator: in inference semantics (eval mode, norms as InstanceNorm2d).
        in_channels: the generator's input channels.
        size_multiple: the generator's input size multiple.
        scale: output pixels per input pixel.

    Returns:
        The radius (>= 1); half the probe edge when the field reaches the probe's border.
    """
    if hasattr(generator, "receptive_radius"):
        return int(generator.receptive_radius())
    # at least 4x the size multiple: a feature map of 1x1 at the deepest level has zero variance
    # and (through ReLU at exactly 0) zero gradient, which would read as "sees nothing"
    probe = max(64, 4 * size_multiple)
    while True:
        size = -(-probe // size_multiple) * size_multiple
        radius, reached_border = _probe(generator, in_channels, size, scale)
        if not reached_border or size >= MAX_PROBE:
            return max(1, radius)
        probe = size * 2


def _probe(generator: nn.Module, in_channels: int, size: int, scale: int) -> tuple[int, bool]:
    gen = torch.Generator().manual_seed(0)
    # two images: a ReLU that is dead at some pixel for one input is rarely dead for both
    x = (torch.rand(2, in_channels, size, size, generator=gen) * 2 - 1).requires_grad_(True)
    with _frozen_norm_statistics(generator), torch.enable_grad():
        y = generator(x)
        centre = size // 2
        # all channels of the output pixels covering input pixel (centre, centre)
        patch = y[:, :, centre * scale : (centre + 1) * scale, centre * scale : (centre + 1) * scale]
        (grad,) = torch.autograd.grad(patch.abs().sum() + patch.sum(), x)
    support = grad.abs().sum(dim=(0, 1)) > 0
    # ReLUs can zero the gradient at single pixels for one input; widening the support by one
    # pixel keeps the measure an upper bound (one pixel of extra overlap costs nothing).
    support = F.max_pool2d(support[None, None].float(), 3, 1, 1)[0, 0] > 0
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    if rows.numel() == 0:
        return 1, True  # nothing measurable at this size: try a larger probe
    radius = int(max(centre - rows.min(), rows.max() - centre, centre - cols.min(), cols.max() - centre))
    border = bool(rows.min() == 0 or cols.min() == 0 or rows.max() == size - 1 or cols.max() == size - 1)
    return radius, border

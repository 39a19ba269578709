"""The LR-space SR generator (edsr) and the resize-convolution decoder option (tiny widths)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixforge.training.networks.common import ResizeConv
from pixforge.training.networks.edsr import BicubicPhases
from pixforge.training.registry import GeneratorConfig, build_generator


def _gen(**kw) -> nn.Module:
    kw = {"init_type": "xavier", "init_gain": 1.0, **kw}
    return build_generator(GeneratorConfig(**kw)).eval()


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("hw", [(7, 9), (16, 5)])
def test_edsr_any_input_size_and_scale(scale, hw):
    g = _gen(arch="edsr", ngf=8, n_blocks=2, scale=scale, norm="none")
    assert g.size_multiple == 1  # same-padded convolutions only: no padding to a multiple needed
    y = g(torch.rand(2, 3, *hw) * 2 - 1)
    assert y.shape == (2, 3, hw[0] * scale, hw[1] * scale)
    assert y.abs().max() <= 1.0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_phases_equal_torch_bicubic_upsampling_borders_included(scale):
    x = torch.rand(2, 3, 11, 14)
    phases = BicubicPhases(3, scale)(x)
    assert phases.shape == (2, 3 * scale * scale, 11, 14)
    ref = F.interpolate(x, scale_factor=float(scale), mode="bicubic", align_corners=False)
    torch.testing.assert_close(F.pixel_shuffle(phases, scale), ref, atol=1e-5, rtol=0)


def test_edsr_starts_as_bicubic_when_its_residual_is_zero():
    g = _gen(arch="edsr", ngf=8, n_blocks=2, scale=4, norm="none")
    with torch.no_grad():
        g.tail.weight.zero_()
        g.tail.bias.zero_()
    x = torch.rand(1, 3, 6, 10) * 2 - 1
    ref = F.interpolate(x, scale_factor=4.0, mode="bicubic", align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(g(x), ref, atol=1e-5, rtol=0)


def test_edsr_nearest_and_no_skip():
    x = torch.rand(1, 3, 5, 6) * 2 - 1
    near = _gen(arch="edsr", ngf=4, n_blocks=1, scale=2, norm="none", skip="nearest")
    with torch.no_grad():
        near.tail.weight.zero_()
        near.tail.bias.zero_()
    torch.testing.assert_close(near(x), F.interpolate(x, scale_factor=2.0, mode="nearest"))
    bare = _gen(arch="edsr", ngf=4, n_blocks=1, scale=2, norm="none", skip="none")
    with torch.no_grad():
        bare.tail.weight.zero_()
        bare.tail.bias.zero_()
    assert torch.count_nonzero(bare(x)) == 0


def test_edsr_receptive_radius_bounds_what_an_output_pixel_sees():
    # Tiling with this much overlap is exact: a pixel farther away than the radius never matters.
    g = _gen(arch="edsr", ngf=4, n_blocks=2, scale=2, norm="none")
    radius = g.receptive_radius()
    assert radius == 1 + 2 * 2 + 1 + 1  # head, 2 blocks x 2, body tail, sub-pixel tail
    x = torch.rand(1, 3, 24, 24) * 2 - 1
    with torch.no_grad():
        base = g(x)
        for distance, changes in ((radius + 1, False), (radius, True)):
            y = x.clone()
            y[0, :, 12, 12 + distance] += 0.5
            diff = (g(y) - base).abs()[0, :, 24:26, 24:26]  # the outputs of LR pixel (12, 12)
            assert bool(diff.max() > 1e-6) == changes, (distance, float(diff.max()))


def test_edsr_config_validation():
    with pytest.raises(ValueError, match="skip"):
        GeneratorConfig(arch="edsr", skip="lanczos")
    with pytest.raises(ValueError, match="res_scale"):
        GeneratorConfig(arch="edsr", res_scale=0)
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        build_generator(GeneratorConfig(arch="edsr", in_channels=1, out_channels=2, norm="none"))


def test_edsr_res_scale_scales_the_residual_branches():
    torch.manual_seed(0)
    a = _gen(arch="edsr", ngf=4, n_blocks=1, scale=2, norm="none", res_scale=1.0)
    b = _gen(arch="edsr", ngf=4, n_blocks=1, scale=2, norm="none", res_scale=0.1)
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        h = a.head(x)
        branch = a.body[0].conv2(F.relu(a.body[0].conv1(h)))
        torch.testing.assert_close(b.body[0](h), h + 0.1 * branch)


def _two_pixel_pattern(y: torch.Tensor) -> float:
    """Mean |difference| between even and odd rows/columns of the interior (a 2-pixel checkerboard)."""
    inner = y[..., 4:-4, 4:-4]
    rows = (inner[..., 0::2, :] - inner[..., 1::2, :]).abs().mean()
    cols = (inner[..., :, 0::2] - inner[..., :, 1::2]).abs().mean()
    return float(rows + cols)


def test_resize_conv_makes_no_checkerboard_where_a_transposed_conv_does():
    # On a constant input every output pixel of a resize + convolution sees the same values; a
    # stride-2 transposed convolution gives alternate pixels different weights.
    torch.manual_seed(0)
    x = torch.ones(1, 8, 12, 12)
    resize = ResizeConv(8, 4)
    transposed = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
    with torch.no_grad():
        assert resize(x).shape == transposed(x).shape == (1, 4, 24, 24)
        assert _two_pixel_pattern(resize(x)) < 1e-6
        assert _two_pixel_pattern(transposed(x)) > 1e-3


@pytest.mark.parametrize(
    "kw", [{"arch": "unet", "depth": 3}, {"arch": "resnet", "n_blocks": 1}], ids=["unet", "resnet"]
)
def test_generators_with_resize_conv_upsampling(kw):
    g = _gen(ngf=4, upsample_conv="resize", norm="none", **kw)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in g.modules())
    assert sum(isinstance(m, ResizeConv) for m in g.modules()) == (3 if kw["arch"] == "unet" else 2)
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    assert g(x).shape == (1, 3, 16, 24)
    # constant input, constant output in the interior: no 2-pixel pattern from the decoder
    with torch.no_grad():
        flat = g(torch.zeros(1, 3, 32, 32))
    assert _two_pixel_pattern(flat) < 1e-5
    default = _gen(ngf=4, norm="none", **kw)
    assert any(isinstance(m, nn.ConvTranspose2d) for m in default.modules())
    with pytest.raises(ValueError, match="upsample_conv"):
        GeneratorConfig(arch="unet", upsample_conv="bilinear")


def test_edsr_is_cheaper_per_pixel_than_the_unet_it_replaced():
    # multiply-adds per LR pixel, counted from the layers (the model card states the shipped ones)
    def macs(net, cin=3, hw=32):
        total = 0

        def hook(m, inputs, out):
            nonlocal total
            if isinstance(m, nn.Conv2d):
                total += out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            elif isinstance(m, nn.ConvTranspose2d):
                total += inputs[0].numel() * m.out_channels * m.kernel_size[0] * m.kernel_size[1]

        handles = [m.register_forward_hook(hook) for m in net.modules()]
        with torch.no_grad():
            net(torch.zeros(1, cin, hw, hw))
        for h in handles:
            h.remove()
        return total / hw / hw

    unet = _gen(arch="unet", ngf=32, depth=5, norm="none", scale=4, upsample="bicubic")
    edsr = _gen(arch="edsr", ngf=24, n_blocks=6, scale=4, norm="none")
    skip = 3 * 48 * 25  # the fixed bicubic phases (a functional conv the hooks do not see)
    assert (macs(edsr) + skip) * 4 < macs(unet), (macs(edsr), macs(unet))
    assert np.isclose(macs(edsr), 3 * 24 * 9 + 13 * 24 * 24 * 9 + 24 * 48 * 9)

"""Shapes, size checks and SR behaviour of the generators and discriminators (tiny widths)."""

import dataclasses

import pytest
import torch
from torch import nn

from pixforge.training.networks.common import InputSizeError, bicubic_upsample
from pixforge.training.registry import (
    DiscriminatorConfig,
    GeneratorConfig,
    build_discriminator,
    build_generator,
    discriminator_preset,
    generator_preset,
    list_discriminators,
    list_generators,
)


def _gen(**kw) -> nn.Module:
    return build_generator(GeneratorConfig(**kw)).eval()


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("hw", [(16, 16), (32, 48), (48, 16)])
def test_unet_shapes(norm, hw):
    g = _gen(arch="unet", depth=4, ngf=4, norm=norm)
    assert g.size_multiple == 16
    x = torch.rand(2, 3, *hw) * 2 - 1
    y = g(x)
    assert y.shape == (2, 3, *hw)
    assert y.abs().max() <= 1.0


@pytest.mark.parametrize("hw", [(8, 8), (12, 20)])
def test_resnet_shapes(hw):
    g = _gen(arch="resnet", n_blocks=2, ngf=4)
    assert g.size_multiple == 4
    assert g(torch.rand(1, 3, *hw) * 2 - 1).shape == (1, 3, *hw)


@pytest.mark.parametrize("arch_kw", [{"arch": "unet", "depth": 3}, {"arch": "resnet", "n_blocks": 1}])
def test_colorization_channels(arch_kw):
    g = _gen(in_channels=1, out_channels=2, ngf=4, **arch_kw)
    assert g(torch.zeros(1, 1, 16, 24)).shape == (1, 2, 16, 24)


# (arch kwargs, scale, upsample, expected size_multiple)
SR_CASES = [
    ({"arch": "unet", "depth": 4}, 2, "bicubic", 8),
    ({"arch": "unet", "depth": 4}, 4, "bicubic", 4),
    ({"arch": "unet", "depth": 3}, 3, "bicubic", 8),
    ({"arch": "unet", "depth": 4}, 2, "pixelshuffle", 16),
    ({"arch": "unet", "depth": 4}, 4, "pixelshuffle", 16),
    ({"arch": "resnet", "n_blocks": 1}, 2, "bicubic", 2),
    ({"arch": "resnet", "n_blocks": 1}, 4, "bicubic", 1),
    ({"arch": "resnet", "n_blocks": 1}, 4, "pixelshuffle", 4),
]


@pytest.mark.parametrize("arch_kw,scale,upsample,multiple", SR_CASES)
def test_super_resolution_shapes(arch_kw, scale, upsample, multiple):
    g = _gen(ngf=4, scale=scale, upsample=upsample, **arch_kw)
    assert g.size_multiple == multiple
    h, w = 2 * max(multiple, 8), 3 * max(multiple, 8)  # non-square
    y = g(torch.rand(1, 3, h, w) * 2 - 1)
    assert y.shape == (1, 3, h * scale, w * scale)
    assert y.abs().max() <= 1.0


@pytest.mark.parametrize("arch", ["unet", "resnet"])
def test_bicubic_mode_predicts_residual_over_bicubic(arch):
    g = _gen(arch=arch, depth=3, n_blocks=1, ngf=4, scale=2, upsample="bicubic")
    head = g.levels[0].up_conv if arch == "unet" else g.head.conv
    with torch.no_grad():  # a zero residual must give back exactly the clamped bicubic image
        head.weight.zero_()
        head.bias.zero_()
    x = torch.rand(1, 3, 8, 16) * 2 - 1
    torch.testing.assert_close(g(x), bicubic_upsample(x, 2).clamp(-1, 1))


@pytest.mark.parametrize(
    "kw,bad_hw",
    [
        ({"arch": "unet", "depth": 4}, (24, 32)),
        ({"arch": "resnet", "n_blocks": 1}, (10, 12)),
        ({"arch": "unet", "depth": 4, "scale": 2}, (16, 12)),
    ],
)
def test_wrong_input_size_is_a_clear_error(kw, bad_hw):
    g = _gen(ngf=4, **kw)
    message = rf"{bad_hw[0]}x{bad_hw[1]} is not a multiple of {g.size_multiple}"
    with pytest.raises(InputSizeError, match=message):
        g(torch.zeros(1, 3, *bad_hw))
    assert isinstance(InputSizeError("x"), ValueError)


def test_unet_dropout_sits_on_junyanz_levels():
    g = _gen(arch="unet", depth=8, ngf=1, dropout=True)
    with_dropout = [i for i, lvl in enumerate(g.levels) if isinstance(lvl.dropout, nn.Dropout)]
    assert with_dropout == [4, 5, 6]
    widths = [lvl.down_conv.out_channels for lvl in g.levels]
    assert widths == [1, 2, 4, 8, 8, 8, 8, 8]


def test_presets_and_unknown_names():
    assert list_generators() == ["resnet_6blocks", "resnet_9blocks", "unet_128", "unet_256"]
    assert generator_preset("unet_128").depth == 7 and generator_preset("unet_256").depth == 8
    assert generator_preset("resnet_6blocks").n_blocks == 6
    assert discriminator_preset("patchgan_70").n_layers == 3
    assert {"patchgan_70", "pixel", "multiscale"} <= set(list_discriminators())
    with pytest.raises(ValueError, match="unet_256"):
        generator_preset("unet_512")
    with pytest.raises(ValueError, match="patchgan_70"):
        discriminator_preset("stylegan")


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"arch": "vit"}, "arch"),
        ({"arch": "unet", "norm": "layer"}, "norm"),
        ({"arch": "unet", "scale": 0}, "scale"),
        ({"arch": "unet", "upsample": "nearest"}, "upsample"),
        ({"arch": "unet", "depth": 1}, "depth"),
        ({"arch": "unet", "init_type": "uniform"}, "init_type"),
    ],
)
def test_generator_config_validation(kw, field):
    with pytest.raises(ValueError, match=field):
        GeneratorConfig(**kw)


def test_config_dict_round_trip():
    cfg = dataclasses.replace(generator_preset("unet_256"), ngf=8, scale=4, upsample="pixelshuffle")
    assert GeneratorConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    with pytest.raises(ValueError, match="bogus"):
        GeneratorConfig.from_dict({**dataclasses.asdict(cfg), "bogus": 1})
    with pytest.raises(ValueError, match="multiscale"):
        DiscriminatorConfig(arch="patchgan", num_scales=2)


@pytest.mark.parametrize("n_layers,pred_hw", [(1, 30), (2, 14), (3, 6)])
def test_patchgan_shapes(n_layers, pred_hw):
    d = build_discriminator(DiscriminatorConfig(arch="patchgan", in_channels=6, ndf=4, n_layers=n_layers))
    out = d(torch.rand(2, 6, 64, 64))
    assert len(out) == 1 and len(out[0]) == n_layers + 2
    assert out[0][-1].shape == (2, 1, pred_hw, pred_hw)


def test_pixel_and_multiscale_discriminators():
    pix = build_discriminator(DiscriminatorConfig(arch="pixel", in_channels=3, ndf=4, norm="batch"))
    out = pix(torch.rand(2, 3, 16, 24))
    assert [f.shape[1] for f in out[0]] == [4, 8, 1] and out[0][-1].shape == (2, 1, 16, 24)

    ms = build_discriminator(DiscriminatorConfig(arch="multiscale", in_channels=4, ndf=4, num_scales=3))
    out = ms(torch.rand(1, 4, 128, 192))
    assert len(out) == 3
    assert [tuple(s[-1].shape[-2:]) for s in out] == [(14, 22), (6, 10), (2, 4)]
    assert all(len(s) == 5 for s in out)


def _saved_bytes(net: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct storages autograd keeps for the backward of one forward pass."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = net(x)
    return sum(storages.values()), y


def test_unet_keeps_each_skip_once_for_the_backward(monkeypatch):
    # The down path's LeakyReLU runs in place on the level above's skip (as junyanz's does): a
    # copying one would keep both the skip and its activation alive until the backward.
    torch.manual_seed(0)
    net = _gen(arch="unet", ngf=4, depth=4, norm="batch").train()
    x = torch.randn(1, 3, 32, 32)
    lean, y = _saved_bytes(net, x)
    skips = [4 * 16 * 16, 8 * 8 * 8, 16 * 4 * 4]  # levels 0-2's down outputs, read by levels 1-3
    leaky_relu = torch.nn.functional.leaky_relu
    copying_leaky_relu = lambda t, slope, inplace=False: leaky_relu(t, slope)  # noqa: E731
    monkeypatch.setattr(torch.nn.functional, "leaky_relu", copying_leaky_relu)
    copying, y_copying = _saved_bytes(net, x)
    assert copying - lean == 4 * sum(skips)
    assert torch.equal(y, y_copying)  # relu(leaky(skip)) == relu(skip): the same output


def _activation_ops(net: nn.Module, x: torch.Tensor) -> set[str]:
    """The ReLU-family aten ops a training forward of `net` runs (`relu` copies, `relu_` does not)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = net(x)
    assert out is not None
    return {
        e.name
        for e in prof.events()
        if e.name in ("aten::relu", "aten::relu_", "aten::leaky_relu", "aten::leaky_relu_")
    }


@pytest.mark.parametrize(
    "build",
    [
        lambda: _gen(arch="resnet", n_blocks=2, ngf=4, norm="instance"),
        lambda: _gen(arch="resnet", n_blocks=2, ngf=4, norm="none"),
        lambda: _gen(arch="unet", ngf=4, depth=4, norm="batch"),
        lambda: build_discriminator(DiscriminatorConfig(arch="patchgan", in_channels=3, ndf=4, n_layers=2)),
    ],
    ids=["resnet-instance", "resnet-none", "unet", "patchgan"],
)
def test_activations_run_in_place(build):
    # As junyanz's ReLU(True) / LeakyReLU(0.2, True): the tensor an activation overwrites is read by
    # no backward, so a copying activation only frees it again mid-forward. With glibc's allocator
    # those holes cost CycleGAN +10 % peak RSS over junyanz at equal live memory (docs/training.md).
    torch.manual_seed(0)
    net = build().train()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    ops = _activation_ops(net, x)
    assert ops and not ops & {"aten::relu", "aten::leaky_relu"}, ops
    out = net(x)  # autograd accepts the in-place ops: the backward runs
    (out[0][-1] if isinstance(out, list) else out).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()

"""junyanz checkpoint conversion: recorded key layouts and their-layout -> our-model output parity.

`_JZ*` below re-implements junyanz/pytorch-CycleGAN-and-pix2pix `models/networks.py`
(UnetGenerator / UnetSkipConnectionBlock / ResnetGenerator / ResnetBlock / get_norm_layer) closely
enough to produce state dicts in their key layout, including their in-place ReLUs.
"""

import functools

import pytest
import torch
from torch import nn

from pixforge.training.legacy import (
    LegacyCheckpointError,
    junyanz_key_map,
    load_junyanz_generator,
    strip_prefixes,
)
from pixforge.training.registry import build_generator


class _Identity(nn.Module):
    def forward(self, x):
        return x


def _jz_norm(norm_type):
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return lambda x: _Identity()


def _jz_use_bias(norm_layer):
    if isinstance(norm_layer, functools.partial):
        return norm_layer.func == nn.InstanceNorm2d
    return norm_layer == nn.InstanceNorm2d


class _JZUnetBlock(nn.Module):
    def __init__(
        self,
        outer_nc,
        inner_nc,
        input_nc=None,
        submodule=None,
        outermost=False,
        innermost=False,
        norm_layer=nn.BatchNorm2d,
        use_dropout=False,
    ):
        super().__init__()
        self.outermost = outermost
        use_bias = _jz_use_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv] + [submodule] + [uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv] + [uprelu, upconv, upnorm]
        else:
            upconv = nn.ConvTranspose2d(
                inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias
            )
            model = [downrelu, downconv, downnorm] + [submodule] + [uprelu, upconv, upnorm]
            if use_dropout:
                model += [nn.Dropout(0.5)]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class _JZUnet(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        block = _JZUnetBlock(ngf * 8, ngf * 8, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = _JZUnetBlock(
                ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer, use_dropout=use_dropout
            )
        block = _JZUnetBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=norm_layer)
        block = _JZUnetBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=norm_layer)
        block = _JZUnetBlock(ngf, ngf * 2, submodule=block, norm_layer=norm_layer)
        self.model = _JZUnetBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm_layer=norm_layer
        )

    def forward(self, x):
        return self.model(x)


class _JZResnetBlock(nn.Module):
    def __init__(self, dim, norm_layer, use_dropout, use_bias):
        super().__init__()
        block = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, 3, padding=0, bias=use_bias),
            norm_layer(dim),
            nn.ReLU(True),
        ]
        if use_dropout:
            block += [nn.Dropout(0.5)]
        block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x):
        return x + self.conv_block(x)


class _JZResnet(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False, n_blocks=6):
        super().__init__()
        use_bias = _jz_use_bias(norm_layer)
        model = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, 7, padding=0, bias=use_bias),
            norm_layer(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):
            mult = 2**i
            model += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=use_bias),
                norm_layer(ngf * mult * 2),
                nn.ReLU(True),
            ]
        for _ in range(n_blocks):
            model += [_JZResnetBlock(ngf * 4, norm_layer, use_dropout, use_bias)]
        for i in range(2):
            mult = 2 ** (2 - i)
            model += [
                nn.ConvTranspose2d(
                    ngf * mult, int(ngf * mult / 2), 3, stride=2, padding=1, output_padding=1, bias=use_bias
                ),
                norm_layer(int(ngf * mult / 2)),
                nn.ReLU(True),
            ]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        return self.model(x)


def _their_model(arch, norm, ngf=4, in_nc=3, out_nc=3, dropout=False):
    norm_layer = _jz_norm(norm)
    if arch.startswith("unet"):
        return _JZUnet(in_nc, out_nc, {"unet_128": 7, "unet_256": 8}[arch], ngf, norm_layer, dropout)
    n_blocks = {"resnet_6blocks": 6, "resnet_9blocks": 9}[arch]
    return _JZResnet(in_nc, out_nc, ngf, norm_layer, dropout, n_blocks)


def _randomise(model):
    """Non-default norm parameters and running stats, so the parity check sees them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(123)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


# Their pretrained CycleGAN layout (resnet_9blocks, --norm instance, no dropout), recorded.
RESNET_9BLOCKS_INSTANCE_KEYS = (
    ["model.1.weight", "model.1.bias", "model.4.weight", "model.4.bias", "model.7.weight", "model.7.bias"]
    + [f"model.{b}.conv_block.{c}.{p}" for b in range(10, 19) for c in (1, 5) for p in ("weight", "bias")]
    + [
        "model.19.weight",
        "model.19.bias",
        "model.22.weight",
        "model.22.bias",
        "model.26.weight",
        "model.26.bias",
    ]
)

# Their pix2pix layout (unet_256, --norm batch), recorded.
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_L1 = "model.model.1.model."
_UNET_MID = [_L1 + "3.model." * k for k in range(6)]  # levels 1..6
UNET_256_BATCH_KEYS = (
    ["model.model.0.weight"]
    + [k for p in _UNET_MID for k in [p + "1.weight"] + [p + "2." + s for s in _BN]]
    + [_L1 + "3.model." * 6 + "1.weight", _L1 + "3.model." * 6 + "3.weight"]
    + [_L1 + "3.model." * 6 + "4." + s for s in _BN]
    + [k for p in reversed(_UNET_MID) for k in [p + "5.weight"] + [p + "6." + s for s in _BN]]
    + ["model.model.3.weight", "model.model.3.bias"]
)


def test_recorded_key_layouts_match_reference():
    resnet_keys = _their_model("resnet_9blocks", "instance").state_dict()
    assert sorted(resnet_keys) == sorted(RESNET_9BLOCKS_INSTANCE_KEYS)
    assert sorted(_their_model("unet_256", "batch").state_dict()) == sorted(UNET_256_BATCH_KEYS)
    assert len(UNET_256_BATCH_KEYS) == 1 + 6 * 6 + 2 + 5 + 6 * 6 + 2


def test_key_map_covers_recorded_layouts():
    cfg, _ = load_junyanz_generator(_their_model("resnet_9blocks", "instance").state_dict())
    table = junyanz_key_map(cfg)
    # Instance norm has no state, so only the conv slots appear in the checkpoint.
    convs = {k for k, ours in table.items() if "norm" not in ours}
    assert {k.rpartition(".")[0] for k in RESNET_9BLOCKS_INSTANCE_KEYS} == convs
    assert table["model.26"] == "head.conv" and table["model.10.conv_block.5"] == "blocks.0.conv2"
    cfg, _ = load_junyanz_generator(_their_model("unet_256", "batch").state_dict())
    table = junyanz_key_map(cfg)
    assert {k.rpartition(".")[0] for k in UNET_256_BATCH_KEYS} == set(table)
    assert table[_L1 + "3.model." * 6 + "4"] == "levels.7.up_norm"


CASES = [
    (arch, norm)
    for arch in ("unet_128", "unet_256", "resnet_6blocks", "resnet_9blocks")
    for norm in ("batch", "instance")
]


@pytest.mark.parametrize("arch,norm", CASES)
def test_round_trip_parity(arch, norm):
    theirs = _randomise(_their_model(arch, norm, ngf=4))
    cfg, state = load_junyanz_generator(theirs.state_dict(), arch=arch, norm=norm)
    assert (cfg.ngf, cfg.norm, cfg.in_channels, cfg.out_channels) == (4, norm, 3, 3)
    ours = build_generator(cfg)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    side = 256 if arch == "unet_256" else 128
    x = torch.rand(2, 3, side, side) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x.clone()), atol=1e-5, rtol=1e-5)


def test_prefixes_instance_junk_and_file_loading(tmp_path):
    theirs = _randomise(_their_model("resnet_6blocks", "instance", in_nc=1, out_nc=2))
    state = {f"module._orig_mod.{k}": v for k, v in theirs.state_dict().items()}
    # Pre-0.4 InstanceNorm checkpoints carry running stats that their loader deletes.
    state["module.model.2.running_mean"] = torch.zeros(4)
    state["module.model.2.running_var"] = torch.ones(4)
    state["module.model.10.conv_block.2.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(state, path)
    cfg, converted = load_junyanz_generator(path, arch="resnet_6blocks", norm="instance")
    assert (cfg.in_channels, cfg.out_channels, cfg.n_blocks) == (1, 2, 6)
    assert not any("running" in k for k in converted)
    ours = build_generator(cfg).eval()
    ours.load_state_dict(converted)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x.clone()), atol=1e-5, rtol=1e-5)
    assert strip_prefixes({"_orig_mod.module.a": 1}) == {"a": 1}


def test_resnet_dropout_and_norm_none():
    theirs = _randomise(_their_model("resnet_6blocks", "none", dropout=True))
    cfg, state = load_junyanz_generator(theirs.state_dict())
    assert (cfg.norm, cfg.dropout, cfg.n_blocks) == ("none", True, 6)
    ours = build_generator(cfg).eval()
    ours.load_state_dict(state)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x.clone()), atol=1e-5, rtol=1e-5)


def test_mismatches_are_clear_errors(tmp_path):
    state = _their_model("unet_128", "batch").state_dict()
    with pytest.raises(LegacyCheckpointError, match="holds a unet_128 generator, not unet_256"):
        load_junyanz_generator(state, arch="unet_256")
    with pytest.raises(LegacyCheckpointError, match="--norm batch, not instance"):
        load_junyanz_generator(state, norm="instance")
    with pytest.raises(LegacyCheckpointError, match="valid: unet_128"):
        load_junyanz_generator(state, arch="unet_64")
    with pytest.raises(LegacyCheckpointError, match="not a junyanz"):
        load_junyanz_generator({"net.0.weight": torch.zeros(1)})
    with pytest.raises(LegacyCheckpointError, match="not found"):
        load_junyanz_generator(tmp_path / "nope.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LegacyCheckpointError, match="cannot read"):
        load_junyanz_generator(bad)
    extra = dict(state, **{"model.model.9.weight": torch.zeros(1)})
    with pytest.raises(LegacyCheckpointError, match="do not fit"):
        load_junyanz_generator(extra)
    with pytest.raises(LegacyCheckpointError, match="non-tensor"):
        load_junyanz_generator({"state_dict": state})

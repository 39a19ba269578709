"""The model zoo: typed configs, named presets and the one explicit name -> builder table.

Builders are registered with `@_register_generator` / `@_register_discriminator` in this module only
(no file scanning, no import side effects elsewhere). The exporter and the junyanz importer resolve
names here too.

torch is imported only when a network is built: the configs, presets and name lists need nothing
but `training/vocab.py`, so an experiment config loads and validates without torch.

Example:
    cfg = dataclasses.replace(generator_preset("unet_256"), norm="batch", dropout=True)
    net = build_generator(cfg)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pixforge.settings import build

from .vocab import (
    DISCRIMINATOR_ARCHS,
    FINAL_ACTIVATIONS,
    GENERATOR_ARCHS,
    INIT_TYPES,
    NORMS,
    SKIP_MODES,
    UPSAMPLE_CONVS,
    UPSAMPLE_MODES,
)

if TYPE_CHECKING:
    from torch import nn


def _check_choice(field: str, value: object, valid: tuple[str, ...] | list[str]) -> None:
    if value not in valid:
        raise ValueError(f"{field}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _check_positive(field: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class GeneratorConfig:
    """Constructor arguments of a generator; stored in checkpoints as `dataclasses.asdict`.

    Attributes:
        arch: "unet", "resnet" or "edsr" (LR-space super-resolution: residual blocks at the input
            resolution, PixelShuffle upsampling, no normalisation; `ngf` is its width).
        in_channels / out_channels: tensor channels (colourisation: 1 -> 2).
        ngf: base width. depth: U-Net downsamplings (unet_256 = 8, unet_128 = 7).
        n_blocks: ResNet residual blocks. norm: batch | instance | none.
        dropout: junyanz dropout (U-Net inner levels / inside ResNet blocks).
        scale: super-resolution factor; upsample: "bicubic" (net on the bicubic-upsampled input,
            predicting a residual) or "pixelshuffle" (net at LR + PixelShuffle head).
        final_activation: "tanh" (outputs in [-1, 1]) or "none" (U-Net / ResNet; edsr clamps its
            output to [-1, 1] instead).
        upsample_conv: "transpose" (ConvTranspose 4x4 s2, junyanz) or "resize" (nearest x2 resize +
            3x3 convolution, no checkerboard artefacts; Odena et al. 2016): the U-Net and ResNet
            decoders' upsampling layers.
        skip / res_scale: edsr only: the fixed upsampling the output is a residual over
            ("bicubic", "nearest" or "none"), and the scale of each residual block's branch.
        init_type / init_gain: weight initialisation (normal | xavier | kaiming | orthogonal).
    """

    arch: str
    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    depth: int = 8
    n_blocks: int = 9
    norm: str = "instance"
    dropout: bool = False
    scale: int = 1
    upsample: str = "bicubic"
    final_activation: str = "tanh"
    init_type: str = "normal"
    init_gain: float = 0.02
    upsample_conv: str = "transpose"
    skip: str = "bicubic"
    res_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_choice("arch", self.arch, list_generator_archs())
        for name in ("in_channels", "out_channels", "ngf", "depth", "scale"):
            _check_positive(name, getattr(self, name))
        if self.arch == "unet" and self.depth < 2:
            raise ValueError(f"depth must be >= 2 for a U-Net, got {self.depth}")
        if not isinstance(self.n_blocks, int) or self.n_blocks < 0:
            raise ValueError(f"n_blocks must be a non-negative integer, got {self.n_blocks!r}")
        _check_choice("norm", self.norm, NORMS)
        _check_choice("upsample", self.upsample, UPSAMPLE_MODES)
        _check_choice("final_activation", self.final_activation, FINAL_ACTIVATIONS)
        _check_choice("init_type", self.init_type, INIT_TYPES)
        _check_choice("upsample_conv", self.upsample_conv, UPSAMPLE_CONVS)
        _check_choice("skip", self.skip, SKIP_MODES)
        if not isinstance(self.res_scale, (int, float)) or not 0 < self.res_scale <= 1:
            raise ValueError(f"res_scale must be in (0, 1], got {self.res_scale!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        """Rebuild from `dataclasses.asdict` output (a checkpoint's or an ONNX file's record).

        Values are converted by the rules of :mod:`pixforge.settings`.

        Raises:
            pixforge.errors.SettingsError (a ValueError): an unknown key (with the closest valid
            one), a badly typed value or a failed check; the message starts with the field.
        """
        return build(cls, data)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Constructor arguments of a discriminator.

    Attributes:
        arch: "patchgan", "pixel" or "multiscale".
        in_channels: channels the discriminator sees (pix2pix's conditional D: input + output
            channels, e.g. 6; CycleGAN: 3).
        ndf: base width. n_layers: PatchGAN depth (3 = 70x70 receptive field).
        norm: batch | instance | none. num_scales: multiscale only (pix2pixHD default 2).
        init_type / init_gain: weight initialisation.
    """

    arch: str
    in_channels: int = 3
    ndf: int = 64
    n_layers: int = 3
    norm: str = "instance"
    num_scales: int = 1
    init_type: str = "normal"
    init_gain: float = 0.02

    def __post_init__(self) -> None:
        _check_choice("arch", self.arch, list_discriminator_archs())
        for name in ("in_channels", "ndf", "n_layers", "num_scales"):
            _check_positive(name, getattr(self, name))
        if self.arch != "multiscale" and self.num_scales != 1:
            raise ValueError(f"num_scales={self.num_scales} needs arch='multiscale' (got {self.arch!r})")
        _check_choice("norm", self.norm, NORMS)
        _check_choice("init_type", self.init_type, INIT_TYPES)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiscriminatorConfig:
        """Rebuild from `dataclasses.asdict` output (a checkpoint's or an ONNX file's record).

        Values are converted by the rules of :mod:`pixforge.settings`.

        Raises:
            pixforge.errors.SettingsError (a ValueError): an unknown key (with the closest valid
            one), a badly typed value or a failed check; the message starts with the field.
        """
        return build(cls, data)


# --- builders ---------------------------------------------------------------------------------

_GENERATOR_BUILDERS: dict[str, Callable[[GeneratorConfig], nn.Module]] = {}
_DISCRIMINATOR_BUILDERS: dict[str, Callable[[DiscriminatorConfig], nn.Module]] = {}


def _register_generator(arch: str):
    def deco(fn: Callable[[GeneratorConfig], nn.Module]) -> Callable[[GeneratorConfig], nn.Module]:
        _GENERATOR_BUILDERS[arch] = fn
        return fn

    return deco


def _register_discriminator(arch: str):
    def deco(fn: Callable[[DiscriminatorConfig], nn.Module]) -> Callable[[DiscriminatorConfig], nn.Module]:
        _DISCRIMINATOR_BUILDERS[arch] = fn
        return fn

    return deco


def _encoder_decoder_args(cfg: GeneratorConfig) -> dict:
    """The constructor arguments the U-Net and the ResNet generator share."""
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "ngf": cfg.ngf,
        "norm": cfg.norm,
        "dropout": cfg.dropout,
        "scale": cfg.scale,
        "upsample": cfg.upsample,
        "final_activation_kind": cfg.final_activation,
        "up_kind": cfg.upsample_conv,
    }


@_register_generator("unet")
def _build_unet(cfg: GeneratorConfig) -> nn.Module:
    from .networks.unet import UNetGenerator

    return UNetGenerator(depth=cfg.depth, **_encoder_decoder_args(cfg))


@_register_generator("resnet")
def _build_resnet(cfg: GeneratorConfig) -> nn.Module:
    from .networks.resnet import ResNetGenerator

    return ResNetGenerator(n_blocks=cfg.n_blocks, **_encoder_decoder_args(cfg))


@_register_generator("edsr")
def _build_edsr(cfg: GeneratorConfig) -> nn.Module:
    from .networks.edsr import EDSRGenerator

    return EDSRGenerator(
        cfg.in_channels, cfg.out_channels, cfg.ngf, cfg.n_blocks, cfg.scale, cfg.skip, cfg.res_scale
    )


@_register_discriminator("patchgan")
def _build_patchgan(cfg: DiscriminatorConfig) -> nn.Module:
    from .networks.discriminators import PatchGANDiscriminator

    return PatchGANDiscriminator(cfg.in_channels, cfg.ndf, cfg.n_layers, cfg.norm)


@_register_discriminator("pixel")
def _build_pixel(cfg: DiscriminatorConfig) -> nn.Module:
    from .networks.discriminators import PixelDiscriminator

    return PixelDiscriminator(cfg.in_channels, cfg.ndf, cfg.norm)


@_register_discriminator("multiscale")
def _build_multiscale(cfg: DiscriminatorConfig) -> nn.Module:
    from .networks.discriminators import MultiScaleDiscriminator

    return MultiScaleDiscriminator(cfg.in_channels, cfg.ndf, cfg.n_layers, cfg.norm, cfg.num_scales)


# The configs check names against training/vocab.py (torch-free); the tables must cover exactly those.
assert sorted(_GENERATOR_BUILDERS) == sorted(GENERATOR_ARCHS), "update vocab.GENERATOR_ARCHS"
assert sorted(_DISCRIMINATOR_BUILDERS) == sorted(DISCRIMINATOR_ARCHS), "update vocab.DISCRIMINATOR_ARCHS"


def list_generator_archs() -> list[str]:
    """Architecture names accepted by `GeneratorConfig.arch`."""
    return sorted(GENERATOR_ARCHS)


def list_discriminator_archs() -> list[str]:
    """Architecture names accepted by `DiscriminatorConfig.arch`."""
    return sorted(DISCRIMINATOR_ARCHS)


def build_generator(cfg: GeneratorConfig) -> nn.Module:
    """Build and initialise a generator.

    Args:
        cfg: the generator's config (validated on construction).

    Returns:
        An nn.Module with an int `size_multiple` attribute mapping (N, in_channels, H, W) in [-1, 1]
        to (N, out_channels, H*scale, W*scale).
    """
    return _build(_GENERATOR_BUILDERS, cfg, "generator")


def build_discriminator(cfg: DiscriminatorConfig) -> nn.Module:
    """Build and initialise a discriminator.

    Args:
        cfg: the discriminator's config.

    Returns:
        An nn.Module returning list[list[Tensor]] (per scale: features, prediction last).
    """
    return _build(_DISCRIMINATOR_BUILDERS, cfg, "discriminator")


def _named(table: Mapping[str, Any], name: str, kind: str) -> Any:
    """`table[name]`, or a ValueError naming the valid choices."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(table))}") from None


def _build(builders: Mapping[str, Callable[[Any], nn.Module]], cfg: Any, kind: str) -> nn.Module:
    """The `kind` network `builders[cfg.arch]` makes of `cfg`, initialised as `cfg` says."""
    from .networks.init import init_weights

    return init_weights(_named(builders, cfg.arch, f"{kind} arch")(cfg), cfg.init_type, cfg.init_gain)


# --- named presets ----------------------------------------------------------------------------

_GENERATOR_PRESETS: dict[str, GeneratorConfig] = {
    "unet_128": GeneratorConfig(arch="unet", depth=7),
    "unet_256": GeneratorConfig(arch="unet", depth=8),
    "resnet_6blocks": GeneratorConfig(arch="resnet", n_blocks=6),
    "resnet_9blocks": GeneratorConfig(arch="resnet", n_blocks=9),
}

_DISCRIMINATOR_PRESETS: dict[str, DiscriminatorConfig] = {
    "patchgan_16": DiscriminatorConfig(arch="patchgan", n_layers=1),
    "patchgan_34": DiscriminatorConfig(arch="patchgan", n_layers=2),
    "patchgan_70": DiscriminatorConfig(arch="patchgan", n_layers=3),
    "pixel": DiscriminatorConfig(arch="pixel"),
    "multiscale": DiscriminatorConfig(arch="multiscale", n_layers=3, num_scales=2),
}


def generator_preset(name: str) -> GeneratorConfig:
    """Config of a named generator preset (override fields with `dataclasses.replace`).

    Args:
        name: one of `list_generators()`.

    Returns:
        The preset's GeneratorConfig.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return _named(_GENERATOR_PRESETS, name, "generator")


def discriminator_preset(name: str) -> DiscriminatorConfig:
    """Config of a named discriminator preset (override fields with `dataclasses.replace`).

    Args:
        name: one of `list_discriminators()`.

    Returns:
        The preset's DiscriminatorConfig.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return _named(_DISCRIMINATOR_PRESETS, name, "discriminator")


def list_generators() -> list[str]:
    """Names of the generator presets."""
    return sorted(_GENERATOR_PRESETS)


def list_discriminators() -> list[str]:
    """Names of the discriminator presets."""
    return sorted(_DISCRIMINATOR_PRESETS)

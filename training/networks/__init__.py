"""Pure nn.Module networks: U-Net / ResNet generators and PatchGAN-family discriminators.

Modules here hold no optimizers, config objects or file I/O; `pixforge.training.registry` builds them
from typed configs.
"""

from .discriminators import MultiScaleDiscriminator, PatchGANDiscriminator, PixelDiscriminator
from .resnet import ResNetGenerator
from .unet import UNetGenerator

__all__ = [
    "MultiScaleDiscriminator",
    "PatchGANDiscriminator",
    "PixelDiscriminator",
    "ResNetGenerator",
    "UNetGenerator",
]

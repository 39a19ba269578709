"""Closed vocabularies of the model zoo and the losses: the valid names, without torch.

The experiment config (training/config.py) and the registry's generator/discriminator configs
validate names against these tuples, so a config can be loaded and checked (``pixforge train
--dry-run``, a CI check of the presets) without importing torch. The modules that implement the
names (training/networks/*, training/losses.py) import their tuple from here, and
training/registry.py checks at import that its builder tables cover exactly the architectures
named here.
"""

from __future__ import annotations

GENERATOR_ARCHS = ("edsr", "resnet", "unet")
DISCRIMINATOR_ARCHS = ("multiscale", "patchgan", "pixel")
NORMS = ("batch", "instance", "none")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")
FINAL_ACTIVATIONS = ("tanh", "none")
UPSAMPLE_MODES = ("bicubic", "pixelshuffle")
UPSAMPLE_CONVS = ("transpose", "resize")
SKIP_MODES = ("bicubic", "nearest", "none")  # edsr: the fixed upsampling its output is a residual over
GAN_MODES = ("vanilla", "lsgan", "wgangp", "hinge")

"""Shared helpers of the export tests (a uniquely named module: conftest.py names collide across areas).

Weights use xavier init with gain 1.0: the default N(0, 0.02) init makes tiny generators output an
almost constant grey, against which any parity check would pass trivially.
"""

from __future__ import annotations

import numpy as np
import torch

from pixforge.training.registry import GeneratorConfig, build_generator

TINY = {"ngf": 4, "init_type": "xavier", "init_gain": 1.0}

# kind -> (GeneratorConfig kwargs, ExportConfig kwargs)
KINDS = {
    "unet": ({"arch": "unet", "depth": 3}, {"task": "paired_translation"}),
    "resnet": ({"arch": "resnet", "n_blocks": 1}, {"task": "style_translation"}),
    "sr_bicubic": (
        {"arch": "unet", "depth": 3, "scale": 2, "upsample": "bicubic"},
        {"task": "super_resolution", "scale": 2},
    ),
    "sr_pixelshuffle": (
        {"arch": "resnet", "n_blocks": 1, "scale": 2, "upsample": "pixelshuffle"},
        {"task": "super_resolution", "scale": 2},
    ),
    "sr_edsr": (
        {"arch": "edsr", "n_blocks": 1, "scale": 4, "norm": "none"},
        {"task": "super_resolution", "scale": 4},
    ),
    "unet_resize_conv": (
        {"arch": "unet", "depth": 3, "upsample_conv": "resize"},
        {"task": "paired_translation"},
    ),
    "resnet_resize_conv": (
        {"arch": "resnet", "n_blocks": 1, "upsample_conv": "resize"},
        {"task": "style_translation"},
    ),
    "colorization": (
        {"arch": "unet", "depth": 3, "in_channels": 1, "out_channels": 2},
        {"task": "colorization", "color_space": "lab"},
    ),
}


def tiny_generator(seed: int = 0, **fields) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_generator(GeneratorConfig(**{**TINY, **fields}))


def ort_run(path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": batch})[0]


def quiet(*_args, **_kwargs) -> None:
    """A `log` callback that drops export progress lines."""


def to_junyanz(state: dict, cfg) -> dict:
    """Our generator state dict renamed to a junyanz checkpoint's keys (the inverse key map)."""
    from pixforge.training import legacy

    ours_to_theirs = {v: k for k, v in legacy.junyanz_key_map(cfg).items()}
    out = {}
    for key, value in state.items():
        module, _, name = key.rpartition(".")
        out[f"{ours_to_theirs[module]}.{name}"] = value
    return out

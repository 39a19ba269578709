"""Network interpolation: blend two generator checkpoints of the same architecture.

theta = (1 - alpha) * theta_a + alpha * theta_b (ESRGAN, Wang et al. 2018, sec. 3.4). With A the
PSNR-oriented (L1) model and B its adversarial fine-tune, alpha trades fidelity (PSNR) for
sharpness continuously, without retraining and without the noise a lower GAN weight leaves.
The result is an ordinary self-describing generator checkpoint: `pixforge export` takes it, and
its training_config records both parents and alpha (so the exported model file does too).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .checkpoint import GeneratorCheckpoint
from .data.files import file_sha256

# Fields that must agree for the blend to mean anything (same network, same served contract).
_SAME = ("generator_config", "task", "scale", "input_channels", "output_channels", "color_space")


def blend_generators(
    path_a: str | os.PathLike, path_b: str | os.PathLike, alpha: float
) -> GeneratorCheckpoint:
    """The checkpoint (1 - alpha) * A + alpha * B; metadata (task, config, data) from B.

    Raises:
        ValueError: alpha outside [0, 1], or the two checkpoints differ in architecture/contract
            (checkpoint.CheckpointFormatError, also a ValueError: one is not a generator checkpoint).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    a, b = GeneratorCheckpoint.load(path_a), GeneratorCheckpoint.load(path_b)
    for key in _SAME:
        if getattr(a, key) != getattr(b, key):
            raise ValueError(f"cannot blend: {key} differs ({getattr(a, key)!r} vs {getattr(b, key)!r})")
    sa, sb = a.state_dict, b.state_dict
    if sa.keys() != sb.keys():
        raise ValueError("cannot blend: the checkpoints have different parameter names")
    state = {}
    for k, ta in sa.items():
        tb = sb[k]
        if ta.shape != tb.shape:
            raise ValueError(f"cannot blend: {k} has shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
        # Integer buffers (e.g. BatchNorm's num_batches_tracked) are counters, not weights.
        if ta.is_floating_point():
            state[k] = torch.lerp(ta.float(), tb.float(), alpha).to(ta.dtype)
        else:
            state[k] = tb.clone()
    interpolation = {
        "alpha": float(alpha),
        "a": {"file": Path(path_a).name, "step": a.step, "sha256": file_sha256(path_a)},
        "b": {"file": Path(path_b).name, "step": b.step, "sha256": file_sha256(path_b)},
    }
    return dataclasses.replace(
        b,
        state_dict=state,
        metrics={},  # neither parent's validation figures describe the blend
        training_config={**b.training_config, "network_interpolation": interpolation},
        name=f"{b.name}-blend{alpha:g}",
    )


def save_blend(path_a, path_b, alpha: float, out_path: str | os.PathLike) -> Path:
    """Blend and write atomically; returns the written path."""
    return blend_generators(path_a, path_b, alpha).save(out_path)

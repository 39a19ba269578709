"""Network interpolation of two generator checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pixforge.training.blend import blend_generators, save_blend
from pixforge.training.checkpoint import GeneratorCheckpoint
from pixforge.training.registry import GeneratorConfig, build_generator


def _ckpt(path, seed: int, ngf: int = 4, norm: str = "batch"):
    torch.manual_seed(seed)
    cfg = GeneratorConfig(arch="unet", ngf=ngf, depth=3, norm=norm)
    g = build_generator(cfg)
    ckpt = GeneratorCheckpoint(
        generator_config=dataclasses.asdict(cfg),
        state_dict=g.state_dict(),
        task="paired_translation",
        scale=1,
        input_channels=3,
        output_channels=3,
        color_space="rgb",
        training_config={"seed": seed},
        metrics={"psnr": 20.0},
        training_data="x",
        step=seed,
        name="G",
    )
    torch.save(ckpt.to_dict(), path)
    return ckpt


def test_blend_is_the_weighted_mean_and_records_its_parents(tmp_path):
    a, b = _ckpt(tmp_path / "a.pt", 1), _ckpt(tmp_path / "b.pt", 2)
    out = save_blend(tmp_path / "a.pt", tmp_path / "b.pt", 0.25, tmp_path / "m.pt")
    m = GeneratorCheckpoint.load(out)
    for k, ta in a.state_dict.items():
        tb = b.state_dict[k]
        if ta.is_floating_point():
            assert torch.allclose(m.state_dict[k], 0.75 * ta + 0.25 * tb, atol=1e-6)
        else:
            assert torch.equal(m.state_dict[k], tb)
    info = m.training_config["network_interpolation"]
    assert info["alpha"] == 0.25 and info["a"]["step"] == 1 and info["b"]["step"] == 2
    assert len(info["a"]["sha256"]) == 64 and m.metrics == {} and m.name == "G-blend0.25"
    m.build_generator()  # the blended weights fit the recorded architecture


def test_alpha_ends_reproduce_the_parents(tmp_path):
    a, b = _ckpt(tmp_path / "a.pt", 1), _ckpt(tmp_path / "b.pt", 2)
    for alpha, ref in ((0.0, a), (1.0, b)):
        m = blend_generators(tmp_path / "a.pt", tmp_path / "b.pt", alpha)
        for k, t in ref.state_dict.items():
            if t.is_floating_point():
                assert torch.equal(m.state_dict[k], t)


def test_mismatched_architectures_and_bad_alpha_are_refused(tmp_path):
    _ckpt(tmp_path / "a.pt", 1)
    _ckpt(tmp_path / "b.pt", 2, ngf=8)
    with pytest.raises(ValueError, match="generator_config differs"):
        blend_generators(tmp_path / "a.pt", tmp_path / "b.pt", 0.5)
    with pytest.raises(ValueError, match="alpha"):
        blend_generators(tmp_path / "a.pt", tmp_path / "a.pt", 1.5)

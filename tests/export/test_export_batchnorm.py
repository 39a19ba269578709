"""Eval-mode semantics: batch norm becomes per-image statistics, dropout is off (docs/model-contract.md)."""

from __future__ import annotations

import numpy as np
import torch
from export_helpers import ort_run, quiet, tiny_generator
from torch import nn

from pixforge.training.export import ExportConfig, export_generator, to_inference_semantics
from pixforge.training.export.parity import parity_batch
from pixforge.training.image_ops import uint8_to_unit


def _bn_unet() -> nn.Module:
    # depth 6 has a dropout level (junyanz: levels 4 .. depth-2); stale running stats like a trained model
    g = tiny_generator(arch="unet", depth=6, norm="batch", dropout=True)
    torch.manual_seed(1)
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return g


def _junyanz_reference(g: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What junyanz test.py computes at batch size 1 (BN on the image's own statistics), dropout off."""
    g.train()
    for m in g.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    with torch.no_grad():
        return torch.cat([g(x[i : i + 1]) for i in range(len(x))])


def test_export_batchnorm_rewrite_equals_per_image_statistics():
    g = _bn_unet()
    state = {k: v.clone() for k, v in g.state_dict().items()}
    module, notes = to_inference_semantics(g)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) and m.training for m in module.modules())
    assert any("BatchNorm2d" in n for n in notes) and any("dropout" in n for n in notes)
    assert all(torch.equal(state[k], v) for k, v in g.state_dict().items())  # original untouched

    x = uint8_to_unit(torch.from_numpy(parity_batch(64, 64, 3)).permute(0, 3, 1, 2))
    with torch.no_grad():
        ours = module(x)
        naive_eval = g.eval()(x)
    ref = _junyanz_reference(g, x)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert (naive_eval - ref).abs().max() > 0.05  # running statistics differ (docs/model-contract.md)
    assert torch.equal(module(x), module(x))  # deterministic: dropout really off


def test_export_batchnorm_model_matches_reference_after_export(repo):
    g = _bn_unet()
    result = export_generator(g, ExportConfig(task="paired_translation"), repo, "bn", log=quiet)
    assert result.parity.passed
    batch = parity_batch(128, 64, 3, seed=4)
    got = ort_run(result.path, batch)
    ref = _junyanz_reference(g, uint8_to_unit(torch.from_numpy(batch).permute(0, 3, 1, 2)))
    ref_u8 = np.floor(np.clip((ref.numpy() + 1) * 127.5, 0, 255) + 0.5).transpose(0, 2, 3, 1)
    assert ((np.abs(got - ref_u8) <= 1).mean()) >= 0.999
    assert "per_image_norm_statistics" in result.contract.metadata["inference_semantics"]

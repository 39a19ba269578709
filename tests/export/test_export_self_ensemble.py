"""`pixforge export --self-ensemble`: the x8 geometric self-ensemble as its own ONNX model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_helpers import ort_run, quiet, tiny_generator

from pixforge.training.export import ExportConfig, export_generator
from pixforge.training.export.pipeline import ExportError
from pixforge.training.export.wrapper import SelfEnsemble


def test_self_ensemble_is_the_mean_over_the_eight_symmetries():
    gen = tiny_generator(arch="edsr", ngf=8, n_blocks=1, scale=2, norm="none").eval()
    ens = SelfEnsemble(gen).eval()
    x = torch.rand(1, 3, 12, 10) * 2 - 1
    with torch.no_grad():
        got = ens(x)
        ref = torch.zeros_like(got)
        for k in range(4):
            for flip in (False, True):
                t = torch.rot90(x, k, dims=(2, 3))
                t = torch.flip(t, dims=(3,)) if flip else t
                y = gen(t)
                y = torch.flip(y, dims=(3,)) if flip else y
                ref += torch.rot90(y, -k, dims=(2, 3))
    assert got.shape == (1, 3, 24, 20)
    assert torch.allclose(got, ref / 8, atol=1e-5)
    assert ens.size_multiple == gen.size_multiple
    assert ens.receptive_radius() == gen.receptive_radius()


def test_self_ensemble_export_runs_in_onnxruntime_and_is_marked(tmp_path):
    gen = tiny_generator(arch="edsr", ngf=8, n_blocks=1, scale=2, norm="none")
    cfg = ExportConfig(task="super_resolution", scale=2, self_ensemble=True)
    result = export_generator(gen, cfg, tmp_path, "sr-se", log=quiet)
    assert "self_ensemble" in dict(result.contract.metadata)
    assert result.parity is not None and result.parity.passed and result.parity.max_diff <= 1
    batch = np.random.default_rng(0).integers(0, 256, (1, 9, 7, 3), dtype=np.uint8)
    assert ort_run(result.path, batch).shape == (1, 18, 14, 3)


def test_self_ensemble_refuses_generators_with_normalisation(tmp_path):
    gen = tiny_generator(arch="unet", ngf=8, depth=3, norm="instance")
    cfg = ExportConfig(task="style_translation", self_ensemble=True)
    with pytest.raises(ExportError, match="normalisation"):
        export_generator(gen, cfg, tmp_path, "bad", log=quiet)

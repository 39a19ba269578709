"""Export of each generator kind on tiny weights: contract, parity at two sizes, dynamic batch."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from export_helpers import KINDS, ort_run, quiet, tiny_generator

from pixforge.contract import load_contract
from pixforge.training.export import ExportConfig, build_export_module, export_generator
from pixforge.training.export.parity import parity_batch


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_export_each_generator_kind_matches_pytorch(kind, repo):
    gen_kwargs, export_kwargs = KINDS[kind]
    generator = tiny_generator(**gen_kwargs)
    cfg = ExportConfig(**export_kwargs)
    result = export_generator(generator, cfg, repo, kind, log=quiet)

    assert result.path == repo / kind / "1" / "model.onnx"
    contract = load_contract(result.path)
    assert (contract.task, contract.scale) == (cfg.task, cfg.scale)
    assert (contract.input_channels, contract.output_channels) == (3, 3)
    assert contract.size_multiple == generator.size_multiple
    assert contract.tile_size % contract.size_multiple == 0
    for key in ("export_date", "pixforge_version", "precision", "color_space", "inference_semantics"):
        assert contract.metadata[key], key
    assert contract.metadata["precision"] == "fp32"

    # the export's own parity run: two sizes, 3-image batches, within 1 grey level
    report = result.parity
    assert report.passed and len(report.sizes) == 2
    assert {tuple(s.shape[1:3]) for s in report.sizes} == {(64, 64), (64 + contract.size_multiple, 64)}
    assert all(s.shape[0] == 3 for s in report.sizes)
    assert report.within_one >= 0.999 and report.max_diff <= 2

    # independent check at sizes/batches the export did not use (dynamic N, H, W)
    wrapper, _ = build_export_module(generator, cfg.color_space)
    m = contract.size_multiple
    for n, (h, w) in ((1, (3 * m, 5 * m)), (4, (2 * m, 2 * m))):
        batch = np.concatenate([parity_batch(h, w, 3, seed=7)] * 2)[:n]
        got = ort_run(result.path, batch)
        with torch.no_grad():
            ref = wrapper(torch.from_numpy(batch)).numpy()
        assert got.dtype == np.uint8 and got.shape == (n, h * cfg.scale, w * cfg.scale, 3)
        diff = np.abs(got.astype(int) - ref.astype(int))
        assert (diff <= 1).mean() >= 0.999, (kind, diff.max())
        assert ref.std() > 5, "tiny generator output is flat: the parity check would be vacuous"

    sidecar = json.loads((result.path.parent / "model.json").read_text())
    assert sidecar["metadata"] == contract.to_metadata()
    assert sidecar["parity"]["passed"] is True
    assert sidecar["onnx"]["model_sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()


def test_export_images_in_a_batch_do_not_influence_each_other(repo):
    # per-image normalisation statistics: a batched request equals one request per image
    generator = tiny_generator(arch="unet", depth=3)
    path = export_generator(generator, ExportConfig(task="paired_translation"), repo, "m", log=quiet).path
    batch = parity_batch(32, 48, 3, seed=3)
    together = ort_run(path, batch)
    alone = np.concatenate([ort_run(path, batch[i : i + 1]) for i in range(len(batch))])
    assert np.array_equal(together, alone)


class _ShapeBakingGenerator(torch.nn.Module):
    """Python control flow on the input height: tracing freezes the branch of the traced example."""

    size_multiple = 8

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        y = torch.tanh(self.conv(x))
        return y if x.shape[-2] > 64 else -y


def test_export_parity_failure_is_loud_and_writes_nothing(repo):
    from pixforge.training.export import ParityError

    torch.manual_seed(0)
    with pytest.raises(ParityError) as info:
        export_generator(
            _ShapeBakingGenerator(), ExportConfig(task="paired_translation"), repo, "bad", log=quiet
        )
    message = str(info.value)
    assert (
        "ONNX output does not match PyTorch" in message
        and "overall: max" in message
        and "need >= 99.9 %" in message
    )
    assert not (repo / "bad").exists() or not any((repo / "bad").iterdir())

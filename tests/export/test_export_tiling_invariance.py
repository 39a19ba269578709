"""Tiled inference equals whole-image inference (no tone shifts between tiles).

Each generator kind is exported with tiny random weights (xavier gain 1, so outputs are far from
flat), then a photo-like image is translated through the server's pipeline twice: with a tile size
that cuts it into at least 9 tiles, and whole. The bound is the one docs/serving.md ("Tiling")
states: mean <= 1 and 99th percentile <= 6 grey levels (these fp32 models in fact give 0 / 0).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from export_helpers import quiet, tiny_generator, to_junyanz

from pixforge.codec import decode_image, encode_image
from pixforge.contract import load_contract
from pixforge.service.config import build_config
from pixforge.service.pipeline import Pipeline, TranslateJob, TranslateOptions
from pixforge.service.repository import ModelRegistry
from pixforge.training import legacy
from pixforge.training.export import ExportConfig, export_generator
from pixforge.training.registry import GeneratorConfig

KINDS = {
    "unet_batch_norm": ({"arch": "unet", "depth": 3, "norm": "batch"}, "paired_translation", 1),
    "resnet_instance_norm": ({"arch": "resnet", "n_blocks": 1, "norm": "instance"}, "style_translation", 1),
    "edsr_norm_free_sr": ({"arch": "edsr", "n_blocks": 2, "norm": "none", "scale": 2}, "super_resolution", 2),
}


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth regions with edges and a brightness gradient: tiles see very different statistics."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(
        rng.integers(0, 256, (6, 6, 3)).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST
    )
    noise = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.uint8), (0, 0), 1.5)
    ramp = np.linspace(0.3, 1.0, w, dtype=np.float32)[None, :, None]
    return np.clip((0.6 * base + 0.4 * noise) * ramp, 0, 255).astype(np.uint8)


def _pipeline(repo, **overrides) -> Pipeline:
    values = {
        "models": str(repo),
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "tiling.min_tile_size": 8,
    }
    values.update(overrides)
    cfg = build_config(values, source="test")
    registry = ModelRegistry(repo, cfg.engine, cfg.batching, pins=cfg.pins)
    registry.reload()
    return Pipeline(registry, cfg.tiling, cfg.limits, cfg.colorization, cfg.batching)


def _translate(pipeline, name, image, tile) -> tuple[np.ndarray, int]:
    job = TranslateJob(name, encode_image(image, "png"), "png", options=TranslateOptions(tile_size=tile))
    result = pipeline.translate(job)
    return decode_image(result.image).pixels, result.tiles


def _tile_for(contract) -> int:
    """The smallest tile that leaves room for the overlap the receptive radius needs."""
    m = contract.size_multiple
    margin = -(-contract.receptive_radius // m) * m
    return -(-(4 * margin + 4 * m) // m) * m


def _check(repo, name, image_size):
    contract = load_contract(repo / name / "1" / "model.onnx")
    assert contract.version == "2" and contract.tiling_invariant
    tile = _tile_for(contract)
    pipeline = _pipeline(repo)
    try:
        h, w = image_size(tile)
        image = _photo(h, w)
        tiled, n_tiles = _translate(pipeline, name, image, tile)
        whole, one = _translate(pipeline, name, image, 2048)
        assert n_tiles >= 9 and one == 1
        diff = np.abs(tiled.astype(int) - whole.astype(int))
        assert diff.mean() <= 1.0 and np.percentile(diff, 99) <= 6, (diff.mean(), np.percentile(diff, 99))
        assert whole.std() > 10  # the models really do something to the image
        per_tile = _pipeline(repo, **{"tiling.norm_statistics": "per_tile"})
        try:
            old, _ = _translate(per_tile, name, image, tile)
        finally:
            per_tile.registry.close()
        return diff, np.abs(old.astype(int) - whole.astype(int)), contract
    finally:
        pipeline.registry.close()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_tiled_equals_whole_image_for_each_generator_kind(kind, repo):
    gen_kw, task, scale = KINDS[kind]
    generator = tiny_generator(**gen_kw)
    export_generator(generator, ExportConfig(task=task, scale=scale), repo, kind, log=quiet)
    diff, per_tile_diff, contract = _check(repo, kind, lambda tile: (3 * tile - tile // 3, 3 * tile + 5))
    if contract.norm_channels:
        # the per-tile behaviour really was visible: the test would fail without the statistics
        assert per_tile_diff.mean() > 2 * max(diff.mean(), 0.05), (per_tile_diff.mean(), diff.mean())


def test_tiled_equals_whole_image_for_a_junyanz_import(repo, tmp_path):
    from pixforge.cli import main

    cfg = GeneratorConfig(arch="resnet", n_blocks=6, ngf=4, norm="instance")
    g = tiny_generator(arch="resnet", n_blocks=6, norm="instance")
    path = tmp_path / "latest_net_G.pth"
    torch.save(to_junyanz(g.state_dict(), cfg), path)
    argv = [
        "export",
        str(path),
        "--from",
        "junyanz",
        "--arch",
        "resnet_6blocks",
        "--norm",
        "instance",
        "--task",
        "style_translation",
        "--name",
        "jz",
        "--repo",
        str(repo),
    ]
    assert main(argv) == 0
    _check(repo, "jz", lambda tile: (3 * tile - 8, 3 * tile))


def test_contract_1_files_re_export_to_tiling_invariant_ones(repo, tmp_path, capsys):
    import dataclasses

    import onnx

    from pixforge.cli import main
    from pixforge.contract import ModelContract
    from pixforge.training.export.onnx_build import export_onnx
    from pixforge.training.export.pipeline import generator_config_json
    from pixforge.training.export.wrapper import build_export_module

    # what earlier releases wrote: the plain graph with contract-1 metadata
    cfg = GeneratorConfig(
        arch="resnet", n_blocks=1, norm="instance", ngf=4, init_type="xavier", init_gain=1.0
    )
    generator = tiny_generator(arch="resnet", n_blocks=1, norm="instance")
    with torch.no_grad():  # distinct biases, as after training (onnxruntime would share equal ones)
        for name, p in generator.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.1, 0.1)
    wrapper, _ = build_export_module(generator, "rgb")
    meta = ModelContract(
        "style_translation", 1, 3, 3, 4, 64, {"generator_config": generator_config_json(cfg)}, version="1"
    ).to_metadata()
    example = torch.zeros(2, 32, 36, 3, dtype=torch.uint8)
    model, _ = export_onnx(wrapper, example, opset=17, input_channels=3, output_channels=3, metadata=meta)
    old_path = tmp_path / "v1" / "old" / "1" / "model.onnx"
    old_path.parent.mkdir(parents=True)
    onnx.save(model, str(old_path))
    old = load_contract(old_path)
    assert old.version == "1" and not old.tiling_invariant and not old.norm_channels
    assert main(["models", "show", "old", "--repo", str(tmp_path / "v1")]) == 0
    assert "NOT tiling-invariant (contract 1" in capsys.readouterr().out

    assert main(["export", str(old_path), "--from", "onnx", "--name", "new", "--repo", str(repo)]) == 0
    new = load_contract(repo / "new" / "1" / "model.onnx")
    assert new.version == "2" and new.tiling_invariant and len(new.norm_channels) == 7
    assert new.metadata["source_format"] == "pixforge.onnx (contract 1)"
    assert main(["models", "show", "new", "--repo", str(repo)]) == 0
    assert "tiling-invariant (contract 2; receptive radius" in capsys.readouterr().out
    assert dataclasses.asdict(cfg) == dataclasses.asdict(legacy.load_pixforge_onnx(old_path)[0])
    # same weights, same pixels by default
    image = _photo(64, 72)[None]
    import onnxruntime as ort

    a = ort.InferenceSession(str(old_path), providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
    b = ort.InferenceSession(str(repo / "new" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["image_out"], {"image": image}
    )[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1

"""The generator checkpoint format as a class: the same bytes as the historical dict, strict checks,
and the files earlier versions wrote (legacy.py)."""

from __future__ import annotations

import dataclasses
import io
import re

import pytest
import torch
from torch.torch_version import TorchVersion

from pixforge.training.checkpoint import CheckpointFormatError, GeneratorCheckpoint
from pixforge.training.registry import GeneratorConfig, build_generator

CFG = GeneratorConfig(arch="unet", ngf=4, depth=3)


def _historical_dict(**overrides) -> dict:
    """A checkpoint spelled out the way `pixforge.generator/1` files have always been written."""
    torch.manual_seed(0)
    ckpt = {
        "format": "pixforge.generator/1",
        "generator_config": dataclasses.asdict(CFG),
        "task": "paired_translation",
        "scale": 1,
        "input_channels": 3,
        "output_channels": 3,
        "color_space": "rgb",
        "state_dict": build_generator(CFG).state_dict(),
        "training_config": {"model": "pix2pix"},
        "metrics": {"psnr": 21.5},
        "training_data": "facades",
        "step": 4,
        "pixforge_version": "0.1.0",
        "torch_version": "2.4.0",
        "name": "generator",
        "direction": "BtoA",
    }
    ckpt.update(overrides)
    return ckpt


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_the_class_writes_the_historical_layout_byte_for_byte():
    old = _historical_dict()
    ckpt = GeneratorCheckpoint.from_dict(old)
    assert list(ckpt.to_dict()) == list(old)  # same keys, same order ("direction" last)
    assert _bytes(ckpt.to_dict()) == _bytes(old)
    no_direction = {k: v for k, v in old.items() if k != "direction"}
    assert "direction" not in GeneratorCheckpoint.from_dict(no_direction).to_dict()


def test_save_load_round_trip(tmp_path):
    ckpt = GeneratorCheckpoint.from_dict(_historical_dict())
    loaded = GeneratorCheckpoint.load(ckpt.save(tmp_path / "g.pt"))
    assert loaded.state_dict.keys() == ckpt.state_dict.keys()
    assert dataclasses.replace(loaded, state_dict={}) == dataclasses.replace(ckpt, state_dict={})
    assert torch.load(tmp_path / "g.pt", weights_only=True)["format"] == "pixforge.generator/1"
    net = loaded.build_generator()
    assert all(torch.equal(v, ckpt.state_dict[k]) for k, v in net.state_dict().items())


def test_new_checkpoints_record_the_running_versions():
    fields = {
        k: v
        for k, v in _historical_dict().items()
        if k not in ("format", "pixforge_version", "torch_version")
    }
    ckpt = GeneratorCheckpoint(**fields)
    assert ckpt.torch_version == str(torch.__version__) and type(ckpt.torch_version) is str
    assert ckpt.metrics == {"psnr": 21.5}


def test_an_early_file_with_a_torch_version_object_still_loads(tmp_path):
    # early generator checkpoints stored torch.__version__ itself (a TorchVersion, refused by the
    # weights_only unpickler unless allowed); legacy.py allows it and makes it a plain str
    torch.save(_historical_dict(torch_version=TorchVersion("2.3.1")), tmp_path / "early.pt")
    ckpt = GeneratorCheckpoint.load(tmp_path / "early.pt")
    assert ckpt.torch_version == "2.3.1" and type(ckpt.torch_version) is str


@pytest.mark.parametrize(
    ("data", "message", "foreign"),
    [
        ({"model.model.0.weight": torch.zeros(1)}, "is not a pixforge.generator/1 checkpoint", True),
        (_historical_dict(format="pixforge.generator/0"), "is not a pixforge.generator/1", True),
        ({k: v for k, v in _historical_dict().items() if k != "step"}, "lacks keys: step", False),
        (_historical_dict(task=3), "entry 'task' has type int (expected str)", False),
        (_historical_dict(scale=True), "entry 'scale' has type bool", False),
        (_historical_dict(direction=1), "entry 'direction' has type int (expected str or None)", False),
        (_historical_dict(state_dict={"w": [1.0]}), "state_dict entries are not tensors: w", False),
        (_historical_dict(metrics={"psnr": "high"}), "metrics must be numbers", False),
    ],
)
def test_bad_checkpoints_are_refused_with_what_is_wrong(data, message, foreign):
    with pytest.raises(CheckpointFormatError, match=re.escape(message)) as info:
        GeneratorCheckpoint.from_dict(data, source="x.pt")
    assert info.value.foreign is foreign
    assert isinstance(info.value, ValueError)


def test_entries_a_newer_writer_adds_are_ignored():
    ckpt = GeneratorCheckpoint.from_dict(_historical_dict(notes="from the future"))
    assert "notes" not in ckpt.to_dict()


def test_weights_that_do_not_fit_the_config_are_refused():
    wider = dataclasses.asdict(dataclasses.replace(CFG, ngf=8))
    with pytest.raises(CheckpointFormatError, match="do not fit its generator_config"):
        GeneratorCheckpoint.from_dict(_historical_dict(generator_config=wider)).build_generator()
    with pytest.raises(CheckpointFormatError, match="generator_config is invalid"):
        GeneratorCheckpoint.from_dict(_historical_dict(generator_config={"arch": "nope"})).build_generator()

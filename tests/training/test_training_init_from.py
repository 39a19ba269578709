"""`train.init_from`: a fresh run's generator starts from a pixforge checkpoint, a pixforge
model.onnx or a junyanz state dict; another architecture or task is refused before anything is
written; --resume takes its weights from the run, not from the file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_config

from pixforge.cli import main
from pixforge.training.checkpoint import GeneratorCheckpoint
from pixforge.training.config import ExperimentConfigError, config_from_dict, config_to_dict, load_config
from pixforge.training.init_from import InitFromError, initial_generators, load_initial
from pixforge.training.legacy import resnet_key_map
from pixforge.training.loop import train
from pixforge.training.registry import build_generator

REPO = Path(__file__).resolve().parents[2]

# Adam's first step moves every weight by about lr: with this lr a one-step run ends where it began.
STILL = {"lr_g": 1e-9, "lr_d": 1e-9, "lr_schedule": "linear"}


def _with(cfg, section: str, **values):
    raw = config_to_dict(cfg)
    raw[section].update(values)
    return config_from_dict(raw)


def _weights(path) -> dict[str, torch.Tensor]:
    return GeneratorCheckpoint.load(path).state_dict


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=0, msg=k)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny pix2pix run of 4 steps: its checkpoint is the file the fine-tuning tests start from."""
    from training_helpers import make_aligned

    root = tmp_path_factory.mktemp("source")
    data = make_aligned(root / "data")
    result = train(tiny_config("aligned", steps=4), data, run_dir=root / "run")
    return data, result.checkpoint


def test_pix2pix_starts_from_a_checkpoint(source_run, tmp_path):
    data, source = source_run
    cfg = tiny_config("aligned", steps=1, seed=7, init_from=str(source), **STILL)
    tuned = train(cfg, data, run_dir=tmp_path / "tuned")
    _assert_close(_weights(tuned.checkpoint), _weights(source), atol=1e-6)
    # without it the same run starts from fresh weights, far from the source's
    fresh = train(_with(cfg, "train", init_from=None), data, run_dir=tmp_path / "fresh")
    start, fresh_weights = _weights(source), _weights(fresh.checkpoint)
    assert max((fresh_weights[k] - start[k]).abs().max().item() for k in start) > 1e-3
    # the run records where it started (config.json, and the checkpoint's training config)
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["train"]["init_from"] == str(source)
    assert GeneratorCheckpoint.load(tuned.checkpoint).training_config["train"]["init_from"] == str(source)


def test_starts_from_an_exported_onnx_model(source_run, tmp_path):
    data, source = source_run
    args = ["export", str(source), "--name", "tiny", "--repo", str(tmp_path / "models"), "--tile-size", "64"]
    assert main([*args, "--no-verify"]) == 0  # the user's path: what pixforge export writes
    onnx_file = tmp_path / "models" / "tiny" / "1" / "model.onnx"
    cfg = tiny_config("aligned", steps=1, init_from=str(onnx_file), **STILL)
    assert initial_generators(cfg)["G"].kind == "pixforge ONNX model"
    tuned = train(cfg, data, run_dir=tmp_path / "tuned")
    _assert_close(_weights(tuned.checkpoint), _weights(source), atol=1e-6)


def test_cyclegan_starts_each_generator_from_its_file(unaligned_data, tmp_path):
    # G_A from a junyanz ResnetGenerator state dict (written with their module paths), G_B from a
    # pixforge checkpoint: both readers, and each file lands in its own generator.
    base = tiny_config("unaligned", steps=2)
    first = train(base, unaligned_data, run_dir=tmp_path / "first")
    g_a, g_b = _weights(first.checkpoint), _weights(first.other_checkpoints["G_B"])
    theirs = {ours: jz for jz, ours in resnet_key_map(1, dropout=False).items()}
    junyanz = {}
    for key, value in g_a.items():
        module, _, name = key.rpartition(".")
        junyanz[f"{theirs[module]}.{name}"] = value
    torch.save(junyanz, tmp_path / "latest_net_G_A.pth")

    cfg = _with(
        tiny_config("unaligned", steps=1, seed=3, **STILL),
        "train",
        init_from=str(tmp_path / "latest_net_G_A.pth"),
        init_from_b=str(first.other_checkpoints["G_B"]),
    )
    sources = initial_generators(cfg)
    assert (sources["G_A"].kind, sources["G_B"].kind) == ("junyanz checkpoint", "pixforge checkpoint")
    tuned = train(cfg, unaligned_data, run_dir=tmp_path / "tuned")
    _assert_close(_weights(tuned.checkpoint), g_a, atol=1e-6)
    _assert_close(_weights(tuned.other_checkpoints["G_B"]), g_b, atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("ngf", 8, "--set generator.ngf=4"),
        # instance norm has no weights: the tensors would load, the function would not be the same
        ("norm", "none", "--set generator.norm=instance"),
        ("final_activation", "none", "--set generator.final_activation=tanh"),
    ],
)
def test_another_architecture_is_refused_before_the_run_exists(source_run, tmp_path, field, value, hint):
    data, source = source_run
    cfg = _with(tiny_config("aligned", steps=1, init_from=str(source)), "generator", **{field: value})
    with pytest.raises(InitFromError, match="another generator") as err:
        train(cfg, data, run_dir=tmp_path / "run")
    assert field in str(err.value) and hint in str(err.value)
    assert not (tmp_path / "run").exists()


def test_free_fields_may_differ(source_run):
    _, source = source_run
    cfg = tiny_config("aligned", init_from=str(source))
    cfg = _with(cfg, "generator", init_type="kaiming", init_gain=1.0, dropout=True)
    assert "G" in initial_generators(cfg)


def test_another_task_and_bad_files_are_refused(source_run, tmp_path):
    _, source = source_run
    # the same tensors trained for another task (a style model of this very architecture)
    style = dataclasses.replace(GeneratorCheckpoint.load(source), task="style_translation")
    style.save(tmp_path / "style.pt")
    with pytest.raises(
        InitFromError, match="style_translation generator; this run trains paired_translation"
    ):
        initial_generators(tiny_config("aligned", init_from=str(tmp_path / "style.pt")))
    with pytest.raises(InitFromError, match="file not found"):
        initial_generators(tiny_config("aligned", init_from=str(tmp_path / "missing.pt")))
    (tmp_path / "notes.pt").write_bytes(b"not a torch file")
    with pytest.raises(InitFromError, match="notes.pt"):
        initial_generators(tiny_config("aligned", init_from=str(tmp_path / "notes.pt")))
    torch.save({"step": torch.tensor(3)}, tmp_path / "state.pt")
    with pytest.raises(InitFromError, match="neither a pixforge generator checkpoint"):
        initial_generators(tiny_config("aligned", init_from=str(tmp_path / "state.pt")))


def test_init_from_b_is_cyclegan_only():
    with pytest.raises(ExperimentConfigError, match="train.init_from_b"):
        tiny_config("aligned", init_from_b="x.pt")


def test_resume_takes_the_runs_weights_not_the_file(source_run, tmp_path):
    data, source = source_run
    copy = tmp_path / "start.pt"
    copy.write_bytes(source.read_bytes())
    cfg = tiny_config("aligned", steps=4, init_from=str(copy))
    train(cfg, data, run_dir=tmp_path / "run", max_steps=2)
    copy.unlink()  # gone, and not needed: the run's resume state has the weights
    resumed = train(cfg, data, run_dir=tmp_path / "run", resume=True)
    assert resumed.step == 4


def test_cli_says_where_the_generator_starts(source_run, tmp_path, capsys):
    data, source = source_run
    args = ["train", str(REPO / "training/configs/facades.yaml"), "--data", str(data), "--dry-run"]
    tiny = [
        f"--set=generator.{kv}" for kv in ("ngf=4", "depth=3", "norm=instance", "upsample_conv=transpose")
    ]
    assert main([*args, *tiny, "--set", f"train.init_from={source}"]) == 0
    assert f"G would start from {source} (pixforge checkpoint" in capsys.readouterr().out
    # the preset's own generator is another architecture: one line naming what to set
    assert main([*args, "--set", f"train.init_from={source}"]) == 2
    err = capsys.readouterr().err
    assert "another generator" in err and "--set generator.ngf=4" in err


@pytest.mark.parametrize(
    ("preset", "models"),
    [
        ("colorization", ("colorization",)),
        ("facades", ("facades",)),
        ("super_resolution_x4", ("sr-x4",)),
        ("super_resolution_x4", ("sr-x4-gan",)),
        ("style_translation", ("apple2orange", "orange2apple")),
    ],
)
def test_each_shipped_model_fine_tunes_with_the_preset_that_trained_it(preset, models):
    # docs/training.md's journey: `--set train.init_from=models/<name>/1/model.onnx` on the preset
    keys = ("init_from", "init_from_b")
    overrides = [
        f"train.{key}={REPO}/models/{name}/1/model.onnx" for key, name in zip(keys, models, strict=False)
    ]
    cfg = load_config(REPO / "training" / "configs" / f"{preset}.yaml", overrides)
    sources = initial_generators(cfg)
    assert [s.kind for s in sources.values()] == ["pixforge ONNX model"] * len(models)
    generator = build_generator(cfg.generator)
    for source in sources.values():
        load_initial(generator, source)

"""Training loops end to end on tiny data: learning happens, every option runs, outputs are written."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from training_helpers import tiny_config

from pixforge.training.checkpoint import GeneratorCheckpoint, load_resume_state
from pixforge.training.config import DataConfig, config_from_dict, config_to_dict
from pixforge.training.data import build_datasets, load_eval_items
from pixforge.training.loop import train
from pixforge.training.losses import GAN_MODES
from pixforge.training.registry import build_generator
from pixforge.training.runtime import seed_all


def _load_generator(path):
    ckpt = GeneratorCheckpoint.load(path)
    return ckpt.build_generator().eval(), ckpt


def _fixed_items(cfg: DataConfig, root, multiple):
    return load_eval_items(build_datasets(cfg, root, size_multiple=multiple, seed=0).val)


@torch.no_grad()
def _mean_l1(net, x, y):
    return float((net.eval()(x) - y).abs().mean())


def _wider(cfg, **generator):
    raw = config_to_dict(cfg)
    raw["generator"].update(generator)
    return config_from_dict(raw)


# The learning tests use ngf 8 (a few thousand parameters more) and a constant lr 2e-3 so that 20
# steps move the loss clearly; measured over seeds 0-2 the ratio after/before is <= 0.72 (pix2pix)
# and <= 0.87 (CycleGAN cycle L1), against thresholds of 0.85 and 0.93.
def test_pix2pix_20_steps_lower_l1_on_a_fixed_batch(aligned_data, tmp_path):
    cfg = _wider(
        tiny_config("aligned", steps=20, val_every=20, lr_g=2e-3, lr_schedule="step", lr_step_size=1000),
        ngf=8,
    )
    seed_all(cfg.train.seed)
    before = build_generator(cfg.generator)  # the run's initial G: same seed, built first
    result = train(cfg, aligned_data, run_dir=tmp_path / "run")
    after, ckpt = _load_generator(result.checkpoint)
    items = _fixed_items(cfg.data, aligned_data, before.size_multiple)
    x = torch.stack([i["input"] for i in items])
    y = torch.stack([i["target"] for i in items])
    l1_before, l1_after = _mean_l1(before, x, y), _mean_l1(after, x, y)
    assert l1_after < 0.85 * l1_before, (l1_before, l1_after)
    assert result.step == ckpt.step == 20
    assert ckpt.metrics["l1"] == pytest.approx(l1_after, rel=1e-3)  # validation = the same fixed batch


def test_cyclegan_20_steps_lower_cycle_loss_on_a_fixed_batch(unaligned_data, tmp_path):
    cfg = _wider(
        tiny_config(
            "unaligned",
            steps=20,
            val_every=20,
            batch_size=1,
            lr_g=2e-3,
            lr_schedule="step",
            lr_step_size=1000,
        ),
        ngf=8,
        n_blocks=2,
    )
    seed_all(cfg.train.seed)
    g_a0, g_b0 = build_generator(cfg.generator), build_generator(cfg.generator)
    result = train(cfg, unaligned_data, run_dir=tmp_path / "run")
    g_a1, ckpt_a = _load_generator(result.checkpoint)
    g_b1, ckpt_b = _load_generator(result.other_checkpoints["G_B"])
    assert (ckpt_a.name, ckpt_a.direction, ckpt_b.name, ckpt_b.direction) == ("G_A", "AtoB", "G_B", "BtoA")
    items = _fixed_items(cfg.data, unaligned_data, g_a0.size_multiple)
    a = torch.stack([i["real_a"] for i in items])
    with torch.no_grad():
        before = float((g_b0.eval()(g_a0.eval()(a)) - a).abs().mean())
        after = float((g_b1(g_a1(a)) - a).abs().mean())
    assert after < 0.93 * before, (before, after)
    assert ckpt_a.metrics["cycle_psnr_a"] > 0


PIX2PIX_OPTIONS = (
    [{"gan_mode": m} for m in GAN_MODES]
    + [{"lr_schedule": s} for s in ("linear", "step", "cosine")]
    + [
        {"lr_schedule": "plateau", "val_every": 1, "lr_patience": 0},
        {"amp": "bf16"},
        {"amp": "fp16"},
        {"channels_last": True},
        {"ema": True},
        {"pretrain_steps": 1, "pretrain_d_steps": 1, "steps": 3},
        {"lambda_feat": 10.0},
        {"deterministic": True},
        {"conditional_d": False},
        {"sample_every": 1, "val_every": 2, "checkpoint_every": 1},
    ]
)


@pytest.mark.parametrize("option", PIX2PIX_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_pix2pix_option_runs(option, aligned_data, tmp_path):
    cfg = tiny_config("aligned", **{"steps": 2, **option})
    result = train(cfg, aligned_data, run_dir=tmp_path / "run")
    assert result.step == cfg.train.steps
    assert result.checkpoint.is_file()
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert stats and all(
        torch.isfinite(torch.tensor(v)) for s in stats for k, v in s.items() if k.startswith(("G_", "D"))
    )


CYCLEGAN_OPTIONS = [{"gan_mode": m} for m in GAN_MODES] + [
    {"amp": "bf16", "channels_last": True},
    {"ema": True},
    {"lambda_identity": 0.0},
    {"pool_size": 0},
]


@pytest.mark.parametrize("option", CYCLEGAN_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_cyclegan_option_runs(option, unaligned_data, tmp_path):
    cfg = tiny_config("unaligned", **{"steps": 2, "batch_size": 1, **option})
    result = train(cfg, unaligned_data, run_dir=tmp_path / "run")
    assert result.step == 2 and result.other_checkpoints["G_B"].is_file()


@pytest.mark.parametrize(
    "discriminator",
    [{"arch": "pixel", "ndf": 4}, {"arch": "multiscale", "ndf": 4, "n_layers": 2, "num_scales": 2}],
)
def test_pix2pix_discriminator_kinds(discriminator, aligned_data, tmp_path):
    base = config_to_dict(tiny_config("aligned", steps=2, lambda_feat=1.0))
    base["discriminator"] = discriminator
    result = train(config_from_dict(base), aligned_data, run_dir=tmp_path / "run")
    assert result.step == 2


def test_batch_norm_generator_runs(aligned_data, tmp_path):
    base = config_to_dict(tiny_config("aligned", steps=2))
    base["generator"].update(norm="batch", dropout=True)
    base["discriminator"]["norm"] = "batch"
    assert train(config_from_dict(base), aligned_data, run_dir=tmp_path / "run").step == 2


def _trained_checkpoint(kind: str, data, tmp_path) -> GeneratorCheckpoint:
    result = train(tiny_config(kind, steps=2, val_every=2), data, run_dir=tmp_path / "run")
    return GeneratorCheckpoint.load(result.checkpoint)


def test_super_resolution_run_and_checkpoint(photo_data, tmp_path):
    ckpt = _trained_checkpoint("super_resolution", photo_data, tmp_path)
    assert (ckpt.task, ckpt.scale, ckpt.input_channels, ckpt.color_space) == ("super_resolution", 2, 3, "rgb")
    assert {"psnr_y", "ssim_y", "psnr_y_bicubic"} <= set(ckpt.metrics)
    assert (tmp_path / "run" / "metric-psnr_y.jsonl").is_file()


def test_colorization_run_and_checkpoint(photo_data, tmp_path):
    ckpt = _trained_checkpoint("colorization", photo_data, tmp_path)
    assert (ckpt.task, ckpt.input_channels, ckpt.output_channels, ckpt.color_space) == (
        "colorization",
        1,
        3,
        "lab",
    )
    assert ckpt.generator_config["in_channels"] == 1 and ckpt.generator_config["out_channels"] == 2
    assert "colorfulness" in ckpt.metrics


def test_run_outputs(aligned_data, tmp_path):
    cfg = tiny_config("aligned", steps=4, sample_every=2, val_every=4, checkpoint_every=2, keep_checkpoints=1)
    run = tmp_path / "run"
    result = train(cfg, aligned_data, run_dir=run)
    assert json.loads((run / "config.json").read_text()) == config_to_dict(cfg)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step-0000002.png", "step-0000004.png"]
    assert [json.loads(line)["step"] for line in (run / "metric-psnr.jsonl").read_text().splitlines()] == [4]
    assert sorted(p.name for p in (run / "checkpoints").glob("generator-*.pt")) == [
        "generator-latest.pt",
        "generator-step0000004.pt",
    ]
    assert (run / "checkpoints" / "generator-latest.pt").read_bytes() == result.checkpoint.read_bytes()
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest == {"step": 4, "generator": "generator-step0000004.pt", "resume": "resume-state.pt"}
    assert result.checkpoint == run / "checkpoints" / "generator-step0000004.pt"


def test_ema_checkpoint_holds_the_averaged_weights(aligned_data, tmp_path):
    cfg = tiny_config("aligned", steps=3, ema=True, ema_decay=0.5)
    result = train(cfg, aligned_data, run_dir=tmp_path / "run")
    raw = torch.load(tmp_path / "run" / "checkpoints" / "resume-state.pt", weights_only=True)
    assert set(raw["nets"]) == {"G", "D"}  # the EMA weights live in the generator checkpoint only
    assert raw["nets_in_checkpoints"] == {"G_ema": result.checkpoint.name}
    state = load_resume_state(tmp_path / "run" / "checkpoints" / "resume-state.pt")
    ckpt = GeneratorCheckpoint.load(result.checkpoint)
    key = next(k for k in ckpt.state_dict if k.endswith("weight"))
    assert torch.equal(ckpt.state_dict[key], state["nets"]["G_ema"][key])
    assert not torch.equal(ckpt.state_dict[key], state["nets"]["G"][key])


def test_max_steps_does_not_change_the_schedule(aligned_data, tmp_path):
    cfg = tiny_config("aligned", steps=10, lr_schedule="linear", lr_decay_start=0.0, log_every=1)
    train(cfg, aligned_data, run_dir=tmp_path / "run", max_steps=5)
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["step"] == 5 and stats[-1]["lr_g"] == pytest.approx(cfg.train.lr_g * 0.5)


def test_tiny_config_is_really_tiny():
    # guard the test-suite budget: the nets used above stay a few thousand parameters
    cfg = tiny_config("aligned")
    assert sum(p.numel() for p in build_generator(cfg.generator).parameters()) < 20_000
    assert dataclasses.asdict(cfg.train)["num_workers"] == 0


def test_wall_clock_checkpoints_without_a_step_cadence(aligned_data, tmp_path):
    # checkpoint_every off, a wall-clock interval shorter than one step: every step snapshots, so a
    # kill -9 loses at most one interval of work
    cfg = tiny_config("aligned", steps=3, checkpoint_every=0, checkpoint_minutes=1e-7, keep_checkpoints=0)
    train(cfg, aligned_data, run_dir=tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("generator-step*.pt"))
    assert names == [f"generator-step000000{i}.pt" for i in (1, 2, 3)]


def test_wall_clock_checkpoints_off(aligned_data, tmp_path):
    cfg = tiny_config("aligned", steps=3, checkpoint_every=0, checkpoint_minutes=0, keep_checkpoints=0)
    train(cfg, aligned_data, run_dir=tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("generator-step*.pt"))
    assert names == ["generator-step0000003.pt"]  # the final snapshot only


@pytest.mark.parametrize("loss", ["l2", "huber"])
def test_reconstruction_loss_choice(loss, aligned_data, tmp_path):
    cfg = tiny_config("aligned", steps=2, recon_loss=loss, log_every=1, pretrain_steps=2)
    train(cfg, aligned_data, run_dir=tmp_path / "run")
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert all(f"G_{loss}" in s and "G_l1" not in s for s in stats)


def test_edsr_super_resolution_run_with_cached_images(photo_data, tmp_path):
    raw = config_to_dict(tiny_config("super_resolution", steps=3, val_every=3))
    raw["generator"] = {"arch": "edsr", "ngf": 4, "n_blocks": 1, "norm": "none", "scale": 2}
    raw["data"]["cache_images"] = True
    result = train(config_from_dict(raw), photo_data, run_dir=tmp_path / "run")
    net, ckpt = _load_generator(result.checkpoint)
    assert ckpt.generator_config["arch"] == "edsr"
    assert net(torch.zeros(1, 3, 5, 7)).shape == (1, 3, 10, 14)
    assert ckpt.metrics["psnr_y"] > 20


@pytest.mark.parametrize(
    ("kind", "evaluate"),
    [("aligned", "loop_pix2pix.evaluate_paired"), ("unaligned", "loop_cyclegan.evaluate_cyclegan")],
)
def test_val_every_0_runs_no_validation_not_even_at_the_end(kind, evaluate, request, tmp_path, monkeypatch):
    import pixforge.training as training

    module_name, fn_name = evaluate.split(".")
    module = getattr(training, module_name)
    real, calls = getattr(module, fn_name), []

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, fn_name, counting)
    data = request.getfixturevalue(f"{kind}_data")
    batch = {"batch_size": 1} if kind == "unaligned" else {}
    off = train(tiny_config(kind, steps=3, val_every=0, **batch), data, run_dir=tmp_path / "off")
    assert calls == [] and off.metrics == {} and off.validation_off == "train.val_every is 0"
    assert not list(off.run_dir.glob("metric-*.jsonl"))
    # validation on: the final validation after the last step still runs (step 3 is off-cadence)
    on = train(tiny_config(kind, steps=3, val_every=2, **batch), data, run_dir=tmp_path / "on")
    assert len(calls) == 2 and on.metrics and on.validation_off is None
    assert [
        json.loads(x)["step"] for x in next(on.run_dir.glob("metric-*.jsonl")).read_text().splitlines()
    ] == [
        2,
        3,
    ]

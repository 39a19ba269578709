"""Resume is bit-for-bit: N steps straight == N/2 steps, stop, resume for N/2 more (CPU, fixed seed)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from training_helpers import tiny_config

from pixforge.training.checkpoint import GeneratorCheckpoint, load_resume_state
from pixforge.training.config import config_from_dict, config_to_dict
from pixforge.training.data import DataError
from pixforge.training.loop import train


def _assert_same(a, b, path="state"):
    """Recursive equality; tensors must match exactly (torch.equal), not approximately."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def _straight_vs_resumed(cfg, data, tmp_path, n: int):
    straight = train(cfg, data, run_dir=tmp_path / "straight", max_steps=n)
    first = train(cfg, data, run_dir=tmp_path / "resumed", max_steps=n // 2)
    assert first.step == n // 2
    resumed = train(cfg, data, run_dir=tmp_path / "resumed", max_steps=n, resume=True)
    assert straight.step == resumed.step == n
    s = load_resume_state(tmp_path / "straight" / "checkpoints" / "resume-state.pt")
    r = load_resume_state(tmp_path / "resumed" / "checkpoints" / "resume-state.pt")
    _assert_same(s, r)  # nets, EMA, optimizers, schedulers, scaler, pools, RNG states, data position
    g_s, g_r = GeneratorCheckpoint.load(straight.checkpoint), GeneratorCheckpoint.load(resumed.checkpoint)
    _assert_same(g_s.state_dict, g_r.state_dict, "generator")
    return s


def test_pix2pix_resume_is_bit_exact(aligned_data, tmp_path):
    # batch norm + EMA + a decaying schedule + WGAN-GP (its interpolation draws from the global torch
    # RNG, so the RNG state must be restored too; the depth-3 U-Net has no dropout levels)
    raw = config_to_dict(
        tiny_config(
            "aligned",
            steps=8,
            lr_schedule="linear",
            lr_decay_start=0.0,
            ema=True,
            gan_mode="wgangp",
            val_every=2,
            sample_every=2,
        )
    )
    raw["generator"].update(norm="batch", dropout=True)
    raw["discriminator"]["norm"] = "batch"
    state = _straight_vs_resumed(config_from_dict(raw), aligned_data, tmp_path, n=6)
    assert (state["epoch"], state["batch_in_epoch"]) == (3, 0)  # 4 images / batch 2 = 2 steps per epoch


def test_cyclegan_resume_is_bit_exact_mid_epoch_with_workers(unaligned_data, tmp_path):
    # batch 1 over 4 items: step 3 stops mid-epoch; pools are full (size 2) and mixing old fakes in
    cfg = tiny_config(
        "unaligned",
        steps=8,
        batch_size=1,
        pool_size=2,
        num_workers=1,
        gan_mode="wgangp",
        lr_schedule="cosine",
    )
    state = _straight_vs_resumed(cfg, unaligned_data, tmp_path, n=6)
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2)
    assert len(state["pools"]["A"]["images"]) == 2


def test_resume_needs_a_resume_state(aligned_data, tmp_path):
    with pytest.raises(DataError, match="nothing to resume"):
        train(tiny_config("aligned"), aligned_data, run_dir=tmp_path / "empty", resume=True)


def test_fresh_run_refuses_an_existing_run_dir(aligned_data, tmp_path):
    cfg = tiny_config("aligned", steps=1)
    train(cfg, aligned_data, run_dir=tmp_path / "run")
    with pytest.raises(DataError, match="already holds a run"):
        train(cfg, aligned_data, run_dir=tmp_path / "run")


def test_resume_refuses_different_data(aligned_data, tmp_path):
    from training_helpers import make_aligned

    cfg = tiny_config("aligned", steps=4)
    train(cfg, aligned_data, run_dir=tmp_path / "run", max_steps=1)
    bigger = make_aligned(tmp_path / "bigger", n_train=8)
    with pytest.raises(DataError, match="data changed"):
        train(cfg, bigger, run_dir=tmp_path / "run", resume=True)


# ----------------------------------------------------------------------------- resume-state layout


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _write_old_layout(ckpt_dir) -> int:
    """Rewrite resume-state.pt the way pixforge.resume/1 did (every net inline); returns its size."""
    path = ckpt_dir / "resume-state.pt"
    state = load_resume_state(path)  # nets filled in from the generator checkpoints
    del state["nets_in_checkpoints"]
    state["format"] = "pixforge.resume/1"
    torch.save(state, path)
    return path.stat().st_size


@pytest.mark.parametrize(
    ("kind", "ema", "shared"),
    [
        ("aligned", False, {"G": "generator-step0000004.pt"}),
        ("aligned", True, {"G_ema": "generator-step0000004.pt"}),
        ("unaligned", False, {"G_A": "G_A-step0000004.pt", "G_B": "G_B-step0000004.pt"}),
    ],
)
def test_resume_state_holds_no_second_copy_of_the_saved_generators(kind, ema, shared, request, tmp_path):
    data = request.getfixturevalue(f"{kind}_data")
    result = train(tiny_config(kind, steps=4, ema=ema), data, run_dir=tmp_path / "run")
    ckpt_dir = result.run_dir / "checkpoints"
    raw = torch.load(ckpt_dir / "resume-state.pt", weights_only=True)
    assert raw["format"] == "pixforge.resume/2"
    assert raw["nets_in_checkpoints"] == shared
    assert not set(shared) & set(raw["nets"])  # the raw (or EMA) generators are not stored twice
    full = load_resume_state(ckpt_dir / "resume-state.pt")
    assert set(shared) <= set(full["nets"])  # loading puts them back
    for key, name in shared.items():
        _assert_same(full["nets"][key], GeneratorCheckpoint.load(ckpt_dir / name).state_dict, key)
    # smaller than the old layout by the generator weights (plus a little pickle overhead per tensor)
    new_size = (ckpt_dir / "resume-state.pt").stat().st_size
    saved = sum(_tensor_bytes(full["nets"][k]) for k in shared)
    old_size = _write_old_layout(ckpt_dir)
    assert saved <= old_size - new_size <= saved * 1.25 + 4096, (old_size, new_size, saved)


@pytest.mark.parametrize("kind", ["aligned", "unaligned"])
def test_old_layout_resume_file_still_resumes_bit_exactly(kind, request, tmp_path):
    data = request.getfixturevalue(f"{kind}_data")
    cfg = tiny_config(kind, steps=8, ema=True, lr_schedule="linear", lr_decay_start=0.0)
    straight = train(cfg, data, run_dir=tmp_path / "straight", max_steps=6)
    first = train(cfg, data, run_dir=tmp_path / "resumed", max_steps=3)
    ckpt_dir = first.run_dir / "checkpoints"
    _write_old_layout(ckpt_dir)
    for p in ckpt_dir.glob("*-step*.pt"):  # an old-layout file needs no generator checkpoint
        p.unlink()
    resumed = train(cfg, data, run_dir=tmp_path / "resumed", max_steps=6, resume=True)
    assert resumed.step == straight.step == 6
    _assert_same(
        load_resume_state(straight.run_dir / "checkpoints" / "resume-state.pt"),
        load_resume_state(resumed.run_dir / "checkpoints" / "resume-state.pt"),
    )


def test_resume_needs_the_generator_checkpoint_it_names(aligned_data, tmp_path):
    cfg = tiny_config("aligned", steps=4)
    first = train(cfg, aligned_data, run_dir=tmp_path / "run", max_steps=2)
    first.checkpoint.unlink()
    with pytest.raises(DataError, match="generator-step0000002.pt"):
        train(cfg, aligned_data, run_dir=tmp_path / "run", resume=True)


def test_an_epoch_run_resumes(aligned_data, tmp_path):
    # train.steps 0: the run's length is n_epochs x steps per epoch, the bound a resume checks
    # (the raw train.steps, 0, refused every resume of the epoch presets).
    cfg = tiny_config("aligned", steps=0, n_epochs=2)
    first = train(cfg, aligned_data, run_dir=tmp_path / "r", max_steps=1)
    resumed = train(cfg, aligned_data, run_dir=tmp_path / "r", resume=True)
    assert first.step == 1 and resumed.step == resumed.total_steps > 1


def test_an_epoch_run_resumed_with_fewer_epochs_than_done_is_refused(aligned_data, tmp_path):
    cfg = tiny_config("aligned", steps=0, n_epochs=2)
    done = train(cfg, aligned_data, run_dir=tmp_path / "r")
    shorter = tiny_config("aligned", steps=0, n_epochs=1)
    with pytest.raises(DataError, match=rf"trains {done.step // 2} steps, below the run's step {done.step}"):
        train(shorter, aligned_data, run_dir=tmp_path / "r", resume=True)


# ----------------------------------------------------------------------------- logs after a kill


def _logged_steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def _killed_after_step_4(cfg, data, run):
    """A run whose last snapshot is of step 4 but whose logs go on to step 6: what `kill -9`
    between two checkpoints leaves (trained to 6, then step 6's snapshot taken away)."""
    train(cfg, data, run_dir=run, max_steps=4)
    at_4 = run.parent / "checkpoints-at-4"
    shutil.copytree(run / "checkpoints", at_4)
    train(cfg, data, run_dir=run, max_steps=6, resume=True)
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(at_4, run / "checkpoints")


def test_resume_after_a_kill_logs_each_step_once(aligned_data, tmp_path):
    cfg = tiny_config("aligned", steps=8, log_every=1, val_every=2)
    run = tmp_path / "run"
    _killed_after_step_4(cfg, aligned_data, run)
    assert _logged_steps(run / "stats.jsonl") == [1, 2, 3, 4, 5, 6]
    metric_files = sorted(run.glob("metric-*.jsonl"))
    assert metric_files and all(_logged_steps(m) == [2, 4, 6] for m in metric_files)
    assert train(cfg, aligned_data, run_dir=run, resume=True).step == 8
    assert _logged_steps(run / "stats.jsonl") == list(range(1, 9))
    assert all(_logged_steps(m) == [2, 4, 6, 8] for m in metric_files)


def test_refused_resume_leaves_the_logs_alone(aligned_data, tmp_path):
    cfg = tiny_config("aligned", steps=8, log_every=1, val_every=2)
    run = tmp_path / "run"
    _killed_after_step_4(cfg, aligned_data, run)
    before = {p.name: p.read_bytes() for p in run.glob("*.jsonl")}
    with pytest.raises(DataError, match="below the run's step 4"):
        train(
            tiny_config("aligned", steps=3, log_every=1, val_every=2), aligned_data, run_dir=run, resume=True
        )
    assert {p.name: p.read_bytes() for p in run.glob("*.jsonl")} == before


def test_logged_steps_after_the_resume_step_are_dropped(tmp_path):
    from pixforge.training.run_log import drop_logged_steps_after

    stats = tmp_path / "stats.jsonl"
    # a line that is not a record stays; the last, cut short by the kill, goes
    stats.write_text('{"step": 1}\n{"step": 2}\nnot json\n{"step": 3}\n{"step": 4, "lo')
    psnr = tmp_path / "metric-psnr.jsonl"
    psnr.write_text('{"step": 2, "value": 1.0}\n{"step": 4, "value": 2.0}\n')
    ssim = tmp_path / "metric-ssim.jsonl"
    ssim.write_text('{"step": 2, "value": 0.5}')  # whole but unterminated: kept, newline added
    fid = tmp_path / "metric-fid.jsonl"
    fid.write_text('{"step": 1, "value": 9.0}\n')
    fid_inode = fid.stat().st_ino
    other = tmp_path / "notes.jsonl"
    other.write_text('{"step": 9}\n')
    drop_logged_steps_after(tmp_path, 2)
    assert stats.read_text() == '{"step": 1}\n{"step": 2}\nnot json\n'
    assert psnr.read_text() == '{"step": 2, "value": 1.0}\n'
    assert ssim.read_text() == '{"step": 2, "value": 0.5}\n'
    assert fid.stat().st_ino == fid_inode  # nothing to drop: not rewritten
    assert other.read_text() == '{"step": 9}\n'  # not a run log
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metric-fid.jsonl",
        "metric-psnr.jsonl",
        "metric-ssim.jsonl",
        "notes.jsonl",
        "stats.jsonl",
    ]

"""`pixforge train`: last line `checkpoint: PATH`, run-dir numbering, resume, dry run, exit-2 errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from training_helpers import TINY, TINY_TRAIN, make_aligned

from pixforge.cli import main

BRIEF_KEYS = {
    "format",
    "generator_config",
    "task",
    "scale",
    "input_channels",
    "output_channels",
    "color_space",
    "state_dict",
    "training_config",
    "metrics",
    "training_data",
    "step",
    "pixforge_version",
    "torch_version",
    "name",
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_aligned(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY["aligned"], "train": {**TINY_TRAIN, "steps": 4}}))
    return tmp_path


def _last_line(capsys) -> str:
    out = capsys.readouterr().out.strip().splitlines()
    return out[-1]


def test_last_line_is_the_checkpoint_and_it_loads_weights_only(workdir, capsys):
    assert main(["train", "tiny.yaml", "--data", "data", "--max-steps", "2"]) == 0
    last = _last_line(capsys)
    assert last.startswith("checkpoint: ")
    path = last[len("checkpoint: ") :]
    assert path == "runs/tiny-001/checkpoints/generator-step0000002.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert BRIEF_KEYS <= set(ckpt)
    assert ckpt["format"] == "pixforge.generator/1" and ckpt["step"] == 2 and ckpt["direction"] == "AtoB"
    assert ckpt["task"] == "paired_translation" and ckpt["color_space"] == "rgb"
    assert ckpt["generator_config"]["ngf"] == 4 and ckpt["training_config"]["train"]["steps"] == 4
    assert ckpt["training_data"] == "data"
    json.dumps({k: v for k, v in ckpt.items() if k != "state_dict"})  # everything else is plain JSON data


def test_run_dirs_are_numbered_and_resume_picks_the_newest(workdir, capsys):
    assert main(["train", "tiny.yaml", "--data", "data", "--max-steps", "1"]) == 0
    assert main(["train", "tiny.yaml", "--data", "data", "--max-steps", "1"]) == 0
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["tiny-001", "tiny-002"]
    capsys.readouterr()
    assert main(["train", "tiny.yaml", "--data", "data", "--resume"]) == 0
    assert _last_line(capsys) == "checkpoint: runs/tiny-002/checkpoints/generator-step0000004.pt"


def test_resume_with_fewer_steps_than_done_is_refused_and_leaves_the_run_alone(workdir, capsys):
    assert main(["train", "tiny.yaml", "--data", "data", "--out", "r", "--max-steps", "3"]) == 0
    before = (workdir / "r" / "config.json").read_text()
    capsys.readouterr()
    assert (
        main(["train", "tiny.yaml", "--data", "data", "--out", "r", "--resume", "--set", "train.steps=2"])
        == 2
    )
    assert "this config trains 2 steps, below the run's step 3" in capsys.readouterr().err
    assert (workdir / "r" / "config.json").read_text() == before


def test_resume_with_changed_setting_is_reported(workdir, capsys):
    assert main(["train", "tiny.yaml", "--data", "data", "--out", "r", "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert (
        main(["train", "tiny.yaml", "--data", "data", "--out", "r", "--resume", "--set", "train.log_every=1"])
        == 0
    )
    captured = capsys.readouterr()
    assert "train.log_every: 5 -> 1" in captured.err
    assert captured.out.strip().splitlines()[-1] == "checkpoint: r/checkpoints/generator-step0000004.pt"


def test_dry_run_prints_config_and_writes_nothing(workdir, capsys):
    assert main(["train", "tiny.yaml", "--data", "data", "--dry-run", "--set", "train.lr_g=1e-3"]) == 0
    out = capsys.readouterr().out
    assert '"lr_g": 0.001' in out and "data: train: 4 files" in out
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "tiny.yaml", "--data", "missing"], "folder not found: missing"),
        (["train", "tiny.yaml", "--data", "empty"], "no training images"),
        (["train", "tiny.yaml", "--data", "data", "--set", "train.lr_gg=1"], "train.lr_gg: unknown key"),
        (["train", "tiny.yaml", "--data", "data", "--set", "generator.norm=group"], "generator.norm"),
        (["train", "tiny.yaml", "--data", "data", "--set", "oops"], "key=value"),
        (["train", "nope.yaml", "--data", "data"], "config: file not found"),
        (
            ["train", "tiny.yaml", "--data", "data", "--out", "fresh", "--resume"],
            "fresh/config.json not found",
        ),
        (["train", "tiny.yaml", "--data", "data", "--set", "train.batch_size=64"], "cannot fill one batch"),
        (
            [
                "train",
                "tiny.yaml",
                "--data",
                "data",
                "--set",
                "data.crop_size=36",
                "--set",
                "data.load_size=40",
            ],
            "multiple of 8",
        ),
        (["train", "tiny.yaml", "--data", "data", "--max-steps", "0"], "--max-steps"),
    ],
)
def test_bad_input_exits_2_without_traceback(workdir, capsys, argv, message):
    (workdir / "empty").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("pixforge train: error: ")


def test_existing_run_dir_needs_resume(workdir, capsys):
    assert main(["train", "tiny.yaml", "--data", "data", "--out", "r", "--max-steps", "1"]) == 0
    assert main(["train", "tiny.yaml", "--data", "data", "--out", "r"]) == 2
    assert "pass --resume" in capsys.readouterr().err


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("pixforge train: error: ")
    return err


def test_resume_with_another_architecture_fails_in_one_line_and_leaves_the_run_alone(workdir, capsys):
    assert main(["train", "tiny.yaml", "--data", "data", "--out", "r", "--max-steps", "1"]) == 0
    saved = (workdir / "r" / "config.json").read_bytes()
    capsys.readouterr()
    resume = ["train", "tiny.yaml", "--data", "data", "--out", "r", "--resume"]
    assert main([*resume, "--set", "generator.ngf=8"]) == 2
    err = _one_line_error(capsys)
    assert "another generator (ngf: 8 here, 4 in the run)" in err and "--set generator.ngf=4" in err
    assert main([*resume, "--set", "discriminator.n_layers=3"]) == 2
    assert "--set discriminator.n_layers=2" in _one_line_error(capsys)
    assert (workdir / "r" / "config.json").read_bytes() == saved  # so a plain --resume still works
    assert main([*resume, "--max-steps", "2"]) == 0


def test_resume_state_that_does_not_load_is_one_line(workdir, capsys):
    # A config.json that no longer matches the resume state (what a failed resume with another
    # architecture used to leave behind): the loaded weights do not fit, said in one line.
    assert main(["train", "tiny.yaml", "--data", "data", "--out", "r", "--max-steps", "1"]) == 0
    saved = workdir / "r" / "config.json"
    config = json.loads(saved.read_text())
    config["generator"]["ngf"] = 8
    saved.write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["train", "tiny.yaml", "--data", "data", "--out", "r", "--resume"]) == 2
    err = _one_line_error(capsys)
    assert "cannot resume r: its resume state does not fit this config" in err and "size mismatch" in err


def test_failed_run_leaves_no_run_dir_behind(workdir, capsys):
    (workdir / "empty").mkdir()
    assert main(["train", "tiny.yaml", "--data", "empty", "--out", "r3"]) == 2
    assert "no training images" in _one_line_error(capsys)
    assert not (workdir / "r3").exists()
    assert main(["train", "tiny.yaml", "--data", "empty"]) == 2
    assert not any((workdir / "runs").iterdir())  # runs/tiny-001 is gone too
    # A folder that was there before the failed run is not this run's to remove.
    (workdir / "mine").mkdir()
    assert main(["train", "tiny.yaml", "--data", "empty", "--out", "mine"]) == 2
    assert (workdir / "mine").is_dir()
    capsys.readouterr()
    assert main(["train", "tiny.yaml", "--data", "data", "--out", "r3", "--max-steps", "1"]) == 0


def _listing(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_failed_run_in_an_existing_folder_takes_back_only_what_it_wrote(workdir, capsys):
    # --out names a folder the user already had: the failed run removes its config.json,
    # checkpoints/, samples/ and tensorboard/, not the user's files, so the same --out works next.
    mine = workdir / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "keep.txt").write_text("mine")
    (mine / "notes" / "a.txt").write_text("mine")
    before = _listing(mine)
    (workdir / "empty").mkdir()
    argv = ["train", "tiny.yaml", "--out", "mine", "--set", "train.tensorboard=true"]
    assert main([*argv, "--data", "empty"]) == 2
    assert "no training images" in _one_line_error(capsys)
    assert _listing(mine) == before
    assert main([*argv, "--data", "empty"]) == 2  # not "already holds a run"
    assert "no training images" in _one_line_error(capsys)
    assert main([*argv, "--data", "data", "--max-steps", "1"]) == 0
    assert (mine / "config.json").is_file() and (mine / "keep.txt").read_text() == "mine"


def test_run_failing_before_its_first_checkpoint_takes_back_its_logs_and_samples(
    workdir, capsys, monkeypatch
):
    # The run logs, validates and writes sample grids, then its first snapshot fails: its
    # stats.jsonl, metric-*.jsonl and grids go too; the user's own samples/ and its file stay.
    from pixforge.training import loop_pix2pix
    from pixforge.training.data import DataError

    def no_snapshot(*args, **kwargs):
        raise DataError("no space left on the device")

    monkeypatch.setattr(loop_pix2pix, "save_snapshot", no_snapshot)
    mine = workdir / "mine"
    (mine / "samples").mkdir(parents=True)
    (mine / "samples" / "mine.png").write_bytes(b"mine")
    (mine / "keep.txt").write_text("mine")
    before = _listing(mine)
    settings = ["train.val_every=2", "train.sample_every=1", "train.log_every=1"]
    argv = ["train", "tiny.yaml", "--data", "data", "--out", "mine"]
    assert main([*argv, *(x for s in settings for x in ("--set", s))]) == 2
    assert "no space left on the device" in _one_line_error(capsys)
    assert _listing(mine) == before


def test_run_that_wrote_a_checkpoint_is_kept_when_it_fails(workdir, capsys, monkeypatch):
    from pixforge.training import loop_pix2pix
    from pixforge.training.data import DataError

    real = loop_pix2pix.save_snapshot

    def snapshot_then_fail(*args, **kwargs):
        real(*args, **kwargs)
        raise DataError("failed after writing the checkpoint")

    monkeypatch.setattr(loop_pix2pix, "save_snapshot", snapshot_then_fail)
    (workdir / "mine").mkdir()
    assert main(["train", "tiny.yaml", "--data", "data", "--out", "mine", "--max-steps", "1"]) == 2
    capsys.readouterr()
    assert (workdir / "mine" / "config.json").is_file()
    assert (workdir / "mine" / "checkpoints" / "resume-state.pt").is_file()


def test_crop_size_the_generator_cannot_take_is_refused_before_the_run_dir(workdir, capsys):
    # tiny.yaml: a depth-3 U-Net, so crops are multiples of 8; said by the config, before anything
    # is written into --out (a folder the user already had) and in a dry run too.
    (workdir / "mine").mkdir()
    (workdir / "mine" / "keep.txt").write_text("mine")
    bad = ["--set", "data.crop_size=36", "--set", "data.load_size=40"]
    assert main(["train", "tiny.yaml", "--data", "data", "--out", "mine", *bad]) == 2
    err = _one_line_error(capsys)
    assert err.strip() == (
        "pixforge train: error: data.crop_size: must be a multiple of 8, the generator's size "
        "multiple (generator.arch unet, generator.depth 3); got 36, use e.g. 32 or 40"
    )
    assert _listing(workdir / "mine") == ["keep.txt"]
    assert main(["train", "tiny.yaml", "--data", "data", "--dry-run", *bad]) == 2
    assert "data.crop_size: must be a multiple of 8" in _one_line_error(capsys)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.steps=abc"], "train.steps: must be an integer; got 'abc'"),
        (["nosuch.key=1"], "nosuch: unknown top-level key; valid keys:"),
        (["train.nosuch=1"], "train.nosuch: unknown key"),
        (["data.crop_size=-3"], "data.crop_size: must be >= 8; got -3"),
        (["data.crop_size=2.5"], "data.crop_size:"),
        # line breaks typed into a --set key or value, and a YAML parser's multi-line message
        (["nosuch\nkey=1"], "nosuch key: unknown top-level key"),
        (['train.vgg_weights="a\\nb.pth"', "train.lambda_perceptual=1"], "file not found: a b.pth"),
        (
            ["train.lr_g=[1"],
            "train.lr_g: cannot parse value '[1': expected ',' or ']', but got '<stream end>' "
            "at line 1, column 3",
        ),
    ],
)
def test_config_errors_are_one_line(workdir, capsys, overrides, message):
    argv = ["train", "tiny.yaml", "--data", "data", "--out", "r"]
    assert main([*argv, *(x for o in overrides for x in ("--set", o))]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("pixforge train: error: ") and message in err, err
    assert not (workdir / "r").exists()


@pytest.mark.parametrize("out", ["f.png", "f.png/run"])
def test_out_that_is_a_file_is_one_line(workdir, capsys, out):
    (workdir / "f.png").write_bytes(b"\x89PNG\r\n")
    assert main(["train", "tiny.yaml", "--data", "data", "--out", out]) == 2
    assert "--out: f.png is a file, not a folder" in _one_line_error(capsys)


def test_binary_config_file_is_one_line(workdir, capsys):
    (workdir / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert main(["train", "x.png", "--data", "data"]) == 2
    assert "config: x.png is not a YAML text file (not UTF-8" in _one_line_error(capsys)
    assert not (workdir / "runs").exists()


def test_bad_files_are_reported_in_the_summary(workdir, capsys):
    (workdir / "data" / "train" / "broken.png").write_text("not a png")
    with pytest.warns(UserWarning, match="broken.png"):
        assert main(["train", "tiny.yaml", "--data", "data", "--max-steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "skipped files: 1" in out
    stats = [
        json.loads(line) for line in (workdir / "runs" / "tiny-001" / "stats.jsonl").read_text().splitlines()
    ]
    assert stats[-1]["skipped_files"] == 1


def test_ctrl_c_stops_after_a_whole_step_and_resumes(workdir):
    # a long run interrupted with SIGINT (what Ctrl-C sends): snapshot, exit 130, resumable
    import os
    import signal
    import subprocess
    import sys
    import time

    config = workdir / "long.yaml"
    train = {**TINY_TRAIN, "steps": 100000, "log_every": 1, "num_workers": 1}
    config.write_text(yaml.safe_dump({**TINY["aligned"], "train": train}))
    cmd = [sys.executable, "-m", "pixforge.cli", "train", "long.yaml", "--data", "data", "--out", "r"]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    stats = workdir / "r" / "stats.jsonl"
    deadline = time.time() + 60
    while not (stats.exists() and stats.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted after step" in err and "Traceback" not in err
    step = json.loads((workdir / "r" / "checkpoints" / "latest.json").read_text())["step"]
    assert (
        step >= 3 and out.strip().splitlines()[-1] == f"checkpoint: r/checkpoints/generator-step{step:07d}.pt"
    )
    assert (
        main(["train", "long.yaml", "--data", "data", "--out", "r", "--resume", "--max-steps", str(step + 2)])
        == 0
    )


def _without_tensorboard(monkeypatch):
    """Make `torch.utils.tensorboard` fail the way it does when the tensorboard package is missing."""
    import sys

    for name in [n for n in sys.modules if n == "tensorboard" or n.startswith("tensorboard.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [n for n in sys.modules if n.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)


def test_missing_tensorboard_is_one_hint_per_run_not_a_warning_on_every_resume(workdir, capsys, monkeypatch):
    # The default `tensorboard: true` (the key is not in the file) and no tensorboard package.
    config = yaml.safe_load((workdir / "tiny.yaml").read_text())
    del config["train"]["tensorboard"]
    (workdir / "default.yaml").write_text(yaml.safe_dump(config))
    _without_tensorboard(monkeypatch)
    assert main(["train", "default.yaml", "--data", "data", "--out", "r", "--max-steps", "1"]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("tensorboard:")]
    assert len(lines) == 1 and "unavailable" not in lines[0], lines
    assert "pip install tensorboard" in lines[0] and "pixforge[train]" in lines[0]
    assert not (workdir / "r" / "tensorboard").exists()

    assert (
        main(["train", "default.yaml", "--data", "data", "--out", "r", "--resume", "--max-steps", "2"]) == 0
    )
    assert "tensorboard:" not in capsys.readouterr().err  # said once, when the run started

    # Asked for explicitly: the hint each time.
    resume = ["train", "default.yaml", "--data", "data", "--out", "r", "--resume", "--max-steps", "3"]
    assert main([*resume, "--set", "train.tensorboard=true"]) == 0
    assert "tensorboard: not installed" in capsys.readouterr().err


def test_tensorboard_events_are_written_when_the_package_is_installed(workdir, capsys):
    pytest.importorskip("tensorboard")  # the train extra installs it
    args = ["train", "tiny.yaml", "--data", "data", "--out", "r", "--max-steps", "1"]
    assert main([*args, "--set", "train.tensorboard=true"]) == 0
    assert "tensorboard: r/tensorboard" in capsys.readouterr().err
    assert any((workdir / "r" / "tensorboard").glob("events.out.tfevents.*"))

"""`pixforge export` end to end on checkpoint files built here (pixforge format and junyanz)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from export_helpers import ort_run, tiny_generator, to_junyanz

from pixforge.cli import main
from pixforge.codec import encode_image
from pixforge.contract import load_contract
from pixforge.training.registry import GeneratorConfig

SR_CFG = GeneratorConfig(
    arch="resnet", ngf=4, n_blocks=1, scale=2, upsample="pixelshuffle", init_type="xavier", init_gain=1.0
)


def _pixforge_checkpoint(path, cfg=SR_CFG, **overrides):
    torch.manual_seed(0)
    g = tiny_generator(
        **{k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("ngf", "init_type", "init_gain")}
    )
    ckpt = {
        "format": "pixforge.generator/1",
        "generator_config": dataclasses.asdict(cfg),
        "task": "super_resolution",
        "scale": 2,
        "input_channels": 3,
        "output_channels": 3,
        "color_space": "rgb",
        "state_dict": g.state_dict(),
        "training_config": {"model": "pix2pix", "train": {"lr_g": 2e-4}},
        "metrics": {"psnr": 27.5, "ssim": 0.81},
        "training_data": "div2k-tiny",
        "step": 12,
        "pixforge_version": "0.1.0",
        "torch_version": str(torch.__version__),
        "name": "G",
    }
    ckpt.update(overrides)
    torch.save(ckpt, path)
    return g


def test_export_cli_end_to_end_pixforge_checkpoint(tmp_path):
    ckpt = tmp_path / "G.pt"
    _pixforge_checkpoint(ckpt)
    repo = tmp_path / "models"
    # the real console entry point, in a fresh interpreter (no state shared with the test process)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pixforge.cli",
            "export",
            str(ckpt),
            "--name",
            "sr2",
            "--repo",
            str(repo),
            "--description",
            "tiny SR",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "within 1 grey level" in proc.stdout and "overall: max" in proc.stdout
    path = repo / "sr2" / "1" / "model.onnx"
    assert f"exported: {path}" in proc.stdout
    c = load_contract(path)
    assert (c.task, c.scale, c.description) == ("super_resolution", 2, "tiny SR")
    assert c.metrics == {"psnr": 27.5, "ssim": 0.81}
    assert c.metadata["training_data"] == "div2k-tiny" and '"lr_g":0.0002' in c.metadata["training_config"]
    assert len(c.metadata["source_checkpoint_sha256"]) == 64 and c.metadata["arch"].startswith("resnet(")
    out = ort_run(path, np.zeros((2, 8, 12, 3), np.uint8))
    assert out.shape == (2, 16, 24, 3)


def test_export_models_show_and_list_describe_an_exported_model(tmp_path, capsys):
    ckpt = tmp_path / "G.pt"
    _pixforge_checkpoint(ckpt)
    repo = str(tmp_path / "models")
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    (images / "a.png").write_bytes(encode_image(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)))
    (images / "b.png").write_bytes(encode_image(rng.integers(0, 256, (90, 70, 1), dtype=np.uint8)))
    argv = ["export", str(ckpt), "--name", "sr2", "--repo", repo, "--description", "tiny SR"]
    assert main([*argv, "--parity-images", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([*argv, "--parity-images", str(images)]) == 0
    out = capsys.readouterr().out
    assert "image #1 64x64" in out and "image #2 68x64" in out
    assert main(["models", "show", "sr2", "--repo", repo]) == 0
    out = capsys.readouterr().out
    for text in (
        "status: OK",
        "task:            super_resolution",
        "scale:           x2",
        "description:     tiny SR",
        "metrics:         psnr=27.5, ssim=0.81",
        "input  image: tensor(uint8) ['batch', 'height', 'width', 3]",
        "output image_out: tensor(uint8)",
        "source_checkpoint_sha256 = ",
        "parity at export: max diff",
    ):
        assert text in out, text
    assert main(["models", "list", "--repo", repo]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[:6] == ["sr2", "1*", "super_resolution", "x2", "3->3", "4"] and row[-1] == "OK"


def test_export_cli_fp16_version_and_errors(tmp_path, capsys):
    ckpt = tmp_path / "G.pt"
    _pixforge_checkpoint(ckpt)
    repo = str(tmp_path / "models")
    assert main(["export", str(ckpt), "--name", "sr", "--repo", repo, "--fp16"]) == 0
    assert "fp16 vs fp32 PSNR" in capsys.readouterr().out
    assert main(["export", str(ckpt), "--name", "sr", "--repo", repo, "--version", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--name", "sr", "--repo", repo, "--no-verify"]) == 0
    assert (
        "exported: " in capsys.readouterr().out
        and (tmp_path / "models" / "sr" / "2" / "model.onnx").is_file()
    )

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    for argv, message in (
        ([str(tmp_path / "missing.pt")], "checkpoint not found"),
        ([str(bad)], "holds no torch.save data"),  # not torch's advice to use weights_only=False
        ([str(ckpt), "--task", "colorization"], "--task applies to --from junyanz only"),
        ([str(ckpt), "--opset", "9"], "--opset must be >= 13"),
        ([str(ckpt), "--opset", "1000"], "--opset must be <= "),
        ([str(ckpt), "--tile-size", "30"], "not a multiple"),
        ([str(ckpt), "--tile-size", "4096"], "within 16..2048"),
        ([str(ckpt), "--tile-size", "8"], "within 16..2048"),
    ):
        assert main(["export", *argv, "--name", "x", "--repo", repo]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)

    wrong = tmp_path / "wrong.pt"
    _pixforge_checkpoint(wrong, format="something/else")
    assert main(["export", str(wrong), "--name", "x", "--repo", repo]) == 2
    assert "is not a pixforge.generator/1 checkpoint" in capsys.readouterr().err
    mismatch = tmp_path / "mismatch.pt"
    _pixforge_checkpoint(mismatch, generator_config=dataclasses.asdict(dataclasses.replace(SR_CFG, ngf=8)))
    assert main(["export", str(mismatch), "--name", "x", "--repo", repo]) == 2
    assert "do not fit its generator_config" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["paired_translation", "colorization"])
def test_export_cli_junyanz_checkpoint(task, tmp_path, capsys):
    chans = {"in_channels": 1, "out_channels": 2} if task == "colorization" else {}
    g = tiny_generator(arch="unet", depth=7, norm="batch", **chans)  # unet_128 layout, ngf 4
    cfg = GeneratorConfig(arch="unet", depth=7, norm="batch", ngf=4, **chans)
    path = tmp_path / "latest_net_G.pth"
    torch.save(to_junyanz(g.state_dict(), cfg), path)
    repo = str(tmp_path / "models")
    argv = ["export", str(path), "--from", "junyanz", "--arch", "unet_128", "--name", "jz", "--repo", repo]
    assert main([*argv, "--task", task]) == 0
    out = capsys.readouterr().out
    assert "per-image statistics" in out
    c = load_contract(tmp_path / "models" / "jz" / "1" / "model.onnx")
    assert (c.task, c.size_multiple, c.input_channels, c.output_channels) == (task, 128, 3, 3)
    assert c.metadata["source_format"] == "junyanz" and c.metadata["arch"] == "unet_128"
    assert c.metadata["color_space"] == ("lab" if task == "colorization" else "rgb")

    assert main([*argv, "--arch", "resnet_9blocks"]) == 2
    assert "pass --arch unet_128" in capsys.readouterr().err
    if task != "colorization":
        assert main(argv) == 2
        assert "--task is required" in capsys.readouterr().err


def test_export_cli_junyanz_super_resolution_runs_on_the_bicubic_input(tmp_path, capsys):
    g = tiny_generator(arch="resnet", n_blocks=6, norm="instance")
    path = tmp_path / "G_A.pth"
    torch.save(to_junyanz(g.state_dict(), GeneratorConfig(arch="resnet", n_blocks=6, ngf=4)), path)
    repo = tmp_path / "models"
    assert (
        main(
            [
                "export",
                str(path),
                "--from",
                "junyanz",
                "--task",
                "super_resolution",
                "--scale",
                "2",
                "--name",
                "jzsr",
                "--repo",
                str(repo),
            ]
        )
        == 0
    ), capsys.readouterr().err
    c = load_contract(repo / "jzsr" / "1" / "model.onnx")
    assert (c.scale, c.size_multiple) == (2, 2)
    assert ort_run(repo / "jzsr" / "1" / "model.onnx", np.zeros((1, 10, 14, 3), np.uint8)).shape == (
        1,
        20,
        28,
        3,
    )


def test_export_cli_colorization_checkpoint_from_the_training_writer(tmp_path, capsys):
    # written by the training side's own checkpoint helper (input_channels=1: the L channel)
    from pixforge.training.checkpoint import GeneratorCheckpoint

    cfg = GeneratorConfig(arch="unet", in_channels=1, out_channels=2, ngf=4, depth=3)
    g = tiny_generator(arch="unet", depth=3, in_channels=1, out_channels=2)
    GeneratorCheckpoint(
        generator_config=dataclasses.asdict(cfg),
        state_dict=g.state_dict(),
        task="colorization",
        scale=1,
        input_channels=1,
        output_channels=3,
        color_space="lab",
        training_config={"task": "colorization"},
        metrics={"colorfulness": 12.0},
        training_data="tiny",
        step=3,
        name="G",
    ).save(tmp_path / "G.pt")
    repo = tmp_path / "models"
    assert main(["export", str(tmp_path / "G.pt"), "--name", "colour", "--repo", str(repo)]) == 0, (
        capsys.readouterr().err
    )
    c = load_contract(repo / "colour" / "1" / "model.onnx")
    assert (c.task, c.input_channels, c.output_channels, c.metadata["color_space"]) == (
        "colorization",
        3,
        3,
        "lab",
    )
    gray = np.full((1, 16, 24, 3), 90, np.uint8)
    assert ort_run(repo / "colour" / "1" / "model.onnx", gray).shape == (1, 16, 24, 3)


def test_export_cli_measures_the_tile_size_by_default(tmp_path, capsys):
    import json

    ckpt = tmp_path / "G.pt"
    _pixforge_checkpoint(ckpt)
    repo = tmp_path / "models"
    assert main(["export", str(ckpt), "--name", "sr", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "tile size measured (ms per output megapixel, CPU)" in out
    sidecar = json.loads((repo / "sr" / "1" / "model.json").read_text())
    measured = sidecar["tile_size_measurement"]
    costs = {int(e): c for e, c in measured["ms_per_output_megapixel_cpu"].items()}
    assert measured["chosen"] == int(sidecar["metadata"]["tile_size"]) in costs
    assert costs[measured["chosen"]] <= 1.10 * min(costs.values())
    assert main(["export", str(ckpt), "--name", "sr", "--repo", str(repo), "--tile-size", "64"]) == 0
    assert "tile size measured" not in capsys.readouterr().out
    assert "tile_size_measurement" not in json.loads((repo / "sr" / "2" / "model.json").read_text())
    with pytest.raises(SystemExit):
        main(["export", str(ckpt), "--name", "sr", "--repo", str(repo), "--tile-size", "big"])


def test_tile_size_rule():
    from pixforge.training.export.tile_size import candidate_edges, choose

    assert candidate_edges(64, 1) == [128, 256, 512, 1024]
    assert candidate_edges(1, 4) == [128, 256, 512]  # outputs up to 2048 px
    assert candidate_edges(100, 1) == [200, 300, 600, 1100]
    assert choose({128: 30.0, 256: 20.0, 512: 19.0, 1024: 18.5}) == 256
    assert choose({128: 30.0, 256: 25.0}) == 256


def test_export_cli_no_subpixel_keeps_the_traced_graph(tmp_path, capsys):
    import json

    ckpt = tmp_path / "G.pt"
    _pixforge_checkpoint(ckpt)
    repo = tmp_path / "models"
    common = ["export", str(ckpt), "--repo", str(repo), "--tile-size", "64"]
    assert main([*common, "--name", "fast"]) == 0
    assert "sub-pixel rewrite: " in capsys.readouterr().out
    assert main([*common, "--name", "traced", "--no-subpixel"]) == 0
    assert "sub-pixel rewrite" not in capsys.readouterr().out
    rewrites = {
        name: json.loads((repo / name / "1" / "model.json").read_text())["onnx"]["subpixel_rewrites"]
        for name in ("fast", "traced")
    }
    assert rewrites["fast"] and rewrites["traced"] == []
    batch = np.random.default_rng(0).integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
    fast, traced = (ort_run(repo / name / "1" / "model.onnx", batch) for name in ("fast", "traced"))
    assert np.abs(fast.astype(int) - traced).max() <= 1


# --- what the user gave is not a generator checkpoint: say what it is and what to give instead


def _export_error(argv, capsys, code=2) -> str:
    """Run `pixforge export ARGV`, expect exit `code` and one `pixforge export: error: ` line."""
    assert main(["export", *argv]) == code, argv
    err = capsys.readouterr().err
    assert err.startswith("pixforge export: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


def _run_dir(root, prefixes=("generator",), steps=(100, 200)):
    """A `pixforge train` run directory: generator checkpoints per step, resume state, latest links."""
    from pixforge.training.checkpoint import (
        generator_filename,
        save_resume_state,
        update_latest_link,
        write_latest,
    )

    ckpts = root / "checkpoints"
    ckpts.mkdir(parents=True)
    for prefix in prefixes:
        for step in steps:
            path = ckpts / generator_filename(prefix, step)
            _pixforge_checkpoint(path, step=step, name=prefix)
            update_latest_link(path, prefix)
    save_resume_state(ckpts / "resume-state.pt", {"step": steps[-1], "nets": {}, "optimizers": {}})
    write_latest(ckpts, {"step": steps[-1], "resume": "resume-state.pt"})
    return ckpts


def test_export_cli_text_file_says_it_is_no_checkpoint(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello world\n")  # torch.load: "KeyError: 101" (the 'e' read as a pickle opcode)
    repo = ["--name", "x", "--repo", str(tmp_path / "models")]
    err = _export_error([str(notes), *repo], capsys)
    assert f"{notes} is not a checkpoint: it holds no torch.save data (a text file)" in err
    assert "`pixforge train` printed last (`checkpoint: PATH`)" in err and "KeyError" not in err
    err = _export_error([str(notes), "--from", "junyanz", "--task", "style_translation", *repo], capsys)
    assert "(a text file); give a junyanz generator file (latest_net_G.pth)" in err and "101" not in err
    # an exported model given as a checkpoint: the flag that re-exports it
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x08\x12\x07pytorch")
    err = _export_error([str(onnx_file), *repo], capsys)
    assert err.endswith("is an ONNX model, not a checkpoint; to re-export it, add --from onnx")


def test_export_cli_resume_state_names_the_generator_checkpoint_to_export(tmp_path, capsys):
    ckpts = _run_dir(tmp_path / "run")
    resume = ckpts / "resume-state.pt"
    err = _export_error([str(resume), "--name", "x", "--repo", str(tmp_path / "models")], capsys)
    assert f"{resume} is a training resume state" in err and "pixforge train --resume" in err
    assert "not a generator checkpoint" in err
    newest = ckpts / "generator-step0000200.pt"
    assert err.endswith(f"export {newest} (the newest generator checkpoint next to it)"), err
    assert "junyanz" not in err  # not the hint for a foreign file

    # CycleGAN: both generators of the newest step; none left: what to look for
    cyclegan = _run_dir(tmp_path / "cyclegan", prefixes=("G_A", "G_B"))
    err = _export_error([str(cyclegan / "resume-state.pt"), "--name", "x", "--repo", "m"], capsys)
    assert f"export {cyclegan / 'G_A-step0000200.pt'} or {cyclegan / 'G_B-step0000200.pt'} " in err
    for path in cyclegan.glob("G_*.pt"):
        path.unlink()
    err = _export_error([str(cyclegan / "resume-state.pt"), "--name", "x", "--repo", "m"], capsys)
    assert "not a generator checkpoint; give the generator checkpoint" in err and "generator-step*.pt" in err


def test_export_cli_directory_suggests_the_newest_generator_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    ckpts = _run_dir(run, steps=(900, 1000))  # 1000 sorts before 900 by name
    newest = ckpts / "generator-step0001000.pt"
    for folder in (run, ckpts):
        err = _export_error([str(folder), "--name", "x", "--repo", str(tmp_path / "models")], capsys)
        assert f"{folder} is a directory, not a checkpoint file" in err and "not found" not in err
        assert err.endswith(f"export {newest} (the newest generator checkpoint in it)"), err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _export_error([str(empty), "--name", "x", "--repo", str(tmp_path / "models")], capsys)
    assert err.endswith(
        f"{empty} is a directory, not a checkpoint file; give the generator checkpoint "
        "`pixforge train` printed last (`checkpoint: PATH`)"
    )
    # a pruned step: the newest one left beside it
    err = _export_error([str(ckpts / "generator-step0000300.pt"), "--name", "x", "--repo", "m"], capsys)
    assert "checkpoint not found" in err and err.endswith(
        f"export {newest} (the newest generator checkpoint in that folder)"
    )


@pytest.mark.parametrize("value", ["-5", "0", "abc", "1.5"])
def test_export_cli_tile_size_must_be_a_positive_whole_number(value, tmp_path, capsys):
    # refused before the checkpoint is even looked at (the path does not exist)
    argv = ["export", str(tmp_path / "missing.pt"), "--name", "x", "--repo", "m", f"--tile-size={value}"]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage error
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "pixforge export: error: " in err and "--tile-size" in err and value in err, err
    assert "not found" not in err and "Traceback" not in err


def test_export_cli_every_error_has_the_error_prefix(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "G.pt"
    _pixforge_checkpoint(ckpt)
    repo = ["--name", "x", "--repo", str(tmp_path / "models")]
    for argv in (
        [str(tmp_path / "missing.pt")],
        [str(ckpt), "--task", "colorization"],
        [str(ckpt), "--opset", "9"],
        [str(ckpt), "--tile-size", "30"],  # not a multiple of the model's size multiple: found later
        [str(ckpt), "--int8"],
        [str(ckpt), "--parity-images", str(tmp_path / "nothing")],
    ):
        err = _export_error([*argv, *repo], capsys)
        assert "does not describe an exportable model" not in err  # flags are not the checkpoint's
    from pixforge.training import export_cli
    from pixforge.training.export import OnnxExportError, ParityError

    def breaks(*_args, **_kwargs):
        raise OnnxExportError("the exported graph fails onnx.checker: [ShapeInferenceError]\n  (Conv): bad")

    monkeypatch.setattr(export_cli, "export_generator", breaks)
    err = _export_error([str(ckpt), *repo, "--tile-size", "64"], capsys)  # one line
    assert err.endswith("fails onnx.checker: [ShapeInferenceError] (Conv): bad")

    def fails(*_args, **_kwargs):
        raise ParityError("ONNX output does not match PyTorch:\n  64x64: max diff 9")

    monkeypatch.setattr(export_cli, "export_generator", fails)
    assert main(["export", str(ckpt), *repo, "--tile-size", "64"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "pixforge export: error: parity check FAILED, nothing written", lines
    assert lines[1:] == ["ONNX output does not match PyTorch:", "  64x64: max diff 9"]

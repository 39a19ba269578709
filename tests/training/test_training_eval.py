"""`pixforge eval`: per-task metrics on tiny models whose right answer is known, outputs, exit-2 errors.

Models with a known answer, so the assertions can fail:
- super-resolution: a tiny U-Net on the bicubic-upsampled input with all weights zero predicts a
  zero residual, i.e. it *is* bicubic upscaling: gain ~0 dB, same sharpness as the baseline;
- colourisation: zero weights predict ab = 0, i.e. the gray input comes back (colourfulness ~0);
- paired / style: hand-built ONNX graphs that permute the colour channels (exact translators
  between synthetic domains), and one untrained exported ResNet for the "numbers are sane" check.
"""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch
from training_helpers import gather_model, smooth_image, write_rgb

from pixforge.cli import main
from pixforge.training.data.files import read_rgb
from pixforge.training.data.super_resolution import downscale, resize_bicubic_aa
from pixforge.training.export import ExportConfig, export_generator
from pixforge.training.metrics import psnr_y
from pixforge.training.model_eval.files import image_groups
from pixforge.training.model_eval.super_resolution import gradient_energy, sharpness_ratio
from pixforge.training.registry import GeneratorConfig, build_generator

TINY = {"ngf": 4, "init_type": "xavier", "init_gain": 1.0}


def _export(repo, name, gen_kwargs, zero=False, **export_kwargs):
    torch.manual_seed(0)
    gen = build_generator(GeneratorConfig(**{**TINY, **gen_kwargs}))
    if zero:
        with torch.no_grad():
            for p in gen.parameters():
                p.zero_()
    cfg = ExportConfig(verify=False, **export_kwargs)
    export_generator(gen, cfg, repo, name, log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("models")
    _export(
        repo,
        "sr",
        {"arch": "unet", "depth": 3, "scale": 2, "upsample": "bicubic"},
        zero=True,
        task="super_resolution",
        scale=2,
    )
    _export(
        repo,
        "colour",
        {"arch": "unet", "depth": 3, "in_channels": 1, "out_channels": 2},
        zero=True,
        task="colorization",
        color_space="lab",
    )
    _export(repo, "untrained", {"arch": "resnet", "n_blocks": 1}, task="style_translation")
    gather_model(repo, "swap", "style_translation", (2, 1, 0))  # red <-> blue: its own reverse
    gather_model(repo, "roll", "paired_translation", (1, 2, 0), direction="AtoB")
    gather_model(
        repo,
        "roll-b2a",
        "paired_translation",
        (1, 2, 0),
        training_config=json.dumps({"data": {"direction": "BtoA"}}),
    )
    return repo


def _eval(capsys, repo, *argv):
    rc = main(["eval", "--repo", str(repo), *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _photos(folder, n, seed, h=40, w=48, sigma=None):
    """Smooth random photos; `sigma` (px) makes sharper ones than training_helpers.smooth_image."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        if sigma is None:
            img = smooth_image(rng, h, w)
        else:
            img = cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (0, 0), sigma)
            img = np.round((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
        write_rgb(folder / f"{i}.png", img)


def _domain(folder, n, seed, red: bool):
    """Smooth images that are clearly red (domain A) or clearly blue (domain B)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = (smooth_image(rng, 32, 32).astype(np.float32) * 0.25).astype(np.uint8)
        img[..., 0 if red else 2] += 180
        write_rgb(folder / f"{i}.png", img)


# ------------------------------------------------------------------------------------ super-resolution


def test_eval_sr_bicubic_model_has_zero_gain_per_subfolder(tmp_path, repo, capsys):
    _photos(tmp_path / "data" / "Set5", 2, seed=1, sigma=1.0)
    _photos(tmp_path / "data" / "Set14", 1, seed=2, h=35, w=50, sigma=1.0)  # cropped to 34x50, LR padded
    rc, out, err = _eval(
        capsys, repo, "--model", "sr", "--data", tmp_path / "data", "--out", tmp_path / "out"
    )
    assert rc == 0, err
    assert "| Set14 | 1 |" in out and "| Set5 | 2 |" in out and "| all | 3 |" in out

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ["Set14", "Set5", "all"]
    assert results["task"] == "super_resolution" and results["counts"] == {"images": 3, "skipped": 0}
    assert results["model"]["name"] == "sr" and results["model"]["version"] == 1
    assert len(results["model"]["sha256"]) == 64 and results["model"]["provider"].endswith(
        "ExecutionProvider"
    )
    for row in results["rows"]:
        # a zero-residual model is bicubic upscaling, close to the baseline in PSNR and sharpness
        assert abs(row["gain_db"]) < 1.0, row
        assert 25 < row["psnr_y"] < 40 and 0.7 < row["ssim_y"] < 1
        assert row["sharpness"] == pytest.approx(row["sharpness_bicubic"], abs=0.1)
        assert 0.3 < row["sharpness_bicubic"] < 0.8  # bicubic is blurrier than the ground truth

    with open(tmp_path / "out" / "per_image.csv") as f:
        records = list(csv.DictReader(f))
    assert [r["set"] for r in records] == ["Set14", "Set5", "Set5"]
    # Known answers per image: the model is torch's bicubic (a = -0.75) inside the graph, the
    # baseline the literature's antialiased bicubic (a = -0.5); both recomputed here.
    for record in records:
        hr = read_rgb(tmp_path / "data" / record["set"] / record["file"])
        hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
        lr = downscale(hr, 2)
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].float()
        up = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=False)
        model = up.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        baseline = resize_bicubic_aa(lr, *hr.shape[:2])
        assert float(record["psnr_y"]) == pytest.approx(psnr_y(model, hr, 2), abs=0.05)
        assert float(record["psnr_y_bicubic"]) == pytest.approx(
            psnr_y(baseline, hr, 2), abs=1e-3
        )  # CSV rounding
    grid = cv2.imread(str(tmp_path / "out" / "samples.png"))
    assert grid is not None and grid.shape[0] > 300  # 3 sample rows of 160 px


def test_eval_sharpness_ratio_sees_blur():
    img = smooth_image(np.random.default_rng(3), 64, 64)
    blurred = cv2.GaussianBlur(img, (0, 0), 1.5)
    assert sharpness_ratio(img, img) == pytest.approx(1.0)
    assert sharpness_ratio(blurred, img, border=2) < 0.8
    assert gradient_energy(np.full((16, 16, 3), 77, np.uint8)) == 0.0


def test_eval_image_groups_flat_and_nested(tmp_path):
    _photos(tmp_path / "flat", 3, seed=0, h=16, w=16)
    assert [(n, len(f)) for n, f in image_groups(tmp_path / "flat")] == [("all", 3)]
    assert [(n, len(f)) for n, f in image_groups(tmp_path / "flat", max_images=2)] == [("all", 2)]
    _photos(tmp_path / "flat" / "sub" / "deeper", 2, seed=1, h=16, w=16)
    assert [(n, len(f)) for n, f in image_groups(tmp_path / "flat")] == [(".", 3), ("sub", 2)]


# ------------------------------------------------------------------------------------ colourisation


def test_eval_colorization_skips_gray_truth_and_scores_gray_output(tmp_path, repo, capsys):
    _photos(tmp_path / "photos" / "a", 3, seed=4)
    gray = cv2.cvtColor(smooth_image(np.random.default_rng(5), 40, 48), cv2.COLOR_RGB2GRAY)
    write_rgb(tmp_path / "photos" / "a" / "gray.png", np.repeat(gray[:, :, None], 3, axis=2))
    rc, out, err = _eval(
        capsys, repo, "--model", "colour", "--data", tmp_path / "photos", "--out", tmp_path / "o"
    )
    assert rc == 0, err
    assert "1 grayscale ground-truth image(s) skipped" in out
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["counts"]["images"] == 3 and results["counts"]["skipped_grayscale"] == 1
    m = results["metrics"]
    # ab = 0: the model returns (about) the gray input, with no colour, while the photos have plenty
    assert m["colorfulness"] < 2.0 < 20.0 < m["colorfulness_gt"]
    assert m["colorfulness_gray"] == pytest.approx(0.0, abs=1e-9)
    assert abs(m["psnr"] - m["psnr_gray"]) < 0.3 and m["psnr_gray"] < 30


def test_eval_colorization_renders_like_the_server(tmp_path, capsys):
    """A photo larger than render_size: local eval runs the same smaller copy the server runs."""
    from loopback import loopback_values

    from pixforge.service.config import load_config
    from pixforge.service.server import serve

    models = tmp_path / "models"
    models.mkdir()
    _export(
        models,
        "colour",
        {"arch": "unet", "depth": 3, "in_channels": 1, "out_channels": 2},
        task="colorization",
        color_space="lab",
    )  # random weights: the output depends on the render
    _photos(tmp_path / "data", 2, seed=8)  # 40 x 48: larger than a 32-pixel render

    def results(name, *argv):
        rc, out, err = _eval(
            capsys, models, "--model", "colour", "--data", tmp_path / "data", "--out", tmp_path / name, *argv
        )
        assert rc == 0, err
        return out, json.loads((tmp_path / name / "results.json").read_text())["metrics"]

    handle = serve(load_config(overrides=loopback_values(models, batching__shape_bucket=0), env={}))
    try:
        # the server's own render_size is 512: --render-size travels with each request
        _, remote = results("remote", "--server", f"127.0.0.1:{handle.port}", "--render-size", "32")
    finally:
        handle.stop(0)
    out, rendered = results("local32", "--render-size", "32")
    _, whole = results("local")  # the default render size (512) keeps these photos whole
    assert "rendered at <= 32 px" in out
    assert rendered["psnr"] == pytest.approx(remote["psnr"], abs=0.05)
    assert abs(whole["psnr"] - rendered["psnr"]) > 0.05


# ------------------------------------------------------------------------------------ paired translation


def test_eval_paired_direction_comes_from_metadata(tmp_path, repo, capsys):
    rng = np.random.default_rng(6)
    for i in range(2):
        a = smooth_image(rng, 32, 32)
        # B = A with its channels rolled: exactly what the "roll" model does to A
        write_rgb(tmp_path / "pairs" / f"{i}.png", np.concatenate([a, a[..., [1, 2, 0]]], axis=1))
    rc, out, err = _eval(
        capsys, repo, "--model", "roll", "--data", tmp_path / "pairs", "--out", tmp_path / "o1"
    )
    assert rc == 0, err
    exact = json.loads((tmp_path / "o1" / "results.json").read_text())
    assert exact["direction"] == "AtoB" and exact["metrics"]["psnr"] == 100.0  # identical: PSNR cap
    assert exact["metrics"]["ssim"] == pytest.approx(1.0)
    # the output is the target: the same checkerboard energy, reported side by side
    assert exact["metrics"]["checkerboard_db"] == pytest.approx(exact["metrics"]["checkerboard_db_target"])
    assert "checkerboard output / target (dB)" in out

    rc, out, err = _eval(
        capsys, repo, "--model", "roll-b2a", "--data", tmp_path / "pairs", "--out", tmp_path / "o2"
    )
    assert rc == 0, err
    wrong_way = json.loads((tmp_path / "o2" / "results.json").read_text())
    assert wrong_way["direction"] == "BtoA" and wrong_way["metrics"]["psnr"] < 30
    assert "direction BtoA" in out


def test_eval_precision_runs_that_variant_file(tmp_path, capsys):
    repo = tmp_path / "models"
    gather_model(repo, "roll", "paired_translation", (1, 2, 0), direction="AtoB")
    # an "int8 variant" that is visibly different: no channel roll at all
    gather_model(
        tmp_path / "other", "roll", "paired_translation", (0, 1, 2), direction="AtoB", precision="int8"
    )
    (tmp_path / "other" / "roll" / "1" / "model.onnx").rename(repo / "roll" / "1" / "model.int8.onnx")
    rng = np.random.default_rng(7)
    a = smooth_image(rng, 32, 32)
    write_rgb(tmp_path / "pairs" / "0.png", np.concatenate([a, a[..., [1, 2, 0]]], axis=1))
    tables = {}
    for precision in (None, "int8"):
        flag = ["--precision", precision] if precision else []
        rc, out, err = _eval(capsys, repo, "--model", "roll", "--data", tmp_path / "pairs", *flag)
        assert rc == 0, err
        name = "model.int8.onnx (int8)" if precision else "model.onnx (fp32)"
        assert name in out.splitlines()[0]
        tables[precision] = out
    # the reference rolls the channels exactly (PSNR at its 100 dB cap); the variant file does not
    assert "100.00" in tables[None] and "100.00" not in tables["int8"]
    for argv, message in (
        (["--precision", "fp16"], "has no fp16 file (precisions there: fp32, int8)"),
        (["--precision", "int8", "--server", "127.0.0.1:1"], "--precision picks a local model file"),
    ):
        rc, out, err = _eval(capsys, repo, "--model", "roll", "--data", tmp_path / "pairs", *argv)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------ style translation


def test_eval_style_exact_translator_transfers_and_cycles(tmp_path, repo, capsys):
    data = tmp_path / "a2b"
    for split, n in (("train", 8), ("test", 4)):
        _domain(data / f"{split}A", n, seed=len(split), red=True)
        _domain(data / f"{split}B", n, seed=len(split) + 10, red=False)
    rc, out, err = _eval(
        capsys,
        repo,
        "--model",
        "swap",
        "--reverse-model",
        "swap",
        "--data",
        data,
        "--classifier-steps",
        60,
        "--out",
        tmp_path / "o",
    )
    assert rc == 0, err
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    clf = results["classifier"]
    assert clf["trained_on"] == "trainA / trainB" and clf["heldout_images"] == {"A": 4, "B": 4}
    assert clf["balanced_accuracy"] == 1.0
    a2b, b2a = results["rows"]
    assert (a2b["name"], a2b["images"], b2a["name"], b2a["images"]) == ("A→B", 4, "B→A", 4)
    for row in (a2b, b2a):
        assert row["transfer_rate"] == 1.0 and row["baseline_rate"] == 0.0
        assert row["cycle_psnr"] == 100.0  # the swap undoes itself exactly
        assert 0 < row["content_psnr"] < 20
    assert "| A→B | 4 | 100.0% | 0.0% |" in out
    assert results["reverse_model"]["name"] == "swap"
    assert (tmp_path / "o" / "samples.png").is_file()


def test_eval_style_untrained_model_without_train_folders(tmp_path, repo, capsys):
    data = tmp_path / "a2b"
    _domain(data / "testA", 4, seed=1, red=True)
    _domain(data / "testB", 4, seed=2, red=False)
    rc, out, err = _eval(
        capsys, repo, "--model", "untrained", "--data", data, "--source", "B", "--classifier-steps", 40
    )
    assert rc == 0, err
    assert "even-indexed testA / testB" in out and "needs --reverse-model" in out
    row = next(line for line in out.splitlines() if line.startswith("| B→A | 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    transfer, baseline = (float(c.rstrip("%")) / 100 for c in cells[2:4])
    assert 0.0 <= transfer <= 1.0 and baseline == 0.0  # held-out raw blue images are not called red
    assert cells[5] == "n/a" and math.isfinite(float(cells[4]))


# ------------------------------------------------------------------------------------ errors


def test_eval_bad_input_is_one_line_and_exit_2(tmp_path, repo, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "style" / "testA").mkdir(parents=True)
    _photos(tmp_path / "photos", 1, seed=0, h=16, w=16)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("not an image")
    gray = cv2.cvtColor(smooth_image(np.random.default_rng(5), 40, 48), cv2.COLOR_RGB2GRAY)
    write_rgb(tmp_path / "grayonly" / "gray.png", np.repeat(gray[:, :, None], 3, axis=2))
    cases = [
        # nothing measurable is a failure, not an empty table with exit 0
        (["--model", "sr", "--data", tmp_path / "junk"], "could be evaluated (1 skipped; first: "),
        (["--model", "colour", "--data", tmp_path / "grayonly"], "could be evaluated"),
        (
            ["--model", "sr", "--data", tmp_path / "photos", "--out", tmp_path / "photos" / "o"],
            "inside the data",
        ),
        (["--model", "sr", "--data", tmp_path / "photos", "--out", tmp_path / "junk" / "a.png"], "is a file"),
        (["--model", "nope", "--data", tmp_path / "photos"], "no model 'nope'"),
        (["--model", "sr", "--version", 7, "--data", tmp_path / "photos"], "no version 7"),
        (["--model", "sr", "--data", tmp_path / "empty"], "no images under"),
        (["--model", "sr", "--data", tmp_path / "missing"], "does not exist"),
        (["--model", "swap", "--data", tmp_path / "style"], "missing: testB"),
        (["--model", "sr", "--reverse-model", "swap", "--data", tmp_path / "photos"], "applies to style"),
        (["--model", "sr", "--max-images", -1, "--data", tmp_path / "photos"], "--max-images"),
    ]
    for argv, message in cases:
        rc, out, err = _eval(capsys, repo, *argv)
        assert rc == 2, (argv, out, err)
        assert err.startswith("pixforge eval: error: ") and message in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ through a server


def test_eval_through_a_server_matches_local(tmp_path, repo, capsys):
    from loopback import loopback_values

    from pixforge.service.config import load_config
    from pixforge.service.server import serve

    _photos(tmp_path / "data", 2, seed=7, sigma=1.0)
    config = loopback_values(repo, grace_seconds=0.5, log_level="WARNING")
    handle = serve(load_config(overrides=config, env={}))
    try:
        server = f"127.0.0.1:{handle.port}"
        rc, out, err = _eval(
            capsys,
            repo,
            "--model",
            "sr",
            "--data",
            tmp_path / "data",
            "--server",
            server,
            "--out",
            tmp_path / "remote",
        )
        assert rc == 0, err
        assert f"server {server}" in out
        rc, _, err = _eval(capsys, repo, "--model", "nope", "--data", tmp_path / "data", "--server", server)
        assert rc == 2 and "unknown model 'nope'" in err
    finally:
        handle.stop(0)
    rc, _, err = _eval(
        capsys, repo, "--model", "sr", "--data", tmp_path / "data", "--out", tmp_path / "local"
    )
    assert rc == 0, err
    remote, local = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("remote", "local"))
    assert remote["model"]["location"] == f"server {server}" and remote["model"]["sha256"] is None
    # PNG transport is lossless; the server may pad to a larger shape bucket, which moves border pixels
    assert [r["images"] for r in remote["rows"]] == [r["images"] for r in local["rows"]] == [2]
    for key in ("psnr_y", "psnr_y_bicubic", "gain_db"):
        assert remote["rows"][0][key] == pytest.approx(local["rows"][0][key], abs=0.05)


def _keys_upsample_1d(x: np.ndarray, scale: int, a: float = -0.5) -> np.ndarray:
    """Reference cubic-convolution upsampling along axis 0 (half-pixel centres, clamped borders)."""

    def w(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    n = x.shape[0]
    out = np.zeros((n * scale, *x.shape[1:]))
    for o in range(n * scale):
        src = (o + 0.5) / scale - 0.5
        base = int(np.floor(src))
        for k in range(base - 1, base + 3):
            out[o] += w(src - k) * x[min(max(k, 0), n - 1)]
    return out


def test_eval_sr_baseline_is_the_literature_bicubic():
    # The "Bicubic" row of SR papers is MATLAB imresize: Keys' kernel with a = -0.5. OpenCV's
    # INTER_CUBIC (a = -0.75) scores differently, so the baseline is checked against the kernel.
    from pixforge.training.model_eval.super_resolution import measure

    rng = np.random.default_rng(0)
    hr = cv2.GaussianBlur(rng.integers(0, 256, (48, 40, 3)).astype(np.float32), (0, 0), 1.5)
    hr = np.clip(hr * 3 - 255, 0, 255).astype(np.uint8)  # full contrast: the kernels differ visibly

    class Identityish:
        info = type("Info", (), {"scale": 4})()

        def __call__(self, lr):
            return cv2.resize(lr, (lr.shape[1] * 4, lr.shape[0] * 4), interpolation=cv2.INTER_NEAREST)

    record, crops = measure(Identityish(), hr, 4)
    bicubic = crops[0]
    from pixforge.training.data.super_resolution import downscale

    lr = downscale(hr, 4).astype(np.float64)
    ref = _keys_upsample_1d(_keys_upsample_1d(lr, 4).transpose(1, 0, 2), 4).transpose(1, 0, 2)
    ref = np.clip(np.floor(ref + 0.5), 0, 255)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(bicubic[inner].astype(int) - ref[inner]).max() <= 1
    cv2_cubic = cv2.resize(lr.astype(np.uint8), (40, 48), interpolation=cv2.INTER_CUBIC)
    assert np.abs(cv2_cubic[inner].astype(int) - ref[inner]).max() > 2  # the test can tell them apart

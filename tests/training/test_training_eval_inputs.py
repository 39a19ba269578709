"""`pixforge eval` on inputs it cannot score: folders that are not A|B pairs for a paired model,
images too small for a task's metrics; each refusal names the real sizes, on one line.

The models are hand-built ONNX graphs that permute the colour channels (instant, exact); for the
too-small cases they never run, since the size is checked before the model is called.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from training_helpers import gather_model, make_photos, make_unaligned, smooth_image, write_rgb

from pixforge.cli import main
from pixforge.training.data.super_resolution import resize_bicubic_aa
from pixforge.training.metrics import MetricError
from pixforge.training.model_eval.colorization import measure as colour_measure
from pixforge.training.model_eval.super_resolution import measure as sr_measure


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("models")
    gather_model(repo, "roll", "paired_translation", direction="AtoB")
    gather_model(repo, "sr", "super_resolution", scale=2)
    return repo


def _eval(capsys, repo, *argv):
    rc = main(["eval", "--repo", str(repo), *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _pairs(folder, n, seed=0, size=32):
    """A|B files whose B half is A with its channels rolled: what the "roll" model makes of A."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = smooth_image(rng, size, size)
        write_rgb(folder / f"{i}.png", np.concatenate([a, a[..., [1, 2, 0]]], axis=1))


def _one_error_line(rc, out, err) -> str:
    assert rc == 2, (out, err)
    assert err.startswith("pixforge eval: error: ") and len(err.strip().splitlines()) == 1, err
    return err.strip()


# ------------------------------------------------------------------------------ A|B layout


def test_paired_model_on_square_photos_is_refused(tmp_path, repo, capsys):
    make_photos(tmp_path / "photos", n=5, h=32, w=32)
    err = _one_error_line(*_eval(capsys, repo, "--model", "roll", "--data", tmp_path / "photos"))
    assert f"{tmp_path / 'photos' / 'sub'}: 5 of 5 files checked are not side-by-side A|B pairs" in err
    assert "is 32x32" in err and "paired_translation models need A|B pair files" in err


def test_paired_model_on_a_cyclegan_folder_points_at_style_translation(tmp_path, repo, capsys):
    data = make_unaligned(tmp_path / "a2o")
    err = _one_error_line(*_eval(capsys, repo, "--model", "roll", "--data", data))
    assert "not side-by-side A|B pairs" in err
    assert f"{data} holds trainA/ and trainB/" in err and "style_translation" in err


def test_a_stray_photo_among_pairs_is_skipped_with_its_real_size(tmp_path, repo, capsys):
    _pairs(tmp_path / "pairs", 3)
    write_rgb(tmp_path / "pairs" / "photo.png", smooth_image(np.random.default_rng(1), 32, 32))
    write_rgb(tmp_path / "pairs" / "tiny.png", smooth_image(np.random.default_rng(2), 10, 20))
    rc, out, err = _eval(
        capsys, repo, "--model", "roll", "--data", tmp_path / "pairs", "--out", tmp_path / "o"
    )
    assert rc == 0, err
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["counts"]["images"] == 3 and results["metrics"]["psnr"] == 100.0
    reasons = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in results["skipped"]}
    assert reasons == {
        "photo.png": "32x32 is not a side-by-side A|B pair (width / height 1.75 to 2.25, e.g. 512x256)",
        "tiny.png": "20x10 is smaller than the 32x16 minimum of A|B evaluation (16x16 per half)",
    }


# ------------------------------------------------------------------------------ too small


def test_too_small_for_sr_names_the_real_size_and_the_minimum(tmp_path, repo, capsys):
    data = tmp_path / "tiny"
    write_rgb(data / "a.png", np.full((3, 3, 3), 128, np.uint8))
    err = _one_error_line(*_eval(capsys, repo, "--model", "sr", "--data", data))
    assert err == (
        f"pixforge eval: error: no image in {data} could be evaluated "
        f"(1 skipped; first: {data / 'a.png'}: 3x3 is smaller than the 16x16 minimum of x2 evaluation)"
    )


def _bicubic_sr(scale):
    """A perfect-shape SR "model": bicubic upscaling of its LR input."""
    return lambda lr: resize_bicubic_aa(lr, lr.shape[0] * scale, lr.shape[1] * scale)


@pytest.mark.parametrize(("h", "w"), [(3, 3), (5, 5), (9, 9), (12, 12), (19, 19), (40, 19), (19, 40)])
def test_sr_reason_is_the_input_size_before_any_crop(h, w):
    image = smooth_image(np.random.default_rng(0), h, w)
    with pytest.raises(MetricError) as info:
        sr_measure(_bicubic_sr(4), image, 4)
    assert str(info.value) == f"{w}x{h} is smaller than the 20x20 minimum of x4 evaluation"


@pytest.mark.parametrize(("scale", "side"), [(2, 16), (3, 18), (4, 20)])
def test_sr_minimum_is_exactly_the_smallest_scorable_size(scale, side):
    image = smooth_image(np.random.default_rng(0), side, side)
    record, _ = sr_measure(_bicubic_sr(scale), image, scale)
    assert np.isfinite(record["ssim_y"])
    with pytest.raises(MetricError, match=f"{side - 1}x{side - 1} is smaller than the {side}x{side}"):
        sr_measure(_bicubic_sr(scale), image[: side - 1, : side - 1], scale)


def test_too_small_for_colourisation_names_the_real_size():
    with pytest.raises(MetricError) as info:
        colour_measure(lambda gray: gray, smooth_image(np.random.default_rng(0), 8, 30))
    assert str(info.value) == "30x8 is smaller than the 11x11 minimum of colourisation evaluation"


def test_gray_only_folder_error_has_no_footnotes(tmp_path, capsys):
    """The notes under a table (method, skipped counts) are not glued onto the error line."""
    repo = tmp_path / "models"
    gather_model(repo, "colour", "colorization")
    gray = cv2.cvtColor(smooth_image(np.random.default_rng(5), 40, 48), cv2.COLOR_RGB2GRAY)
    write_rgb(tmp_path / "gray" / "g.png", np.repeat(gray[:, :, None], 3, axis=2))
    err = _one_error_line(*_eval(capsys, repo, "--model", "colour", "--data", tmp_path / "gray"))
    assert err == (
        f"pixforge eval: error: no image in {tmp_path / 'gray'} could be evaluated "
        "(0 skipped; 1 grayscale photo(s) left out, no colours to recover)"
    )

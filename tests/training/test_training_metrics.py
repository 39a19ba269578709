"""Metrics on hand-computed cases."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from pixforge.training import metrics as M


def test_psnr_of_known_mse():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 10, np.uint8)  # MSE = 100
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    half = a.copy()
    half[:4] = 20  # half the pixels off by 20: MSE = 200
    assert M.psnr(a, half) == pytest.approx(10 * math.log10(255**2 / 200))


def test_psnr_identical_is_inf_and_mean_caps_it():
    a = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert M.psnr(a, a) == math.inf
    assert M.mean_finite([math.inf, 20.0]) == pytest.approx((M.PSNR_CAP + 20.0) / 2)


def test_ssim_identity_and_ordering():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert M.ssim(x, x) == pytest.approx(1.0)
    light = np.clip(x + rng.normal(0, 5, x.shape), 0, 255)
    heavy = np.clip(x + rng.normal(0, 40, x.shape), 0, 255)
    assert 1.0 > M.ssim(x, light) > M.ssim(x, heavy) > 0.0


def test_ssim_constant_images_depend_on_means_only():
    # sigma terms vanish: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 150.0)
    c1 = (0.01 * 255) ** 2
    assert M.ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))


def test_ssim_rejects_tiny_and_mismatched():
    with pytest.raises(M.MetricError):
        M.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    with pytest.raises(M.MetricError):
        M.psnr(np.zeros((8, 8)), np.zeros((8, 9)))


def test_y_channel_matlab_coefficients():
    assert M.rgb_to_y(np.zeros((1, 1, 3))) == pytest.approx(16.0)
    assert M.rgb_to_y(np.full((1, 1, 3), 255.0)) == pytest.approx(235.0)
    red = np.zeros((1, 1, 3))
    red[..., 0] = 255
    assert M.rgb_to_y(red) == pytest.approx(16 + 65.481)


def test_psnr_y_crops_the_border():
    a = np.full((20, 20, 3), 128, np.uint8)
    b = a.copy()
    b[:2] = 0  # only the border differs
    assert M.psnr_y(a, b, border=2) == math.inf
    assert M.psnr_y(a, b, border=0) < 40
    assert M.ssim_y(a, a, border=4) == pytest.approx(1.0)


def test_colorfulness_hand_cases():
    assert M.colorfulness(np.full((4, 4, 3), 77, np.uint8)) == 0.0  # grey
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200  # rg = 200, yb = 100 everywhere: only the mean term
    assert M.colorfulness(red) == pytest.approx(0.3 * math.sqrt(200**2 + 100**2))


def test_color_histogram_distance():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    assert M.color_histogram_distance(imgs, imgs) == 0.0
    black, white = [np.zeros((4, 4, 3), np.uint8)], [np.full((4, 4, 3), 255, np.uint8)]
    assert M.color_histogram_distance(black, white) == pytest.approx(1.0)


def test_frechet_distance_hand_cases():
    mu, cov = np.zeros(3), np.eye(3)
    assert M.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    # diagonal: |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    expected = 3.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert M.frechet_distance(np.ones(3), s1, np.zeros(3), s2) == pytest.approx(expected)


def test_fid_needs_weights_file(tmp_path):
    with pytest.raises(M.MetricError, match="weights file"):
        M.FIDScorer(tmp_path / "missing.pth")


def test_fid_without_torchvision_is_a_clear_error(tmp_path, monkeypatch):
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails like an absent package
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(M.MetricError, match="torchvision"):
        M.FIDScorer(weights)


def test_checkerboard_db_is_near_zero_for_smooth_images_and_high_for_a_grid():
    from pixforge.training.metrics import checkerboard_db

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:128].astype(np.float64)
    photo = 120 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 4, (128, 128))
    photo = np.clip(np.dstack([photo, photo * 0.9, photo * 0.8]), 0, 255)
    clean = checkerboard_db(photo)
    # the grid a stride-2 transposed convolution leaves: +-3 grey levels every other pixel
    grid = ((x.astype(int) % 2) ^ (y.astype(int) % 2)) * 6.0 - 3.0
    gridded = checkerboard_db(np.clip(photo + grid[..., None], 0, 255))
    assert abs(clean) < 3.0
    assert gridded > clean + 10.0
    from pixforge.training.metrics import MetricError

    with pytest.raises(MetricError):
        checkerboard_db(np.zeros((8, 8, 3)))

"""training/image_ops: the pixel conventions shared by datasets and the export graph.

Lab numbers are checked against OpenCV's float32 conversions, the reference docs/model-contract.md
("Pixel semantics") promises to match.
"""

import cv2
import numpy as np
import pytest
import torch

from pixforge.training import image_ops


def _test_image(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    # primaries, black/white, near-black greys (the linear segments of sRGB and of f(t)) and a ramp
    img[0, :10] = [
        [0, 0, 0],
        [255, 255, 255],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [1, 1, 1],
        [3, 3, 3],
        [10, 10, 10],
        [128, 128, 128],
        [255, 255, 0],
    ]
    img[1] = np.linspace(0, 255, size).astype(np.uint8)[:, None]
    return img


def test_export_uint8_unit_round_trip_is_exact():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    unit = image_ops.uint8_to_unit(x)
    assert unit.dtype == torch.float32
    assert unit.min().item() == -1.0 and unit.max().item() == 1.0
    assert torch.equal(image_ops.unit_to_uint8(unit), x)


def test_export_unit_to_uint8_clamps_and_rounds_half_up():
    # 0.0 -> 127.5 exactly -> 128; out of range clamps; everything else agrees with floor(v + 0.5)
    vals = torch.tensor([-2.0, 0.0, 1.5]).reshape(1, 3, 1)
    assert image_ops.unit_to_uint8(vals).flatten().tolist() == [0, 128, 255]
    x = torch.from_numpy(np.random.default_rng(5).uniform(-1.2, 1.2, (3, 32, 32)).astype(np.float32))
    ref = np.floor(np.clip((x.numpy() + 1.0) * 127.5, 0, 255) + 0.5).astype(np.uint8)
    got = image_ops.unit_to_uint8(x).numpy()
    assert (np.abs(got.astype(int) - ref.astype(int)) <= 1).all()
    assert (got == ref).mean() > 0.999


def test_export_rgb_to_lab_matches_opencv():
    img = _test_image()
    ref = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    ours = image_ops.rgb_uint8_to_lab_np(img)
    diff = np.abs(ref - ours)
    assert diff[..., 0].max() < 0.5, f"L differs by {diff[..., 0].max()}"
    assert diff[..., 1:].max() < 0.5, f"ab differ by {diff[..., 1:].max()}"


def test_export_lab_to_rgb_matches_opencv_including_out_of_gamut():
    rng = np.random.default_rng(1)
    lab = np.stack(
        [rng.uniform(0, 100, (32, 32)), rng.uniform(-110, 110, (32, 32)), rng.uniform(-110, 110, (32, 32))],
        -1,
    ).astype(np.float32)
    ref = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    ours = image_ops.lab_to_rgb(torch.from_numpy(lab).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.abs(ref - ours).max() < 1.0 / 255.0
    assert ours.min() >= 0.0 and ours.max() <= 1.0


def test_export_lab_round_trip_and_gray_has_zero_chroma():
    img = _test_image(2)
    rgb = image_ops.uint8_to_float01(torch.from_numpy(img).permute(2, 0, 1)).unsqueeze(0)  # NCHW works too
    back = image_ops.float01_to_uint8(image_ops.lab_to_rgb(image_ops.rgb_to_lab(rgb)))
    assert (back.int() - torch.from_numpy(img).permute(2, 0, 1).int()).abs().max().item() <= 1
    gray = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4).expand(1, 3, 4, 4)
    ab = image_ops.rgb_to_ab_target(gray)
    assert ab.abs().max().item() < 1e-3


def test_export_colorization_pair_and_recombination():
    img = _test_image(3, 16)
    rgb = image_ops.uint8_to_float01(torch.from_numpy(img).permute(2, 0, 1))
    l_input, ab = image_ops.rgb_to_lab_pair(rgb)
    assert l_input.shape == (1, 16, 16) and ab.shape == (2, 16, 16)
    assert l_input.min() >= -1.0 and l_input.max() <= 1.0 + 1e-6
    assert ab.abs().max() <= 1.2  # |ab| < ~128 for sRGB
    assert torch.allclose(l_input, image_ops.rgb_to_l_input(rgb))
    assert torch.allclose(ab, image_ops.rgb_to_ab_target(rgb))
    rebuilt = image_ops.float01_to_uint8(image_ops.lab_output_to_rgb(l_input, ab))
    assert (rebuilt.int() - torch.from_numpy(img).permute(2, 0, 1).int()).abs().max().item() <= 1


def test_export_numpy_helpers_round_trip_and_reject_bad_input():
    img = _test_image(4, 16)
    t = image_ops.hwc_uint8_to_unit_tensor(img)
    assert t.shape == (3, 16, 16)
    assert np.array_equal(image_ops.unit_tensor_to_hwc_uint8(t), img)
    with pytest.raises(ValueError, match="uint8"):
        image_ops.hwc_uint8_to_unit_tensor(img.astype(np.float32))
    with pytest.raises(ValueError, match="RGB"):
        image_ops.rgb_uint8_to_lab_np(img[..., :1])


def test_export_uint8_l_input_table_equals_the_float_path():
    # every uint8 colour on a grid, plus the 256 greys (the table's whole range)
    levels = torch.arange(0, 256, 15, dtype=torch.uint8)
    r, g, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    grid = torch.stack([r.flatten(), g.flatten(), b.flatten()])[:, None, :]
    grey = torch.arange(256, dtype=torch.uint8).expand(3, 1, 256)
    for rgb in (grid, grey):
        fast = image_ops.uint8_rgb_to_l_input(rgb)
        slow = image_ops.rgb_to_l_input(image_ops.uint8_to_float01(rgb))
        assert fast.shape == slow.shape == (1, 1, rgb.shape[-1])
        assert float((fast - slow).abs().max()) * image_ops.L_SCALE < 1e-3  # L units

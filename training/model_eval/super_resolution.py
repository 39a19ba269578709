"""Super-resolution: Y-PSNR / Y-SSIM against a bicubic baseline, plus a sharpness ratio.

For each HR image: crop to a multiple of the scale, make the LR input with the antialiased bicubic
downscale the training data uses (`data.super_resolution.downscale`), run the model, and compare
with the bicubic upscale of the same LR image by the same resize (Keys a = -0.5 as in MATLAB's
`imresize` and PIL: the literature's "Bicubic" row, e.g. Set5 x4 28.42 dB). PSNR/SSIM are on the BT.601 Y
channel with `scale` pixels cropped from each border (the SR-paper convention).

Sharpness = gradient energy (mean squared Sobel magnitude of Y, same border crop) of the output
divided by that of the ground truth: 1.0 is as sharp as the ground truth, bicubic is well below 1,
and values above 1 mean invented (or noisy) detail. PSNR rewards blur; this figure shows it.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from ..data.super_resolution import downscale, resize_bicubic_aa
from ..metrics import SSIM_WINDOW, MetricError, crop_border, psnr_y, require_size, rgb_to_y, ssim_y
from .groups import measure_groups
from .report import Column, TaskReport, aggregate
from .runner import Runner

KEYS = ("psnr_y_bicubic", "ssim_y_bicubic", "psnr_y", "ssim_y", "sharpness_bicubic", "sharpness")
COLUMNS = [
    Column("bicubic PSNR / SSIM", ("psnr_y_bicubic", "ssim_y_bicubic"), "{:.2f} / {:.4f}"),
    Column("model PSNR / SSIM", ("psnr_y", "ssim_y"), "{:.2f} / {:.4f}"),
    Column("gain (dB)", ("gain_db",), "{:+.2f}"),
    Column("sharpness model / bicubic", ("sharpness", "sharpness_bicubic"), "{:.2f} / {:.2f}"),
]


def gradient_energy(image: np.ndarray, border: int = 0) -> float:
    """Mean squared Sobel gradient magnitude of the Y channel of a uint8 RGB image."""
    y = crop_border(rgb_to_y(image), border)
    gx = cv2.Sobel(y, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(y, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    return float(np.mean(gx * gx + gy * gy))


def sharpness_ratio(output: np.ndarray, target: np.ndarray, border: int = 0) -> float:
    """gradient_energy(output) / gradient_energy(target); NaN for a flat target."""
    ref = gradient_energy(target, border)
    return gradient_energy(output, border) / ref if ref > 0 else math.nan


SAMPLE_CROP = 160  # px: samples.png shows native-resolution detail, where SR quality is visible


def detail_crops(images: list[np.ndarray], size: int = SAMPLE_CROP) -> list[np.ndarray]:
    """The same centred `size`-pixel square (or the whole image if smaller) of each image."""
    h, w = images[0].shape[:2]
    ch, cw = min(size, h), min(size, w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return [img[y : y + ch, x : x + cw] for img in images]


def min_side(scale: int) -> int:
    """The smallest HR side that can be scored: after cropping to a multiple of `scale` and
    `scale` pixels off each border, SSIM's window must still fit (x4: 20 px)."""
    return math.ceil((2 * scale + SSIM_WINDOW) / scale) * scale


def measure(runner: Runner, hr: np.ndarray, scale: int) -> tuple[dict, list[np.ndarray]]:
    """Metrics of one HR image and its sample row: centred native-resolution crops of
    (bicubic upscale of the LR input, model output, HR).

    Raises:
        MetricError: the image is smaller than `min_side(scale)` (the reason names its own size).
    """
    # Checked before any crop: the reason must name the file's size, not that of a cropped copy.
    side = min_side(scale)
    require_size(hr, side, side, f"x{scale} evaluation")
    hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
    lr = downscale(hr, scale)
    bicubic = resize_bicubic_aa(lr, hr.shape[0], hr.shape[1])
    sr = runner(lr)
    if sr.shape != hr.shape:
        raise MetricError(
            f"model returned {sr.shape[1]}x{sr.shape[0]} for a {hr.shape[1]}x{hr.shape[0]} target"
        )
    record = {
        "psnr_y": psnr_y(sr, hr, scale),
        "ssim_y": ssim_y(sr, hr, scale),
        "psnr_y_bicubic": psnr_y(bicubic, hr, scale),
        "ssim_y_bicubic": ssim_y(bicubic, hr, scale),
        "sharpness": sharpness_ratio(sr, hr, scale),
        "sharpness_bicubic": sharpness_ratio(bicubic, hr, scale),
    }
    record["gain_db"] = record["psnr_y"] - record["psnr_y_bicubic"]
    return record, detail_crops([bicubic, sr, hr])


def evaluate_super_resolution(
    runner: Runner, data: Path, max_images: int = 0, n_samples: int = 4
) -> TaskReport:
    """Evaluate an SR model on every image group of `data` (see files.image_groups)."""
    scale = runner.info.scale
    found = measure_groups(data, max_images, n_samples, lambda hr: measure(runner, hr, scale), _row)
    return found.report(
        "super_resolution",
        COLUMNS,
        ["bicubic upscale of the LR input", "model output", "ground truth"],
        [
            f"x{scale}: Y channel (BT.601), {scale}-pixel border cropped, HR cropped to a multiple of "
            f"{scale}; LR = antialiased bicubic downscale (as in training); bicubic = upscale by the same "
            "resize (MATLAB imresize / PIL kernel, a = -0.5). sharpness = gradient energy of the output / "
            "of the ground truth (1.00 = as sharp as ground truth).",
        ],
    )


def _row(name: str, records: list[dict]) -> dict:
    row = aggregate(name, records, KEYS)
    row["gain_db"] = row["psnr_y"] - row["psnr_y_bicubic"]
    return row

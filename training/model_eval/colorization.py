"""Colourisation: PSNR / SSIM against the gray-input baseline, and colourfulness.

Each colour photo is turned gray the way a user's gray photo looks (BT.601 luma, cv2 RGB2GRAY,
replicated to RGB for a 3-channel model), so the model never sees the colours; its output is
compared with the original photo. The baseline is the gray image itself: a model must beat
"leave it gray" on PSNR to put back colours that are right, not merely present. Colourfulness
(Hasler-Suesstrunk) of the outputs next to that of the ground truth shows whether the model
colours at all (gray = 0). Photos whose ground truth is itself gray (all channels within 1 grey
level) have no colours to recover: they are skipped and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metrics import SSIM_WINDOW, MetricError, colorfulness, psnr, require_size, ssim
from .groups import measure_groups
from .report import Column, TaskReport, aggregate
from .runner import Runner, to_channels

GRAY_TOLERANCE = 1  # grey levels: JPEG artefacts make "gray" files differ slightly between channels
KEYS = ("psnr_gray", "ssim_gray", "psnr", "ssim", "colorfulness_gray", "colorfulness", "colorfulness_gt")
COLUMNS = [
    Column("gray input PSNR / SSIM", ("psnr_gray", "ssim_gray"), "{:.2f} / {:.4f}"),
    Column("model PSNR / SSIM", ("psnr", "ssim"), "{:.2f} / {:.4f}"),
    Column("gain (dB)", ("gain_db",), "{:+.2f}"),
    Column("colourfulness model / ground truth", ("colorfulness", "colorfulness_gt"), "{:.1f} / {:.1f}"),
]


def is_gray(image: np.ndarray, tolerance: int = GRAY_TOLERANCE) -> bool:
    """True when every pixel's channels agree within `tolerance` grey levels."""
    return int(np.abs(image.astype(np.int16) - image[:, :, :1]).max()) <= tolerance


def gray_input(image: np.ndarray) -> np.ndarray:
    """The gray version of an RGB photo (BT.601 luma) replicated to 3 channels."""
    return to_channels(to_channels(image, 1), 3)


def measure(runner: Runner, rgb: np.ndarray) -> tuple[dict, list[np.ndarray]]:
    """Metrics of one colour photo and its (gray input, output, ground truth) sample row.

    Raises:
        MetricError: the photo is smaller than SSIM's window, or the model returned another size.
    """
    require_size(rgb, SSIM_WINDOW, SSIM_WINDOW, "colourisation evaluation")
    gray = gray_input(rgb)
    out = runner(gray)
    if out.shape != rgb.shape:
        raise MetricError(
            f"model returned {out.shape[1]}x{out.shape[0]} for a {rgb.shape[1]}x{rgb.shape[0]} photo"
        )
    record = {
        "psnr": psnr(out, rgb),
        "ssim": ssim(out, rgb),
        "psnr_gray": psnr(gray, rgb),
        "ssim_gray": ssim(gray, rgb),
        "colorfulness": colorfulness(out),
        "colorfulness_gray": colorfulness(gray),
        "colorfulness_gt": colorfulness(rgb),
    }
    return record, [gray, out, rgb]


def evaluate_colorization(runner: Runner, data: Path, max_images: int = 0, n_samples: int = 4) -> TaskReport:
    """Evaluate a colourisation model on every image group of `data`."""
    found = measure_groups(
        data, max_images, n_samples, lambda rgb: None if is_gray(rgb) else measure(runner, rgb), _row
    )
    notes = [
        f"{found.left_out} grayscale ground-truth image(s) skipped (no colours to recover).",
        "model input = BT.601 gray of each photo; baseline = that gray image; PSNR/SSIM on RGB.",
    ]
    return found.report(
        "colorization",
        COLUMNS,
        ["gray input", "model output", "ground truth"],
        notes,
        counts=found.counts(skipped_grayscale=found.left_out),
    )


def _row(name: str, records: list[dict]) -> dict:
    row = aggregate(name, records, KEYS)
    row["gain_db"] = row["psnr"] - row["psnr_gray"]
    return row

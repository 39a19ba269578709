"""Paired translation (pix2pix A|B files, e.g. facades): PSNR / SSIM of the output vs the target half,
and the checkerboard measure (spectral energy at the 2- and 4-pixel periods, dB) of the output next
to the target's, as in the style-translation report: transposed-convolution upsampling leaves a
grid there that real photos do not have.

Each file holds the pair side by side, A on the left and B on the right (the training layout).
Which half is the input comes from the model's metadata: the exporter's `direction` key, else
`data.direction` of the stored training config (facades labels -> photo is BtoA), else AtoB.

A folder whose files are mostly not pairs (square photos, a CycleGAN testA/testB set) is refused
before the model runs (`data.ab_layout`, the check training makes): split down the middle, its
photos would be scored as half-photos. A stray file of the wrong shape is skipped with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..data.ab_layout import is_pair_size, layout_problem, pair_rule, unaligned_folders
from ..metrics import CHECKERBOARD_MIN, SSIM_WINDOW, MetricError, checkerboard_db, psnr, require_size, ssim
from .errors import EvalError
from .groups import measure_groups
from .report import Column, TaskReport, aggregate
from .runner import Runner

KEYS = ("psnr", "ssim", "checkerboard_db", "checkerboard_db_target")
COLUMNS = [
    Column("PSNR (dB)", ("psnr",), "{:.2f}"),
    Column("SSIM", ("ssim",), "{:.4f}"),
    Column(
        "checkerboard output / target (dB)", ("checkerboard_db", "checkerboard_db_target"), "{:.2f} / {:.2f}"
    ),
]


def model_direction(metadata: Mapping[str, str]) -> str:
    """ "AtoB" or "BtoA" from a model's metadata (see module doc)."""
    direction = metadata.get("direction", "")
    if direction in ("AtoB", "BtoA"):
        return direction
    try:
        config = json.loads(metadata.get("training_config") or "{}")
    except json.JSONDecodeError:
        config = {}
    data = config.get("data") if isinstance(config, dict) else None
    direction = data.get("direction") if isinstance(data, dict) else None
    return direction if direction in ("AtoB", "BtoA") else "AtoB"


# px: the smallest half that every metric can score (SSIM's window, the checkerboard measure)
MIN_HALF = max(SSIM_WINDOW, CHECKERBOARD_MIN)


def check_pairs(files: list[str], data: Path) -> None:
    """Refuse a group of files that are mostly not side-by-side A|B pairs.

    Raises:
        EvalError: one line naming the folder, how many files are not pairs and what to do.
    """
    problem = layout_problem(files)
    if problem is None:
        return
    unaligned = unaligned_folders(data)
    if unaligned:
        advice = f"{data} holds {unaligned}, unpaired data: evaluate a style_translation model on it"
    else:
        advice = "paired_translation models need A|B pair files (the pix2pix layout)"
    raise EvalError(f"{problem}; {advice}")


def measure(runner: Runner, pair: np.ndarray, direction: str) -> tuple[dict, list[np.ndarray]]:
    """Metrics of one A|B file and its (input, output, target) sample row.

    Raises:
        MetricError: the file is not pair-shaped or too small (the reason names its own size), or
            the model returned another size.
    """
    height, width = pair.shape[:2]
    if not is_pair_size(width, height):
        raise MetricError(f"{width}x{height} is not a side-by-side A|B pair ({pair_rule()})")
    require_size(pair, 2 * MIN_HALF, MIN_HALF, f"A|B evaluation ({MIN_HALF}x{MIN_HALF} per half)")
    half = width // 2
    a, b = pair[:, :half], pair[:, half : 2 * half]
    source, target = (a, b) if direction == "AtoB" else (b, a)
    out = runner(source)
    if out.shape != target.shape:
        raise MetricError(
            f"model returned {out.shape[1]}x{out.shape[0]} for a {target.shape[1]}x{target.shape[0]} half"
        )
    record = {
        "psnr": psnr(out, target),
        "ssim": ssim(out, target),
        "checkerboard_db": checkerboard_db(out),
        "checkerboard_db_target": checkerboard_db(target),
    }
    return record, [source, out, target]


def evaluate_paired(runner: Runner, data: Path, max_images: int = 0, n_samples: int = 4) -> TaskReport:
    """Evaluate a paired-translation model on every group of A|B files under `data`."""
    direction = model_direction(runner.info.metadata)
    found = measure_groups(
        data,
        max_images,
        n_samples,
        lambda pair: measure(runner, pair, direction),
        lambda name, records: aggregate(name, records, KEYS),
        lambda files: check_pairs(files, data),
    )
    notes = [
        f"direction {direction}: input = {'left (A)' if direction == 'AtoB' else 'right (B)'} half; "
        "PSNR/SSIM on RGB against the other half.",
    ]
    return found.report(
        "paired_translation",
        COLUMNS,
        ["input", "model output", "target"],
        notes,
        extra={"direction": direction},
    )

"""Paired translation (pix2pix A|B files, e.g. facades): PSNR / SSIM of the output vs the target half.

Each file holds the pair side by side, A on the left and B on the right (the training layout).
Which half is the input comes from the model's metadata: the exporter's `direction` key, else
`data.direction` of the stored training config (facades labels -> photo is BtoA), else AtoB.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pixforge.training.metrics import MetricError, psnr, ssim

from .files import image_groups, load_images, progress
from .report import Column, SampleCollector, TaskReport, aggregate
from .runner import Runner

KEYS = ("psnr", "ssim")
COLUMNS = [Column("PSNR (dB)", ("psnr",), "{:.2f}"), Column("SSIM", ("ssim",), "{:.4f}")]


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


def evaluate_paired(runner: Runner, data: Path, max_images: int = 0, n_samples: int = 4) -> TaskReport:
    """Evaluate a paired-translation model on every group of A|B files under `data`."""
    direction = model_direction(runner.info.metadata)
    groups = image_groups(data, max_images)
    per_image, rows, skipped = [], [], []
    samples = SampleCollector(n_samples)
    for name, files in groups:
        records = []
        for path, img in progress(load_images(files, skipped), name, len(files)):
            half = img.shape[1] // 2
            a, b = img[:, :half], img[:, half : 2 * half]
            source, target = (a, b) if direction == "AtoB" else (b, a)
            try:
                out = runner(source)
                if out.shape != target.shape:
                    raise MetricError(
                        f"model returned {out.shape[1]}x{out.shape[0]} for a "
                        f"{target.shape[1]}x{target.shape[0]} half"
                    )
                record = {"psnr": psnr(out, target), "ssim": ssim(out, target)}
            except MetricError as exc:
                skipped.append({"file": path, "reason": str(exc)})
                continue
            records.append({"set": name, "file": Path(path).name, **record})
            samples.add([source, out, target], first=len(records) == 1)
        if records:
            rows.append(aggregate(name, records, KEYS))
        per_image.extend(records)
    if len(rows) > 1:
        rows.append(aggregate("all", per_image, KEYS))
    notes = [
        f"direction {direction}: input = {'left (A)' if direction == 'AtoB' else 'right (B)'} half; "
        "PSNR/SSIM on RGB against the other half."
    ]
    if skipped:
        notes.append(f"{len(skipped)} image(s) skipped (unreadable or too small); see results.json")
    return TaskReport(
        task="paired_translation",
        columns=COLUMNS,
        rows=rows,
        summary={k: v for k, v in rows[-1].items() if k != "name"} if rows else {},
        per_image=per_image,
        samples=samples.rows(),
        sample_labels=["input", "model output", "target"],
        counts={"images": len(per_image), "skipped": len(skipped)},
        notes=notes,
        extra={"direction": direction, **({"skipped": skipped} if skipped else {})},
    )

"""One evaluation's results: the Markdown table, results.json, per_image.csv and samples.png.

Averages ignore NaN (a metric that does not apply to an image) and count +inf PSNR (identical
images) as `metrics.PSNR_CAP` dB, like validation during training.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from pixforge import __version__

from ..metrics import PSNR_CAP
from .runner import EvaluatedModel, to_channels

SAMPLE_HEIGHT = 160  # px: every tile of samples.png is resized to this height
GAP = 4  # px of white between tiles


@dataclass(frozen=True)
class Column:
    """A table column: header, the row keys it shows and a format string taking their values."""

    header: str
    keys: tuple[str, ...]
    fmt: str


@dataclass
class TaskReport:
    """What a task evaluation produced.

    Attributes:
        task: the model's task.
        columns: the table's metric columns (the first column is always the row name).
        rows: one dict per table row: "name", "images" and metric values.
        summary: the headline metrics (the "all" row, or the only row).
        per_image: one dict per evaluated image (written as per_image.csv).
        samples: up to 4 lists of uint8 RGB images (one row of samples.png each).
        sample_labels: what each column of samples.png shows.
        counts: images evaluated / skipped (by reason).
        notes: lines printed under the table.
        extra: task-specific details for results.json (e.g. the domain classifier's accuracy).
        first_header: header of the row-name column.
    """

    task: str
    columns: list[Column]
    rows: list[dict]
    summary: dict[str, float]
    per_image: list[dict] = field(default_factory=list)
    samples: list[list[np.ndarray]] = field(default_factory=list)
    sample_labels: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    first_header: str = "set"


def mean(values) -> float:
    """Mean without NaNs, +inf capped at PSNR_CAP; NaN when nothing is left."""
    vals = [min(float(v), PSNR_CAP) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def aggregate(name: str, records: list[dict], keys: tuple[str, ...]) -> dict:
    """A table row: the mean of each key over `records`, plus "name" and "images"."""
    row = {"name": name, "images": len(records)}
    for key in keys:
        row[key] = mean(r.get(key, math.nan) for r in records)
    return row


class SampleCollector:
    """Keeps up to `n` sample rows, preferring the first image of each group (so every set shows)."""

    def __init__(self, n: int = 4):
        self.n = n
        self.firsts: list[list[np.ndarray]] = []
        self.others: list[list[np.ndarray]] = []

    def add(self, row: list[np.ndarray], first: bool = False) -> None:
        target = self.firsts if first else self.others
        if len(target) < self.n:
            target.append(row)

    def rows(self) -> list[list[np.ndarray]]:
        return (self.firsts + self.others)[: self.n]


def _cell(column: Column, row: dict) -> str:
    values = [row.get(k, math.nan) for k in column.keys]
    if any(isinstance(v, float) and math.isnan(v) for v in values):
        return "n/a"
    return column.fmt.format(*values)


def markdown(report: TaskReport) -> str:
    """The report's table (one line per row) followed by its notes."""
    headers = [report.first_header, "images"] + [c.header for c in report.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in report.rows:
        cells = [str(row["name"]), str(row["images"])] + [_cell(c, row) for c in report.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + report.notes).rstrip() + "\n"


def sample_grid(rows: list[list[np.ndarray]], height: int = SAMPLE_HEIGHT) -> np.ndarray:
    """uint8 RGB grid: each image resized to `height` (aspect kept), white gaps, rows left-aligned."""
    strips = []
    for images in rows:
        tiles = []
        for img in images:
            img = to_channels(np.asarray(img, dtype=np.uint8), 3)
            w = max(1, round(img.shape[1] * height / img.shape[0]))
            interp = cv2.INTER_NEAREST if img.shape[0] < height else cv2.INTER_AREA  # LR inputs stay crisp
            tiles.append(cv2.resize(img, (w, height), interpolation=interp))
            tiles.append(np.full((height, GAP, 3), 255, np.uint8))
        strips.append(np.concatenate(tiles[:-1], axis=1))
    width = max(s.shape[1] for s in strips)
    out = []
    for s in strips:
        out.append(np.pad(s, ((0, GAP), (0, width - s.shape[1]), (0, 0)), constant_values=255))
    return np.concatenate(out, axis=0)[:-GAP]


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isnan(v) else (PSNR_CAP if math.isinf(v) else v)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def results_dict(
    report: TaskReport, model: EvaluatedModel, data: Path, reverse: EvaluatedModel | None = None
) -> dict:
    """Everything results.json holds (NaN -> null, +inf PSNR -> PSNR_CAP)."""
    out = {
        "format": "pixforge.eval/1",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pixforge_version": __version__,
        "model": model.to_dict(),
        "data": str(Path(data).resolve()),
        "task": report.task,
        "metrics": report.summary,
        "rows": report.rows,
        "counts": report.counts,
        "notes": report.notes,
        **report.extra,
    }
    if reverse is not None:
        out["reverse_model"] = reverse.to_dict()
    return _jsonable(out)


def write_outputs(
    report: TaskReport,
    out_dir: Path,
    model: EvaluatedModel,
    data: Path,
    reverse: EvaluatedModel | None = None,
) -> list[Path]:
    """Write results.json, per_image.csv and (when there are samples) samples.png into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json"]
    written[0].write_text(json.dumps(results_dict(report, model, data, reverse), indent=2) + "\n")
    if report.per_image:
        fields = list(dict.fromkeys(k for r in report.per_image for k in r))
        path = out_dir / "per_image.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for record in report.per_image:
                writer.writerow({k: _csv_value(record.get(k)) for k in fields})
        written.append(path)
    if report.samples:
        path = out_dir / "samples.png"
        grid = sample_grid(report.samples)
        if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")
        written.append(path)
    return written


def _csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value

"""Run-directory outputs written by rank 0: stats.jsonl, metric-<name>.jsonl, sample grids, TensorBoard.

Every file is machine-readable: tools and benchmarks read the JSONL files, never scraped stdout
(whose wording may change). `stats.jsonl` holds one JSON object per logged step, appended. Each
`metric-<name>.jsonl` line is {"step", "value", "num_images", "time"}. TensorBoard events are
written only when `torch.utils.tensorboard` imports (the train extra installs tensorboard; it is
never required).

On `--resume` from step S, `drop_logged_steps_after(run_dir, S)` removes the lines a killed run
wrote after its last checkpoint: the resumed run logs those steps again.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from pixforge.codec import encode_image

GRID_GAP = 2  # px of white between tiles


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class RunLog:
    """The appended logs of one run (a no-op on ranks other than 0)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.tb = None
        self.tb_note = "off"
        self.tb_missing = False  # the tensorboard package is not installed (not an error)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional dependency
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] != "tensorboard":
                    raise
                self.tb_missing = True
                self.tb_note = (
                    "not installed, no event files written "
                    "(pip install tensorboard, or pip install 'pixforge[train]')"
                )
            except Exception as exc:  # a broken install
                self.tb_note = f"unavailable ({exc.__class__.__name__}: {exc})"
            else:
                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
                self.tb_note = str(self.run_dir / "tensorboard")

    def _append(self, name: str, record: dict) -> None:
        with open(self.run_dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def stats(self, step: int, values: dict) -> None:
        """One stats.jsonl line (plus TensorBoard scalars for numeric values)."""
        if not self.enabled:
            return
        self._append("stats.jsonl", {"step": step, "time": round(time.time(), 3), **values})
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def metrics(self, step: int, values: dict, num_images: int) -> None:
        """One line per metric in metric-<name>.jsonl."""
        if not self.enabled:
            return
        for name, value in values.items():
            self._append(
                f"metric-{name}.jsonl",
                {"step": step, "value": value, "num_images": num_images, "time": round(time.time(), 3)},
            )
            if self.tb is not None and math.isfinite(value):
                self.tb.add_scalar(f"val/{name}", value, step)

    def sample_grid(self, step: int, rows: list[list[np.ndarray]]) -> Path | None:
        """Write samples/step-NNNNNNN.png (rows of uint8 RGB tiles) atomically; returns its path."""
        if not self.enabled or not rows:
            return None
        grid = make_grid(rows)
        out = self.run_dir / "samples" / f"step-{step:07d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(encode_image(grid, "png"))
        os.replace(tmp, out)
        if self.tb is not None:
            self.tb.add_image("samples", grid, step, dataformats="HWC")
        return out

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def drop_logged_steps_after(run_dir: Path, step: int) -> None:
    """Remove the lines with a step above `step` from stats.jsonl and every metric-<name>.jsonl.

    A resumed run starts over from its resume state's step, so what the killed run logged after
    it would be logged twice. A last line cut short by the kill goes too (it would run into the
    next appended line). Files are rewritten atomically (temp file + os.replace), and only when
    something changes.
    """
    run_dir = Path(run_dir)
    for path in [run_dir / "stats.jsonl", *sorted(run_dir.glob("metric-*.jsonl"))]:
        if path.is_file():
            _keep_steps_up_to(path, step)


def _keep_steps_up_to(path: Path, step: int) -> None:
    """Rewrite one JSONL log without its lines past `step` (left alone when none is)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = [_kept(line, step) for line in lines]
    kept = [line for line in kept if line is not None]
    if kept == lines:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def _kept(line: str, step: int) -> str | None:
    """One JSONL line as it stays (None: dropped). Records with a step above `step` go, and so
    does an unterminated line that is not a whole record (the last one, cut short by a kill);
    other lines stay as they are, newline-terminated so that appending starts a new line."""
    try:
        record = json.loads(line)
    except ValueError:
        return line if line.endswith("\n") else None
    logged = record.get("step") if isinstance(record, dict) else None
    if isinstance(logged, int) and logged > step:
        return None
    return line if line.endswith("\n") else line + "\n"


def make_grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tile uint8 RGB images: one row per list, columns left to right, white gaps, top-left aligned."""
    heights = [max(t.shape[0] for t in row) for row in rows]
    widths = [sum(t.shape[1] for t in row) + GRID_GAP * (len(row) - 1) for row in rows]
    grid = np.full((sum(heights) + GRID_GAP * (len(rows) - 1), max(widths), 3), 255, dtype=np.uint8)
    y = 0
    for row, h in zip(rows, heights, strict=True):
        x = 0
        for tile in row:
            tile = np.repeat(tile, 3, axis=2) if tile.shape[2] == 1 else tile
            grid[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
            x += tile.shape[1] + GRID_GAP
        y += h + GRID_GAP
    return grid

"""Training-time bookkeeping: running loss means, throughput, cadences, the progress bar and the
one-line metrics format `pixforge train` prints.

None of it touches the networks; the loops feed it detached values once per step and read it once
per log line.
"""

from __future__ import annotations

import math
import time

import torch


class LossMeter:
    """Running means of detached scalar losses between log lines (one host sync per log)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def pop(self) -> dict[str, float]:
        out = {k: round(float(v) / max(1, self.count), 6) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return out


class Throughput:
    """Images per second over the last log interval."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.images = 0

    def add(self, n: int) -> None:
        self.images += n

    def pop(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(1e-9, now - self.t0)
        self.t0, self.images = now, 0
        return round(rate, 3)


def due(step: int, every: int) -> bool:
    """True when a cadence of `every` steps (0 = never) fires at `step`."""
    return every > 0 and step % every == 0


def progress_bar(initial: int, total: int, enabled: bool):
    """A tqdm bar over steps (a disabled one, which prints nothing, when `enabled` is false)."""
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="step", leave=True
    )


def format_metrics(metrics: dict[str, float]) -> str:
    """`name=value, ...` sorted by name, NaNs left out; "(none)" when nothing is left."""
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if not math.isnan(v)) or "(none)"

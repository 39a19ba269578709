"""Whole-image normalisation statistics for tiled inference (docs/serving.md "Tiling").

Models with per-image normalisation (instance norm; batch norm in pixforge's inference semantics)
normalise each tile with its own statistics when run tile by tile, so the tone changes from tile to
tile. A contract-2 model exposes each norm layer's statistics (docs/model-contract.md
"Tiling-invariant models"); this module computes the statistics of the whole image, tile by tile,
so that every tile can then be normalised as the whole image would have been.

Why layer by layer: layer k's statistics are statistics of its input, which depends on how the
layers before it normalised. Merging the tiles' sums of layer k gives the whole image's statistics
exactly only when layers 0..k-1 already used the whole image's. So pass k freezes the exact
statistics of layers 0..k-1 and gathers layer k (``exact``: one pass over the tiles per norm
layer, then the output pass). Cheaper guesses were measured and fail the bound of mean <= 1 and
99th percentile <= 6 grey levels (apple2orange, 1536-pixel photos, 16 tiles): statistics of a
downscaled copy (512 px: mean 1.8, p99 17), iterating "gather all layers with the previous guess"
(diverges: later layers are gathered under earlier layers' stale statistics), and pooled crops.
The downscaled copy is kept as the cheap option (``downscaled``) and as the starting point of the
exact passes, so that the layers not yet gathered see sane activations.

Memory stays that of one tile batch: the gathering passes keep only the per-layer sums.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from .tiling import TilePlan, pad_to, round_up

MODE_FROZEN = 1.0
MODE_POOLED = 2.0

# run_stats(tiles, modes (L,), stats (S,), cores [(4,) per tile]) -> norm_sums rows, one per tile
RunStats = Callable[[Sequence[np.ndarray], np.ndarray, np.ndarray, Sequence[np.ndarray]], list[np.ndarray]]

FULL_CORE = np.array([0.0, 1.0, 0.0, 1.0], np.float32)


def stats_size(channels: Sequence[int]) -> int:
    """Length of the ``norm_stats`` vector: each layer's mean then variance."""
    return 2 * sum(channels)


def merge_sums(rows: Sequence[np.ndarray], channels: Sequence[int], into: list | None = None) -> list:
    """Fold ``norm_sums`` rows into running (sum, centred sum of squares, count) per layer.

    Chan et al.'s pairwise update in float64 keeps the variance accurate over any number of tiles.
    """
    acc = into if into is not None else [(np.zeros(c), np.zeros(c), 0.0) for c in channels]
    for row in rows:
        row = np.asarray(row, np.float64)
        offset = 0
        for k, c in enumerate(channels):
            s_b, m_b, n_b = (
                row[offset : offset + c],
                row[offset + c : offset + 2 * c],
                float(row[offset + 2 * c]),
            )
            offset += 2 * c + 1
            if n_b == 0:
                continue
            s_a, m_a, n_a = acc[k]
            if n_a == 0:
                acc[k] = (s_b.copy(), m_b.copy(), n_b)
                continue
            n = n_a + n_b
            delta = s_b / n_b - s_a / n_a
            acc[k] = (s_a + s_b, m_a + m_b + delta * delta * (n_a * n_b / n), n)
    return acc


def stats_vector(acc: list) -> np.ndarray:
    """(sum, m2, count) per layer -> the float32 ``norm_stats`` vector (mean, variance per layer)."""
    parts = []
    for total, m2, count in acc:
        n = max(count, 1.0)
        parts += [total / n, m2 / n]
    return np.concatenate(parts).astype(np.float32)


def downscaled_copy(image: np.ndarray, edge: int, size_multiple: int) -> np.ndarray:
    """The image shrunk (INTER_AREA) so its longest side is at most ``edge``, padded to the multiple."""
    h, w = image.shape[:2]
    factor = min(1.0, edge / max(h, w))
    sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA).reshape(sh, sw, -1)
    return pad_to(small, round_up(sh, size_multiple), round_up(sw, size_multiple))


def image_statistics(
    image: np.ndarray,
    plan: TilePlan,
    channels: Sequence[int],
    run_stats: RunStats,
    method: str = "exact",
) -> np.ndarray:
    """The ``norm_stats`` vector to normalise every tile of ``image`` with.

    Args:
        image: uint8 (H, W, C), the model's input.
        plan: how the image is tiled (the copy fits one tile of it; the passes use its tiles).
        channels: the model's ``norm_channels``.
        run_stats: runs tiles through the model's statistics path (see RunStats).
        method: "exact" (one pass per norm layer) or "downscaled" (the copy only).

    Returns:
        float32 (S,): per layer the mean then the variance of its input over the whole image.
    """
    layers = len(channels)
    copy = downscaled_copy(image, min(plan.tile_height, plan.tile_width), plan.align)
    rows = run_stats(
        [copy],
        np.full(layers, MODE_POOLED, np.float32),
        np.zeros(stats_size(channels), np.float32),
        [FULL_CORE],
    )
    stats = stats_vector(merge_sums(rows, channels))
    if method == "downscaled":
        return stats
    padded = pad_to(image, plan.padded_height, plan.padded_width)
    tiles = [padded[y : y + plan.tile_height, x : x + plan.tile_width] for y in plan.ys for x in plan.xs]
    cores = plan.cores()
    frozen = np.full(layers, MODE_FROZEN, np.float32)
    offset = 0
    for k, c in enumerate(channels):
        # Layers 0..k-1 hold the whole image's statistics, so layer k's merged sums are exact.
        acc = merge_sums(run_stats(tiles, frozen, stats, cores), channels)
        total, m2, count = acc[k]
        n = max(count, 1.0)
        stats[offset : offset + c] = total / n
        stats[offset + c : offset + 2 * c] = m2 / n
        offset += 2 * c
    return stats

"""Padding, tiling and seamless blending of large images (Real-ESRGAN style), pure numpy.

An image is cut into equal tiles of ``tile`` input pixels that overlap by at least ``overlap``;
each tile's model output is weighted by a feathered window (zero over a margin next to an inner
tile edge, where the model lacked context, then a linear ramp up to 1). After each tile row, the
output rows no later tile touches are blended from the uint8 outputs of the tiles covering them
(this row and the earlier rows that overlap it) in blocks of a few hundred columns of floats and
written straight into the uint8 output. Besides the output itself, memory stays at about one tile
row of uint8 model outputs (plus the overlap band of the previous row) and one small float block.
Those grow with the image width only (a tile row), never with its height.
Along an axis that fits in one tile the image is reflect-padded up to the
shape bucket (a multiple of the model's ``size_multiple``) and cropped back afterwards; along a
tiled axis no padding is needed because every tile has the full tile size.

:func:`run_with_oom_retry` halves the tile size after an out-of-memory error, down to a floor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import OutOfMemoryError

log = logging.getLogger("pixforge.service.tiling")

# Tiles in, outputs out (same order); the pipeline batches them through the model's batcher.
InferTiles = Callable[[Sequence[np.ndarray]], Sequence[np.ndarray]]

# Output columns blended at a time: bounds the float working memory (rows x BLEND_BLOCK x C x 4 bytes
# twice, about 8 MiB for 512-row x4 tiles) independently of the image width.
BLEND_BLOCK = 512


def round_up(value: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= value."""
    return -(-value // multiple) * multiple


def pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad an (H, W, C) array at the bottom/right to (height, width, C).

    Reflection (not zeros) keeps the statistics a convolutional model sees at the border natural;
    an axis of length 1 cannot be reflected and is edge-padded instead.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if height < h or width < w:
        raise ValueError(f"cannot pad {h}x{w} down to {height}x{width}")
    pad = [(0, height - h), (0, width - w)] + [(0, 0)] * (image.ndim - 2)
    if h == 1 or w == 1:
        # np.pad applies one mode to all axes; edge-pad the degenerate axis first.
        if h == 1 and height > 1:
            image = np.pad(image, [(0, height - 1)] + [(0, 0)] * (image.ndim - 1), mode="edge")
            pad[0] = (0, 0)
        if w == 1 and width > 1:
            image = np.pad(image, [(0, 0), (0, width - 1)] + [(0, 0)] * (image.ndim - 2), mode="edge")
            pad[1] = (0, 0)
    return np.pad(image, pad, mode="reflect")


def _axis(length: int, tile: int, overlap: int, multiple: int, align: int) -> tuple[int, int, list[int]]:
    """Plan one axis: (padded length, tile length, tile start positions).

    Tile starts are multiples of ``align`` (the model's size multiple): a network that
    downsamples by that factor then samples every tile on the same grid as the whole image, the
    first condition for tiled output to equal whole-image output. A tiled axis is reflect-padded
    like an untiled one (to ``multiple``: the size multiple and shape bucket), so the pixels next to
    the border see the same padding as in a whole-image run.
    """
    if length <= tile:
        padded = min(round_up(length, multiple), tile)
        return padded, padded, [0]
    padded = round_up(length, multiple)
    stride = tile - overlap
    n = math.ceil((padded - tile) / stride) + 1
    span = (padded - tile) // align
    # Spread the tiles evenly on the grid so every overlap is >= `overlap`; the last one ends at the edge.
    positions = [(k * span // (n - 1)) * align for k in range(n)]
    return padded, tile, positions


@dataclass(frozen=True)
class TilePlan:
    """How one image is cut.

    Attributes:
        height, width: the image size (input pixels).
        padded_height, padded_width: size after padding (>= image size).
        tile_height, tile_width: every tile's size (a multiple of the model's size multiple).
        ys, xs: tile start positions in the padded image.
        overlap: the minimum overlap between neighbouring tiles (input pixels).
        scale: output pixels per input pixel.
        margin: input pixels next to an inner tile edge that get no blending weight (0: a quarter
            of the overlap); the model's receptive radius when known.
        align: tile starts are multiples of this (the model's size multiple).
    """

    height: int
    width: int
    padded_height: int
    padded_width: int
    tile_height: int
    tile_width: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    overlap: int
    scale: int
    margin: int = 0
    align: int = 1

    @property
    def n_tiles(self) -> int:
        """Number of tiles (1 when the image fits in one)."""
        return len(self.ys) * len(self.xs)

    def cores(self) -> list[np.ndarray]:
        """Per tile (row-major), (top, bottom, left, right) of its core as fractions of the tile.

        Cores partition the padded image: each boundary sits in the middle of an overlap, on the
        ``align`` grid so that it falls between feature-map pixels at every resolution the model
        downsamples to.
        """
        rows = _axis_cores(self.ys, self.tile_height, self.padded_height, self.align)
        cols = _axis_cores(self.xs, self.tile_width, self.padded_width, self.align)
        return [np.array([*r, *c], np.float32) for r in rows for c in cols]


def _axis_cores(positions: Sequence[int], tile: int, length: int, align: int) -> list[tuple[float, float]]:
    """Core (start, end) of each tile along one axis, as fractions of the tile."""
    bounds = [0]
    for before, after in zip(positions, positions[1:], strict=False):
        # the middle of the overlap [after, before + tile), on the align grid
        bounds.append(round_up((after + before + tile) // 2, align))
    bounds.append(length)
    return [
        ((lo - p) / tile, (hi - p) / tile)
        for p, lo, hi in zip(positions, bounds[:-1], bounds[1:], strict=True)
    ]


def plan_tiles(
    height: int,
    width: int,
    *,
    tile: int,
    overlap: int,
    size_multiple: int,
    bucket: int = 0,
    scale: int = 1,
    radius: int = 0,
) -> TilePlan:
    """Plan the tiles of a height x width image.

    Args:
        height, width: image size in input pixels.
        tile: tile edge (a multiple of ``size_multiple``).
        overlap: wanted overlap between tiles; clamped to half a tile.
        size_multiple: the model's size multiple.
        bucket: pad an axis that fits in one tile to a multiple of this too (0: only size_multiple),
            so images of different sizes share a few shapes and can be batched together.
        scale: the model's scale.
        radius: the model's receptive radius (input pixels; 0 = unknown). Blending then ignores
            this many pixels next to each inner tile edge, and the overlap grows to leave room for
            a cross-fade beyond them: every blended pixel was computed with its whole receptive
            field inside the tile, so tiles agree exactly where they overlap.

    Returns:
        The TilePlan.
    """
    if tile < size_multiple or tile % size_multiple:
        raise ValueError(f"tile size {tile} must be a positive multiple of {size_multiple}")
    multiple = size_multiple if not bucket else size_multiple * bucket // math.gcd(size_multiple, bucket)
    margin = 0
    if radius > 0:
        margin = round_up(radius, size_multiple)
        overlap = max(overlap, 2 * margin + 2 * size_multiple)
    overlap = max(0, min(overlap, tile // 2))
    margin = min(margin, max(0, overlap // 2 - 1))
    ph, th, ys = _axis(height, tile, overlap, multiple, size_multiple)
    pw, tw, xs = _axis(width, tile, overlap, multiple, size_multiple)
    return TilePlan(
        height, width, ph, pw, th, tw, tuple(ys), tuple(xs), overlap, scale, margin, size_multiple
    )


def axis_weights(
    length: int, before: bool, after: bool, overlap: int, margin: int | None = None
) -> np.ndarray:
    """Feathered 1-D blending window for one tile (output pixels).

    Next to an edge that has a neighbouring tile the weight is ~0 over a margin of overlap/4 (the
    model saw no context there), then ramps linearly to 1 over the middle half of the overlap, so
    two neighbours cross-fade to a partition of unity. Image edges keep weight 1.

    Args:
        length: tile length in output pixels.
        before, after: whether a neighbour overlaps the start/end edge.
        overlap: minimum overlap in output pixels.
        margin: output pixels next to an inner edge with no weight (default overlap // 4).
    """
    d = np.arange(length, dtype=np.float32)
    w = np.ones(length, np.float32)
    margin = overlap // 4 if margin is None else margin
    ramp = max(1, overlap - 2 * margin)
    if before:
        w = np.minimum(w, np.clip((d - margin + 0.5) / ramp, 0.0, 1.0))
    if after:
        w = np.minimum(w, np.clip((length - 1 - d - margin + 0.5) / ramp, 0.0, 1.0))
    # A tiny floor keeps every weight sum positive, whatever the tile layout.
    return np.maximum(w, 1e-6)


def run_tiled(image: np.ndarray, plan: TilePlan, infer: InferTiles) -> np.ndarray:
    """Run a model over an image by tiles and blend the outputs seamlessly.

    Each tile row is run through ``infer`` at once (so its tiles batch together). The output rows
    no later tile touches are then blended and written straight into the uint8 result, one block
    of at most ``BLEND_BLOCK`` output columns at a time, from the uint8 tile outputs of this row
    and of the earlier rows that still overlap it. Besides the result, memory is therefore the
    uint8 outputs of one tile row (plus the overlap band of the previous one) and one small float
    block, whatever the image height.

    Args:
        image: uint8 (H, W, C) with H, W = plan.height, plan.width.
        plan: from :func:`plan_tiles`.
        infer: maps a list of uint8 tiles to their uint8 model outputs (tile size x scale).

    Returns:
        uint8 (H*scale, W*scale, C_out).
    """
    s = plan.scale
    padded = pad_to(image, plan.padded_height, plan.padded_width)
    th, tw = plan.tile_height, plan.tile_width
    if plan.n_tiles == 1:
        out = infer([padded])[0]
        return np.ascontiguousarray(out[: plan.height * s, : plan.width * s])

    # Output coordinates; the result is allocated at the cropped size, so no final crop copy.
    oth, otw = th * s, tw * s
    out_h, out_w = plan.height * s, plan.width * s
    ys, xs = [y * s for y in plan.ys], [x * s for x in plan.xs]
    margin = plan.margin * s if plan.margin else None
    wxs = [axis_weights(otw, j > 0, j < len(xs) - 1, plan.overlap * s, margin) for j in range(len(xs))]
    result: np.ndarray | None = None
    # Tile rows not fully written yet: (first output row held, row weights, tile outputs from there).
    live: list[tuple[int, np.ndarray, list[np.ndarray]]] = []
    base = 0  # first output row not yet written
    for i, y in enumerate(plan.ys):
        outs = infer([padded[y : y + th, x : x + tw] for x in plan.xs])
        if result is None:
            result = np.empty((out_h, out_w, outs[0].shape[2]), np.uint8)
        wy = axis_weights(oth, i > 0, i < len(ys) - 1, plan.overlap * s, margin)
        live.append((ys[i], wy, list(outs)))
        del outs
        done = min(ys[i + 1] if i + 1 < len(ys) else out_h, out_h)
        if done > base:
            _blend_rows(result, base, done, live, xs, wxs, otw)
        # Keep only the rows later tiles still overlap, as compact copies, so the model's batch
        # output arrays (a whole tile row) are freed now rather than one tile row later.
        live = [
            (done, wy[done - y0 :], [np.ascontiguousarray(o[done - y0 :]) for o in tile_outs])
            for y0, wy, tile_outs in live
            if y0 + len(wy) > done
        ]
        base = done
    assert result is not None  # n_tiles > 1: at least one tile row ran
    return result


def _blend_rows(
    result: np.ndarray,
    r0: int,
    r1: int,
    rows: list[tuple[int, np.ndarray, list[np.ndarray]]],
    xs: list[int],
    wxs: list[np.ndarray],
    otw: int,
) -> None:
    """Write output rows r0..r1 of ``result``: the weighted mean of every tile covering them.

    Tiles are added in row-major order, the same order for every pixel, so overlapping tiles blend
    to the same values whatever the block boundaries are.
    """
    out_w, channels = result.shape[1], result.shape[2]
    for c0 in range(0, out_w, BLEND_BLOCK):
        c1 = min(out_w, c0 + BLEND_BLOCK)
        acc = np.zeros((r1 - r0, c1 - c0, channels), np.float32)
        wacc = np.zeros((r1 - r0, c1 - c0, 1), np.float32)
        for y0, wy, outs in rows:
            a0, a1 = max(r0, y0), min(r1, y0 + len(wy))
            if a0 >= a1:
                continue
            for x0, wx, tile_out in zip(xs, wxs, outs, strict=True):
                b0, b1 = max(c0, x0), min(c1, x0 + otw)
                if b0 >= b1:
                    continue
                weight = (wy[a0 - y0 : a1 - y0, None] * wx[None, b0 - x0 : b1 - x0])[:, :, None]
                part = tile_out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0].astype(np.float32)
                part *= weight
                acc[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] += part
                wacc[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] += weight
        acc /= wacc
        np.rint(acc, out=acc)
        np.clip(acc, 0, 255, out=acc)
        result[r0:r1, c0:c1] = acc  # unsafe cast float32 -> uint8 of values already in 0..255


def run_with_oom_retry(
    image: np.ndarray,
    *,
    tile: int,
    min_tile: int,
    size_multiple: int,
    make_plan: Callable[[int], TilePlan],
    infer: InferTiles,
    infer_for_plan: Callable[[TilePlan], InferTiles] | None = None,
) -> tuple[np.ndarray, int]:
    """:func:`run_tiled`, halving the tile size after each out-of-memory error.

    Args:
        image: uint8 (H, W, C).
        tile: first tile size to try.
        min_tile: do not go below this (rounded to the size multiple).
        size_multiple: the model's size multiple.
        make_plan: tile size -> TilePlan for this image.
        infer: as for run_tiled.
        infer_for_plan: optional; plan -> the infer to use for that plan (e.g. after gathering the
            whole image's normalisation statistics for those tiles). Takes precedence over ``infer``.

    Returns:
        (output, tile size that worked).

    Raises:
        OutOfMemoryError: even the smallest tile size ran out of memory.
    """
    floor = max(size_multiple, round_up(min_tile, size_multiple))
    while True:
        try:
            plan = make_plan(tile)
            run = infer_for_plan(plan) if infer_for_plan is not None else infer
            return run_tiled(image, plan, run), tile
        except OutOfMemoryError as exc:
            smaller = (tile // 2) // size_multiple * size_multiple
            if smaller < floor or smaller >= tile:
                raise OutOfMemoryError(f"{exc} (also with tiles down to {tile} px)") from exc
            log.warning("out of memory with %d px tiles; retrying with %d px tiles", tile, smaller)
            tile = smaller

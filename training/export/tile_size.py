"""The model's recommended tile edge, measured: the smallest tile that runs about as fast per
pixel as any larger one, on this machine's CPU provider.

Why smallest-within-tolerance rather than fastest: past a few hundred pixels a convolutional
network's cost per pixel is flat, while a larger tile costs memory (the server's arena grows with
the tile: issue 25 measured 4.4 GB at 1024² for the old sr-x4) and pads small images up to more
pixels (an image smaller than a tile is run as one padded tile; a 128-px tile cut a 256² input
into 9 overlapping tiles, 2.25x the pixels). Too small a tile wastes time on overlaps and per-call
overhead, which the per-pixel cost shows.

The measurement runs the exported graph (uint8 in and out, pixel conversions included) on square
inputs of each candidate edge, a multiple of the size multiple, with as many threads as the
server would use; the output of the largest candidate is capped at 2048² pixels (x4 SR: 512-px
tiles). A GPU server wants larger tiles than a CPU; `tiling.tile_size` in its configuration
overrides the file's value (docs/serving.md).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import onnx

from pixforge.contract import INPUT_NAME

from .parity import make_session, round_up

K = TypeVar("K")
CANDIDATES = (128, 256, 512, 1024)
MAX_OUTPUT_EDGE = 2048
WITHIN = 1.10  # a tile whose cost per pixel is within 10 % of the best counts as "as fast"
ROUNDS = 3
# A warm-up run slower than this ends the search: larger tiles are not timed (an export stays
# quick; per-pixel cost has flattened long before a single tile takes seconds).
BUDGET_SECONDS = 1.0


def candidate_edges(size_multiple: int, scale: int) -> list[int]:
    """Candidate tile edges in input pixels: multiples of ``size_multiple`` whose output stays
    within :data:`MAX_OUTPUT_EDGE` (at least one: the smallest multiple)."""
    edges = sorted({round_up(c, size_multiple) for c in CANDIDATES if c * scale <= MAX_OUTPUT_EDGE})
    return edges or [size_multiple]


def time_interleaved(calls: dict[K, Callable[[], object]], rounds: int) -> dict[K, list[float]]:
    """Seconds of each call in each of ``rounds`` rounds, the calls interleaved round by round so
    background load hits them alike (warm-up runs are the caller's)."""
    times: dict[K, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
    return times


def measure(model: onnx.ModelProto, edges: list[int], channels: int, scale: int) -> dict[int, float]:
    """Milliseconds per output megapixel of one run at each tile edge (median of :data:`ROUNDS`,
    after one warm-up run per edge; edges interleaved so background load hits them alike). Edges
    above the first whose warm-up exceeds :data:`BUDGET_SECONDS` are not measured."""
    session = make_session(model)
    rng = np.random.default_rng(0)
    inputs = {}
    for e in edges:
        inputs[e] = rng.integers(0, 256, (1, e, e, channels), dtype=np.uint8)
        start = time.perf_counter()
        session.run(None, {INPUT_NAME: inputs[e]})
        if time.perf_counter() - start > BUDGET_SECONDS:
            break
    calls = {e: functools.partial(session.run, None, {INPUT_NAME: x}) for e, x in inputs.items()}
    times = time_interleaved(calls, ROUNDS)
    return {e: statistics.median(t) * 1000.0 / ((e * scale) ** 2 / 1e6) for e, t in times.items()}


def choose(ms_per_mp: dict[int, float]) -> int:
    """The smallest edge whose cost per pixel is within :data:`WITHIN` of the best."""
    best = min(ms_per_mp.values())
    return min(e for e, cost in ms_per_mp.items() if cost <= best * WITHIN)


def measured_tile_size(
    model: onnx.ModelProto, size_multiple: int, scale: int, channels: int, log: Callable[[str], None] = print
) -> tuple[int, dict[int, float]]:
    """(chosen tile edge, {edge: ms per output MP}) for an exported model."""
    costs = measure(model, candidate_edges(size_multiple, scale), channels, scale)
    tile = choose(costs)
    log(
        "tile size measured (ms per output megapixel, CPU): "
        + ", ".join(f"{e}: {c:.0f}" for e, c in costs.items())
        + f" -> {tile}"
    )
    return tile, costs

"""Tiling: padding, tile plans, seamless blending, bounded working memory, OOM retry (numpy only)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pixforge.service.errors import OutOfMemoryError
from pixforge.service.tiling import axis_weights, pad_to, plan_tiles, run_tiled, run_with_oom_retry


def blur(tile: np.ndarray) -> np.ndarray:
    """A 5x5 box blur with zero padding: receptive field radius 2."""
    out = cv2.filter2D(
        tile.astype(np.float32), -1, np.full((5, 5), 1 / 25, np.float32), borderType=cv2.BORDER_CONSTANT
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(tile.shape)


def upscale3(tile: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(tile, 3, 0), 3, 1)


def per_tile(fn, log=None):
    def infer(tiles):
        if log is not None:
            log.append([t.shape for t in tiles])
        return [fn(t) for t in tiles]

    return infer


def whole(fn, img, multiple):
    """What whole-image inference gives: the image reflect-padded to the size multiple, cropped back."""
    h, w = img.shape[:2]
    padded = pad_to(img, -(-h // multiple) * multiple, -(-w // multiple) * multiple)
    return fn(padded)[:h, :w]


def image(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_pad_to_reflects_and_handles_single_pixels():
    a = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    p = pad_to(a, 4, 5)
    assert p.shape == (4, 5, 1)
    np.testing.assert_array_equal(p[:2, :3], a)
    np.testing.assert_array_equal(p[2], a[0, [0, 1, 2, 1, 0]])  # reflect without repeating the edge
    assert pad_to(np.ones((1, 1, 3), np.uint8), 8, 8).shape == (8, 8, 3)
    with pytest.raises(ValueError):
        pad_to(a, 1, 3)


def test_plan_small_image_is_one_padded_tile():
    p = plan_tiles(30, 50, tile=128, overlap=16, size_multiple=8, bucket=64, scale=2)
    assert p.n_tiles == 1 and (p.padded_height, p.padded_width) == (64, 64)
    p = plan_tiles(30, 50, tile=128, overlap=16, size_multiple=8, bucket=0)
    assert (p.padded_height, p.padded_width) == (32, 56)
    p = plan_tiles(100, 100, tile=104, overlap=16, size_multiple=8, bucket=64)
    assert (p.padded_height, p.tile_height) == (104, 104)  # bucket rounding never exceeds the tile
    with pytest.raises(ValueError):
        plan_tiles(10, 10, tile=12, overlap=0, size_multiple=8)


def test_plan_large_image_covers_everything_with_overlap():
    p = plan_tiles(203, 517, tile=64, overlap=16, size_multiple=8)
    # tiled axes are padded to the size multiple, and every tile starts on that grid: a network
    # that downsamples by 8 then samples each tile on the whole image's grid
    assert (p.padded_height, p.padded_width) == (208, 520)
    for positions, length in ((p.ys, 208), (p.xs, 520)):
        assert positions[0] == 0 and positions[-1] + 64 == length
        assert all(y % 8 == 0 for y in positions)
        gaps = np.diff(positions)
        assert (gaps <= 64 - 16).all() and (gaps > 0).all()


def test_plan_cores_partition_the_image_on_the_grid():
    p = plan_tiles(203, 517, tile=64, overlap=16, size_multiple=8)
    cores = p.cores()
    assert len(cores) == p.n_tiles
    covered = np.zeros((p.padded_height, p.padded_width), int)
    for (y, x), (top, bottom, left, right) in zip([(y, x) for y in p.ys for x in p.xs], cores, strict=True):
        r0, r1 = y + round(top * 64), y + round(bottom * 64)
        c0, c1 = x + round(left * 64), x + round(right * 64)
        assert r0 % 8 == 0 and c0 % 8 == 0 and y <= r0 < r1 <= y + 64 and x <= c0 < c1 <= x + 64
        covered[r0:r1, c0:c1] += 1
    assert (covered == 1).all()


def test_plan_overlap_and_margin_follow_the_receptive_radius():
    p = plan_tiles(500, 500, tile=128, overlap=8, size_multiple=4, radius=10)
    assert p.margin == 12 and p.overlap >= 2 * 12 + 8  # room for the cross-fade beyond the margins
    w = axis_weights(128, True, True, p.overlap, p.margin)
    assert (w[:12] < 1e-3).all() and (w[-12:] < 1e-3).all()


def test_weights_cross_fade_to_one():
    left = axis_weights(64, before=False, after=True, overlap=16)
    right = axis_weights(64, before=True, after=False, overlap=16)
    overlap_sum = left[-16:] + right[:16]
    np.testing.assert_allclose(overlap_sum, 1.0, atol=1e-5)
    assert left[-1] < 1e-3 and right[0] < 1e-3  # tile edges (no context) get ~no weight
    assert (axis_weights(10, False, False, 16) == 1).all()


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"), [(203, 317, 64, 16), (97, 250, 32, 8), (64, 129, 64, 12)]
)
def test_tiled_blur_equals_untiled_exactly(h, w, tile, overlap):
    img = image(h, w, seed=h)
    tiled = run_tiled(img, plan_tiles(h, w, tile=tile, overlap=overlap, size_multiple=8), per_tile(blur))
    np.testing.assert_array_equal(tiled, whole(blur, img, 8))


def test_tiled_super_resolution_exact_size_and_values():
    img = image(45, 70, c=1)
    log = []
    out = run_tiled(
        img, plan_tiles(45, 70, tile=16, overlap=4, size_multiple=4, scale=3), per_tile(upscale3, log)
    )
    assert out.shape == (135, 210, 1)
    np.testing.assert_array_equal(out, upscale3(img))
    assert len(log) == len(
        plan_tiles(45, 70, tile=16, overlap=4, size_multiple=4).ys
    )  # one infer call per row


def test_working_memory_is_one_tile_row():
    # Large, many rows: the float strip must stay about one tile row high, whatever the height.
    img = image(600, 90, c=1)
    plan = plan_tiles(600, 90, tile=32, overlap=8, size_multiple=8)
    seen_rows = []

    def infer(tiles):
        seen_rows.append(len(tiles))
        return [blur(t) for t in tiles]

    import tracemalloc

    tracemalloc.start()
    out = run_tiled(img, plan, infer)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(out, whole(blur, img, 8))
    full_float = 600 * 90 * 4 * 2  # what accumulating the whole image in float would take
    assert peak < full_float


def test_oom_retry_halves_tiles_until_it_fits():
    img = image(64, 64)
    attempts = []

    def retry(infer, min_tile: int, overlap: int):
        """Tiles of 64 px first, halved on each OOM down to min_tile."""
        return run_with_oom_retry(
            img,
            tile=64,
            min_tile=min_tile,
            size_multiple=8,
            make_plan=lambda t: plan_tiles(64, 64, tile=t, overlap=overlap, size_multiple=8),
            infer=infer,
        )

    def infer(tiles):
        attempts.append(tiles[0].shape[0])
        if tiles[0].shape[0] > 16:
            raise OutOfMemoryError("fake OOM")
        return [blur(t) for t in tiles]

    out, used = retry(infer, min_tile=8, overlap=8)
    assert used == 16 and attempts[:3] == [64, 32, 16]
    np.testing.assert_array_equal(out, blur(img))

    def never_fits(tiles):
        raise OutOfMemoryError("always")

    with pytest.raises(OutOfMemoryError, match="down to 16"):
        retry(never_fits, min_tile=16, overlap=4)

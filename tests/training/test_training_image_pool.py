"""ImagePool: fill phase, seeded mixing, and bit-exact state round trip."""

import io

import pytest
import torch

from pixforge.training.image_pool import ImagePool


def _batches(n, start=0):
    return [torch.full((2, 1, 2, 2), float(start + i)) for i in range(n)]


def test_size_zero_passes_through():
    x = torch.rand(3, 1, 2, 2)
    assert ImagePool(0).query(x) is x


def test_fill_then_mix():
    pool = ImagePool(4, seed=3)
    for b in _batches(2):  # fills exactly: outputs are the inputs
        assert torch.equal(pool.query(b), b)
    assert len(pool) == 4
    seen_old = False
    for b in _batches(20, start=10):
        before = {float(img.flatten()[0]) for img in pool.images}
        out = pool.query(b)
        assert out.shape == b.shape
        for img in out:
            v = float(img.flatten()[0])
            assert v == float(b[0].flatten()[0]) or v in before
            seen_old |= v in before
        assert len(pool) == 4
    assert seen_old  # with p=1/2 per image over 40 draws, history is returned


def test_same_seed_same_stream():
    a, b = ImagePool(3, seed=7), ImagePool(3, seed=7)
    for x in _batches(10):
        assert torch.equal(a.query(x), b.query(x))


def test_state_round_trip_is_bit_exact():
    pool = ImagePool(5, seed=1)
    for x in _batches(6):
        pool.query(x + torch.rand_like(x))
    buf = io.BytesIO()
    torch.save(pool.state_dict(), buf)
    buf.seek(0)
    restored = ImagePool(5, seed=999)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    for x in _batches(8, start=100):
        assert torch.equal(pool.query(x), restored.query(x))
    with pytest.raises(ValueError, match="size mismatch"):
        ImagePool(4).load_state_dict(pool.state_dict())

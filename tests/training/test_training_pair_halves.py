"""Writing one half of A|B pair images as images of their own (tools/pair_halves.py)."""

from __future__ import annotations

import numpy as np
import pytest
from training_helpers import make_aligned, write_rgb

from pixforge.training.data.files import BadImageError, DataError, read_rgb
from pixforge.training.data.pair_halves import write_pair_halves


@pytest.mark.parametrize("half", ["A", "B"])
def test_each_pair_becomes_its_half_losslessly(tmp_path, half):
    src = make_aligned(tmp_path / "pairs", n_train=2, n_val=1, size=16)
    assert write_pair_halves(src, tmp_path / "out", half) == 3
    for rel in ("train/0", "train/1", "val/0"):
        pair = read_rgb(src / f"{rel}.png")
        expected = pair[:, :16] if half == "A" else pair[:, 16:]
        np.testing.assert_array_equal(read_rgb(tmp_path / "out" / f"{rel}.png"), expected)


def test_refuses_an_unknown_half_a_missing_or_empty_folder_and_an_unsplittable_file(tmp_path):
    src = make_aligned(tmp_path / "pairs", n_train=1, n_val=0, size=8)
    with pytest.raises(DataError, match="half"):
        write_pair_halves(src, tmp_path / "out", "C")
    with pytest.raises(DataError, match="not a folder"):
        write_pair_halves(tmp_path / "missing", tmp_path / "out", "A")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        write_pair_halves(tmp_path / "empty", tmp_path / "out", "A")
    write_rgb(tmp_path / "narrow" / "x.png", np.zeros((4, 1, 3), np.uint8))
    with pytest.raises(BadImageError, match="cannot be split"):
        write_pair_halves(tmp_path / "narrow", tmp_path / "out", "A")

"""Fixtures for the training tests.

- Every test runs single-threaded with torch seeded (tiny nets stay fast and deterministic on a
  shared 2-core machine).
- Tiny generated image folders for the pipeline tests (training_helpers.py makes them; the tiny
  model configs are there too).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_helpers import make_aligned, make_photos, make_unaligned


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def aligned_data(tmp_path) -> Path:
    return make_aligned(tmp_path / "aligned")


@pytest.fixture
def unaligned_data(tmp_path) -> Path:
    return make_unaligned(tmp_path / "unaligned")


@pytest.fixture
def photo_data(tmp_path) -> Path:
    return make_photos(tmp_path / "photos")

"""Export-area fixtures: one torch thread, a fresh model repository."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "models"
    path.mkdir()
    return path

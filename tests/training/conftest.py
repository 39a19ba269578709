"""Fixtures for the training tests: single-threaded, seeded torch so tiny nets stay fast and
deterministic on a shared 2-core machine."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)

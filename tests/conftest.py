"""Suite-wide test settings: slow tests are opt-in, thread counts are small and fixed.

Area fixtures live in tests/<area>/conftest.py. This file imports neither torch nor grpc so
every area can be collected alone.
"""

from __future__ import annotations

import os

import pytest

# Two cores in CI: keep BLAS/OpenMP/onnxruntime from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="record the shipped models' outputs again (tests/service/test_service_golden.py) "
        "instead of comparing them",
    )


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow test: set RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)

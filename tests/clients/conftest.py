"""Fixtures for the client tests: a real pixforge server on a tiny ONNX model, and scripted fakes.

* `real_server` starts `pixforge.service.server.serve()` in-process on 127.0.0.1 (free port) with
  a model repository holding the tiny "invert" model from clients_helpers.
* `fake_server` / `fake_server_pair`: scripted servers for failure injection and load balancing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clients_helpers import FakeServer, build_invert_model, start_server


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("clients-models")
    build_invert_model(repo / "invert" / "1" / "model.onnx")
    return repo


@pytest.fixture
def fake_server():
    server = FakeServer()
    yield server
    server.stop()


@pytest.fixture
def fake_server_pair():
    servers = [FakeServer(), FakeServer()]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def real_server(model_repo):
    """The real server with the "invert" model, shared by the whole session."""
    handle = start_server(model_repo)
    yield handle
    handle.stop(0)


@pytest.fixture
def slow_server(model_repo):
    """A real server whose batcher waits 60 ms for company: ~60 ms per image at concurrency 1."""
    handle = start_server(model_repo, batching__max_queue_delay_ms=60.0)
    yield handle
    handle.stop(0)


@pytest.fixture
def token_server(model_repo):
    """A real server that requires the bearer token "s3cret"."""
    handle = start_server(model_repo, auth__token="s3cret")
    yield handle
    handle.stop(0)

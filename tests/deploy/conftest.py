"""Fixtures of the deployment tests: the parsed compose file and Dockerfiles, tiny model repos."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploy_helpers import REPO, interpolate, parse_dockerfile, write_tiny_model


@pytest.fixture(scope="session")
def compose_raw() -> dict:
    """docker-compose.yml as written (variables not substituted)."""
    return yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def compose(compose_raw) -> dict:
    """docker-compose.yml as `docker compose up` sees it with no .env: every variable at its default."""
    return interpolate(compose_raw, {})


@pytest.fixture(scope="session")
def dockerfile():
    return parse_dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="session")
def dockerfile_train():
    return parse_dockerfile(REPO / "Dockerfile.train")


@pytest.fixture
def tiny_models(tmp_path) -> Path:
    """A model repository holding ``tiny/1/model.onnx``."""
    repo = tmp_path / "models"
    write_tiny_model(repo / "tiny" / "1" / "model.onnx")
    return repo

"""Fixtures for the service tests: a repository of tiny ONNX models built in the test run, and a
factory that starts real in-process servers on 127.0.0.1 (ephemeral ports) and always stops them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from service_helpers import EngineControl, build_repo, test_config

from pixforge.kserve.v2 import grpc_service_pb2_grpc as kpb_grpc
from pixforge.service.server import serve
from pixforge.v1 import translation_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    """Read-only standard repository (copy it before changing anything)."""
    return build_repo(tmp_path_factory.mktemp("service-models"))


@pytest.fixture
def repo_copy(model_repo, tmp_path) -> Path:
    """A private, writable copy of the standard repository."""
    dst = tmp_path / "models"
    shutil.copytree(model_repo, dst)
    return dst


@pytest.fixture(scope="module")
def start_server():
    """start_server(config, control=None, **serve_kwargs) -> (handle, stub); stopped at module end."""
    started = []

    def start(config, control: EngineControl | None = None, **kwargs):
        factory = control.factory() if control is not None else None
        handle = serve(config, engine_factory=factory, **kwargs)
        channel = grpc.insecure_channel(handle.address)
        started.append((handle, channel))
        return handle, pb_grpc.ImageTranslationStub(channel)

    yield start
    for handle, channel in started:
        channel.close()
        handle.stop(0)


@pytest.fixture(scope="module")
def start_kserve(start_server):
    """start_kserve(config, control=None, **serve_kwargs) -> (handle, stub, KServe v2 stub).

    As start_server, plus a stub of the KServe v2 gRPC service on the same port.
    """
    channels = []

    def start(config, control: EngineControl | None = None, **kwargs):
        handle, stub = start_server(config, control, **kwargs)
        channels.append(grpc.insecure_channel(handle.address))
        return handle, stub, kpb_grpc.GRPCInferenceServiceStub(channels[-1])

    yield start
    for channel in channels:
        channel.close()


@pytest.fixture
def make_config():
    return test_config


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """A throw-away CA (ca.pem), a server cert for 127.0.0.1/localhost and a client cert (EC keys:
    fast): server.pem/.key, client.pem/.key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = ["-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.pem"]
    _openssl("req", "-x509", *ec, "-days", "2", *ca, cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=d,
        )  # fmt: skip
    return d

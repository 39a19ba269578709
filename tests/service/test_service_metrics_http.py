"""The Prometheus endpoint: loopback by default, only /metrics (404 elsewhere), the gRPC port's
bearer tokens and TLS / mTLS settings, and a silent client cannot block it."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pixforge.service.config import ServiceConfig, config_from_args, load_config
from pixforge.service.metrics import HTTP_TIMEOUT_S, Metrics
from service_helpers import build_invert, test_config

from pixforge.cli import build_parser


def get(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """(status, body) of a GET, errors included."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def metrics():
    m = Metrics()
    m.set_ready("invert", True)
    yield m
    m.close()


# --------------------------------------------------------------------------- bind address


def test_metrics_bind_loopback_by_default(start_server, tmp_path):
    build_invert(tmp_path / "invert" / "1" / "model.onnx")
    config = test_config(tmp_path, host="0.0.0.0", metrics_port=-1)  # gRPC on every interface
    handle, _ = start_server(config)
    assert handle.metrics._http.server_address[0] == "127.0.0.1"  # metrics on loopback only
    status, text = get(f"http://127.0.0.1:{handle.metrics_port}/metrics")
    assert status == 200 and 'pixforge_model_ready{model="invert"} 1.0' in text

    assert ServiceConfig().metrics_host == "127.0.0.1"
    assert load_config(env={}).metrics_host == "127.0.0.1"
    assert load_config(env={"PIXFORGE_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
    args = build_parser().parse_args(["serve", "--models", str(tmp_path), "--metrics-host", "0.0.0.0"])
    assert config_from_args(args, env={}).metrics_host == "0.0.0.0"


# --------------------------------------------------------------------------- paths


def test_unknown_paths_are_404(metrics):
    port = metrics.serve_http("127.0.0.1", -1)
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and 'pixforge_model_ready{model="invert"} 1.0' in text
    # Triton / KServe clients probing the wrong port must not read a "ready" there.
    for path in ("/", "/v2/health/ready", "/v2/health/live", "/metrics/", "/metricsx", "/favicon.ico"):
        status, text = get(f"http://127.0.0.1:{port}{path}")
        assert status == 404, path
        assert "pixforge_" not in text
    assert metrics.http_scheme == "http"


# --------------------------------------------------------------------------- auth


def test_bearer_token_auth(metrics):
    port = metrics.serve_http("127.0.0.1", -1, tokens=("first-token", "second-token"))
    url = f"http://127.0.0.1:{port}/metrics"
    assert get(url)[0] == 401
    assert get(url, "wrong")[0] == 401
    assert get(url, "")[0] == 401
    req = urllib.request.Request(url, headers={"Authorization": "first-token"})  # no "Bearer"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 401 and info.value.headers["WWW-Authenticate"].startswith("Bearer")
    for token in ("first-token", "second-token"):
        status, text = get(url, token)
        assert status == 200 and "pixforge_model_ready" in text
    assert get(f"http://127.0.0.1:{port}/v2/health/ready", "first-token")[0] == 404
    status, text = get(f"http://127.0.0.1:{port}/v2/health/ready")  # no token: nothing is revealed
    assert status == 401 and "pixforge_" not in text


# --------------------------------------------------------------------------- TLS


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A throw-away CA, a server cert for 127.0.0.1 and a client cert (EC keys: fast)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("metrics-pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=d,
        )  # fmt: skip
    return d


def _client_context(pki: Path, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if with_cert:
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return context


def test_https_with_the_server_certificate(metrics, pki):
    port = metrics.serve_http(
        "127.0.0.1", -1, cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key")
    )
    assert metrics.http_scheme == "https"
    status, text = get(f"https://127.0.0.1:{port}/metrics", context=_client_context(pki))
    assert status == 200 and "pixforge_model_ready" in text
    assert get(f"https://127.0.0.1:{port}/v2/health/ready", context=_client_context(pki))[0] == 404
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        get(f"http://127.0.0.1:{port}/metrics")  # plaintext to a TLS port gets no metrics


def test_https_with_auth_and_client_certificates(metrics, pki):
    port = metrics.serve_http(
        "127.0.0.1",
        -1,
        tokens=("t0ken",),
        cert_file=str(pki / "server.pem"),
        key_file=str(pki / "server.key"),
        client_ca_file=str(pki / "ca.pem"),
    )
    url = f"https://127.0.0.1:{port}/metrics"
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        get(url, "t0ken", context=_client_context(pki))  # no client certificate
    assert get(url, context=_client_context(pki, with_cert=True))[0] == 401
    status, text = get(url, "t0ken", context=_client_context(pki, with_cert=True))
    assert status == 200 and "pixforge_model_ready" in text


def test_a_silent_client_does_not_block_the_tls_endpoint(metrics, pki):
    port = metrics.serve_http(
        "127.0.0.1", -1, cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key")
    )
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # never say hello
    try:
        start = time.monotonic()
        status, _ = get(f"https://127.0.0.1:{port}/metrics", context=_client_context(pki))
        assert status == 200 and time.monotonic() - start < HTTP_TIMEOUT_S / 2
    finally:
        for sock in silent:
            sock.close()


# --------------------------------------------------------------------------- serve() wiring


def test_served_metrics_follow_auth_and_tls(start_server, tmp_path, pki):
    build_invert(tmp_path / "invert" / "1" / "model.onnx")
    config = test_config(
        tmp_path,
        metrics_port=-1,
        **{
            "auth.token": "t0ken",
            "tls.cert_file": str(pki / "server.pem"),
            "tls.key_file": str(pki / "server.key"),
        },
    )
    handle, _ = start_server(config)
    url = f"https://127.0.0.1:{handle.metrics_port}/metrics"
    assert get(url, context=_client_context(pki))[0] == 401
    status, text = get(url, "t0ken", context=_client_context(pki))
    assert status == 200 and 'pixforge_model_ready{model="invert"} 1.0' in text

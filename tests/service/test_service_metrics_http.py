"""The Prometheus endpoint: loopback by default, only /metrics (404 elsewhere), the gRPC port's
bearer tokens and TLS / mTLS settings, and a silent client cannot block it. It is an aiohttp
endpoint on an event loop (service/http_server.py), as in the server."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from service_helpers import build_invert, test_config

from pixforge.cli import build_parser
from pixforge.service.config import ServiceConfig, config_from_args, load_config
from pixforge.service.http_server import HTTP_TIMEOUT_S, HttpEndpoint, metrics_app, tls_context
from pixforge.service.metrics import Metrics


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
def serve_metrics():
    """serve_metrics(tokens=(), cert_file=..., ...) -> the started metrics endpoint on 127.0.0.1
    (the server's HttpEndpoint + metrics_app on a private event loop); all stopped afterwards."""
    metrics = Metrics()
    metrics.set_ready("invert", True)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    endpoints = []

    def start(tokens=(), cert_file="", key_file="", client_ca_file="") -> HttpEndpoint:
        context = tls_context(cert_file, key_file, client_ca_file) if cert_file else None
        endpoint = HttpEndpoint(metrics_app(metrics.registry, tokens), "127.0.0.1", -1, context)
        asyncio.run_coroutine_threadsafe(endpoint.start(), loop).result(10)
        endpoints.append(endpoint)
        return endpoint

    yield start
    for endpoint in endpoints:
        asyncio.run_coroutine_threadsafe(endpoint.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


# --------------------------------------------------------------------------- bind address


def test_metrics_bind_loopback_by_default(start_server, tmp_path):
    build_invert(tmp_path / "invert" / "1" / "model.onnx")
    config = test_config(tmp_path, host="0.0.0.0", metrics_port=-1)  # gRPC on every interface
    handle, _ = start_server(config)
    assert handle.metrics_endpoint.bound_host == "127.0.0.1"  # metrics on loopback only
    status, text = get(f"http://127.0.0.1:{handle.metrics_port}/metrics")
    assert status == 200 and 'pixforge_model_ready{model="invert"} 1.0' in text

    assert ServiceConfig().metrics_host == "127.0.0.1"
    assert load_config(env={}).metrics_host == "127.0.0.1"
    assert load_config(env={"PIXFORGE_METRICS_HOST": "0.0.0.0"}).metrics_host == "0.0.0.0"
    args = build_parser().parse_args(["serve", "--models", str(tmp_path), "--metrics-host", "0.0.0.0"])
    assert config_from_args(args, env={}).metrics_host == "0.0.0.0"


# --------------------------------------------------------------------------- paths


def test_unknown_paths_are_404(serve_metrics):
    endpoint = serve_metrics()
    port = endpoint.port
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and 'pixforge_model_ready{model="invert"} 1.0' in text
    # Triton / KServe clients probing the wrong port must not read a "ready" there.
    for path in ("/", "/v2/health/ready", "/v2/health/live", "/metrics/", "/metricsx", "/favicon.ico"):
        status, text = get(f"http://127.0.0.1:{port}{path}")
        assert status == 404, path
        assert "pixforge_" not in text
    status, _ = get(f"http://127.0.0.1:{port}/v2/models/invert/infer")  # no KServe routes here
    assert status == 404
    assert endpoint.scheme == "http"


# --------------------------------------------------------------------------- auth


def test_bearer_token_auth(serve_metrics):
    port = serve_metrics(tokens=("first-token", "second-token")).port
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


def _client_context(pki: Path, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if with_cert:
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return context


def test_https_with_the_server_certificate(serve_metrics, pki):
    endpoint = serve_metrics(cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key"))
    port = endpoint.port
    assert endpoint.scheme == "https"
    status, text = get(f"https://127.0.0.1:{port}/metrics", context=_client_context(pki))
    assert status == 200 and "pixforge_model_ready" in text
    assert get(f"https://127.0.0.1:{port}/v2/health/ready", context=_client_context(pki))[0] == 404
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        get(f"http://127.0.0.1:{port}/metrics")  # plaintext to a TLS port gets no metrics


def test_https_with_auth_and_client_certificates(serve_metrics, pki):
    port = serve_metrics(
        tokens=("t0ken",),
        cert_file=str(pki / "server.pem"),
        key_file=str(pki / "server.key"),
        client_ca_file=str(pki / "ca.pem"),
    ).port
    url = f"https://127.0.0.1:{port}/metrics"
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        get(url, "t0ken", context=_client_context(pki))  # no client certificate
    assert get(url, context=_client_context(pki, with_cert=True))[0] == 401
    status, text = get(url, "t0ken", context=_client_context(pki, with_cert=True))
    assert status == 200 and "pixforge_model_ready" in text


def test_a_silent_client_does_not_block_the_tls_endpoint(serve_metrics, pki):
    port = serve_metrics(cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key")).port
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

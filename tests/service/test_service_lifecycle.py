"""Server lifecycle: loading state, reload (broken versions, in-flight requests), graceful shutdown,
auth, TLS/mTLS, and the real `pixforge serve` process with SIGHUP/SIGTERM and JSON logs."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import (
    EngineControl,
    build_invert,
    decode,
    png,
    rgb_image,
    test_config,
    wait_for,
    write_garbage,
)

from pixforge.kserve.v2 import grpc_service_pb2 as kpb
from pixforge.v1 import translation_pb2 as pb
from pixforge.v1 import translation_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


def invert_repo(path: Path) -> Path:
    build_invert(path / "invert" / "1" / "model.onnx")
    return path


def request(model="invert", seed=0, **kwargs):
    return pb.TranslateRequest(model=model, image=png(rgb_image(8, 8, seed)), **kwargs)


def health_status(address: str, service: str = "", credentials=None) -> int:
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            .status
        )


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# --------------------------------------------------------------------------- loading and reload


def test_loading_model_is_unavailable_so_clients_retry(start_kserve, tmp_path):
    # UNAVAILABLE (which clients retry), not FAILED_PRECONDITION (which they must not): a restart
    # would otherwise fail every request that arrives while the models load.
    control = EngineControl()
    gate = control.load_gates["invert"] = threading.Event()
    handle, stub, kserve = start_kserve(test_config(invert_repo(tmp_path)), control, wait_for_models=False)
    try:
        assert wait_for(
            lambda: any(
                m.state == pb.MODEL_STATE_LOADING
                for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models
            )
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Translate(request(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in info.value.details()
        image = rgb_image(8, 8, 0)
        tensor = kpb.ModelInferRequest.InferInputTensor(name="image", datatype="UINT8", shape=[8, 8, 3])
        infer = kpb.ModelInferRequest(
            model_name="invert", inputs=[tensor], raw_input_contents=[image.tobytes()]
        )
        with pytest.raises(grpc.RpcError) as info:
            kserve.ModelInfer(infer, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in info.value.details()
        assert health_status(handle.address) == NOT_SERVING
        assert health_status(handle.address, "invert") == NOT_SERVING
    finally:
        gate.set()
    assert handle.wait_until_ready(10)
    assert stub.Translate(request(), timeout=5).version == 1
    assert health_status(handle.address) == SERVING and health_status(handle.address, "invert") == SERVING


def server_ready(handle, kserve) -> bool:
    """The readiness as every readiness probe reports it (they must agree)."""
    grpc_health = health_status(handle.address, "pixforge.v1.ImageTranslation") == SERVING
    assert health_status(handle.address, "inference.GRPCInferenceService") == health_status(
        handle.address, "pixforge.v1.ImageTranslation"
    )
    assert kserve.ServerReady(kpb.ServerReadyRequest(), timeout=5).ready == grpc_health
    assert handle.serving == grpc_health
    # The server's own entry is liveness: SERVING whatever the models, so no restart loop.
    assert health_status(handle.address) == SERVING
    return grpc_health


def test_strict_readiness_waits_for_every_model(start_kserve, tmp_path):
    # Triton's --strict-readiness: a model with no READY version keeps the server out of rotation,
    # so a rollout with a broken model file stops at the new pod instead of serving without it.
    repo = invert_repo(tmp_path / "models")
    write_garbage(repo / "broken" / "1" / "model.onnx")
    handle, stub, kserve = start_kserve(test_config(repo, poll_seconds=0))
    assert not server_ready(handle, kserve)
    assert stub.Translate(request(), timeout=5).version == 1  # the good model still answers
    assert health_status(handle.address, "invert") == SERVING

    build_invert(repo / "broken" / "1" / "model.onnx")  # fixed: the model loads, the server is ready
    time.sleep(0.01)
    handle.reload()
    assert wait_for(lambda: server_ready(handle, kserve))

    write_garbage(repo / "broken" / "2" / "model.onnx")  # a broken new version beside a serving one
    handle.reload()
    assert server_ready(handle, kserve)

    write_garbage(repo / "late" / "1" / "model.onnx")  # a new model that fails: not ready again
    handle.reload()
    assert wait_for(lambda: not server_ready(handle, kserve))


def test_lenient_readiness_needs_one_model(start_kserve, tmp_path):
    repo = invert_repo(tmp_path / "models")
    write_garbage(repo / "broken" / "1" / "model.onnx")
    handle, _, kserve = start_kserve(test_config(repo, poll_seconds=0, strict_readiness=False))
    assert server_ready(handle, kserve)

    shutil.rmtree(repo / "invert")  # only the broken model is left: nothing serves
    handle.reload()
    assert wait_for(lambda: not server_ready(handle, kserve))


@pytest.mark.parametrize("strict", [True, False])
def test_every_model_failed_is_not_ready(start_kserve, tmp_path, strict):
    repo = tmp_path / "models"
    write_garbage(repo / "broken" / "1" / "model.onnx")
    handle, _, kserve = start_kserve(test_config(repo, poll_seconds=0, strict_readiness=strict))
    assert handle.wait_until_ready(5)  # the initial load finished ...
    assert not server_ready(handle, kserve)  # ... but nothing can serve


def test_empty_repository_is_ready(start_kserve, tmp_path):
    (tmp_path / "models").mkdir()
    handle, _, kserve = start_kserve(test_config(tmp_path / "models", poll_seconds=0))
    assert server_ready(handle, kserve)


def test_reload_with_broken_versions_keeps_serving(start_server, tmp_path):
    repo = invert_repo(tmp_path / "models")
    handle, stub = start_server(test_config(repo))

    write_garbage(repo / "invert" / "2" / "model.onnx")  # broken new version
    summary = handle.reload()
    assert summary.failed == ["invert/2"]
    rows = {m.version: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models}
    assert rows[2].state == pb.MODEL_STATE_FAILED and "not a loadable ONNX model" in rows[2].error
    assert stub.Translate(request(), timeout=5).version == 1
    assert health_status(handle.address, "invert") == SERVING

    build_invert(repo / "invert" / "3" / "model.onnx")  # a good newer version takes over
    assert handle.reload().loaded == ["invert/3"]
    assert stub.Translate(request(), timeout=5).version == 3
    assert stub.Translate(request(version=1), timeout=5).version == 1  # pinned per request

    time.sleep(0.01)
    write_garbage(repo / "invert" / "3" / "model.onnx")  # the serving file is replaced by junk
    assert handle.reload().kept == ["invert/3"]
    assert stub.Translate(request(), timeout=5).version == 3
    assert "reload refused" in stub.GetModel(pb.GetModelRequest(name="invert"), timeout=5).model.error

    shutil.rmtree(repo / "invert" / "3")
    assert handle.reload().removed == ["invert/3"]
    assert stub.Translate(request(), timeout=5).version == 1


def test_reload_keeps_in_flight_requests_on_their_session(start_server, tmp_path):
    repo = invert_repo(tmp_path / "models")
    control = EngineControl()
    handle, stub = start_server(test_config(repo, **{"engine.warmup": False}), control)
    old_runtime = handle.registry.runtime("invert")
    gate = control.gate("invert")
    try:
        in_flight = stub.Translate.future(request(), timeout=30)
        assert control.entered["invert"].wait(10)
        time.sleep(0.01)
        build_invert(repo / "invert" / "1" / "model.onnx", tile=32)  # version 1's file changes
        build_invert(repo / "invert" / "2" / "model.onnx")  # and a new version appears
        assert handle.reload().loaded == ["invert/1", "invert/2"]
        assert handle.registry.runtime("invert", 1) is not old_runtime
        assert old_runtime.in_flight == 1  # swapped out but still running its request
    finally:
        gate.set()
        control.open("invert")
    response = in_flight.result()
    assert response.version == 1
    np.testing.assert_array_equal(decode(response.image), 255 - rgb_image(8, 8, 0))
    assert stub.Translate(request(), timeout=5).version == 2
    assert stub.GetModel(pb.GetModelRequest(name="invert", version=1), timeout=5).model.tile_size == 32
    assert wait_for(lambda: not old_runtime.batcher._thread.is_alive())  # closed after its last request


def test_poll_picks_up_new_versions(start_server, tmp_path):
    repo = invert_repo(tmp_path / "models")
    handle, stub = start_server(test_config(repo, poll_seconds=0.1))
    build_invert(repo / "invert" / "2" / "model.onnx")
    assert wait_for(lambda: stub.Translate(request(), timeout=5).version == 2)
    assert health_status(handle.address, "invert") == SERVING


# --------------------------------------------------------------------------- shutdown


def test_graceful_shutdown_finishes_in_flight_and_refuses_new(start_server, tmp_path):
    control = EngineControl()
    handle, stub = start_server(test_config(invert_repo(tmp_path)), control)
    gate = control.gate("invert")
    stopper = None
    try:
        running = [stub.Translate.future(request(seed=i), timeout=30) for i in range(3)]
        assert control.entered["invert"].wait(10)
        # All three must be inside the server (admitted) before shutdown starts.
        assert wait_for(lambda: handle.registry.runtime("invert").in_flight == 3)
        stopper = threading.Thread(target=handle.stop, kwargs={"grace": 20})
        stopper.start()
        assert wait_for(lambda: handle.draining)
        with pytest.raises(grpc.RpcError) as info:
            stub.Translate(request(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stopper.is_alive()  # still waiting for the in-flight requests
    finally:
        gate.set()
        control.open("invert")
    for i, future in enumerate(running):
        np.testing.assert_array_equal(decode(future.result().image), 255 - rgb_image(8, 8, i))
    stopper.join(20)
    assert not stopper.is_alive()


# --------------------------------------------------------------------------- auth and TLS


def test_bearer_token_auth(start_server, tmp_path):
    token_file = tmp_path / "tokens.txt"
    token_file.write_text("# rotated tokens\nsecond-token\n")
    config = test_config(
        invert_repo(tmp_path / "models"),
        metrics_port=-1,
        **{"auth.token": "first-token", "auth.token_file": str(token_file)},
    )
    handle, stub = start_server(config)

    for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", "first-token")]):
        with pytest.raises(grpc.RpcError) as info:
            stub.Translate(request(), timeout=5, metadata=metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        list(stub.TranslateStream(iter([pb.TranslateStreamRequest(request=request())]), timeout=5))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        stub.ListModels(pb.ListModelsRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    for token in ("first-token", "second-token"):
        md = [("authorization", f"Bearer {token}")]
        assert stub.Translate(request(), timeout=5, metadata=md).width == 8
        assert len(stub.ListModels(pb.ListModelsRequest(), timeout=5, metadata=md).models) == 1
    assert health_status(handle.address) == SERVING  # probes need no token
    assert (
        handle.metrics.registry.get_sample_value(
            "pixforge_request_failures_total", {"model": "-", "code": "UNAUTHENTICATED"}
        )
        >= 4
    )


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throw-away CA, a server cert for 127.0.0.1 and a client cert (EC keys: fast)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=pixforge test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "pixforge client")):
        _openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            f"{name}.pem",
            cwd=d,
        )
    return d


def test_tls_and_mutual_tls(start_server, tmp_path, pki):
    repo = invert_repo(tmp_path / "models")
    tls = {"tls.cert_file": str(pki / "server.pem"), "tls.key_file": str(pki / "server.key")}
    handle, _ = start_server(test_config(repo, **tls))
    ca = (pki / "ca.pem").read_bytes()
    with grpc.secure_channel(handle.address, grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
        assert pb_grpc.ImageTranslationStub(channel).Translate(request(), timeout=10).width == 8

    mtls, _ = start_server(test_config(repo, **tls, **{"tls.client_ca_file": str(pki / "ca.pem")}))
    no_cert = grpc.ssl_channel_credentials(root_certificates=ca)
    with grpc.secure_channel(mtls.address, no_cert) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ImageTranslationStub(channel).Translate(request(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=(pki / "client.key").read_bytes(),
        certificate_chain=(pki / "client.pem").read_bytes(),
    )
    with grpc.secure_channel(mtls.address, with_cert) as channel:
        assert pb_grpc.ImageTranslationStub(channel).Translate(request(), timeout=10).width == 8


# --------------------------------------------------------------------------- the real process


def _clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXFORGE_")}
    env.update(extra)
    return env


NO_HTTP_PORTS = ("--metrics-port", "0", "--http-port", "0")


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "pixforge.cli", "serve", *args]


def test_cli_config_errors_and_dry_run(tmp_path):
    repo = invert_repo(tmp_path)
    bad = subprocess.run(
        _cli("--models", str(repo), "--port", "70000"),
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "port" in bad.stderr and "Traceback" not in bad.stderr
    dry = subprocess.run(
        _cli("--models", str(repo), "--port", "6000", "--dry-run"),
        capture_output=True,
        text=True,
        env=_clean_env(PIXFORGE_BATCHING_MAX_BATCH_SIZE="3", PIXFORGE_TOKEN="s3cret"),
        timeout=60,
        cwd=ROOT,
    )
    assert dry.returncode == 0, dry.stderr
    resolved = json.loads(dry.stdout)
    assert resolved["port"] == 6000 and resolved["batching"]["max_batch_size"] == 3
    assert "s3cret" not in dry.stdout


def test_cli_process_sighup_reload_json_logs_and_sigterm(tmp_path):
    repo = invert_repo(tmp_path / "models")
    env = _clean_env(
        PIXFORGE_LOG_FORMAT="json", PIXFORGE_ENGINE_PROVIDERS="cpu", PIXFORGE_ENGINE_INTRA_OP_THREADS="1"
    )
    proc = subprocess.Popen(
        _cli("--models", str(repo), "--port", "0", "--host", "127.0.0.1", *NO_HTTP_PORTS),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    seen: list[dict] = []

    def wait_line(predicate, timeout=30.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                record = json.loads(lines.get(timeout=0.2))
            except queue.Empty:
                continue
            seen.append(record)
            if predicate(record):
                return record
        raise AssertionError(f"log line not seen; got {[r['message'] for r in seen]}")

    try:
        ready = wait_line(lambda r: r["message"].startswith("serving "))
        assert ready["message"].startswith("serving 1 models on 127.0.0.1:")
        address = ready["message"].split(" on ")[1].split(" ")[0]
        assert health_status(address) == SERVING
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ImageTranslationStub(channel)
            assert stub.Translate(request(request_id="cli-req-1"), timeout=10).version == 1
            wait_line(lambda r: r.get("request_id") == "cli-req-1" and r.get("model") == "invert")

            build_invert(repo / "invert" / "2" / "model.onnx")
            proc.send_signal(signal.SIGHUP)
            wait_line(lambda r: r["message"].startswith("reload:"))
            assert stub.Translate(request(), timeout=10).version == 2

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        wait_line(lambda r: r["message"] == "server stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serving_path_imports_no_torch():
    code = (
        "import sys\n"
        "import pixforge.service.server, pixforge.service.pipeline, pixforge.service.engine, pixforge.cli\n"
        "prefixes = ('torch.', 'pixforge.training')\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(prefixes))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr

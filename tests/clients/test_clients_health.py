"""`pixforge health`: exit 0 SERVING, 1 NOT_SERVING / unknown service, 2 unreachable."""

from __future__ import annotations

import subprocess
import sys

import pytest
from clients_helpers import cli_env, free_port
from grpc_health.v1 import health_pb2

from pixforge.cli import main


def health(capsys, *args: str) -> tuple[int, str]:
    code = main(["health", *args])
    out, err = capsys.readouterr()
    return code, out + err


def test_serving_server_and_model(capsys, real_server):
    code, text = health(capsys, "--server", real_server.address)
    assert code == 0 and "SERVING" in text
    code, text = health(capsys, "--server", real_server.address, "--service", "invert")
    assert code == 0
    code, text = health(capsys, "--server", real_server.address, "--service", "pixforge.v1.ImageTranslation")
    assert code == 0


def test_unknown_service_and_not_serving_exit_1(capsys, real_server, fake_server):
    code, text = health(capsys, "--server", real_server.address, "--service", "nope")
    assert code == 1 and "unknown service 'nope'" in text
    fake_server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    code, text = health(capsys, "--server", fake_server.address)
    assert code == 1 and "NOT_SERVING" in text and text.count("\n") == 1


def test_unreachable_server_exits_2_with_one_line(capsys):
    code, text = health(capsys, "--server", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert code == 2 and "cannot connect" in text and text.count("\n") == 1
    code, text = health(capsys, "--server", "no-port-here")
    assert code == 2 and "HOST:PORT" in text


@pytest.mark.parametrize(
    "value, why", [("inf", "finite"), ("nan", "finite"), ("0", "> 0"), ("-1", "> 0"), ("1e300", "at most")]
)
def test_bad_timeouts_are_refused_at_parsing(capsys, real_server, value, why):
    # Before: inf, nan and 1e300 reached gRPC and came back as "no answer within infs".
    with pytest.raises(SystemExit) as info:
        main(["health", "--server", real_server.address, "--timeout", value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "argument --timeout: must be" in err and why in err


def test_as_a_subprocess_like_the_docker_healthcheck(real_server):
    proc = subprocess.run(
        [sys.executable, "-m", "pixforge.cli", "health", "--server", real_server.address, "--timeout", "5"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
    )
    assert proc.returncode == 0 and "SERVING" in proc.stdout and not proc.stderr


def test_a_list_of_servers_is_serving_only_when_every_one_is(capsys, real_server, fake_server):
    down = f"127.0.0.1:{free_port()}"
    # Before: one round_robin channel over the list asked one server and said SERVING.
    code, text = health(capsys, "--server", f"{real_server.address},{down}", "--timeout", "2")
    lines = text.strip().splitlines()
    assert code == 2 and len(lines) == 3
    assert f"{real_server.address}: server is SERVING" in text and f"{down}: cannot connect" in text
    assert "overall: NOT_SERVING (1 of 2 servers failed the check)" in text
    fake_server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    code, text = health(capsys, "--server", f"{real_server.address},{fake_server.address}")
    assert code == 1 and "overall: NOT_SERVING" in text
    fake_server.health.set("", health_pb2.HealthCheckResponse.SERVING)
    code, text = health(capsys, "--server", f"{real_server.address}, {fake_server.address}")
    assert code == 0 and "overall: SERVING (all 2 servers)" in text

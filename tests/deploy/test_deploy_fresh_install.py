"""The image's entry point, run from a fresh install made the way the Dockerfile makes it.

No Docker engine runs here, so the test replays the image build and `docker compose up` by hand:
the build context is the Dockerfile's COPY sources filtered through .dockerignore; the wheel is
built with the wheel stage's own `pip wheel` arguments and installed with `--no-deps` into a new
virtualenv (as build-cpu does); the server starts with the image's ENTRYPOINT + the compose
`command`, the image ENV + the compose `environment`, container paths mapped through the compose
bind mounts, from a working folder outside the checkout. Then the compose healthcheck command
must report SERVING, a real conversion must work, metrics must be served where Prometheus looks,
and SIGTERM must stop the server cleanly.

Fast variant (default): the fresh venv gets its third-party dependencies from the test
interpreter's site-packages through a .pth file (no network); only pixforge itself comes from the
built wheel. Slow variant (RUN_SLOW=1, needs PyPI): build-cpu's RUN line runs verbatim, downloading
plain onnxruntime and every dependency into the fresh venv (about 15 s here).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import numpy as np
import pytest
import yaml
from deploy_helpers import (
    REPO,
    DockerIgnore,
    bind_mounts,
    free_port,
    interpolate,
    parse_duration,
    service_environment,
    to_host_path,
)

from pixforge.codec import decode_image, encode_image

SERVICE = "server-cpu"  # no GPU here: the CPU image's compose service


def _build_context(dockerfile, dest: Path) -> Path:
    """Copy what the wheel stage COPYs, through .dockerignore, to ``dest`` (the image's /src)."""
    ignore = DockerIgnore.read(REPO / ".dockerignore")
    for copy in dockerfile.stage("wheel").all("COPY"):
        for source in copy.operands()[:-1]:
            path = REPO / source
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                rel = str(file.relative_to(REPO))
                if not ignore.excluded(rel):
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, dest / rel)
    return dest


def _build_wheel(dockerfile, tmp_path: Path) -> Path:
    """Run the wheel stage's `pip wheel` (its own arguments) in a copy of the build context."""
    (run,) = [r for r in dockerfile.stage("wheel").all("RUN") if " wheel " in r.args]
    words = shlex.split(run.args)
    args = words[words.index("wheel") :]
    wheels = tmp_path / "wheels"
    args = [str(wheels) if a == "/wheels" else a for a in args]
    src = _build_context(dockerfile, tmp_path / "src")
    # Offline: build with this interpreter's setuptools instead of a freshly downloaded one.
    subprocess.run(
        [sys.executable, "-m", "pip", *args, "--no-build-isolation", "--quiet"],
        cwd=src,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("pixforge-*.whl")
    return wheel


def _venv_site_packages(env_dir: Path) -> Path:
    (path,) = env_dir.glob("lib/python*/site-packages")
    return path


def _container(compose_raw, dockerfile, models: Path, venv_dir: Path, home: Path):
    """argv, environment and mounts of the compose service, mapped onto this machine."""
    svc = interpolate(compose_raw, {"PIXFORGE_MODELS_DIR": str(models)})["services"][SERVICE]
    mounts = bind_mounts(svc)
    target = svc["build"]["target"]

    env = dockerfile.env(target)
    env.update(service_environment(svc))
    for key, value in env.items():
        if value.startswith("/") and key != "PATH":
            mapped = to_host_path(value, mounts)
            assert mapped is not None, f"{key}={value} is not mounted into the container"
            env[key] = str(mapped)
    env["PATH"] = env["PATH"].replace("/opt/venv", str(venv_dir)).replace("$PATH", os.defpath)
    env.update(HOME=str(home), OMP_NUM_THREADS="1", LANG="C.UTF-8")
    # Docker maps the container ports to published ones; here the server takes free ports itself.
    port, metrics_port, http_port = free_port(), free_port(), free_port()
    env["PIXFORGE_PORT"], env["PIXFORGE_METRICS_PORT"] = str(port), str(metrics_port)
    env["PIXFORGE_HTTP_PORT"] = str(http_port)

    argv = dockerfile.last(target, "ENTRYPOINT").exec_form + svc["command"]
    argv = [str(to_host_path(a, mounts) or a) if a.startswith("/") else a for a in argv]
    argv[0] = shutil.which(argv[0], path=env["PATH"])
    assert argv[0] and Path(argv[0]).is_relative_to(venv_dir), (
        f"{argv[0]} does not come from the fresh install"
    )

    # Run as Docker runs it: through the shell, which reads PIXFORGE_PORT (the free port above).
    kind, command = svc["healthcheck"]["test"]
    assert kind == "CMD-SHELL", svc["healthcheck"]["test"]
    health = ["/bin/sh", "-c", command]
    return argv, env, health, svc, port, metrics_port, http_port


def _serve_and_probe(compose_raw, dockerfile, tiny_models: Path, venv_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    argv, env, health, svc, port, metrics_port, http_port = _container(
        compose_raw, dockerfile, tiny_models, venv_dir, home
    )

    where = subprocess.run(
        [
            env["PATH"].split(":")[0] + "/python",
            "-c",
            "import pixforge.service.server as m; print(m.__file__)",
        ],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv_dir), (
        "the server must come from the installed wheel"
    )

    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + min(parse_duration(svc["healthcheck"]["start_period"]), 90)
        while True:
            probe = subprocess.run(health, env=env, cwd=home, capture_output=True, text=True, timeout=30)
            if probe.returncode == 0 or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.5)
        assert probe.returncode == 0, f"healthcheck: {probe.stdout}{probe.stderr}\n{log_path.read_text()}"
        assert "SERVING" in probe.stdout

        # A real conversion through the installed client.
        image = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "a.png").write_bytes(encode_image(image, "png"))
        convert = subprocess.run(
            [
                argv[0],  # the installed pixforge
                "convert",
                str(tmp_path / "in"),
                "--server",
                f"localhost:{port}",
                "--model",
                "tiny",
                "--output",
                str(tmp_path / "out"),
            ],
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert convert.returncode == 0, convert.stderr
        out = decode_image((tmp_path / "out" / "a.png").read_bytes()).pixels
        np.testing.assert_array_equal(out, 255 - image)

        # Metrics where deploy/prometheus.yml scrapes them.
        prom = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text(encoding="utf-8"))
        path = prom["scrape_configs"][0]["metrics_path"]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}", timeout=10) as response:
            text = response.read().decode()
        assert 'pixforge_model_ready{model="tiny"} 1.0' in text
        # The KServe v2 HTTP/REST port (aiohttp comes with the wheel's dependencies).
        ready = f"http://127.0.0.1:{http_port}/v2/models/tiny/ready"
        with urllib.request.urlopen(ready, timeout=10) as response:
            assert response.status == 200

        # `docker compose stop`: STOPSIGNAL SIGTERM, SIGKILL after stop_grace_period.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=parse_duration(svc["stop_grace_period"])) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = subprocess.run(health, env=env, cwd=home, capture_output=True, text=True, timeout=30)
    assert after.returncode == 2, "the healthcheck must fail once the server is gone"

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert records, "compose sets PIXFORGE_LOG_FORMAT=json: the server must log JSON lines"
    messages = [r["message"] for r in records]
    assert any("execution provider: CPU (configured)" in m for m in messages), messages


def test_entrypoint_runs_from_a_wheel_install(compose_raw, dockerfile, tiny_models, tmp_path):
    wheel = _build_wheel(dockerfile, tmp_path)
    venv_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(venv_dir)
    # Third-party dependencies from this interpreter (offline); pixforge itself only from the wheel:
    # a plain path entry, so the checkout's editable-install hook in that folder never runs.
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (_venv_site_packages(venv_dir) / "_deploy_test_deps.pth").write_text("\n".join(deps) + "\n")

    build_cpu = " ".join(r.args for r in dockerfile.stage("build-cpu").all("RUN"))
    assert "pip install --no-deps /wheels/pixforge-*.whl" in build_cpu  # the step replayed here
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv_dir / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    _serve_and_probe(compose_raw, dockerfile, tiny_models, venv_dir, tmp_path)


@pytest.mark.slow
def test_entrypoint_runs_from_the_build_cpu_steps(compose_raw, dockerfile, tiny_models, tmp_path):
    """build-cpu's RUN line verbatim (downloads plain onnxruntime and every dependency from PyPI)."""
    wheel = _build_wheel(dockerfile, tmp_path)
    venv_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(venv_dir)
    (run,) = dockerfile.stage("build-cpu").all("RUN")
    script = (
        run.args.replace("/opt/pixforge-build/", f"{REPO}/deploy/")
        .replace("/wheels/", f"{wheel.parent}/")
        .replace("/tmp/requirements.txt", f"{tmp_path}/req.txt")
    )
    env = {
        "PATH": f"{venv_dir}/bin:{os.defpath}",
        "HOME": str(tmp_path),
        "ORT_VERSION": dockerfile.global_args["ORT_VERSION"],  # build args are env vars of RUN
        **{k: v for k, v in dockerfile.env("build-cpu").items() if k.startswith("PIP_")},
    }
    for key in (
        "PIP_CERT",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "SSL_CERT_FILE",
        "http_proxy",
        "https_proxy",
    ):
        if key in os.environ:
            env[key] = os.environ[key]
    result = subprocess.run(
        ["/bin/sh", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _serve_and_probe(compose_raw, dockerfile, tiny_models, venv_dir, tmp_path)

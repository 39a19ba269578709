"""docker-compose.yml: valid, and every path, port, variable and command it names exists in the code.

`docker-compose config -q` runs where docker-compose is installed (Debian: apt-get install
docker-compose); the structural check in deploy_compose_rules.py always runs, and a set of broken
copies proves it rejects what docker-compose rejects.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shutil
import subprocess

import pytest
import yaml
from deploy_compose_rules import compose_problems
from deploy_helpers import (
    REPO,
    bind_mounts,
    compose_variables,
    healthcheck_argv,
    image_tag,
    interpolate,
    parse_duration,
    port_parts,
    pyproject_project,
    service_environment,
    to_host_path,
)

from pixforge.cli import build_parser
from pixforge.service.config import ENV_ALIASES, config_from_args, config_keys, env_name

DOCKER_COMPOSE = shutil.which("docker-compose")
SERVERS = ("server", "server-cpu")


def _clean_env() -> dict[str, str]:
    """The test's environment without variables the compose file reads (defaults apply)."""
    names = set(compose_variables((REPO / "docker-compose.yml").read_text(encoding="utf-8")))
    return {k: v for k, v in os.environ.items() if k not in names}


def _docker_compose_config(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DOCKER_COMPOSE, "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_clean_env(),
        timeout=60,
    )


# --------------------------------------------------------------------------- validity


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose is not installed")
def test_docker_compose_config_accepts_the_file():
    result = _docker_compose_config(REPO / "docker-compose.yml")
    assert result.returncode == 0, result.stderr


def test_structure_check_accepts_the_file(compose):
    assert compose_problems(compose, REPO) == []


def _devices(doc, service="server"):
    return doc["services"][service]["deploy"]["resources"]["reservations"]["devices"]


# (id, mutation, docker-compose 1.29 rejects it too); the rest fail only at `up` or in the engine.
MUTATIONS = [
    (
        "top-level-typo",
        lambda d: (
            d.__setitem__("servces", d.pop("services"))
            or d.__setitem__("services", {"x": {"image": "busybox"}})
        ),
        True,
    ),
    (
        "service-key-typo",
        lambda d: d["services"]["server"].__setitem__(
            "healtcheck", d["services"]["server"].pop("healthcheck")
        ),
        True,
    ),
    (
        "reservations-typo",
        lambda d: d["services"]["server"]["deploy"]["resources"].__setitem__(
            "reservation", d["services"]["server"]["deploy"]["resources"].pop("reservations")
        ),
        True,
    ),
    ("device-key-typo", lambda d: _devices(d)[0].__setitem__("drivers", "nvidia"), True),
    ("capabilities-not-a-list", lambda d: _devices(d)[0].__setitem__("capabilities", "gpu"), True),
    ("no-image-no-build", lambda d: d["services"]["prometheus"].pop("image"), True),
    ("bad-port", lambda d: d["services"]["server"]["ports"].__setitem__(0, "50051:grpc"), True),
    ("undeclared-named-volume", lambda d: d.pop("volumes"), True),
    ("unknown-depends-on", lambda d: d["services"]["envoy"].__setitem__("depends_on", ["serverr"]), True),
    (
        "healthcheck-test-verb",
        lambda d: d["services"]["server"]["healthcheck"].__setitem__("test", ["RUN", "pixforge", "health"]),
        True,
    ),
    (
        "retries-not-int",
        lambda d: d["services"]["server"]["healthcheck"].__setitem__("retries", "three"),
        True,
    ),
    ("profiles-not-a-list", lambda d: d["services"]["trainer"].__setitem__("profiles", "train"), True),
    ("no-capabilities", lambda d: _devices(d)[0].pop("capabilities"), False),
    ("count-and-device-ids", lambda d: _devices(d)[0].__setitem__("count", 1), False),
    (
        "missing-build-target",
        lambda d: d["services"]["server"]["build"].__setitem__("target", "server-gpuu"),
        False,
    ),
    (
        "bad-duration",
        lambda d: d["services"]["server"]["healthcheck"].__setitem__("start_period", "2 min"),
        False,
    ),
    ("bad-restart", lambda d: d["services"]["server"].__setitem__("restart", "sometimes"), False),
    (
        "unknown-network",
        lambda d: d["services"]["server-cpu"].__setitem__("networks", {"front": {"aliases": ["server"]}}),
        False,
    ),
]


@pytest.mark.parametrize(
    "mutate, docker_compose_rejects", [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_broken_copies_are_rejected(compose_raw, tmp_path, mutate, docker_compose_rejects):
    broken = copy.deepcopy(compose_raw)
    mutate(broken)
    assert compose_problems(interpolate(broken, {}), REPO), "the structural check accepted a broken file"
    if DOCKER_COMPOSE and docker_compose_rejects:
        for svc in broken["services"].values():  # the copy lives in tmp: point builds back at the repo
            if isinstance(svc.get("build"), dict):
                svc["build"]["context"] = str(REPO)
        path = tmp_path / "docker-compose.yml"
        path.write_text(yaml.safe_dump(broken, sort_keys=False), encoding="utf-8")
        assert _docker_compose_config(path).returncode != 0, "docker-compose accepted the broken copy"


# --------------------------------------------------------------------------- variables


def test_every_variable_has_a_default_and_is_documented():
    variables = compose_variables((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    assert variables, "expected env-driven settings"
    no_default = [name for name, default in variables.items() if default is None]
    assert not no_default, (
        f"`docker compose up -d` must work without a .env file; no default for {no_default}"
    )
    example = (REPO / "deploy" / "pixforge.env.example").read_text(encoding="utf-8")
    docs = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    for name, default in variables.items():
        assert re.search(rf"^{name}={re.escape(default)}$", example, re.MULTILINE), (
            f"deploy/pixforge.env.example must list {name}={default} (the compose default)"
        )
        assert name in docs, f"docs/deploy.md does not explain {name}"


def test_pixforge_variables_are_server_config_keys(compose):
    """A misspelt PIXFORGE_* variable would be ignored by the server without a word."""
    known = {env_name(key) for key in config_keys()} | set(ENV_ALIASES)
    for name, svc in compose["services"].items():
        for var in service_environment(svc):
            if var.startswith("PIXFORGE_"):
                assert var in known, f"services.{name}: {var} is not a server setting (service/config.py)"


# --------------------------------------------------------------------------- the server services


def test_profiles(compose):
    profiles = {name: tuple(svc.get("profiles", ())) for name, svc in compose["services"].items()}
    assert profiles == {
        "server": (),
        "server-cpu": ("cpu",),
        "trainer": ("train",),
        "prometheus": ("monitoring",),
        "envoy": ("edge",),
    }


@pytest.mark.parametrize("service", ["server", "trainer"])
def test_gpu_reservation(compose, service):
    devices = compose["services"][service]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    assert ("count" in devices[0]) != ("device_ids" in devices[0])


def test_cpu_server_requests_no_gpu(compose):
    assert "deploy" not in compose["services"]["server-cpu"]


def _serve_args(svc: dict):
    """The parsed `pixforge serve` command of a compose service (ENTRYPOINT pixforge + command)."""
    return build_parser().parse_args(svc["command"])


def _container_env(dockerfile, svc: dict) -> dict[str, str]:
    """Environment inside the container: the image's ENV, then compose's `environment`."""
    env = dockerfile.env(svc["build"]["target"])
    env.update(service_environment(svc))
    return env


@pytest.mark.parametrize("service", SERVERS)
def test_server_config_resolves_inside_the_container(compose, dockerfile, service):
    svc = compose["services"][service]
    args = _serve_args(svc)
    assert args.command == "serve"
    mounts = bind_mounts(svc)
    host_config = to_host_path(args.config, mounts)
    assert host_config is not None and host_config.is_file(), (
        f"--config {args.config} is not mounted from a file"
    )
    args.config = str(host_config)
    env = _container_env(dockerfile, svc)
    cfg = config_from_args(args, env=env)  # raises ConfigError naming the key on any bad value

    models_mounts = [(host, target, mode) for host, target, mode in mounts if target == cfg.models]
    assert models_mounts, f"the model repository {cfg.models} is not a mounted folder"
    assert models_mounts[0][2] == "ro", "the server only reads the model repository"
    container_ports = {port_parts(p)[1] for p in svc["ports"]}
    assert container_ports == {cfg.port, cfg.http_port, cfg.metrics_port}
    # A published port reaches the metrics only if they listen beyond the container's loopback
    # (the server's own default for metrics_host is 127.0.0.1).
    assert ipaddress.ip_address(cfg.metrics_host or cfg.host).is_unspecified, cfg.metrics_host
    assert cfg.host == "0.0.0.0", "published ports need the server bound to every interface"
    assert parse_duration(svc["stop_grace_period"]) > cfg.grace_seconds, (
        "stop_grace_period must outlast the server's own grace period, or in-flight requests are killed"
    )
    assert cfg.engine.providers == (("cpu",) if service == "server-cpu" else ("cuda", "cpu"))


@pytest.mark.parametrize("service", SERVERS)
@pytest.mark.parametrize("port", [None, "6000"], ids=["default-port", "PIXFORGE_PORT"])
def test_healthcheck_runs_pixforge_health_on_the_grpc_port(compose, dockerfile, service, port, tmp_path):
    svc = compose["services"][service]
    hc = svc["healthcheck"]
    env = _container_env(dockerfile, svc)
    if port is not None:  # e.g. an override file's `environment:`; the probe must follow it
        env[env_name("port")] = port
    argv = healthcheck_argv(hc["test"], env, tmp_path)
    assert argv[:2] == ["pixforge", "health"], argv
    args = build_parser().parse_args(argv[1:])
    host, _, probed = args.server.rpartition(":")
    assert host == "localhost"
    args_cfg = _serve_args(svc)
    args_cfg.config = str(to_host_path(args_cfg.config, bind_mounts(svc)))
    cfg = config_from_args(args_cfg, env=env)
    assert int(probed) == cfg.port == (int(port) if port else 50051)
    # Readiness: the API's service turns SERVING once every model is loaded and warmed up ("" only
    # says the process is up, whatever its models).
    assert args.service == "pixforge.v1.ImageTranslation"
    assert args.timeout < parse_duration(hc["timeout"]), "the probe must give up before Docker kills it"
    assert parse_duration(hc["start_period"]) >= 60, "model load + warm-up needs a long start period"
    assert svc["restart"] in ("unless-stopped", "always")
    # `docker run` without compose gets the same probe from the image.
    image_hc = dockerfile.last(svc["build"]["target"], "HEALTHCHECK")
    assert image_hc is not None and image_hc.healthcheck_test == hc["test"]


def test_no_service_runs_a_latest_image(compose):
    """Every image names its version: an untagged or :latest image changes under a running setup."""
    for name, svc in compose["services"].items():
        tag = image_tag(svc["image"])
        assert tag and tag != "latest", f"services.{name}: image {svc['image']!r} is not pinned to a version"


def test_trainer_image_is_tagged_with_the_project_version(compose):
    """As the servers' registry tags (<version>-gpu / -cpu, deploy/k8s): the trainer that exports
    models for this release is this release's."""
    assert image_tag(compose["services"]["trainer"]["image"]) == pyproject_project()["version"]


def test_trainer_exports_where_the_server_reads(compose):
    server_mounts = bind_mounts(compose["services"]["server"])
    trainer = compose["services"]["trainer"]
    trainer_mounts = bind_mounts(trainer)
    server_models = [host for host, target, _ in server_mounts if target == "/models"]
    trainer_env = service_environment(trainer)
    trainer_models = [
        (host, mode) for host, target, mode in trainer_mounts if target == trainer_env["PIXFORGE_MODELS"]
    ]
    assert server_models and trainer_models
    assert trainer_models[0] == (server_models[0], "rw")
    assert trainer["build"]["dockerfile"] == "Dockerfile.train"
    assert (REPO / trainer["build"]["dockerfile"]).is_file()
    # The documented command works: `run --rm trainer train training/configs/X.yaml ...` from /workspace.
    assert trainer["working_dir"] == "/workspace"


def test_bind_mount_sources(compose, monkeypatch):
    """Mounted files exist; the default model folder is the repository the code calls the default."""
    from pixforge.repository import default_repository

    monkeypatch.delenv("PIXFORGE_MODELS", raising=False)
    for name, svc in compose["services"].items():
        for host, target, _mode in bind_mounts(svc):
            if host.suffix in (".yaml", ".yml", ".conf", ".json"):
                assert host.is_file(), f"services.{name}: {host} (mounted at {target}) does not exist"
            if target == "/models":
                assert host == default_repository().resolve(), f"services.{name}: models come from {host}"


def test_trainer_runs_land_in_the_runs_mount(compose, dockerfile_train):
    trainer = compose["services"]["trainer"]
    workdir = dockerfile_train.stages[-1].all("WORKDIR")[-1].args
    assert trainer["working_dir"] == workdir
    # `pixforge train` writes runs/<config>-NNN under the working folder (training/train_cli.py).
    targets = {target for _host, target, _mode in bind_mounts(trainer)}
    assert f"{workdir}/runs" in targets


def test_published_host_ports_do_not_collide(compose):
    seen = {}
    for name, svc in compose["services"].items():
        for spec in svc.get("ports", []):
            published, _ = port_parts(spec)
            if name == "server-cpu":  # an alternative to `server`, never run beside it
                continue
            assert published not in seen, f"{name} and {seen.get(published)} both publish {published}"
            seen[published] = name


# --------------------------------------------------------------------------- prometheus and envoy


def _mounted_file(svc: dict, container_path: str):
    host = to_host_path(container_path, bind_mounts(svc))
    assert host is not None and host.is_file(), f"{container_path} is not mounted from a file in the repo"
    return yaml.safe_load(host.read_text(encoding="utf-8"))


def _names_in_network(compose) -> set[str]:
    names = set(compose["services"])
    for svc in compose["services"].values():
        for attach in (svc.get("networks") or {}).values():
            names |= set((attach or {}).get("aliases", []))
    return names


def test_prometheus_scrapes_every_server_replica(compose, dockerfile):
    prom = compose["services"]["prometheus"]
    flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    config = _mounted_file(prom, flag.split("=", 1)[1])
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["type"] == "A", "A records list every replica of a scaled service"
    assert set(sd["names"]) <= _names_in_network(compose)
    svc = compose["services"]["server"]
    args = _serve_args(svc)
    args.config = str(to_host_path(args.config, bind_mounts(svc)))
    assert sd["port"] == config_from_args(args, env=_container_env(dockerfile, svc)).metrics_port


def test_envoy_balances_over_healthy_replicas(compose):
    envoy = compose["services"]["envoy"]
    command = envoy["command"]
    config = _mounted_file(envoy, command[command.index("-c") + 1])
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == port_parts(envoy["ports"][0])[1]
    route = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0][
        "routes"
    ][0]["route"]
    assert route["timeout"] == "0s", "Envoy's default 15 s route timeout would cut long requests"
    (cluster,) = config["static_resources"]["clusters"]
    assert route["cluster"] == cluster["name"]
    assert cluster["type"] == "STRICT_DNS"
    (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address["address"] in _names_in_network(compose)
    server_ports = {port_parts(p)[1] for p in compose["services"]["server"]["ports"]}
    assert address["port_value"] in server_ports
    # Readiness, not the process: a replica missing a model gets no calls.
    assert cluster["health_checks"][0]["grpc_health_check"]["service_name"] == "pixforge.v1.ImageTranslation"
    assert (
        "http2_protocol_options"
        in (
            cluster["typed_extension_protocol_options"][
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            ]["explicit_http_config"]
        )
    )


def test_envoy_config_matches_envoys_own_schema():
    """deploy/envoy.yaml parsed as envoy.config.bootstrap.v3.Bootstrap (unknown fields, bad enums and
    unregistered typed_config types are errors), with Envoy's generated protos from xds-protos."""
    pytest.importorskip("envoy.config.bootstrap.v3.bootstrap_pb2", reason="pip install xds-protos")
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401  (registers the Any types)
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
    from google.protobuf import json_format

    doc = yaml.safe_load((REPO / "deploy" / "envoy.yaml").read_text(encoding="utf-8"))
    json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())
    doc["static_resources"]["clusters"][0]["lb_polcy"] = "ROUND_ROBIN"
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())

"""A structural check of a compose file for machines without `docker compose`.

`compose_problems` rejects what `docker compose config` (or the engine, at `up`) would reject in
the parts of the Compose Specification our file uses: unknown keys (a typo such as ``healtcheck``
is silently fatal otherwise), a service with neither image nor build, a build target the
Dockerfile lacks, malformed ports, undeclared named volumes, a bad GPU device request, unknown
``depends_on`` services, bad durations and restart policies. test_deploy_compose.py runs it on
the real file and on broken copies, and, where docker-compose is installed, checks that
docker-compose rejects the same broken copies.
"""

from __future__ import annotations

import re
from pathlib import Path

from deploy_helpers import parse_dockerfile, parse_duration

TOP_LEVEL_KEYS = {
    "version",
    "name",
    "services",
    "networks",
    "volumes",
    "configs",
    "secrets",
    "include",
    "models",
}

# Compose Specification service attributes (docker-compose 1.29's schema plus later additions).
SERVICE_KEYS = {
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "label_file",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "userns_mode",
    "volumes",
    "volumes_from",
    "working_dir",
}
BUILD_KEYS = {
    "context",
    "dockerfile",
    "dockerfile_inline",
    "args",
    "ssh",
    "cache_from",
    "cache_to",
    "additional_contexts",
    "extra_hosts",
    "isolation",
    "labels",
    "network",
    "no_cache",
    "platforms",
    "privileged",
    "pull",
    "secrets",
    "shm_size",
    "tags",
    "target",
    "ulimits",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
DEPLOY_KEYS = {
    "mode",
    "endpoint_mode",
    "replicas",
    "labels",
    "rollback_config",
    "update_config",
    "resources",
    "restart_policy",
    "placement",
}
RESOURCES_KEYS = {"limits", "reservations"}
RESERVATION_KEYS = {"cpus", "memory", "pids", "generic_resources", "devices"}
DEVICE_KEYS = {"capabilities", "count", "device_ids", "driver", "options"}
LOGGING_KEYS = {"driver", "options"}
NETWORK_ATTACH_KEYS = {
    "aliases",
    "ipv4_address",
    "ipv6_address",
    "link_local_ips",
    "priority",
    "mac_address",
    "driver_opts",
    "gw_priority",
    "interface_name",
}
RESTART_POLICIES = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
PROFILE_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# [IP:][HOST[-HOST]:]CONTAINER[-CONTAINER][/PROTO]; IPv4 or [IPv6] host addresses.
PORT = re.compile(
    r"^(?:(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?"
    r"(?:(?:\d{1,5}(?:-\d{1,5})?)?:)?"
    r"\d{1,5}(?:-\d{1,5})?(?:/(?:tcp|udp|sctp))?$"
)
VOLUME_MODES = {
    "ro",
    "rw",
    "z",
    "Z",
    "cached",
    "delegated",
    "consistent",
    "nocopy",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
}


def _unknown(mapping: dict, allowed: set[str], where: str) -> list[str]:
    return [
        f"{where}: unknown key {k!r}" for k in mapping if k not in allowed and not str(k).startswith("x-")
    ]


def _mapping(value, where: str, problems: list[str]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: must be a mapping, got {type(value).__name__}")
        return {}
    return value


def _check_build(build, where: str, base: Path) -> list[str]:
    if isinstance(build, str):
        build = {"context": build}
    if not isinstance(build, dict):
        return [f"{where}: must be a path or a mapping"]
    problems = _unknown(build, BUILD_KEYS, where)
    context = base / str(build.get("context", "."))
    if not context.is_dir():
        return problems + [f"{where}.context: {context} is not a folder"]
    dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
    if not dockerfile.is_file():
        return problems + [f"{where}.dockerfile: {dockerfile} does not exist"]
    target = build.get("target")
    if target is not None:
        stages = [s.name for s in parse_dockerfile(dockerfile).stages]
        if target not in stages:
            problems.append(f"{where}.target: {dockerfile.name} has no stage {target!r} (stages: {stages})")
    return problems


def _check_devices(devices, where: str) -> list[str]:
    if not isinstance(devices, list):
        return [f"{where}: must be a list"]
    problems = []
    for i, dev in enumerate(devices):
        here = f"{where}[{i}]"
        if not isinstance(dev, dict):
            problems.append(f"{here}: must be a mapping")
            continue
        problems += _unknown(dev, DEVICE_KEYS, here)
        caps = dev.get("capabilities")
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
            problems.append(f"{here}.capabilities: must be a non-empty list of strings such as [gpu]")
        if "count" in dev and "device_ids" in dev:
            problems.append(f"{here}: count and device_ids cannot both be set")
        if "count" in dev and not (dev["count"] == "all" or isinstance(dev["count"], int)):
            problems.append(f"{here}.count: must be an integer or 'all'")
        ids = dev.get("device_ids", [])
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            problems.append(f"{here}.device_ids: must be a list of strings")
    return problems


def _check_deploy(deploy, where: str) -> list[str]:
    problems: list[str] = []
    deploy = _mapping(deploy, where, problems)
    problems += _unknown(deploy, DEPLOY_KEYS, where)
    resources = _mapping(deploy.get("resources"), f"{where}.resources", problems)
    problems += _unknown(resources, RESOURCES_KEYS, f"{where}.resources")
    reservations = _mapping(resources.get("reservations"), f"{where}.resources.reservations", problems)
    problems += _unknown(reservations, RESERVATION_KEYS, f"{where}.resources.reservations")
    if "devices" in reservations:
        problems += _check_devices(reservations["devices"], f"{where}.resources.reservations.devices")
    return problems


def _check_healthcheck(hc, where: str) -> list[str]:
    problems: list[str] = []
    hc = _mapping(hc, where, problems)
    problems += _unknown(hc, HEALTHCHECK_KEYS, where)
    test = hc.get("test")
    if isinstance(test, list):
        if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
            problems.append(f"{where}.test: a list must start with CMD, CMD-SHELL or NONE")
        elif not all(isinstance(t, str) for t in test):
            problems.append(f"{where}.test: every item must be a string")
    elif test is not None and not isinstance(test, str):
        problems.append(f"{where}.test: must be a string or a list")
    for key in ("interval", "timeout", "start_period", "start_interval"):
        if key in hc:
            try:
                parse_duration(hc[key])
            except ValueError as exc:
                problems.append(f"{where}.{key}: {exc}")
    if "retries" in hc and not isinstance(hc["retries"], int):
        problems.append(f"{where}.retries: must be an integer")
    return problems


def _check_volumes(volumes, where: str, declared: set[str]) -> list[str]:
    if not isinstance(volumes, list):
        return [f"{where}: must be a list"]
    problems = []
    for i, vol in enumerate(volumes):
        here = f"{where}[{i}]"
        if isinstance(vol, dict):
            if vol.get("type") == "volume" and vol.get("source") and vol["source"] not in declared:
                problems.append(
                    f"{here}: named volume {vol['source']!r} is not declared under top-level volumes"
                )
            continue
        parts = str(vol).split(":")
        if len(parts) == 1:
            continue  # anonymous volume
        source, target = parts[0], parts[1]
        if not target.startswith("/"):
            problems.append(f"{here}: container path {target!r} must be absolute")
        if len(parts) > 3 or (len(parts) == 3 and not set(parts[2].split(",")) <= VOLUME_MODES):
            problems.append(f"{here}: bad mode in {vol!r}")
        is_path = source.startswith((".", "/", "~"))
        if not is_path and source not in declared:
            problems.append(f"{here}: named volume {source!r} is not declared under top-level volumes")
    return problems


def compose_problems(doc, base: Path) -> list[str]:
    """Every structural problem of an (interpolated) compose document.

    Args:
        doc: the YAML document, after variable interpolation.
        base: the folder of the compose file (relative build contexts and paths start there).

    Returns:
        Human-readable problems; empty when the file is well-formed.
    """
    if not isinstance(doc, dict):
        return ["the file must be a mapping"]
    problems = _unknown(doc, TOP_LEVEL_KEYS, "top level")
    services = _mapping(doc.get("services"), "services", problems)
    if not services:
        problems.append("services: no service defined")
    declared_volumes = set(_mapping(doc.get("volumes"), "volumes", problems))
    declared_networks = set(_mapping(doc.get("networks"), "networks", problems)) | {"default"}
    for name, svc in services.items():
        where = f"services.{name}"
        if not isinstance(svc, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        problems += _unknown(svc, SERVICE_KEYS, where)
        if "image" not in svc and "build" not in svc:
            problems.append(f"{where}: has neither an image nor a build section")
        if "build" in svc:
            problems += _check_build(svc["build"], f"{where}.build", base)
        for i, port in enumerate(svc.get("ports", []) or []):
            if isinstance(port, dict):
                if "target" not in port:
                    problems.append(f"{where}.ports[{i}]: long syntax needs a target")
            elif not PORT.match(str(port)):
                problems.append(f"{where}.ports[{i}]: {port!r} is not [IP:][HOST:]CONTAINER[/PROTO]")
        if "volumes" in svc:
            problems += _check_volumes(svc["volumes"], f"{where}.volumes", declared_volumes)
        if "healthcheck" in svc:
            problems += _check_healthcheck(svc["healthcheck"], f"{where}.healthcheck")
        if "deploy" in svc:
            problems += _check_deploy(svc["deploy"], f"{where}.deploy")
        if "logging" in svc:
            problems += _unknown(
                _mapping(svc["logging"], f"{where}.logging", problems), LOGGING_KEYS, f"{where}.logging"
            )
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, (list, dict)) else []:
            if dep not in services:
                problems.append(f"{where}.depends_on: unknown service {dep!r}")
        profiles = svc.get("profiles", [])
        if not isinstance(profiles, list) or not all(
            isinstance(p, str) and PROFILE_NAME.match(p) for p in profiles
        ):
            problems.append(f"{where}.profiles: must be a list of names")
        if "restart" in svc and not RESTART_POLICIES.match(str(svc["restart"])):
            problems.append(
                f"{where}.restart: {svc['restart']!r} is not no, always, unless-stopped or on-failure[:N]"
            )
        if "stop_grace_period" in svc:
            try:
                parse_duration(svc["stop_grace_period"])
            except ValueError as exc:
                problems.append(f"{where}.stop_grace_period: {exc}")
        env = svc.get("environment", {})
        if isinstance(env, dict):
            for key, value in env.items():
                if isinstance(value, (dict, list)):
                    problems.append(f"{where}.environment.{key}: must be a string, number, boolean or null")
        elif not isinstance(env, list):
            problems.append(f"{where}.environment: must be a mapping or a list")
        networks = svc.get("networks", {})
        for net, attach in networks.items() if isinstance(networks, dict) else [(n, None) for n in networks]:
            if net not in declared_networks:
                problems.append(f"{where}.networks: unknown network {net!r}")
            if isinstance(attach, dict):
                problems += _unknown(attach, NETWORK_ATTACH_KEYS, f"{where}.networks.{net}")
    return problems

"""`pixforge health`: a tiny grpc_health_probe (the Docker HEALTHCHECK runs it).

Asks the server's standard grpc.health.v1 Check once, without retries, and prints one line.
A list of servers (``--server a:1,b:2``) is probed server by server: one line each, then an
overall line, and the exit code is the worst one, so the list is healthy only when every server
is (a round_robin channel over the list would ask just one of them).

Exit codes: 0 SERVING; 1 NOT_SERVING or unknown service; 2 the server could not be reached in
--timeout seconds (or is not a gRPC health server at all).
"""

from __future__ import annotations

import math
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .targets import TargetError, resolve_target


def check(server: str, service: str = "", timeout: float = 5.0) -> tuple[int, str]:
    """Probe a server's health service once.

    Args:
        server: HOST:PORT (or any target `Client` accepts).
        service: service or model name; "" asks about the whole server.
        timeout: seconds before giving up.

    Returns:
        (exit code, one-line message).
    """
    try:
        target, _ = resolve_target(server)
    except TargetError as exc:
        return 2, f"bad --server: {exc}"
    if not math.isfinite(timeout) or timeout <= 0:
        return 2, f"--timeout must be a finite number of seconds > 0, got {timeout}"
    what = f"service {service!r}" if service else "server"
    with grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # No wait_for_ready: a refused connection fails at once with the reason (like
            # grpc_health_probe); the Docker healthcheck's start period covers slow starts.
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return 1, f"{server}: unknown service {service!r}"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return 2, f"{server}: no answer within {timeout:g}s (is the server running and reachable?)"
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return 2, f"{server}: the server has no grpc.health.v1 service"
            if code == grpc.StatusCode.UNAVAILABLE:
                return 2, f"{server}: cannot connect: {exc.details() or 'server unavailable'}"
            return 2, f"{server}: {code.name}: {exc.details() or 'health check failed'}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status == health_pb2.HealthCheckResponse.SERVING:
        return 0, f"{server}: {what} is SERVING"
    if response.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
        return 1, f"{server}: unknown service {service!r}"
    return 1, f"{server}: {what} is {status}"


def listed_servers(server: str) -> list[str]:
    """The servers a --server value names: each entry of a comma-separated list ("a:1,b:2", or
    an "ipv4:"/"ipv6:" address list), else the one target as given (a "dns:///" name, ...)."""
    if "," not in server:
        return [server]
    for prefix in ("ipv4:", "ipv6:"):
        if server.startswith(prefix):
            return [prefix + part.strip() for part in server.removeprefix(prefix).split(",")]
    if "://" in server or server.startswith(("unix:", "unix-abstract:", "vsock:", "xds:", "google-c2p:")):
        return [server]
    return [part.strip() for part in server.split(",")]


def check_all(server: str, service: str = "", timeout: float = 5.0) -> tuple[int, list[tuple[int, str]]]:
    """Probe every server a --server value lists (see `check`).

    Returns:
        (the worst exit code, [(exit code, line)] one per server, plus an overall line when
        several are listed: SERVING only when every one of them is).
    """
    servers = listed_servers(server)
    results = [check(one, service, timeout) for one in servers]
    worst = max(code for code, _ in results)
    if len(servers) > 1:
        failed = sum(1 for code, _ in results if code)
        if worst == 0:
            overall = f"overall: SERVING (all {len(servers)} servers)"
        else:
            overall = f"overall: NOT_SERVING ({failed} of {len(servers)} servers failed the check)"
        results.append((worst, overall))
    return worst, results


def run(args) -> int:
    """Entry point of `pixforge health` (flags in pixforge/cli.py).

    Args:
        args: the parsed argparse namespace (server, service, timeout).

    Returns:
        0 SERVING (every listed server), 1 NOT_SERVING / unknown service, 2 connection error or
        timeout (the worst over the listed servers).
    """
    worst, lines = check_all(args.server, args.service, args.timeout)
    for code, message in lines:
        print(message, file=sys.stdout if code == 0 else sys.stderr)
    return worst

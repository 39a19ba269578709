"""Turn what a user types as "the server" into one gRPC target string.

gRPC load-balances across the addresses its resolver returns, so scaling out needs no proxy:

* ``"host:port"`` and ``"dns:///host:port"`` go to gRPC's DNS resolver unchanged; with the
  round_robin policy every address the name resolves to gets traffic, and DNS is re-resolved
  when connections drop (a headless Kubernetes service or a Docker Compose scaled service).
* a list (or a comma-separated string) of ``host:port`` entries becomes one static target
  ``"ipv4:10.0.0.5:50051,10.0.0.6:50051"`` (or ``ipv6:[::1]:50051,...``) that gRPC's built-in
  static resolver understands. Host names in a list are resolved once, here, because the static
  resolver only takes IP literals; use a ``dns:///`` name when the set of servers changes.
* any other scheme (``unix:``, ``ipv4:``, ``xds:``...) passes through unchanged.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from pixforge.errors import PixforgeError


class TargetError(PixforgeError, ValueError):
    """A server address that cannot be turned into a gRPC target."""


_PASSTHROUGH_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:", "google-c2p:")


def split_host_port(address: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" into (host, port).

    Raises:
        TargetError: no port, or a port that is not 1..65535.
    """
    address = address.strip()
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep:
            raise TargetError(f"bad server address {address!r}: unclosed '['")
    else:
        host, _, port_text = address.rpartition(":")
    if not host or not port_text:
        raise TargetError(f"bad server address {address!r}: expected HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise TargetError(f"bad server address {address!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise TargetError(f"bad server address {address!r}: port {port} is outside 1..65535")
    return host, port


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetError(f"cannot resolve server host {host!r}: {exc.strerror}") from None
    addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # IPv4/IPv6 socket addresses start with the host string (IPv6 may carry a "%scope").
        addr = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if addr not in addrs:
            addrs.append(addr)
    # A name with both families (localhost): prefer IPv4 so a list stays single-family.
    v4: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [a for a in addrs if a.version == 4]
    return v4[:1] or addrs[:1]


def static_target(addresses: Sequence[str]) -> str:
    """Build an ``ipv4:``/``ipv6:`` static-resolver target from "host:port" entries.

    Args:
        addresses: one or more "host:port" strings (IP literals or resolvable names).

    Returns:
        e.g. "ipv4:127.0.0.1:5001,127.0.0.1:5002".

    Raises:
        TargetError: an empty list, a bad entry, an unresolvable name, or IPv4 mixed with IPv6
            (gRPC's static resolver takes one family per target).
    """
    if not addresses:
        raise TargetError("no server address given")
    v4: list[str] = []
    v6: list[str] = []
    for address in addresses:
        host, port = split_host_port(address)
        for ip in _resolve(host.strip("[]"), port):
            if ip.version == 4:
                v4.append(f"{ip}:{port}")
            else:
                v6.append(f"[{ip}]:{port}")
    if v4 and v6:
        raise TargetError(
            "cannot mix IPv4 and IPv6 servers in one list: "
            + ", ".join(addresses)
            + " (use one family, or a dns:/// name)"
        )
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)


def resolve_target(target: str | Sequence[str]) -> tuple[str, int]:
    """Normalise a user's server spec to (gRPC target, number of listed servers).

    Args:
        target: "host:port", "dns:///host:port", any other gRPC target URI, a comma-separated
            string of host:port entries, or a list of them.

    Returns:
        (target string for grpc.*_channel, how many servers were listed; 1 for a single name,
        which may still resolve to several addresses).

    Raises:
        TargetError: a malformed address (see static_target).
    """
    if isinstance(target, (list, tuple)):
        entries = [str(t).strip() for t in target if str(t).strip()]
        if len(entries) == 1:
            return resolve_target(entries[0])
        return static_target(entries), len(entries)
    if not isinstance(target, str):
        raise TargetError(f"server target must be a string or a list of strings, got {type(target).__name__}")
    text = target.strip()
    if not text:
        raise TargetError("no server address given")
    if text.startswith(_PASSTHROUGH_SCHEMES):
        count = text.count(",") + 1 if text.startswith(("ipv4:", "ipv6:")) else 1
        return text, count
    if "," in text:
        return resolve_target([t for t in text.split(",")])
    split_host_port(text)  # validate early: a missing port is a usage error, not a hang
    return text, 1

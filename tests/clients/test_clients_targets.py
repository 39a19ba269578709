"""Target normalisation: single names pass to gRPC's DNS resolver, lists become static targets."""

from __future__ import annotations

import pytest

from pixforge.clients.targets import TargetError, resolve_target, split_host_port, static_target


def test_single_host_port_and_uris_pass_through():
    assert resolve_target("localhost:50051") == ("localhost:50051", 1)
    assert resolve_target("dns:///pixforge.internal:50051") == ("dns:///pixforge.internal:50051", 1)
    assert resolve_target("unix:/tmp/pixforge.sock") == ("unix:/tmp/pixforge.sock", 1)
    assert resolve_target("ipv4:10.0.0.1:1,10.0.0.2:2") == ("ipv4:10.0.0.1:1,10.0.0.2:2", 2)


def test_list_and_comma_string_become_one_static_ipv4_target():
    expected = ("ipv4:127.0.0.1:5001,127.0.0.1:5002", 2)
    assert resolve_target(["127.0.0.1:5001", "127.0.0.1:5002"]) == expected
    assert resolve_target("127.0.0.1:5001, 127.0.0.1:5002") == expected
    # A one-element list is just that server.
    assert resolve_target(["127.0.0.1:5001"]) == ("127.0.0.1:5001", 1)


def test_host_names_in_a_list_are_resolved_and_ipv6_is_bracketed():
    assert static_target(["localhost:7000", "127.0.0.1:7001"]) == "ipv4:127.0.0.1:7000,127.0.0.1:7001"
    assert static_target(["[::1]:7000", "[::1]:7001"]) == "ipv6:[::1]:7000,[::1]:7001"


@pytest.mark.parametrize(
    "bad, words",
    [
        ("localhost", "expected HOST:PORT"),
        ("localhost:http", "not a number"),
        ("localhost:70000", "outside 1..65535"),
        ("", "no server address"),
        (["127.0.0.1:1", "[::1]:2"], "cannot mix IPv4 and IPv6"),
        (["127.0.0.1:1", "no-such-host.invalid:2"], "cannot resolve"),
    ],
)
def test_bad_targets_raise_a_clear_error(bad, words):
    with pytest.raises(TargetError, match=words):
        resolve_target(bad)


def test_split_host_port():
    assert split_host_port("[::1]:80") == ("::1", 80)
    assert split_host_port("example.com:443") == ("example.com", 443)

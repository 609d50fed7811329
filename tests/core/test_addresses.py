"""Address parsing: HOST:PORT text, host IPs and the networks they lie on."""

from __future__ import annotations

import pytest

from mesh.core.wire.addresses import (
    format_address,
    host_ip,
    network_of,
    on_networks,
    parse_address,
)


def test_host_and_port_round_trip() -> None:
    assert parse_address("10.0.0.2:7700") == ("10.0.0.2", 7700)
    assert parse_address("[::1]:7700") == ("::1", 7700)
    assert format_address("::1", 7700) == "[::1]:7700"
    assert parse_address("node.local", default_port=7700) == ("node.local", 7700)


@pytest.mark.parametrize("text", ["10.0.0.2", "10.0.0.2:0", "10.0.0.2:65536", ":7700", "h:x"])
def test_bad_host_port_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)


def test_host_ip_is_normalised() -> None:
    assert host_ip("127.0.0.1") == "127.0.0.1"
    assert host_ip("0:0:0:0:0:0:0:1") == "::1"
    assert host_ip("fe80::1") == "fe80::1"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("not-an-ip", "not an IP address"),
        ("10.0.0.2:7700", "not an IP address"),
        ("0.0.0.0", "unspecified or multicast"),
        ("::", "unspecified or multicast"),
        ("224.0.0.251", "unspecified or multicast"),
        ("ff02::fb", "unspecified or multicast"),
    ],
)
def test_host_ip_refuses_what_no_host_has(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        host_ip(text)


def test_networks() -> None:
    lan = network_of("192.168.1.20", 24)
    assert str(lan) == "192.168.1.0/24"
    alone = network_of("127.0.0.1", None)
    assert str(alone) == "127.0.0.1/32"
    assert str(network_of("fe80::1", None)) == "fe80::1/128"
    assert on_networks([lan, alone], "192.168.1.99")
    assert on_networks([lan, alone], "127.0.0.1")
    assert not on_networks([lan, alone], "127.0.0.2")
    assert not on_networks([], "192.168.1.20")

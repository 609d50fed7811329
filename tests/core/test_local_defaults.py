"""Where a node is heard when no interface is given, and its name when none is given."""

from __future__ import annotations

import pytest

from mesh.core.wire.addresses import default_node_name, mdns_interfaces


@pytest.mark.parametrize(
    ("host", "interfaces", "expected"),
    [
        # Listening on every address: mDNS on every interface (a real device).
        ("0.0.0.0", None, None),
        ("::", None, None),
        # Bound to one address: mDNS there, and that address advertised alone.
        ("127.0.0.1", None, ("127.0.0.1",)),
        ("localhost", None, ("127.0.0.1",)),
        ("LocalHost", None, ("127.0.0.1",)),
        ("10.0.0.5", None, ("10.0.0.5",)),
        ("::1", None, ("::1",)),
        ("[::1]", None, ("::1",)),
        ("0:0:0:0:0:0:0:1", None, ("::1",)),
        # A host name other than localhost is not looked up: every interface.
        ("kitchen-pi.local", None, None),
        # What the user gave always wins.
        ("127.0.0.1", ("10.0.0.5",), ("10.0.0.5",)),
        ("0.0.0.0", ("127.0.0.1",), ("127.0.0.1",)),
        ("10.0.0.5", ("10.0.0.5", "127.0.0.1"), ("10.0.0.5", "127.0.0.1")),
    ],
)
def test_mdns_follows_the_host_unless_told(
    host: str, interfaces: tuple[str, ...] | None, expected: tuple[str, ...] | None
) -> None:
    assert mdns_interfaces(host, interfaces) == expected


@pytest.mark.parametrize(
    ("hostname", "port", "expected"),
    [
        ("vm", 7700, "vm"),
        ("vm", 7701, "vm-7701"),
        ("vm", 40123, "vm-40123"),
        ("  vm ", 7701, "vm-7701"),
        ("", 7700, "edgemesh"),
        ("", 7701, "edgemesh-7701"),
        # Kept one DNS label (63 bytes), the port kept whole.
        ("h" * 63, 7700, "h" * 63),
        ("h" * 63, 7701, "h" * 58 + "-7701"),
        ("é" * 40, 7701, "é" * 29 + "-7701"),
    ],
)
def test_default_name_is_unique_per_port(hostname: str, port: int, expected: str) -> None:
    name = default_node_name(hostname, port, default_port=7700)
    assert name == expected
    assert len(name.encode()) <= 63


def test_two_nodes_on_one_machine_never_share_a_default_name() -> None:
    names = {default_node_name("vm", port, default_port=7700) for port in (7700, 7701, 7702)}
    assert len(names) == 3

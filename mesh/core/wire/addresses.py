"""Addresses, parsed and checked: ``HOST:PORT`` text, host IPs, and the networks they lie on.

Pure: nothing here asks the machine which addresses it has (that is
:mod:`mesh.mdns`'s job); this is where text from flags, config files and
mDNS records becomes an address, by one set of rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TypeAlias

__all__ = [
    "Network",
    "default_node_name",
    "format_address",
    "host_ip",
    "mdns_interfaces",
    "network_of",
    "on_networks",
    "parse_address",
]

# A subnet a host address lies on.
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(address: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as a ``(host, port)`` pair; ValueError if not."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"address {address!r} has no port; expected HOST:PORT")
        host, port_text = address.strip(), str(default_port)
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"address {address!r} is not HOST:PORT with a port in 1..65535")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address`; IPv6 hosts get brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_ip(text: str) -> str:
    """``text`` as a normalised IP address one host can have; ValueError saying why not.

    The unspecified address (``0.0.0.0``, ``::``) and multicast groups are
    refused: nobody can be reached at them, and no interface has them.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("not an IP address") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError("not a unicast address (it is unspecified or multicast)")
    return str(address)


def network_of(address: str, prefix: int | None) -> Network:
    """The subnet of ``address`` with a ``prefix``-bit mask; None: the address alone."""
    if prefix is None:
        prefix = 128 if ":" in address else 32
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


def on_networks(networks: Sequence[Network], address: str) -> bool:
    """Whether ``address`` lies in one of ``networks`` (so we can reach it from there)."""
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in networks)


# --- where a node is heard, and what it is called when no name is given ---------

# The one host name every machine resolves to loopback (RFC 6761), so it can
# be told apart without asking the resolver.
_LOCALHOST = "localhost"


def mdns_interfaces(host: str, interfaces: Sequence[str] | None) -> tuple[str, ...] | None:
    """The addresses mDNS runs on (and advertises) for a node listening on ``host``.

    Interfaces the user gave always win. Otherwise a node listening on every
    address (``0.0.0.0``, ``::``) uses every interface (None), and a node
    bound to one address uses that address alone: peers could reach it at no
    other, and ``--host 127.0.0.1`` must make a mesh of this machine only.
    ``localhost`` counts as ``127.0.0.1``; any other host name is not looked
    up (that is I/O), so it keeps every interface, and ``--interface`` says
    which to use.
    """
    if interfaces is not None:
        return tuple(interfaces)
    text = host.strip().strip("[]")
    if text.lower() == _LOCALHOST:
        return ("127.0.0.1",)
    try:
        return (host_ip(text),)
    except ValueError:
        return None  # unspecified (every address), or a host name


# A node name is one DNS label (the mDNS instance name): at most 63 bytes.
_MAX_NAME_BYTES = 63


def default_node_name(hostname: str, port: int, *, default_port: int) -> str:
    """What a node is called when no name is given: unique per node on one machine.

    The hostname on ``default_port``, else ``hostname-PORT``: two nodes on
    one machine cannot share a port, so they never share a name either. The
    hostname is shortened where needed to keep the name one DNS label.
    """
    base = hostname.strip() or "edgemesh"
    suffix = "" if port == default_port else f"-{port}"
    room = _MAX_NAME_BYTES - len(suffix)
    while len(base.encode()) > room:
        base = base[:-1]
    return base + suffix

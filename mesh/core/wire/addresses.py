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
    "format_address",
    "host_ip",
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

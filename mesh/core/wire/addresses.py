"""``HOST:PORT`` text, parsed and checked."""

from __future__ import annotations

__all__ = ["format_address", "parse_address"]


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

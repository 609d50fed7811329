"""Claiming the ports a node or gateway listens on, before anything else starts.

``edgemesh node`` and ``edgemesh gateway`` bind (and listen on) their sockets
first, before their models load and before anyone hears of them, and hand
the bound sockets to their servers. A port in use, or an address this
machine lacks, is then one clear error naming the flag to change, raised
before the process is visible to anyone, and no other process can take the
port between a check and the bind (there is no separate check).

Connections that arrive before the server starts accepting wait in the
kernel's backlog and are served once it does; nothing advertises the
process before then.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.errors import AddressInUse, AddressUnavailable, ConfigError

__all__ = ["Port", "bind_ports", "bind_tcp", "write_ready_file"]

# As asyncio's and aiohttp's servers; they set it again when they start.
_BACKLOG = 128


@dataclass(frozen=True, slots=True)
class Port:
    """A port to claim, and the flags that set it (for the error message)."""

    port: int
    flag: str


def bind_ports(
    host: str, ports: Sequence[Port], *, host_flag: str = "--host"
) -> list[socket.socket]:
    """One listening socket per entry of ``ports`` on ``host``, in order.

    ConfigError when two flags ask for the same port; otherwise as
    :func:`bind_tcp`. On any failure the sockets already bound are closed.
    """
    seen: dict[int, str] = {}
    for wanted in ports:
        if wanted.port and wanted.port in seen:
            raise ConfigError(
                f"{wanted.flag} {wanted.port} is the same port as {seen[wanted.port]}; "
                "give each its own port (or 0 for any free one)"
            )
        seen[wanted.port] = wanted.flag
    bound: list[socket.socket] = []
    with contextlib.ExitStack() as on_failure:
        for wanted in ports:
            sock = bind_tcp(host, wanted.port, flag=wanted.flag, host_flag=host_flag)
            on_failure.callback(sock.close)
            bound.append(sock)
        on_failure.pop_all()  # all bound: they are the caller's now
    return bound


def bind_tcp(host: str, port: int, *, flag: str, host_flag: str = "--host") -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening, not yet accepting.

    ``flag`` and ``host_flag`` name the settings in errors: AddressInUse
    when the port is taken, AddressUnavailable when ``host`` is not an
    address of this machine or does not resolve, ConfigError otherwise.
    A name that resolves to several addresses binds the first (IPv4 first).
    """
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise AddressUnavailable(
            f"{host_flag} {host} does not resolve to an address of this machine "
            f"({(exc.strerror or str(exc)).lower()}); give one of its addresses, "
            "or 0.0.0.0 for all"
        ) from None
    family, kind, proto, _, address = sorted(found, key=lambda f: f[0] != socket.AF_INET)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As asyncio does: a restarted server can rebind a port whose old
        # connections linger in TIME_WAIT (a port someone listens on stays taken).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        # Listening now, not when the server starts: two processes could
        # otherwise both bind (SO_REUSEADDR) and the second fail much later.
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise _bind_error(exc, host, port, flag, host_flag) from None
    return sock


def _bind_error(exc: OSError, host: str, port: int, flag: str, host_flag: str) -> ConfigError:
    reason = (exc.strerror or str(exc)).lower()
    if exc.errno == errno.EADDRINUSE:
        return AddressInUse(
            f"{flag} {port} is in use on {host} ({reason}); "
            "choose another port, or 0 for any free one"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return AddressUnavailable(
            f"{host_flag} {host} is not an address of this machine ({reason}); "
            "give one of its addresses, or 0.0.0.0 for all"
        )
    if exc.errno == errno.EACCES:
        return ConfigError(
            f"{flag} {port} on {host} needs privileges this process lacks ({reason}); "
            "choose a port above 1023"
        )
    return ConfigError(f"cannot listen on {host}:{port} ({host_flag}, {flag}): {reason}")


def write_ready_file(path: Path, info: Mapping[str, Any]) -> None:
    """Write ``info`` as JSON to ``path`` once the process listens (``--ready-file``).

    Written beside and renamed into place: a rename is atomic, so a watcher
    never reads half a file.
    """
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(dict(info)))
    temporary.replace(path)

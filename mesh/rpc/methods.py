"""What an RPC connection answers: the :class:`Methods` table and its handler types.

Apart from :mod:`mesh.rpc.connection` because it is the part the node's
faces fill in (``mesh/node/rpc_face.py``) and need not see the connection's
message pump to do it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesh.core.wire import auth
from mesh.errors import Forbidden, MethodNotFound

if TYPE_CHECKING:
    from mesh.rpc.connection import RpcConnection

__all__ = ["ConcurrentMethod", "InlineMethod", "Methods", "NotificationHandler"]

InlineMethod = Callable[["RpcConnection", list[Any]], Any]
ConcurrentMethod = Callable[["RpcConnection", list[Any]], Awaitable[Any]]
NotificationHandler = Callable[["RpcConnection", list[Any]], None]


@dataclass(frozen=True)
class Methods:
    """What a connection answers.

    ``inline`` methods are quick and never wait (``ping``, ``status``); they
    are answered right where the request is parsed, in order, with no task
    per call. ``concurrent`` methods (``infer``) each run in their own task
    so that a slow one never holds up the others, up to the connection's
    in-flight limit. ``notifications`` are one-way messages; they get no reply.

    ``peer_only`` names the methods and notifications only a caller that
    passed the handshake as a node may use (see :mod:`mesh.core.wire.auth`);
    a client calling one is answered :class:`~mesh.errors.Forbidden`.
    """

    inline: Mapping[str, InlineMethod] = field(default_factory=dict)
    concurrent: Mapping[str, ConcurrentMethod] = field(default_factory=dict)
    notifications: Mapping[str, NotificationHandler] = field(default_factory=dict)
    peer_only: frozenset[str] = frozenset()

    def names(self) -> list[str]:
        """Every callable method name, sorted."""
        return sorted({*self.inline, *self.concurrent, "hello"})

    def find(self, method: str, role: str) -> tuple[InlineMethod | None, ConcurrentMethod | None]:
        """The handler a caller whose handshake made it a ``role`` gets for
        ``method``: (inline, None) or (None, concurrent).

        Raises :class:`~mesh.errors.Forbidden` for a peer-only method called
        by a non-node, :class:`~mesh.errors.MethodNotFound` for an unknown one.
        """
        if method in self.peer_only and role != auth.NODE:
            raise Forbidden(
                f"{method} is for mesh nodes only; this connection's handshake made it "
                f"a {role} (a node says role 'node' in hello and holds the mesh key)"
            )
        inline = self.inline.get(method)
        if inline is not None:
            return inline, None
        concurrent = self.concurrent.get(method)
        if concurrent is None:
            raise MethodNotFound(
                f"no method {method!r}; this node serves {', '.join(self.names())}"
            )
        return None, concurrent

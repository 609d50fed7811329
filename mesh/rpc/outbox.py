"""How one RPC connection's outgoing messages reach its transport.

Messages produced in one loop turn are queued and written together at its
end, so a burst of small calls costs one syscall: joined on a plain link,
sealed into shared frames on a sealed one (:class:`~mesh.rpc.sealed.SealedLink`).
Apart from :mod:`mesh.rpc.connection` because it is only about bytes going
out, and it counts them (``bytes_sent``, for figures such as gossip cost).
"""

from __future__ import annotations

import asyncio

from mesh.rpc.sealed import SealedLink

__all__ = ["Outbox"]

# Messages at least this big are written on their own rather than joined.
_JOIN_LIMIT = 64 * 1024


class Outbox:
    """The messages queued for one transport in this loop turn.

    ``transport`` is set once the connection is made; ``sealed`` once the
    handshake switches the link to sealed frames.
    """

    __slots__ = ("_items", "_loop", "_scheduled", "bytes_sent", "sealed", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[bytes] = []
        self._scheduled = False
        self.transport: asyncio.Transport | None = None
        self.sealed: SealedLink | None = None
        # Bytes handed to the transport.
        self.bytes_sent = 0

    def send(self, data: bytes) -> None:
        """Queue one encoded message; it is written at the end of this loop turn."""
        self._items.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued now (dropped if the transport is gone)."""
        self._scheduled = False
        outbox = self._items
        if not outbox:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            outbox.clear()
            return
        if self.sealed is not None:
            self.bytes_sent += self.sealed.write(transport, outbox)
            outbox.clear()
            return
        self.bytes_sent += sum(len(data) for data in outbox)
        if len(outbox) == 1:
            transport.write(outbox[0])
        else:
            # Join small messages into one write; hand big ones over as they
            # are, since copying megabytes into a join costs more than a syscall.
            small: list[bytes] = []
            for data in outbox:
                if len(data) < _JOIN_LIMIT:
                    small.append(data)
                    continue
                if small:
                    transport.write(b"".join(small))
                    small.clear()
                transport.write(data)
            if small:
                transport.write(b"".join(small))
        outbox.clear()

    def wire(self, data: bytes) -> bytes:
        """``data`` as it goes on the wire now: one sealed frame on a sealed link.
        For a last word written past the queue (see RpcServer's expel)."""
        if self.sealed is None:
            return data
        return self.sealed.frame(data)

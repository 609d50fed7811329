"""A sealed link's I/O: the keys a finished handshake gives, and how frames are written.

The rules (key derivation, frame layout, sequence numbers) are in
:mod:`mesh.core.wire.sealing`; this is the part that touches a transport.
:class:`~mesh.rpc.connection.RpcConnection` switches to a :class:`SealedLink`
at the byte after the handshake's last message.
"""

from __future__ import annotations

import asyncio

from mesh.core.wire import auth, sealing

__all__ = ["SEAL_JOIN_LIMIT", "SealedLink"]

# Messages at least this big are sealed and written on their own.
_OWN_FRAME = 64 * 1024
# Smaller ones are joined into frames of up to this much: each frame costs
# a tag and an AEAD call, so a burst of small calls shares one.
SEAL_JOIN_LIMIT = 256 * 1024


class SealedLink:
    """Both directions of one sealed connection: ``opener`` for what the peer
    sends, :meth:`write` for what we send."""

    __slots__ = ("_sealer", "opener")

    def __init__(self, session: auth.Session, *, serving: bool, max_message_bytes: int) -> None:
        assert session.key is not None
        to_server, to_client = sealing.derive_keys(
            session.key, session.client_nonce, session.server_nonce, session.transcript
        )
        self._sealer = sealing.Sealer(session.seal, to_client if serving else to_server)
        self.opener = sealing.Opener(
            session.seal,
            to_server if serving else to_client,
            max_plaintext=max(max_message_bytes, SEAL_JOIN_LIMIT),
        )

    def write(self, transport: asyncio.Transport, outbox: list[bytes]) -> int:
        """Seal and write ``outbox``'s messages in order; the bytes written."""
        written = 0
        small: list[bytes] = []
        small_bytes = 0
        for data in outbox:
            if len(data) >= _OWN_FRAME or small_bytes + len(data) > SEAL_JOIN_LIMIT:
                if small:
                    written += self._write(transport, b"".join(small))
                    small.clear()
                    small_bytes = 0
                if len(data) >= _OWN_FRAME:
                    written += self._write(transport, data)
                    continue
            small.append(data)
            small_bytes += len(data)
        if small:
            written += self._write(transport, b"".join(small) if len(small) > 1 else small[0])
        return written

    def frame(self, plaintext: bytes) -> bytes:
        """``plaintext`` as one sealed frame, to be written by the caller (next, in order)."""
        header, body = self._sealer.seal(plaintext)
        return header + body

    def _write(self, transport: asyncio.Transport, plaintext: bytes) -> int:
        header, body = self._sealer.seal(plaintext)
        if len(body) < _OWN_FRAME:
            transport.write(header + body)
        else:
            # Never copy a big body just to put four bytes in front of it.
            transport.write(header)
            transport.write(body)
        return len(header) + len(body)

"""Sealed links: session keys from the handshake, and frames sealed with an AEAD.

After a version-2 handshake that chose a suite, ``"aes-256-gcm"`` or
``"chacha20-poly1305"`` (:mod:`mesh.core.wire.auth`), both sides derive two
keys::

    okm = HKDF-SHA256(ikm = K, salt = Nc | Ns, info = "edgemesh/seal/v1\\0" | T, length = 64)
    client → server key = okm[0:32]      server → client key = okm[32:64]

with K the key the handshake proved, Nc and Ns the client's and server's
nonces and T the handshake transcript. Every byte after the final
``hello`` answer is then a stream of sealed frames, one per write::

    length   4 bytes, big-endian: the sealed body's size (plaintext + 16)
    body     AEAD(key, nonce, plaintext, aad = length): ciphertext, then the 16-byte tag

The nonce is 4 zero bytes then the frame's sequence number, 8 bytes
big-endian, counted from 0 in each direction and never sent: a frame that
is replayed, reordered, dropped or changed fails to open, and the
connection is closed. The plaintexts, joined, are the ordinary msgpack-RPC
stream. Sans-IO like the framing: the edge feeds bytes in and takes
plaintexts out.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh.errors import MessageTooLarge, ProtocolError

__all__ = ["HEADER_BYTES", "SUITES", "TAG_BYTES", "Opener", "Sealer", "derive_keys"]

HEADER_BYTES = 4
TAG_BYTES = 16
KEY_BYTES = 32
_INFO = b"edgemesh/seal/v1\x00"
_LENGTH = struct.Struct(">I")
_NONCE = struct.Struct(">4xQ")
_MAX_SEQ = 2**64 - 1
# Every suite mesh.core.wire.auth may choose: a 256-bit key, a 96-bit nonce, a 128-bit tag.
SUITES: dict[str, type[AESGCM] | type[ChaCha20Poly1305]] = {
    "aes-256-gcm": AESGCM,
    "chacha20-poly1305": ChaCha20Poly1305,
}


def _aead(suite: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    aead = SUITES.get(suite)
    if aead is None:
        raise ProtocolError(f"unknown sealing suite {suite!r}; expected one of {sorted(SUITES)}")
    return aead(key)


def derive_keys(
    key: bytes, client_nonce: bytes, server_nonce: bytes, binds: bytes
) -> tuple[bytes, bytes]:
    """The session's two keys: (client → server, server → client)."""
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=2 * KEY_BYTES,
        salt=client_nonce + server_nonce,
        info=_INFO + binds,
    ).derive(key)
    return okm[:KEY_BYTES], okm[KEY_BYTES:]


class Sealer:
    """Seals one direction's frames, numbering them from 0."""

    __slots__ = ("_aead", "_seq")

    def __init__(self, suite: str, key: bytes) -> None:
        self._aead = _aead(suite, key)
        self._seq = 0

    def seal(self, plaintext: bytes) -> tuple[bytes, bytes]:
        """One frame for ``plaintext``: its length header and its sealed body.

        Two pieces rather than one, so that a big body is never copied again
        just to put four bytes in front of it.
        """
        seq = self._seq
        if seq == _MAX_SEQ:
            raise ProtocolError("sealed link used up its 2^64 frames; reconnect")
        self._seq = seq + 1
        header = _LENGTH.pack(len(plaintext) + TAG_BYTES)
        return header, self._aead.encrypt(_NONCE.pack(seq), plaintext, header)


class Opener:
    """Opens one direction's frames, in order; any fault is fatal for the stream.

    ``max_plaintext`` bounds one frame's plaintext (the connection's message
    limit); a header that announces more is refused before it is buffered.
    """

    __slots__ = ("_aead", "_broken", "_buffered", "_chunks", "_max_body", "_need", "_seq")

    def __init__(self, suite: str, key: bytes, *, max_plaintext: int) -> None:
        self._aead = _aead(suite, key)
        self._seq = 0
        self._max_body = max_plaintext + TAG_BYTES
        # Received bytes not yet opened, kept as they came: a big frame is
        # joined once when it is whole, not regrown chunk by chunk.
        self._chunks: list[bytes] = []
        self._buffered = 0
        # Bytes needed before anything can be done: a header, or a whole frame.
        self._need = HEADER_BYTES
        self._broken: ProtocolError | None = None

    @property
    def broken(self) -> ProtocolError | None:
        """Why the stream cannot be trusted any more, once a frame failed."""
        return self._broken

    @property
    def buffered(self) -> int:
        """Bytes received that do not make a whole frame yet."""
        return self._buffered

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed bytes from the peer; the plaintexts of every frame they complete.

        A frame that fails (changed, replayed, reordered, dropped, or over
        the limit: MessageTooLarge) ends the stream: the frames before it are
        still returned, :attr:`broken` says why, and this call raises
        :class:`~mesh.errors.ProtocolError` at once when none came before it,
        as does every later call.
        """
        if self._broken is not None:
            raise self._broken
        self._buffered += len(data)
        if self._buffered < self._need:
            if data:
                self._chunks.append(data)
            return []
        if self._chunks:
            self._chunks.append(data)
            data = b"".join(self._chunks)
            self._chunks.clear()
        plaintexts: list[bytes] = []
        view = memoryview(data)
        offset = 0
        end = len(data)
        try:
            while end - offset >= HEADER_BYTES:
                (size,) = _LENGTH.unpack_from(view, offset)
                if not TAG_BYTES <= size <= self._max_body:
                    raise self._bad_size(size)
                stop = offset + HEADER_BYTES + size
                if stop > end:
                    self._need = HEADER_BYTES + size
                    break
                plaintexts.append(self._open(view, offset, size))
                offset = stop
            else:
                self._need = HEADER_BYTES
        except ProtocolError as exc:
            self._broken = exc
            self._chunks.clear()
            if not plaintexts:
                raise
            return plaintexts
        finally:
            view.release()
        if offset < end:
            self._chunks.append(data[offset:] if offset else data)
        self._buffered = end - offset
        return plaintexts

    def _bad_size(self, size: int) -> ProtocolError:
        if size > self._max_body:
            return MessageTooLarge(
                f"sealed frame of {size} bytes is over the limit of {self._max_body}"
            )
        return ProtocolError(f"sealed frame of {size} bytes is shorter than its tag")

    def _open(self, view: memoryview, offset: int, size: int) -> bytes:
        seq = self._seq
        self._seq = seq + 1
        body = offset + HEADER_BYTES
        try:
            return self._aead.decrypt(_NONCE.pack(seq), view[body : body + size], view[offset:body])
        except InvalidTag:
            raise ProtocolError(
                f"sealed frame {seq} failed its check: changed, replayed, reordered or "
                "dropped on the way, or sealed with another key"
            ) from None

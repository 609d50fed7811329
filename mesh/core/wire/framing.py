"""msgpack-RPC framing as a sans-IO state machine.

The wire is a plain stream of msgpack objects, exactly as the msgpack-RPC
spec has it::

    request       [0, msgid, method, params]
    response      [1, msgid, error, result]
    notification  [2, method, params]

:class:`RpcFraming` is fed bytes with :meth:`RpcFraming.receive_data` and
yields parsed messages from :meth:`RpcFraming.next_event`; the ``encode_*``
functions turn outgoing messages into bytes. It never touches a socket, so
the asyncio edge (``mesh.rpc``) and the tests drive it the same way.

Two kinds of failure are told apart:

* A stream that cannot be parsed any more (bytes that are not msgpack, a
  message over the size limit, nesting too deep) is *fatal*: the framing
  raises :class:`~mesh.errors.ProtocolError` and stays broken, because there
  is no way to find where the next message starts. The edge closes the
  connection.
* A well-formed msgpack object that is not a valid RPC message yields an
  :class:`InvalidMessage` event. When it carries a usable request id the
  peer can be answered with an error; otherwise the edge closes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from mesh.errors import BadRequest, MessageTooLarge, ProtocolError

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_MSGID",
    "NEED_DATA",
    "NOTIFICATION",
    "REQUEST",
    "RESPONSE",
    "Event",
    "InvalidMessage",
    "Notification",
    "Request",
    "Response",
    "RpcFraming",
    "encode_notification",
    "encode_request",
    "encode_response",
    "min_message_size",
]

# The largest message a connection accepts unless configured otherwise.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2
MAX_MSGID: Final = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Request:
    """``[0, msgid, method, params]``: a call that expects a response."""

    msgid: int
    method: str
    params: list[Any]


@dataclass(frozen=True, slots=True)
class Response:
    """``[1, msgid, error, result]``: the answer to a request; ``error`` is None on success."""

    msgid: int
    error: Any
    result: Any


@dataclass(frozen=True, slots=True)
class Notification:
    """``[2, method, params]``: a one-way message."""

    method: str
    params: list[Any]


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """A msgpack object that is not a valid RPC message.

    ``msgid`` is set when the object looked enough like a request that the
    sender can be answered with ``error`` under that id.
    """

    msgid: int | None
    error: ProtocolError


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by :meth:`RpcFraming.next_event` when more bytes are needed."""

Event = Request | Response | Notification | InvalidMessage

# The lower-bound walker below only looks at the first bytes of a pending
# message: headers come first, and a few KiB hold every header of an RPC
# message carrying tensors (the payloads themselves are skipped over).
_HEAD_BYTES = 4096
_WALK_STEPS = 512
# The buffer each connection's unpacker starts with; it grows to fit a big
# message, and a grown one is replaced once the message is parsed.
_READ_SIZE = 64 * 1024


class RpcFraming:
    """Parses a byte stream of msgpack-RPC messages, one connection's worth.

    ``max_message_size`` bounds every single message; a peer that declares or
    sends a bigger one is cut off with :class:`~mesh.errors.MessageTooLarge`
    before the bytes are buffered.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_BYTES,
        initial_limit: int | None = None,
    ) -> None:
        if max_message_size < 64:
            raise ValueError("max_message_size must be at least 64 bytes")
        if initial_limit is not None and not 64 <= initial_limit <= max_message_size:
            raise ValueError("initial_limit must be 64 bytes .. max_message_size")
        self.max_message_size = max_message_size
        # Until lift_limit(): at most this many bytes may be received and not
        # yet parsed (a server keeps it to a few KB before the handshake).
        self._limit = max_message_size if initial_limit is None else initial_limit
        self._unpacker = self._new_unpacker()
        self._fed = 0
        # Stream offset where the current unpacker started (it is replaced
        # after a big message, see _recycle), and where the message being
        # received starts. (The unpacker's tell() counts bytes of a partly
        # parsed message too.)
        self._unpacker_start = 0
        self._message_start = 0
        self._last_chunk = b""
        # The first bytes of the message being received, for the size check.
        self._head = bytearray()
        self._broken: ProtocolError | None = None
        # The unpacker's buffer grew for a big message; it never shrinks.
        self._grown = False
        # Whole messages parsed so far (a watchdog tells a slow message from many).
        self.messages = 0
        # The size in bytes of the message next_event returned last.
        self.last_message_size = 0

    def _new_unpacker(self) -> msgpack.Unpacker:
        limit = self.max_message_size
        return msgpack.Unpacker(
            raw=False,
            use_list=True,
            strict_map_key=True,
            # Room for one whole message plus the chunk that completes it.
            max_buffer_size=limit + 2 * 1024 * 1024,
            # The buffer an unpacker starts with (and keeps, grown, until it
            # is freed). msgpack's default is 1 MiB per connection; idle and
            # never-authenticated connections would each hold that much.
            read_size=_READ_SIZE,
            max_bin_len=limit,
            max_str_len=limit,
            max_array_len=limit,
            max_map_len=limit // 2,
            max_ext_len=limit,
        )

    @property
    def limit(self) -> int:
        """The largest message accepted now: below ``max_message_size`` until lifted."""
        return self._limit

    def lift_limit(self) -> None:
        """Accept messages up to ``max_message_size`` from now on (the peer proved itself)."""
        self._limit = self.max_message_size

    @property
    def broken(self) -> ProtocolError | None:
        """The fatal error that ended this stream, if any."""
        return self._broken

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed as whole messages."""
        return self._fed - self._message_start

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer. Raises ProtocolError if the stream is broken."""
        if self._broken is not None:
            raise self._broken
        if not data:
            return
        if self._limit < self.max_message_size and self.buffered + len(data) > self._limit:
            self._fail(
                MessageTooLarge(
                    f"{self.buffered + len(data)} bytes sent ahead of the handshake; "
                    f"at most {self._limit} are accepted before it"
                )
            )
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            self._fail(
                MessageTooLarge(f"message larger than the limit of {self.max_message_size} bytes")
            )
        self._fed += len(data)
        self._last_chunk = data
        if self._head and len(self._head) < _HEAD_BYTES:
            self._head += data[: _HEAD_BYTES - len(self._head)]

    def next_event(self) -> Event | _NeedData:
        """The next parsed message, or NEED_DATA. Raises ProtocolError on a broken stream."""
        if self._broken is not None:
            raise self._broken
        try:
            obj = self._unpacker.unpack()
        except msgpack.OutOfData:
            self._check_pending()
            if self._grown and self.buffered == 0:
                self._recycle()
            return NEED_DATA
        except msgpack.StackError:
            self._fail(ProtocolError("message nested too deeply"))
        except ValueError as exc:
            # FormatError (bytes that are not msgpack), UnicodeDecodeError (a
            # str that is not UTF-8) and declared lengths over our limits are
            # all ValueErrors; each leaves the stream unusable.
            if "exceeds max" in str(exc):
                # msgpack checks a declared length once the header is complete.
                self._fail(
                    MessageTooLarge(
                        f"message larger than the limit of {self.max_message_size} bytes ({exc})"
                    )
                )
            self._fail(ProtocolError(f"not a valid msgpack stream: {exc}"))
        except TypeError as exc:  # a map key that is not a string
            self._fail(ProtocolError(f"not a valid msgpack stream: {exc}"))
        end = self._unpacker_start + self._unpacker.tell()
        self.last_message_size = end - self._message_start
        self._message_start = end
        self.messages += 1
        if self.last_message_size > _READ_SIZE:
            self._grown = True
        self._head.clear()
        return parse_message(obj)

    def _recycle(self) -> None:
        """Start a fresh unpacker: the old one's buffer, grown for a big
        message, would otherwise stay allocated as long as the connection."""
        self._unpacker = self._new_unpacker()
        self._unpacker_start = self._fed
        self._grown = False

    def _check_pending(self) -> None:
        """Refuse a partial message whose headers already declare too many bytes."""
        pending = self.buffered
        if pending == 0:
            self._head.clear()
            return
        if not self._head:
            if pending > len(self._last_chunk):
                # Fed several times without draining; the next drain checks.
                return
            # The partial message began inside the last chunk fed.
            start = len(self._last_chunk) - pending
            self._head = bytearray(self._last_chunk[start : start + _HEAD_BYTES])
        declared = min_message_size(bytes(self._head))
        if declared > self._limit:
            self._fail(
                MessageTooLarge(
                    f"message declares at least {declared} bytes, over the limit of {self._limit}"
                )
            )

    # --- sending, checked against this connection's size limit

    def request(self, msgid: int, method: str, params: list[Any]) -> bytes:
        """``[0, msgid, method, params]`` as bytes, checked against the size limit."""
        return self._pack([REQUEST, msgid, method, params])

    def response(self, msgid: int, error: Any, result: Any) -> bytes:
        """``[1, msgid, error, result]`` as bytes, checked against the size limit."""
        return self._pack([RESPONSE, msgid, error, result])

    def notification(self, method: str, params: list[Any]) -> bytes:
        """``[2, method, params]`` as bytes, checked against the size limit."""
        return self._pack([NOTIFICATION, method, params])

    def _pack(self, message: list[Any]) -> bytes:
        # A fresh packb each time, not a reused Packer: a reused one regrows its
        # buffer for every large tensor, which measured several times slower
        # for 600 KB messages and saved only half a microsecond on small ones.
        return _pack(message, self.max_message_size)

    def _fail(self, error: ProtocolError) -> Any:
        self._broken = error
        raise error


def parse_message(obj: object) -> Event:
    """Classify one decoded msgpack object as an RPC message."""
    if not isinstance(obj, list) or not obj:
        return InvalidMessage(None, BadRequest(f"expected an RPC message array, got {_kind(obj)}"))
    kind = obj[0]
    if kind == REQUEST and type(kind) is int:
        msgid = obj[1] if len(obj) > 1 else None
        usable_id = msgid if _is_msgid(msgid) else None
        if len(obj) != 4:
            return InvalidMessage(
                usable_id, BadRequest(f"a request has 4 elements, got {len(obj)}")
            )
        if usable_id is None:
            return InvalidMessage(
                None, BadRequest(f"request msgid must be an integer 0..2**32-1, got {msgid!r}")
            )
        _, _, method, params = obj
        if not isinstance(method, str):
            return InvalidMessage(
                usable_id, BadRequest(f"method must be a string, got {_kind(method)}")
            )
        if not isinstance(params, list):
            return InvalidMessage(
                usable_id, BadRequest(f"params must be an array, got {_kind(params)}")
            )
        return Request(usable_id, method, params)
    if kind == RESPONSE and type(kind) is int:
        if len(obj) != 4 or not _is_msgid(obj[1]):
            return InvalidMessage(None, BadRequest("a response is [1, msgid, error, result]"))
        return Response(obj[1], obj[2], obj[3])
    if kind == NOTIFICATION and type(kind) is int:
        if len(obj) != 3 or not isinstance(obj[1], str) or not isinstance(obj[2], list):
            return InvalidMessage(None, BadRequest("a notification is [2, method, params]"))
        return Notification(obj[1], obj[2])
    return InvalidMessage(None, BadRequest(f"unknown message type {kind!r}; expected 0, 1 or 2"))


def _is_msgid(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_MSGID


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "nil"
    return type(value).__name__


# --- encoding ---------------------------------------------------------------


def _pack(message: list[Any], limit: int) -> bytes:
    try:
        data = msgpack.packb(message, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"cannot encode message as msgpack: {exc}") from exc
    if len(data) > limit:
        raise MessageTooLarge(f"message of {len(data)} bytes is over the limit of {limit}")
    return data


def encode_request(
    msgid: int, method: str, params: list[Any], *, limit: int = DEFAULT_MAX_MESSAGE_BYTES
) -> bytes:
    """``[0, msgid, method, params]`` as bytes."""
    return _pack([REQUEST, msgid, method, params], limit)


def encode_response(
    msgid: int, error: Any, result: Any, *, limit: int = DEFAULT_MAX_MESSAGE_BYTES
) -> bytes:
    """``[1, msgid, error, result]`` as bytes."""
    return _pack([RESPONSE, msgid, error, result], limit)


def encode_notification(
    method: str, params: list[Any], *, limit: int = DEFAULT_MAX_MESSAGE_BYTES
) -> bytes:
    """``[2, method, params]`` as bytes."""
    return _pack([NOTIFICATION, method, params], limit)


# --- declared size ----------------------------------------------------------

# For each msgpack type byte that has a length field: (bytes of the length
# field, the element multiplier: 0 = the length counts payload bytes,
# 1 = array elements, 2 = map entries of two elements each, extra payload
# bytes such as an ext's type byte).
_LENGTHED: dict[int, tuple[int, int, int]] = {
    0xC4: (1, 0, 0),  # bin 8
    0xC5: (2, 0, 0),  # bin 16
    0xC6: (4, 0, 0),  # bin 32
    0xC7: (1, 0, 1),  # ext 8
    0xC8: (2, 0, 1),  # ext 16
    0xC9: (4, 0, 1),  # ext 32
    0xD9: (1, 0, 0),  # str 8
    0xDA: (2, 0, 0),  # str 16
    0xDB: (4, 0, 0),  # str 32
    0xDC: (2, 1, 0),  # array 16
    0xDD: (4, 1, 0),  # array 32
    0xDE: (2, 2, 0),  # map 16
    0xDF: (4, 2, 0),  # map 32
}
# Type bytes followed by a fixed number of payload bytes.
_FIXED: dict[int, int] = {
    0xC0: 0, 0xC2: 0, 0xC3: 0,  # nil, false, true
    0xCA: 4, 0xCB: 8,  # float 32/64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint 8-64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int 8-64
    0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,  # fixext 1-16, type byte included
}  # fmt: skip
_LEN_FORMAT = {1: ">B", 2: ">H", 4: ">I"}


def min_message_size(head: bytes) -> int:
    """A lower bound on the size of the msgpack object that starts with ``head``.

    Walks the headers present in ``head``, jumping over payloads by their
    declared lengths, and adds one byte for every element an array or map
    still promises. A peer that declares a 4 GiB bin, or an array of four
    billion elements, is thus caught from its first few bytes instead of
    after the buffer fills. The bound is never larger than the real size of
    a valid object, so honest messages are never refused by it.
    """
    pos = 0
    # Elements still owed by the open arrays and maps, innermost last.
    owed: list[int] = [1]
    steps = 0
    while owed and pos < len(head) and steps < _WALK_STEPS:
        steps += 1
        byte = head[pos]
        owed[-1] -= 1
        children = 0
        if byte <= 0x7F or byte >= 0xE0:  # positive / negative fixint
            pos += 1
        elif 0x80 <= byte <= 0x8F:  # fixmap
            pos += 1
            children = 2 * (byte & 0x0F)
        elif 0x90 <= byte <= 0x9F:  # fixarray
            pos += 1
            children = byte & 0x0F
        elif 0xA0 <= byte <= 0xBF:  # fixstr
            pos += 1 + (byte & 0x1F)
        elif byte in _FIXED:
            pos += 1 + _FIXED[byte]
        elif byte in _LENGTHED:
            width, per_element, extra = _LENGTHED[byte]
            if pos + 1 + width > len(head):
                pos += 1 + width
                break
            (length,) = struct.unpack_from(_LEN_FORMAT[width], head, pos + 1)
            pos += 1 + width
            if per_element:
                children = per_element * length
            else:
                pos += extra + length
        else:  # 0xC1, never used: the parser will reject it
            break
        while owed and owed[-1] == 0:
            owed.pop()
        if children:
            owed.append(children)
    return pos + sum(owed)

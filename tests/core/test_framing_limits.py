"""The framing's limit before the handshake, and its buffers after big messages."""

from __future__ import annotations

import struct

import msgpack
import pytest

from mesh.core.wire.framing import NEED_DATA, Request, RpcFraming, encode_request
from mesh.errors import MessageTooLarge


def events(framing: RpcFraming) -> list[object]:
    found: list[object] = []
    while (event := framing.next_event()) is not NEED_DATA:
        found.append(event)
    return found


def test_a_declared_size_over_the_initial_limit_is_refused_from_its_header() -> None:
    framing = RpcFraming(max_message_size=1 << 20, initial_limit=1024)
    framing.receive_data(b"\x94\x00\x01\xa5hello\x91\xc6" + struct.pack(">I", 4096))
    with pytest.raises(MessageTooLarge, match="limit of 1024"):
        framing.next_event()


def test_bytes_past_the_initial_limit_are_refused_before_they_are_buffered() -> None:
    framing = RpcFraming(max_message_size=1 << 20, initial_limit=1024)
    framing.receive_data(encode_request(1, "hello", [{"nonce": b"n" * 32}]))
    assert isinstance(events(framing)[0], Request)
    with pytest.raises(MessageTooLarge, match="at most 1024"):
        # Small messages, but 1100 bytes of them unparsed at once.
        framing.receive_data(b"\x91\x00" * 550)
    assert framing.broken is not None


def test_lifting_the_limit_allows_big_messages() -> None:
    framing = RpcFraming(max_message_size=1 << 20, initial_limit=1024)
    assert framing.limit == 1024
    framing.lift_limit()
    assert framing.limit == 1 << 20
    framing.receive_data(encode_request(2, "infer", [b"x" * 100_000]))
    (event,) = events(framing)
    assert isinstance(event, Request) and event.params == [b"x" * 100_000]


@pytest.mark.parametrize("initial_limit", [10, 2 << 20])
def test_the_initial_limit_must_fit(initial_limit: int) -> None:
    with pytest.raises(ValueError, match="initial_limit"):
        RpcFraming(max_message_size=1 << 20, initial_limit=initial_limit)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 70_000, 1 << 20])
def test_messages_parse_the_same_across_a_recycled_buffer(chunk: int) -> None:
    """Big messages between small ones, fed in chunks of every size: each
    parsed once, in order, with its size, whatever unpacker holds it."""
    payloads = [b"a" * 10, b"b" * 300_000, b"c" * 5, b"d" * 200_000, b"e" * 1]
    stream = b"".join(encode_request(i, "m", [p]) for i, p in enumerate(payloads))
    sizes = [len(encode_request(i, "m", [p])) for i, p in enumerate(payloads)]
    framing = RpcFraming(max_message_size=1 << 20)
    got: list[tuple[int, int]] = []
    for start in range(0, len(stream), chunk):
        framing.receive_data(stream[start : start + chunk])
        while (event := framing.next_event()) is not NEED_DATA:
            assert isinstance(event, Request)
            got.append((event.msgid, framing.last_message_size))
            assert event.params == [payloads[event.msgid]]
    assert got == list(enumerate(sizes))
    assert framing.messages == len(payloads)
    assert framing.buffered == 0


def test_a_grown_buffer_is_replaced_once_drained() -> None:
    framing = RpcFraming(max_message_size=4 << 20)
    first = framing._unpacker
    framing.receive_data(msgpack.packb([2, "big", [b"x" * (2 << 20)]]))
    assert len(events(framing)) == 1
    assert framing._unpacker is not first
    small = framing._unpacker
    framing.receive_data(msgpack.packb([2, "small", [1]]))
    assert len(events(framing)) == 1
    assert framing._unpacker is small


def test_a_connection_s_parser_starts_small() -> None:
    """msgpack's Unpacker allocates 1 MiB up front unless told otherwise; a
    node holding thousands of connections (idle, or strangers') must not."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        framings = [RpcFraming() for _ in range(50)]
        each = (tracemalloc.get_traced_memory()[0] - before) / len(framings)
    finally:
        tracemalloc.stop()
    assert each < 160 * 1024, f"{each / 1024:.0f} KiB per connection's parser"

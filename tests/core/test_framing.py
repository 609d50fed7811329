"""msgpack-RPC framing: messages split anywhere, and every kind of malformed stream."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.wire.framing import (
    NEED_DATA,
    InvalidMessage,
    Notification,
    Request,
    Response,
    RpcFraming,
    encode_notification,
    encode_request,
    encode_response,
    min_message_size,
)
from mesh.errors import BadRequest, MessageTooLarge, ProtocolError


def drain(framing: RpcFraming) -> list[Any]:
    events = []
    while (event := framing.next_event()) is not NEED_DATA:
        events.append(event)
    return events


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=300),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
msgids = st.integers(min_value=0, max_value=2**32 - 1)
methods = st.text(min_size=1, max_size=16)
messages = st.one_of(
    st.builds(Request, msgids, methods, st.lists(msgpack_values, max_size=4)),
    st.builds(Response, msgids, msgpack_values, msgpack_values),
    st.builds(Notification, methods, st.lists(msgpack_values, max_size=4)),
)


def encode(message: Request | Response | Notification) -> bytes:
    if isinstance(message, Request):
        return encode_request(message.msgid, message.method, message.params)
    if isinstance(message, Response):
        return encode_response(message.msgid, message.error, message.result)
    return encode_notification(message.method, message.params)


@given(st.lists(messages, min_size=1, max_size=8), st.data())
@settings(max_examples=200)
def test_any_split_of_a_stream_yields_the_same_messages(
    sent: list[Request | Response | Notification], data: st.DataObject
) -> None:
    stream = b"".join(encode(m) for m in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framing = RpcFraming()
    received: list[Any] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        framing.receive_data(stream[start:cut])
        received.extend(drain(framing))
        start = cut
    assert received == sent
    assert framing.buffered == 0


@given(messages)
def test_size_lower_bound_never_exceeds_the_real_size(
    message: Request | Response | Notification,
) -> None:
    data = encode(message)
    for prefix in (len(data), len(data) // 2, 5):
        assert min_message_size(data[:prefix]) <= len(data)
    assert min_message_size(data) == len(data)


def test_declared_four_gib_bin_is_refused_from_its_header() -> None:
    framing = RpcFraming(max_message_size=1 << 20)
    header = b"\x94\x00\x01\xa5infer\x92\xa1m\x81\xa1X\xc6\xff\xff\xff\xff"
    framing.receive_data(header)
    with pytest.raises(MessageTooLarge, match="4294967"):
        framing.next_event()
    # Broken for good: the next message cannot be found any more.
    with pytest.raises(MessageTooLarge):
        framing.receive_data(encode_request(2, "ping", []))


def test_declared_huge_array_is_refused() -> None:
    framing = RpcFraming(max_message_size=1 << 20)
    framing.receive_data(b"\x94\x00\x01\xa4ping\xdd\xff\xff\xff\xff")
    with pytest.raises(ProtocolError):
        framing.next_event()


def test_message_over_the_limit_is_refused_while_it_arrives() -> None:
    framing = RpcFraming(max_message_size=1024)
    big = encode_request(1, "infer", [b"x" * 5000])
    framing.receive_data(big[:100])
    with pytest.raises(MessageTooLarge):
        framing.next_event()


def test_a_message_at_the_limit_is_accepted() -> None:
    payload = b"x" * 900
    data = encode_request(1, "echo", [payload])
    framing = RpcFraming(max_message_size=len(data))
    framing.receive_data(data)
    assert drain(framing) == [Request(1, "echo", [payload])]


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1",  # the one byte msgpack never uses
        b"\x81\x01\x02",  # map with an integer key: not allowed here
        b"\xa2\xff\xfe",  # str that is not UTF-8
        b"\x91" * 5000 + b"\xc0",  # nested far too deep
    ],
)
def test_bytes_that_are_not_msgpack_break_the_stream(garbage: bytes) -> None:
    framing = RpcFraming()
    framing.receive_data(encode_request(1, "ping", []) + garbage)
    assert framing.next_event() == Request(1, "ping", [])
    with pytest.raises(ProtocolError):
        framing.next_event()
    assert framing.broken is not None


@pytest.mark.parametrize(
    ("obj", "msgid", "fragment"),
    [
        ({"type": 0}, None, "got a map"),
        ([], None, "got an array"),
        ("hello", None, "got str"),
        ([7, 1, "ping", []], None, "unknown message type 7"),
        ([True, 1, "ping", []], None, "unknown message type"),
        ([0, 1, "ping"], 1, "4 elements"),
        ([0, 1, "ping", [], 5], 1, "4 elements"),
        ([0, -1, "ping", []], None, "msgid"),
        ([0, 2**32, "ping", []], None, "msgid"),
        ([0, "1", "ping", []], None, "msgid"),
        ([0, 3, 42, []], 3, "method must be a string"),
        ([0, 4, "ping", {"a": 1}], 4, "params must be an array"),
        ([1, 1, None], None, "a response is"),
        ([2, "tick"], None, "a notification is"),
        ([2, "tick", {}], None, "a notification is"),
    ],
)
def test_malformed_rpc_messages(obj: object, msgid: int | None, fragment: str) -> None:
    framing = RpcFraming()
    framing.receive_data(msgpack.packb(obj, use_bin_type=True))
    (event,) = drain(framing)
    assert isinstance(event, InvalidMessage)
    assert event.msgid == msgid
    assert isinstance(event.error, BadRequest)
    assert fragment in event.error.message


def test_stream_goes_on_after_an_invalid_but_well_formed_message() -> None:
    framing = RpcFraming()
    framing.receive_data(
        msgpack.packb([0, 9, 1, []]) + encode_request(10, "ping", []) + encode_notification("n", [])
    )
    events = drain(framing)
    assert isinstance(events[0], InvalidMessage)
    assert events[1:] == [Request(10, "ping", []), Notification("n", [])]


def test_encoding_refuses_oversized_and_unencodable_messages() -> None:
    with pytest.raises(MessageTooLarge):
        encode_request(1, "x", [b"y" * 200], limit=100)
    with pytest.raises(BadRequest):
        encode_response(1, None, object())


@given(st.binary(max_size=2000))
@settings(max_examples=500)
def test_fuzz_random_bytes_never_escape_the_error_tree(data: bytes) -> None:
    framing = RpcFraming(max_message_size=4096)
    try:
        framing.receive_data(data)
        drain(framing)
    except ProtocolError:
        pass


@given(messages)
def test_the_connection_encodes_like_the_module_functions(
    message: Request | Response | Notification,
) -> None:
    framing = RpcFraming()
    if isinstance(message, Request):
        data = framing.request(message.msgid, message.method, message.params)
    elif isinstance(message, Response):
        data = framing.response(message.msgid, message.error, message.result)
    else:
        data = framing.notification(message.method, message.params)
    assert data == encode(message)


def test_the_connection_encoder_recovers_after_a_refused_message() -> None:
    framing = RpcFraming(max_message_size=256)
    with pytest.raises(BadRequest):
        framing.response(1, None, {"x": object()})
    with pytest.raises(MessageTooLarge):
        framing.request(2, "echo", [b"x" * 300])
    assert framing.request(3, "ping", []) == encode_request(3, "ping", [])

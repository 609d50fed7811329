"""Model transfer on the wire: chunk assembly (order, window, truncation, corruption)
and every parser of the transfer methods refusing what is malformed.

The assembly is driven as the puller drives it (asks, then chunks back in any
order) and as a pushing client does (chunks only); each parser gets a table
of broken messages and a fuzz run that may only end in a parsed message or an
error from the tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.policy.model_sources import Offer, Sources, choose_sources
from mesh.core.wire.model_transfer import (
    MAX_CHUNK_BYTES,
    Assembly,
    ChunkAsk,
    ModelFileInfo,
    ModelRef,
    PushBegin,
    chunk_span,
    parse_chunk,
    parse_describe,
    parse_model_ref,
    parse_pull,
    parse_push_begin,
    parse_push_chunk,
    parse_push_end,
)
from mesh.errors import BadRequest, MeshError, ModelIntegrityError, ProtocolError

SHA = "ab" * 32


def _info(data: bytes) -> ModelFileInfo:
    return ModelFileInfo("m", "1", hashlib.sha256(data).hexdigest(), len(data))


def _pull_all(assembly: Assembly, data: bytes, rng: random.Random) -> bytes:
    """Drive ``assembly`` as a puller does, answering asks in a shuffled order."""
    out = bytearray()
    outstanding: list[ChunkAsk] = []
    while not assembly.complete:
        outstanding.extend(assembly.asks())
        assert len(outstanding) <= assembly.window
        ask = outstanding.pop(rng.randrange(len(outstanding)))
        ready = assembly.feed(ask.offset, data[ask.offset : ask.offset + ask.length])
        assembly.absorb(ready)
        out += b"".join(ready)
    return bytes(out)


@pytest.mark.parametrize(
    ("size", "chunk", "window"),
    [(1, 4, 1), (10, 4, 1), (12, 4, 2), (13, 4, 3), (1000, 7, 5), (4096, 1024, 64)],
)
def test_a_shuffled_transfer_assembles_in_order_and_verifies(
    size: int, chunk: int, window: int
) -> None:
    data = random.Random(size).randbytes(size)
    assembly = Assembly(_info(data), chunk_bytes=chunk, window=window)
    assert _pull_all(assembly, data, random.Random(window)) == data
    assembly.verify()


def test_asks_never_exceed_the_window_and_cover_the_file_once() -> None:
    data = bytes(range(256)) * 10
    assembly = Assembly(_info(data), chunk_bytes=100, window=3)
    first = assembly.asks()
    assert [a.offset for a in first] == [0, 100, 200]
    assert assembly.asks() == []  # window full
    assembly.feed(200, data[200:300])  # early: waits, still counts against the window
    assert assembly.asks() == []
    assembly.feed(0, data[0:100])
    assert [a.offset for a in assembly.asks()] == [300]
    last = Assembly(_info(data), chunk_bytes=1000, window=8).asks()
    assert [(a.offset, a.length) for a in last] == [(0, 1000), (1000, 1000), (2000, 560)]


def test_a_corrupted_copy_is_rejected_at_verify() -> None:
    data = b"x" * 1000
    assembly = Assembly(_info(data), chunk_bytes=256, window=4)
    bad = b"y" + data[1:]
    _pull_all(assembly, bad, random.Random(1))
    with pytest.raises(ModelIntegrityError, match="not the"):
        assembly.verify()


def test_a_short_chunk_is_a_truncated_file() -> None:
    data = b"z" * 1000
    assembly = Assembly(_info(data), chunk_bytes=256, window=4)
    assembly.asks()
    with pytest.raises(ModelIntegrityError, match="holds 100 bytes; expected 256"):
        assembly.feed(0, data[:100])


def test_an_unfinished_copy_does_not_verify() -> None:
    data = b"q" * 600
    assembly = Assembly(_info(data), chunk_bytes=256, window=4)
    assembly.absorb(assembly.feed(0, data[:256]))
    with pytest.raises(ModelIntegrityError, match="got 256 of 600 bytes"):
        assembly.verify()
    # Released but not yet absorbed (hashed) does not count either.
    assembly.feed(256, data[256:512])
    assembly.feed(512, data[512:])
    assert assembly.complete
    with pytest.raises(ModelIntegrityError, match="got 256 of 600 bytes"):
        assembly.verify()


@pytest.mark.parametrize(
    ("offset", "length"),
    [(3, 10), (256 * 4, 256), (1024, 0), (-256, 256)],
    ids=["misaligned", "past-the-window", "past-the-end", "negative"],
)
def test_chunks_outside_the_plan_are_refused(offset: int, length: int) -> None:
    data = b"w" * 1024
    assembly = Assembly(_info(data), chunk_bytes=256, window=4)
    with pytest.raises(BadRequest, match="was not expected"):
        assembly.feed(offset, b"w" * length)


def test_a_chunk_given_twice_is_refused() -> None:
    data = b"w" * 1024
    assembly = Assembly(_info(data), chunk_bytes=256, window=4)
    assembly.feed(512, data[512:768])
    with pytest.raises(BadRequest, match="not expected"):
        assembly.feed(512, data[512:768])
    assembly.feed(0, data[:256])
    with pytest.raises(BadRequest, match="not expected"):
        assembly.feed(0, data[:256])  # already written


def test_chunk_span_stops_at_the_end() -> None:
    assert chunk_span(ChunkAsk(SHA, 0, 100), 50) == (0, 50)
    assert chunk_span(ChunkAsk(SHA, 40, 100), 50) == (40, 10)
    with pytest.raises(BadRequest, match="past the end"):
        chunk_span(ChunkAsk(SHA, 50, 1), 50)


def test_round_trips() -> None:
    ask = ChunkAsk(SHA, 1024, 512)
    assert parse_chunk(ask.to_params()) == ask
    assert parse_describe([{"sha256": SHA}]) == SHA
    info = ModelFileInfo("digits-large", "2", SHA, 1234)
    assert ModelFileInfo.from_wire(info.to_wire(), sha256=SHA) == (info, MAX_CHUNK_BYTES)
    ref = ModelRef("digits-large", "2")
    assert parse_pull(ref.to_params()) == ref
    assert parse_pull(ModelRef("d").to_params()) == ModelRef("d")
    begin = PushBegin("m", None, SHA, 10)
    assert parse_push_begin(begin.to_params()) == begin
    chunk = parse_push_chunk([{"upload": "0123abcd", "offset": 0, "data": b"x"}])
    assert (chunk.upload, chunk.offset, chunk.data) == ("0123abcd", 0, b"x")
    assert parse_push_end([{"upload": "0123abcd"}]) == "0123abcd"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("digits", ModelRef("digits")), ("digits:3", ModelRef("digits", "3"))],
)
def test_model_refs(text: str, expected: ModelRef) -> None:
    assert parse_model_ref(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["", ":1", "a b", "digits:", "digits:../x", "x:" + "9" * 33])
def test_bad_model_refs(text: str) -> None:
    if text == "digits:":
        assert parse_model_ref(text) == ModelRef("digits")  # an empty version is none
        return
    with pytest.raises(BadRequest):
        parse_model_ref(text)


BAD_CHUNKS: list[Any] = [
    [],
    [{}],
    ["x"],
    [{"sha256": SHA, "offset": 0}],
    [{"sha256": SHA.upper(), "offset": 0, "length": 1}],
    [{"sha256": SHA, "offset": -1, "length": 1}],
    [{"sha256": SHA, "offset": True, "length": 1}],
    [{"sha256": SHA, "offset": 0, "length": 0}],
    [{"sha256": SHA, "offset": 0, "length": MAX_CHUNK_BYTES + 1}],
    [{"sha256": SHA, "offset": 0, "length": 1.5}],
    [{"sha256": SHA, "offset": 0, "length": 1, "extra": 1}],
    [{"sha256": SHA, "offset": 0, "length": 1}, {}],
]


@pytest.mark.parametrize("params", BAD_CHUNKS)
def test_bad_chunk_asks_are_refused(params: list[Any]) -> None:
    with pytest.raises(BadRequest):
        parse_chunk(params)


BAD_PUSHES: list[tuple[Any, list[Any]]] = [
    (parse_push_begin, [{"name": "m", "sha256": SHA}]),
    (parse_push_begin, [{"name": "m", "sha256": SHA, "size": 0}]),
    (parse_push_begin, [{"name": "../m", "sha256": SHA, "size": 1}]),
    (parse_push_begin, [{"name": "m", "sha256": SHA, "size": 1, "version": "a/b"}]),
    (parse_push_chunk, [{"upload": "0123abcd", "offset": 0, "data": "text"}]),
    (parse_push_chunk, [{"upload": "0123abcd", "offset": 0, "data": b""}]),
    (parse_push_chunk, [{"upload": "zz", "offset": 0, "data": b"x"}]),
    (parse_push_chunk, [{"upload": "0123abcd", "offset": 0, "data": b"x" * (MAX_CHUNK_BYTES + 1)}]),
    (parse_push_end, [{"upload": 12}]),
    (parse_pull, [{"name": 3}]),
    (parse_pull, [{"name": "m", "version": 3}]),
    (parse_describe, [{"sha256": "00"}]),
]


@pytest.mark.parametrize(("parse", "params"), BAD_PUSHES)
def test_bad_push_pull_and_describe_params_are_refused(parse: Any, params: list[Any]) -> None:
    with pytest.raises(BadRequest):
        parse(params)


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"name": "m", "version": "1", "sha256": SHA},
        {"name": "m", "version": "1", "sha256": "cd" * 32, "size": 3},
        {"name": "m", "version": "1", "sha256": SHA, "size": 3, "max_chunk_bytes": 0},
    ],
)
def test_a_bad_description_is_a_protocol_error(body: Any) -> None:
    with pytest.raises(ProtocolError):
        ModelFileInfo.from_wire(body, sha256=SHA)


_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_PARSERS = [
    parse_chunk,
    parse_describe,
    parse_pull,
    parse_push_begin,
    parse_push_chunk,
    parse_push_end,
]


@settings(max_examples=200, deadline=None)
@given(st.lists(_ANY, max_size=3), st.sampled_from(_PARSERS))
def test_any_message_parses_or_is_refused_with_a_mesh_error(params: list[Any], parse: Any) -> None:
    with contextlib.suppress(MeshError):
        parse(params)


A, B = "a" * 64, "b" * 64
SOURCE_CASES: list[tuple[str, ModelRef, list[Offer], Sources | None]] = [
    ("nobody offers it", ModelRef("m"), [Offer("p", "other", "1", A)], None),
    ("pinned version absent", ModelRef("m", "3"), [Offer("p", "m", "1", A)], None),
    (
        "newest version, numbers as numbers",
        ModelRef("m"),
        [Offer("p", "m", "9", A), Offer("q", "m", "10", B), Offer("r", "m", "beta", A)],
        Sources("10", B, ("q",)),
    ),
    (
        "pinned version",
        ModelRef("m", "9"),
        [Offer("p", "m", "9", A), Offer("q", "m", "10", B)],
        Sources("9", A, ("p",)),
    ),
    (
        "least busy first, then by name",
        ModelRef("m"),
        [Offer("z", "m", "1", A), Offer("b", "m", "1", A, 2.0), Offer("a", "m", "1", A)],
        Sources("1", A, ("a", "z", "b")),
    ),
    (
        "peers disagree on the bytes: the majority's",
        ModelRef("m"),
        [Offer("p", "m", "1", A), Offer("q", "m", "1", B), Offer("r", "m", "1", B)],
        Sources("1", B, ("q", "r")),
    ),
    (
        "gossip without versions",
        ModelRef("m"),
        [Offer("p", "m", None, A)],
        Sources(None, A, ("p",)),
    ),
]


@pytest.mark.parametrize(
    ("ref", "offers", "expected"),
    [case[1:] for case in SOURCE_CASES],
    ids=[case[0] for case in SOURCE_CASES],
)
def test_choose_sources(ref: ModelRef, offers: list[Offer], expected: Sources | None) -> None:
    assert choose_sources(ref, offers) == expected

"""mDNS adverts: what we put in TXT comes back out, and garbage from the LAN is refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.core.membership.adverts import (
    MAX_TXT_BYTES,
    SERVICE_TYPE,
    Advert,
    encode_txt,
    instance_name,
    parse_advert,
)
from mesh.errors import ConfigError, ProtocolError

GOOD = Advert(
    name="kitchen-pi",
    id="3f2a9c1b7d4e",
    version="0.1.0",
    rpc_port=7000,
    http_port=8080,
    role="node",
    mesh_id="0123456789abcdef",
    addresses=("192.168.1.20",),
)
GOOD_TXT: dict[bytes, bytes | None] = {
    b"id": b"3f2a9c1b7d4e",
    b"v": b"0.1.0",
    b"rpc": b"7000",
    b"http": b"8080",
    b"role": b"node",
    b"mesh": b"0123456789abcdef",
}
NAME = instance_name("kitchen-pi")


def _txt(advert: Advert) -> dict[bytes, bytes | None]:
    return {key.encode(): value.encode() for key, value in encode_txt(advert).items()}


def _names() -> st.SearchStrategy[str]:
    return st.text(min_size=1, max_size=30).filter(
        lambda s: s.isprintable() and s == s.strip() and len(s.encode()) <= 63
    )


adverts = st.builds(
    Advert,
    name=_names(),
    id=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    version=st.from_regex(r"[\x21-\x7e]{1,32}", fullmatch=True),
    rpc_port=st.integers(1, 65535),
    http_port=st.none() | st.integers(1, 65535),
    role=st.sampled_from(["node", "gateway"]),
    mesh_id=st.just("open") | st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    addresses=st.lists(
        st.ip_addresses().filter(lambda ip: not (ip.is_unspecified or ip.is_multicast)).map(str),
        min_size=1,
        max_size=3,
        unique=True,
    ).map(tuple),
)


@given(adverts)
def test_round_trip(advert: Advert) -> None:
    parsed = parse_advert(
        instance_name(advert.name), _txt(advert), list(advert.addresses), advert.rpc_port
    )
    assert parsed == advert


def test_instance_name() -> None:
    assert instance_name("a") == "a._edgemesh._tcp.local."
    assert SERVICE_TYPE == "_edgemesh._tcp.local."


def test_txt_has_only_the_small_fields() -> None:
    assert encode_txt(GOOD) == {
        "id": "3f2a9c1b7d4e",
        "v": "0.1.0",
        "rpc": "7000",
        "http": "8080",
        "role": "node",
        "mesh": "0123456789abcdef",
    }


def test_http_is_left_out_when_there_is_none() -> None:
    advert = Advert("n", "id1", "0.1.0", 7000, None, "gateway", "open")
    assert "http" not in encode_txt(advert)
    assert parse_advert(instance_name("n"), _txt(advert), ["10.0.0.1"], 7000).http_port is None


def test_port_none_means_no_srv_and_the_txt_port_is_used() -> None:
    assert parse_advert(NAME, GOOD_TXT, ["192.168.1.20"], None).rpc_port == 7000


def test_unknown_keys_are_ignored_and_keys_are_case_insensitive() -> None:
    txt = {key.upper(): value for key, value in GOOD_TXT.items()}
    txt[b"future-field"] = b"whatever"
    txt[b"flag"] = None
    assert parse_advert(NAME, txt, ["192.168.1.20"], 7000) == GOOD


def test_addresses_are_normalised_and_deduplicated() -> None:
    parsed = parse_advert(NAME, GOOD_TXT, ["192.168.1.20", "fe80:0::1", "192.168.1.20"], 7000)
    assert parsed.addresses == ("192.168.1.20", "fe80::1")


def test_service_type_suffix_is_case_insensitive() -> None:
    assert parse_advert("kitchen-pi._EDGEMESH._tcp.local.", GOOD_TXT, [], 7000).name == (
        "kitchen-pi"
    )


def _without(key: bytes) -> dict[bytes, bytes | None]:
    return {k: v for k, v in GOOD_TXT.items() if k != key}


def _with(**changes: bytes | None) -> dict[bytes, bytes | None]:
    return {**GOOD_TXT, **{k.encode(): v for k, v in changes.items()}}


# (why, instance name, TXT, SRV port, words the error must contain)
GARBAGE: list[tuple[str, str, dict[bytes, bytes | None], int | None, str]] = [
    ("missing id", NAME, _without(b"id"), 7000, "'id'"),
    ("empty id", NAME, _with(id=b""), 7000, "'id'"),
    ("id without value", NAME, _with(id=None), 7000, "'id'"),
    ("id with spaces", NAME, _with(id=b"a b"), 7000, "id"),
    ("id too long", NAME, _with(id=b"a" * 65), 7000, "id"),
    ("missing version", NAME, _without(b"v"), 7000, "'v'"),
    ("missing rpc", NAME, _without(b"rpc"), 7000, "'rpc'"),
    ("missing role", NAME, _without(b"role"), 7000, "'role'"),
    ("missing mesh", NAME, _without(b"mesh"), 7000, "'mesh'"),
    ("non-UTF-8 value", NAME, _with(v=b"\xff\xfe"), 7000, "UTF-8"),
    ("non-UTF-8 key", NAME, {**GOOD_TXT, b"\xff": b"1"}, 7000, "UTF-8"),
    ("rpc port 0", NAME, _with(rpc=b"0"), None, "rpc"),
    ("rpc port too big", NAME, _with(rpc=b"65536"), None, "rpc"),
    ("rpc port negative", NAME, _with(rpc=b"-1"), None, "rpc"),
    ("rpc port with sign", NAME, _with(rpc=b"+7000"), None, "rpc"),
    ("rpc port not a number", NAME, _with(rpc=b"seven"), None, "rpc"),
    ("rpc port huge", NAME, _with(rpc=b"9" * 200), None, "rpc"),
    ("http port bad", NAME, _with(http=b"99999"), 7000, "http"),
    ("http port empty", NAME, _with(http=b""), 7000, "http"),
    ("TXT and SRV disagree", NAME, GOOD_TXT, 7001, "disagrees"),
    ("unknown role", NAME, _with(role=b"king"), 7000, "role"),
    ("mesh id not hex", NAME, _with(mesh=b"zzzzzzzzzzzzzzzz"), 7000, "mesh"),
    ("mesh id is a key", NAME, _with(mesh=b"0" * 64), 7000, "mesh"),
    ("value over 255 bytes", NAME, _with(x=b"a" * 256), 7000, "255"),
    (
        "TXT over 1 KiB",
        NAME,
        {**GOOD_TXT, **{f"k{i}".encode(): b"a" * 200 for i in range(5)}},
        7000,
        str(MAX_TXT_BYTES),
    ),
    ("duplicate key by case", NAME, {**GOOD_TXT, b"ID": b"other"}, 7000, "twice"),
    ("other service type", "kitchen-pi._http._tcp.local.", GOOD_TXT, 7000, "instance"),
    ("empty name", "." + SERVICE_TYPE, GOOD_TXT, 7000, "name"),
    ("name over 63 bytes", instance_name("n" * 64), GOOD_TXT, 7000, "63"),
    ("name over 63 bytes in UTF-8", instance_name("é" * 32), GOOD_TXT, 7000, "63"),
    ("control character in name", instance_name("a\x07b"), GOOD_TXT, 7000, "unprintable"),
    ("newline in name", instance_name("a\nb"), GOOD_TXT, 7000, "unprintable"),
    ("zero-width character in name", instance_name("a\u200bb"), GOOD_TXT, 7000, "unprintable"),
    ("name with surrounding space", instance_name(" a"), GOOD_TXT, 7000, "spaces"),
]


@pytest.mark.parametrize(
    ("name", "txt", "port", "words"),
    [case[1:] for case in GARBAGE],
    ids=[case[0] for case in GARBAGE],
)
def test_garbage_is_refused(
    name: str, txt: dict[bytes, bytes | None], port: int | None, words: str
) -> None:
    with pytest.raises(ProtocolError, match=words):
        parse_advert(name, txt, ["192.168.1.20"], port)


@pytest.mark.parametrize(
    ("address", "words"),
    [("not-an-ip", "not an IP"), ("0.0.0.0", "cannot belong"), ("224.0.0.251", "cannot belong")],
)
def test_bad_addresses_are_refused(address: str, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        parse_advert(NAME, GOOD_TXT, [address], 7000)


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "x" * 64},
        {"name": ""},
        {"name": "tab\there"},
        {"id": "has space"},
        {"rpc_port": 0},
        {"http_port": 70000},
        {"role": "boss"},
        {"mesh_id": "secret-key-bytes"},
        {"version": ""},
    ],
    ids=lambda changes: next(iter(changes)),
)
def test_our_own_bad_advert_is_a_config_error(changes: dict[str, Any]) -> None:
    advert = Advert(**{**_fields(GOOD), **changes})
    with pytest.raises(ConfigError, match="cannot advertise"):
        encode_txt(advert)


def _fields(advert: Advert) -> dict[str, Any]:
    return {name: getattr(advert, name) for name in Advert.__dataclass_fields__}

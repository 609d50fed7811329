"""What a node says about itself over mDNS, and the strict parser for what others say.

A node registers one DNS-SD service of type :data:`SERVICE_TYPE`. The
instance name is the node's name; the SRV record carries the RPC port; the
A/AAAA records carry its addresses; the TXT record keeps to a few small
fields (everything bigger travels over RPC once connected)::

    id=3f2a9c1b7d4e  v=0.1.0  rpc=7000  http=8080  role=node  mesh=1b2c...|open

``http`` is left out when the node serves no HTTP API. ``mesh`` is a hash of
the mesh key (:func:`mesh.core.wire.auth.mesh_id`), never the key.

Anyone on the LAN can send mDNS records, so :func:`parse_advert` treats
them as untrusted input: it either returns a fully checked :class:`Advert`
or raises :class:`~mesh.errors.ProtocolError` saying what is wrong. The
rules it enforces, and why:

* TXT at most 1 KiB in all and no value over 255 bytes: a TXT string cannot
  hold more, and keeping the record small keeps it inside one packet.
* Keys are case-insensitive (RFC 6763 section 6.4); unknown keys are
  ignored so that a newer version can add a field without older nodes
  rejecting it. They still count towards the size limit.
* Text is UTF-8; ports are decimal 1..65535.
* The TXT ``rpc`` port must equal the SRV port when there is one. They are
  written together by every honest sender, so a disagreement means a broken
  or forged record; picking either one silently could send work to the
  wrong service, so the record is refused instead.
* Names are at most 63 bytes (one DNS label), printable, with no leading or
  trailing space: they end up in logs, tables and ``status`` output.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from mesh.core.wire.addresses import host_ip
from mesh.errors import ConfigError, ProtocolError

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_TXT_BYTES",
    "MAX_TXT_VALUE_BYTES",
    "ROLES",
    "SERVICE_TYPE",
    "Advert",
    "check_advert",
    "encode_txt",
    "instance_name",
    "parse_advert",
]

SERVICE_TYPE: Final = "_edgemesh._tcp.local."
ROLES: Final = frozenset({"node", "gateway"})
MAX_NAME_BYTES: Final = 63
MAX_TXT_BYTES: Final = 1024
MAX_TXT_VALUE_BYTES: Final = 255

_SUFFIX: Final = "." + SERVICE_TYPE
_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_VERSION_RE: Final = re.compile(r"[\x21-\x7e]{1,32}")
_MESH_ID_RE: Final = re.compile(r"[0-9a-f]{16}")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class Advert:
    """One node's mDNS advertisement, checked."""

    name: str
    """The node's name: the mDNS instance name without the service type."""
    id: str
    """The node's id, fresh on every start (tells a restart from a name clash)."""
    version: str
    """The edgemesh version the node runs."""
    rpc_port: int
    http_port: int | None
    role: str
    """``"node"`` or ``"gateway"``."""
    mesh_id: str
    """16 hex digits hashed from the mesh key, or ``"open"``."""
    addresses: tuple[str, ...] = ()
    """IPv4/IPv6 addresses as text, from the A/AAAA records (not from TXT)."""


def instance_name(node_name: str) -> str:
    """The full mDNS instance name a node called ``node_name`` registers."""
    return f"{node_name}.{SERVICE_TYPE}"


def check_advert(advert: Advert) -> None:
    """Raise ConfigError unless ``advert`` is something :func:`parse_advert` would accept.

    Run on our own advert before registering it, so that a bad ``--name``
    fails at start-up with a clear message instead of making every peer
    reject us.
    """
    try:
        _check_name(advert.name)
        _check_fields(advert)
        size = _txt_size(
            {key.encode(): value.encode() for key, value in _txt_fields(advert).items()}
        )
    except ProtocolError as exc:
        raise ConfigError(f"cannot advertise this node over mDNS: {exc.message}") from None
    if size > MAX_TXT_BYTES:  # pragma: no cover - the field rules keep it far smaller
        raise ConfigError(f"this node's TXT record would be {size} bytes (max {MAX_TXT_BYTES})")


def encode_txt(advert: Advert) -> dict[str, str]:
    """The TXT properties for ``advert``; raises ConfigError if it breaks the rules."""
    check_advert(advert)
    return _txt_fields(advert)


def _txt_fields(advert: Advert) -> dict[str, str]:
    txt = {
        "id": advert.id,
        "v": advert.version,
        "rpc": str(advert.rpc_port),
        "role": advert.role,
        "mesh": advert.mesh_id,
    }
    if advert.http_port is not None:
        txt["http"] = str(advert.http_port)
    return txt


def parse_advert(
    instance_name: str,
    properties: Mapping[bytes, bytes | None],
    addresses: Sequence[str],
    port: int | None,
) -> Advert:
    """Check a resolved mDNS record and turn it into an :class:`Advert`.

    ``instance_name`` is the full name (``"<name>._edgemesh._tcp.local."``),
    ``properties`` the TXT record as zeroconf decodes it (a key without
    ``=`` has the value None), ``addresses`` the A/AAAA records as text and
    ``port`` the SRV port (None when there was no SRV record). Raises
    ProtocolError naming the first problem found.
    """
    name = _node_name(instance_name)
    _check_name(name)
    txt = _decode_txt(properties)
    rpc_port = _port("rpc", _required(txt, "rpc"))
    if port is not None and port != rpc_port:
        raise ProtocolError(f"TXT rpc port {rpc_port} disagrees with the SRV port {port}")
    http = txt.get("http")
    advert = Advert(
        name=name,
        id=_required(txt, "id"),
        version=_required(txt, "v"),
        rpc_port=rpc_port,
        http_port=None if http is None else _port("http", http),
        role=_required(txt, "role"),
        mesh_id=_required(txt, "mesh"),
        addresses=_addresses(addresses),
    )
    _check_fields(advert)
    return advert


def _node_name(full_name: str) -> str:
    # DNS names compare case-insensitively; the instance part keeps its case.
    if not full_name.lower().endswith(_SUFFIX):
        raise ProtocolError(f"{full_name!r} is not a {SERVICE_TYPE} instance name")
    return full_name[: -len(_SUFFIX)]


def _check_name(name: str) -> None:
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 1 <= size <= MAX_NAME_BYTES:
        raise ProtocolError(f"node name must be 1..{MAX_NAME_BYTES} bytes, got {size}")
    if not name.isprintable() or name != name.strip():
        # isprintable() also refuses lone surrogates, so the name is valid UTF-8 too.
        raise ProtocolError(f"node name {name!r} has unprintable characters or surrounding spaces")


def _check_fields(advert: Advert) -> None:
    """The per-field rules shared by encoding (our advert) and parsing (theirs)."""
    if not _ID_RE.fullmatch(advert.id):
        raise ProtocolError(f"id {advert.id!r} must be 1..64 of A-Z a-z 0-9 _ -")
    if not _VERSION_RE.fullmatch(advert.version):
        raise ProtocolError(f"version {advert.version!r} must be 1..32 printable ASCII")
    for key, value in (("rpc", advert.rpc_port), ("http", advert.http_port)):
        if value is not None and not 1 <= value <= 65535:
            raise ProtocolError(f"{key} port {value} is not in 1..65535")
    if advert.role not in ROLES:
        raise ProtocolError(f"role {advert.role!r} is not one of {', '.join(sorted(ROLES))}")
    if advert.mesh_id != "open" and not _MESH_ID_RE.fullmatch(advert.mesh_id):
        raise ProtocolError(f"mesh id {advert.mesh_id!r} is neither 16 hex digits nor 'open'")


def _txt_size(properties: Mapping[bytes, bytes | None]) -> int:
    # On the wire each entry is a length byte then "key" or "key=value".
    return sum(
        1 + len(key) + (0 if value is None else 1 + len(value)) for key, value in properties.items()
    )


def _decode_txt(properties: Mapping[bytes, bytes | None]) -> dict[str, str | None]:
    size = _txt_size(properties)
    if size > MAX_TXT_BYTES:
        raise ProtocolError(f"TXT record is {size} bytes (max {MAX_TXT_BYTES})")
    txt: dict[str, str | None] = {}
    for raw_key, raw_value in properties.items():
        key = _utf8("TXT key", raw_key).lower()
        if key in txt:
            raise ProtocolError(f"TXT key {key!r} appears twice")
        if raw_value is not None and len(raw_value) > MAX_TXT_VALUE_BYTES:
            raise ProtocolError(
                f"TXT value of {key!r} is {len(raw_value)} bytes (max {MAX_TXT_VALUE_BYTES})"
            )
        txt[key] = None if raw_value is None else _utf8(f"TXT value of {key!r}", raw_value)
    return txt


def _utf8(what: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8: {raw[:32]!r}") from None


def _required(txt: Mapping[str, str | None], key: str) -> str:
    value = txt.get(key)
    if not value:
        raise ProtocolError(f"TXT {key!r} is missing or empty")
    return value


def _port(key: str, text: str) -> int:
    # int() would also take "+80", " 80" and "8_0"; a port is plain digits.
    if not _PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ProtocolError(f"TXT {key!r} port {text!r} is not a number in 1..65535")
    return int(text)


def _addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    usable: list[str] = []
    for text in addresses:
        try:
            address = host_ip(text)
        except ValueError as exc:
            # Nobody can be reached there; a record offering it is broken or forged.
            raise ProtocolError(f"address {text!r} cannot belong to a node: {exc}") from None
        if address not in usable:
            usable.append(address)
    return tuple(usable)

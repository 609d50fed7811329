"""The ``gossip`` notification: what each node tells its peers, and its strict parser.

Every gossip interval a node sends each peer ``[2, "gossip", [map]]`` with its
identity, its load as estimated time, and its view of the other members
(see docs/PROTOCOL.md). Gossip comes from the network, so
:func:`parse_gossip` checks every field and refuses nonsense with a
:class:`~mesh.errors.BadRequest` that names the field and what was expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mesh.core.models.signatures import check_model_name
from mesh.errors import BadRequest, ConfigError

__all__ = [
    "MAX_HELD",
    "MAX_MEMBERS",
    "MAX_MODELS",
    "MAX_SECONDS",
    "MAX_SLOTS",
    "MAX_TEXT",
    "Gossip",
    "Hearsay",
    "Holding",
    "Load",
    "MemberState",
    "ModelHolding",
    "parse_gossip",
]

MAX_TEXT = 255
MAX_MODELS = 1024
MAX_MEMBERS = 1024
# Bounds that no honest node reaches; they keep arithmetic on gossiped figures
# finite (1e9 s is 31 years) and slot counts meaningful.
MAX_SECONDS = 1e9
MAX_SLOTS = 1_000_000
_MAX_INCARNATION = 2**63 - 1
# Requests one node may report holding for others (far above any queue cap).
MAX_HELD = 65536
_MAX_SEQ = 2**63 - 1

# Hosts are IP addresses or DNS names (with an IPv6 zone after '%'). Anything
# else, spaces and control characters above all, would end up in log lines.
_HOST_RE = re.compile(r"[A-Za-z0-9._:%-]{1,255}")
# Connecting to a wildcard address reaches ourselves, never the peer.
_UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::"})
_ROLE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# A version label, as mesh.core.models.versions checks it.
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,31}")


class MemberState(StrEnum):
    """Where a member stands in failure detection."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


_STATES = frozenset(str(s) for s in MemberState)


# --- what travels --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelHolding:
    """A version of a model a node serves: its name, its file's checksum, its label.

    A node serving several versions of a name sends one of these for each.
    """

    name: str
    sha256: str
    # The version's label ("1", "2"...); None from peers that do not say.
    version: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = {"name": self.name, "sha256": self.sha256}
        if self.version is not None:
            wire["version"] = self.version
        return wire


@dataclass(frozen=True, slots=True)
class Load:
    """How busy a node is, in time rather than queue length."""

    models: tuple[ModelHolding, ...]
    # Per-model EWMA of service time on that node, seconds.
    service_s: Mapping[str, float]
    # Estimated queued work, seconds.
    queued_s: float
    free_slots: int
    role: str
    # Requests it runs at once (optional on the wire: one when absent).
    slots: int = 1

    def has_model(self, name: str) -> bool:
        return any(m.name == name for m in self.models)

    def to_wire(self) -> dict[str, Any]:
        return {
            "models": [m.to_wire() for m in self.models],
            "service_s": dict(self.service_s),
            "queued_s": self.queued_s,
            "free_slots": self.free_slots,
            "role": self.role,
            "slots": self.slots,
        }


@dataclass(frozen=True, slots=True)
class Hearsay:
    """One node's word on another: at this address, last heard from ``age_s`` ago."""

    name: str
    id: str
    incarnation: int
    host: str
    rpc_port: int
    state: MemberState
    age_s: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "incarnation": self.incarnation,
            "host": self.host,
            "rpc_port": self.rpc_port,
            "state": str(self.state),
            "age_s": self.age_s,
        }


@dataclass(frozen=True, slots=True)
class Holding:
    """What a node holds for other owners, so that each owner can take back at
    once what it believes is held there but is not (a lost grant reply, jobs
    dropped by a holder that took their owner for dead).

    ``asks``: every steal this node asked with a number up to ``asks`` is
    settled (answered or given up; a late answer is dropped), so a grant for
    such an ask is either listed in ``jobs`` or lost. ``jobs``: by owner id,
    the ``(seq, epoch)`` of each request held (queued or running).
    """

    asks: int
    jobs: Mapping[str, tuple[tuple[int, int], ...]]

    def to_wire(self) -> dict[str, Any]:
        return {
            "asks": self.asks,
            "jobs": {owner: [list(pair) for pair in pairs] for owner, pairs in self.jobs.items()},
        }


@dataclass(frozen=True, slots=True)
class Gossip:
    """What one node says about itself, and its view of the others.

    ``host`` None asks the receiver to use the connection's peer address, which
    is what a node listening on a wildcard address should send.
    """

    name: str
    id: str
    incarnation: int
    host: str | None
    rpc_port: int
    http_port: int | None
    mesh_id: str
    load: Load
    members: tuple[Hearsay, ...] = ()
    # None from a node that does not report (an older version).
    holding: Holding | None = None

    def to_wire(self) -> dict[str, Any]:
        """The single parameter of the ``gossip`` notification."""
        wire: dict[str, Any] = {
            "name": self.name,
            "id": self.id,
            "incarnation": self.incarnation,
            "host": self.host,
            "rpc_port": self.rpc_port,
            "http_port": self.http_port,
            "mesh_id": self.mesh_id,
            "load": self.load.to_wire(),
            "members": [h.to_wire() for h in self.members],
        }
        if self.holding is not None:
            wire["holding"] = self.holding.to_wire()
        return wire


# --- parsing gossip --------------------------------------------------------------


def parse_gossip(params: list[Any]) -> Gossip:
    """Check a ``gossip`` notification's params (``[map]``) field by field.

    Raises :class:`BadRequest` naming the field and what was expected. Keys
    this version does not know are ignored, so a newer node may add fields
    without cutting itself off from older ones during a rolling upgrade.
    """
    if not isinstance(params, (list, tuple)) or len(params) != 1:
        count = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise BadRequest(f"gossip takes one parameter, a map; got {count}")
    body = _map(params[0], "gossip")
    members = _list(_get(body, "members", ""), "members", MAX_MEMBERS)
    hearsay = tuple(_quick_hearsay(entry, i) for i, entry in enumerate(members))
    _no_duplicates([h.name for h in hearsay], "members")
    http_port = _get(body, "http_port", "")
    host = _get(body, "host", "")
    return Gossip(
        name=_text(_get(body, "name", ""), "name"),
        id=_text(_get(body, "id", ""), "id"),
        incarnation=_int(_get(body, "incarnation", ""), "incarnation", 0, _MAX_INCARNATION),
        host=None if host is None else _host(host, "host"),
        rpc_port=_int(_get(body, "rpc_port", ""), "rpc_port", 1, 65535),
        http_port=None if http_port is None else _int(http_port, "http_port", 1, 65535),
        mesh_id=_text(_get(body, "mesh_id", ""), "mesh_id"),
        load=_load(_get(body, "load", "")),
        members=hearsay,
        holding=None if body.get("holding") is None else _holding_report(body["holding"]),
    )


def _holding_report(value: object) -> Holding:
    body = _map(value, "holding")
    asks = _int(_get(body, "asks", "holding."), "holding.asks", 0, _MAX_SEQ)
    owners = _map(_get(body, "jobs", "holding."), "holding.jobs")
    if len(owners) > MAX_MEMBERS:
        raise BadRequest(
            f"gossip: holding.jobs must name at most {MAX_MEMBERS} owners, got {len(owners)}"
        )
    jobs: dict[str, tuple[tuple[int, int], ...]] = {}
    total = 0
    for owner, raw in owners.items():
        owner_id = _text(owner, "holding.jobs key")
        path = f"holding.jobs[{_show(owner_id)}]"
        pairs = _list(raw, path, MAX_HELD)
        total += len(pairs)
        if total > MAX_HELD:
            raise BadRequest(f"gossip: holding.jobs must list at most {MAX_HELD} requests")
        jobs[owner_id] = tuple(_seq_epoch(pair, f"{path}[{i}]") for i, pair in enumerate(pairs))
    return Holding(asks=asks, jobs=jobs)


def _seq_epoch(value: object, path: str) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _bad(path, "a [seq, epoch] pair", value)
    return _int(value[0], path + ".seq", 0, _MAX_SEQ), _int(value[1], path + ".epoch", 0, _MAX_SEQ)


def _load(value: object) -> Load:
    body = _map(value, "load")
    models = _list(_get(body, "models", "load."), "load.models", MAX_MODELS)
    holdings = tuple(_holding(m, f"load.models[{i}]") for i, m in enumerate(models))
    # One entry per version: a name may repeat, a (name, sha256) pair may not.
    versions: set[tuple[str, str]] = set()
    for h in holdings:
        if (h.name, h.sha256) in versions:
            raise BadRequest(
                f"gossip: load.models names {_show(h.name)} twice at sha256 {h.sha256[:12]}"
            )
        versions.add((h.name, h.sha256))
    service = _map(_get(body, "service_s", "load."), "load.service_s")
    if len(service) > MAX_MODELS:
        raise BadRequest(
            f"gossip: load.service_s must have at most {MAX_MODELS} entries, got {len(service)}"
        )
    service_s: dict[str, float] = {}
    for model, seconds in service.items():
        name = _model_name(model, "load.service_s key")
        service_s[name] = _seconds(seconds, f"load.service_s[{name!r}]")
    role = _get(body, "role", "load.")
    if not isinstance(role, str) or not _ROLE_RE.fullmatch(role):
        raise _bad("load.role", "a short lower-case word such as 'node' or 'gateway'", role)
    return Load(
        models=holdings,
        service_s=service_s,
        queued_s=_seconds(_get(body, "queued_s", "load."), "load.queued_s"),
        free_slots=_int(_get(body, "free_slots", "load."), "load.free_slots", 0, MAX_SLOTS),
        role=role,
        slots=_int(body.get("slots", 1), "load.slots", 1, MAX_SLOTS),
    )


def _holding(value: object, path: str) -> ModelHolding:
    body = _map(value, path)
    sha256 = _get(body, "sha256", path + ".")
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise _bad(path + ".sha256", "64 lower-case hex digits", sha256)
    version = body.get("version")
    if version is not None and not (isinstance(version, str) and _VERSION_RE.fullmatch(version)):
        raise _bad(path + ".version", "a version label such as '1' (up to 32 characters)", version)
    return ModelHolding(
        name=_model_name(_get(body, "name", path + "."), path + ".name"),
        sha256=sha256,
        version=version,
    )


_STATE_BY_TEXT = {str(state): state for state in MemberState}


def _quick_hearsay(value: object, index: int) -> Hearsay:
    """One digest entry, checked on a fast path; :func:`_hearsay` explains any failure.

    Every node parses N - 1 entries from each of N - 1 peers every round, so
    this runs N² times a round across the mesh. The fast path accepts only
    what :func:`_hearsay` accepts; anything else goes there for its message.
    """
    if type(value) is dict:
        name, id_, incarnation = value.get("name"), value.get("id"), value.get("incarnation")
        host, port, age = value.get("host"), value.get("rpc_port"), value.get("age_s")
        raw_state = value.get("state")
        state = _STATE_BY_TEXT.get(raw_state) if type(raw_state) is str else None
        if (
            state is not None
            and type(name) is str
            and 0 < len(name) <= MAX_TEXT
            and name.isprintable()
            and type(id_) is str
            and 0 < len(id_) <= MAX_TEXT
            and id_.isprintable()
            and type(incarnation) is int
            and 0 <= incarnation <= _MAX_INCARNATION
            and type(host) is str
            and host not in _UNSPECIFIED_HOSTS
            and _HOST_RE.fullmatch(host) is not None
            and type(port) is int
            and 1 <= port <= 65535
            and isinstance(age, (float, int))
            and not isinstance(age, bool)
            and math.isfinite(age)
            and 0 <= age <= MAX_SECONDS
        ):
            return Hearsay(name, id_, incarnation, host, port, state, float(age))
    return _hearsay(value, f"members[{index}]")


def _hearsay(value: object, path: str) -> Hearsay:
    body = _map(value, path)
    state = _get(body, "state", path + ".")
    if not isinstance(state, str) or state not in _STATES:
        raise _bad(path + ".state", f"one of {[str(s) for s in MemberState]}", state)
    return Hearsay(
        name=_text(_get(body, "name", path + "."), path + ".name"),
        id=_text(_get(body, "id", path + "."), path + ".id"),
        incarnation=_int(
            _get(body, "incarnation", path + "."), path + ".incarnation", 0, _MAX_INCARNATION
        ),
        host=_host(_get(body, "host", path + "."), path + ".host"),
        rpc_port=_int(_get(body, "rpc_port", path + "."), path + ".rpc_port", 1, 65535),
        state=MemberState(state),
        age_s=_seconds(_get(body, "age_s", path + "."), path + ".age_s"),
    )


def _show(value: object) -> str:
    # A hostile peer's 1 MB string must not become a 1 MB log line.
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(path: str, expected: str, value: object) -> BadRequest:
    return BadRequest(f"gossip: {path} must be {expected}, got {_show(value)}")


def _get(body: Mapping[Any, Any], key: str, prefix: str) -> Any:
    if key not in body:
        raise BadRequest(f"gossip: {prefix}{key} is missing")
    return body[key]


def _map(value: object, path: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise _bad(path, "a map", value)
    return value


def _list(value: object, path: str, limit: int) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise _bad(path, "a list", value)
    if len(value) > limit:
        raise BadRequest(f"gossip: {path} must have at most {limit} entries, got {len(value)}")
    return value


def _no_duplicates(names: list[str], path: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadRequest(f"gossip: {path} names {_show(name)} twice")
        seen.add(name)


def _text(value: object, path: str) -> str:
    # Printable only: names and ids end up in log lines and status tables.
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT or not value.isprintable():
        raise _bad(path, f"a printable string of 1..{MAX_TEXT} characters", value)
    return value


def _model_name(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "a model name", value)
    try:
        check_model_name(value)
    except ConfigError:
        raise _bad(path, "a model name (letters, digits, '.', '_', '-'; 1..128)", value) from None
    return value


def _host(value: object, path: str) -> str:
    if not isinstance(value, str) or not _HOST_RE.fullmatch(value):
        raise _bad(path, "an IP address or host name", value)
    if value in _UNSPECIFIED_HOSTS:
        raise _bad(path, "an address one can connect to, not a wildcard", value)
    return value


def _int(value: object, path: str, low: int, high: int) -> int:
    # bool is an int to Python but never a count or a port on the wire.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(path, f"an integer in {low}..{high}", value)
    return value


def _seconds(value: object, path: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= MAX_SECONDS
    ):
        raise _bad(path, f"a number of seconds in 0..{MAX_SECONDS:g}", value)
    return float(value)

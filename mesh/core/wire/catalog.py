"""Which models are where: the ``models`` call's scope, the mesh view, the V2 repository index.

``models()`` (or ``models([{"scope": "local"}])``) answers, as it always
did, the list of this node's model signatures. ``models([{"scope": "mesh"}])``
answers ``{"models": [entry, ...], "gateway": None | {"url", "error"}}``:
one entry ``{"name", "sha256", "where", "node"}`` per model and place, where
``where`` is ``"here"`` (``node`` is this node's name, and the entry carries
the whole signature as the local reply does), ``"peer"`` (``node`` names a
live peer, as gossip tells) or ``"gateway"`` (``node`` is the gateway's URL;
``sha256`` is None, the Open Inference Protocol does not say). ``gateway``
is None without a gateway; its ``error`` says why the gateway's models could
not be listed (then none of its entries are there), None when they were.

The Open Inference Protocol's repository extension lists a server's models
with ``POST /v2/repository/index``; this module parses its body and its
reply, so that the HTTP server and the node's gateway client share one reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mesh.core.membership.gossip import ModelHolding
from mesh.errors import BadRequest, ProtocolError

__all__ = [
    "SCOPES",
    "WHERE",
    "GatewayModels",
    "IndexEntry",
    "Scope",
    "index_entries",
    "mesh_view",
    "parse_index_reply",
    "parse_index_request",
    "parse_models_params",
]

Scope = Literal["local", "mesh"]
SCOPES: tuple[Scope, ...] = ("local", "mesh")
WHERE = ("here", "peer", "gateway")
"""The places a model can be, nearest first (the order ties are broken in)."""
_OPTIONS = ("scope",)
_READY = "READY"


def parse_models_params(params: Sequence[Any]) -> Scope:
    """The scope a ``models`` call asks for: none or ``[{"scope": ...}]``; BadRequest otherwise."""
    if not params:
        return "local"
    if len(params) > 1:
        raise BadRequest(
            f"models takes at most one parameter, an options map such as "
            f'{{"scope": "mesh"}}; got {len(params)}'
        )
    options = params[0]
    if not isinstance(options, Mapping):
        raise BadRequest(
            f'models: options must be a map such as {{"scope": "mesh"}}, '
            f"got {type(options).__name__}"
        )
    unknown = sorted(str(k) for k in options if k not in _OPTIONS)
    if unknown:
        raise BadRequest(
            f"models: unknown option(s) {', '.join(repr(k) for k in unknown)}; "
            f"accepted: {', '.join(repr(k) for k in _OPTIONS)}"
        )
    scope = options.get("scope", "local")
    if scope not in SCOPES:
        raise BadRequest(
            f"models: scope must be {' or '.join(repr(s) for s in SCOPES)}, got {scope!r}"
        )
    return "mesh" if scope == "mesh" else "local"


@dataclass(frozen=True, slots=True)
class GatewayModels:
    """What the gateway said it serves: its names, or why it could not say."""

    url: str
    names: tuple[str, ...] = ()
    error: str | None = None


def mesh_view(
    *,
    here: str,
    local: Iterable[Mapping[str, Any]],
    peers: Mapping[str, Iterable[ModelHolding]],
    gateway: GatewayModels | None,
) -> dict[str, Any]:
    """The ``models([{"scope": "mesh"}])`` reply, sorted by name, then place, then node.

    ``local`` are this node's signatures (``ModelSpec.to_wire()``), ``peers``
    each live peer's holdings by the peer's name.
    """
    entries: list[dict[str, Any]] = [{**spec, "where": "here", "node": here} for spec in local]
    for peer, holdings in peers.items():
        entries.extend(
            {
                "name": h.name,
                # A peer says which version each file is (older peers do not).
                **({} if h.version is None else {"version": h.version}),
                "sha256": h.sha256,
                "where": "peer",
                "node": peer,
            }
            for h in holdings
        )
    if gateway is not None:
        entries.extend(
            {"name": name, "sha256": None, "where": "gateway", "node": gateway.url}
            for name in dict.fromkeys(gateway.names)
        )
    entries.sort(key=lambda e: (e["name"], WHERE.index(e["where"]), e["node"]))
    return {
        "models": entries,
        "gateway": None if gateway is None else {"url": gateway.url, "error": gateway.error},
    }


# --- the Open Inference Protocol's repository index ------------------------------------


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One model of a repository index; ``version`` None when the server does not say."""

    name: str
    version: str | None = None

    def to_json(self) -> dict[str, str]:
        """``{"name", "version"?, "state": "READY"}``: edgemesh lists only what it serves now."""
        entry = {"name": self.name}
        if self.version is not None:
            entry["version"] = self.version
        entry["state"] = _READY
        return entry


def parse_index_request(body: bytes) -> bool:
    """The ``ready`` flag of an index request (``{}``, ``{"ready": true}``, or no body).

    Unknown keys are ignored, as V2 asks; a body that is not a JSON object,
    or a ``ready`` that is not a boolean, is BadRequest.
    """
    if not body.strip():
        return False
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"repository index: the body is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise BadRequest(
            f'repository index: the body must be a JSON object such as {{"ready": true}}, '
            f"got {type(obj).__name__}"
        )
    ready = obj.get("ready", False)
    if not isinstance(ready, bool):
        raise BadRequest(f"repository index: 'ready' must be true or false, got {ready!r}")
    return ready


def index_entries(entries: Iterable[IndexEntry]) -> list[dict[str, str]]:
    """The index reply: one entry per name (the first wins), sorted by name."""
    unique: dict[str, IndexEntry] = {}
    for entry in entries:
        unique.setdefault(entry.name, entry)
    return [unique[name].to_json() for name in sorted(unique)]


def parse_index_reply(obj: object) -> tuple[IndexEntry, ...]:
    """The ready models of a server's index reply; ProtocolError if it is not an index.

    Entries without a ``state`` count as ready (some servers leave it out);
    others (``UNAVAILABLE``, ``LOADING``) are left out.
    """
    if not isinstance(obj, list):
        raise ProtocolError(f"a repository index is a JSON list, got {type(obj).__name__}")
    entries = []
    for index, item in enumerate(obj):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"repository index entry {index} has no string 'name'")
        state = item.get("state")
        if state is not None and state != _READY:
            continue
        version = item.get("version")
        entries.append(IndexEntry(item["name"], None if version is None else str(version)))
    return tuple(entries)

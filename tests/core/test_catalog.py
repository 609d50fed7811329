"""Which models are where: the ``models`` call's scope, the mesh view and the V2 index."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.core.membership.gossip import ModelHolding
from mesh.core.wire.catalog import (
    GatewayModels,
    IndexEntry,
    index_entries,
    mesh_view,
    parse_index_reply,
    parse_index_request,
    parse_models_params,
)
from mesh.errors import BadRequest, ProtocolError

A = "a" * 64
B = "b" * 64


@pytest.mark.parametrize(
    ("params", "scope"),
    [
        ([], "local"),
        ([{}], "local"),
        ([{"scope": "local"}], "local"),
        ([{"scope": "mesh"}], "mesh"),
    ],
)
def test_models_scope(params: list[Any], scope: str) -> None:
    assert parse_models_params(params) == scope


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            [{"scope": "world"}],
            "models: scope must be 'local' or 'mesh', got 'world'",
        ),
        ([{"scope": None}], "models: scope must be 'local' or 'mesh', got None"),
        (
            [{"scope": "mesh", "deep": True}],
            "models: unknown option(s) 'deep'; accepted: 'scope'",
        ),
        (["mesh"], 'models: options must be a map such as {"scope": "mesh"}, got str'),
        (
            [{}, {}],
            'models takes at most one parameter, an options map such as {"scope": "mesh"}; got 2',
        ),
    ],
)
def test_models_scope_refused(params: list[Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_models_params(params)
    assert caught.value.message == message


def test_mesh_view_marks_each_place_and_sorts_by_name_then_place() -> None:
    local = [{"name": "m", "sha256": A, "version": "1", "inputs": [], "outputs": []}]
    peers = {
        "p2": (ModelHolding("m", A), ModelHolding("big", B)),
        "p1": (ModelHolding("m", A),),
    }
    view = mesh_view(
        here="me",
        local=local,
        peers=peers,
        gateway=GatewayModels("http://gw:8000", names=("big", "m", "big")),
    )
    assert [(e["name"], e["where"], e["node"], e["sha256"]) for e in view["models"]] == [
        ("big", "peer", "p2", B),
        ("big", "gateway", "http://gw:8000", None),
        ("m", "here", "me", A),
        ("m", "peer", "p1", A),
        ("m", "peer", "p2", A),
        ("m", "gateway", "http://gw:8000", None),
    ]
    # The models here keep their whole signature.
    assert view["models"][2]["version"] == "1" and view["models"][2]["inputs"] == []
    assert view["gateway"] == {"url": "http://gw:8000", "error": None}


def test_mesh_view_without_a_gateway_or_with_one_that_did_not_say() -> None:
    assert mesh_view(here="me", local=[], peers={}, gateway=None) == {
        "models": [],
        "gateway": None,
    }
    failed = GatewayModels("http://gw:8000", error="connection refused")
    assert mesh_view(here="me", local=[], peers={}, gateway=failed) == {
        "models": [],
        "gateway": {"url": "http://gw:8000", "error": "connection refused"},
    }


@pytest.mark.parametrize(
    ("body", "ready"),
    [
        (b"", False),
        (b"{}", False),
        (b'{"ready": true}', True),
        (b'{"ready": false, "x": 1}', False),
    ],
)
def test_index_request(body: bytes, ready: bool) -> None:
    assert parse_index_request(body) is ready


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b"[]",
            'repository index: the body must be a JSON object such as {"ready": true}, got list',
        ),
        (b'{"ready": "yes"}', "repository index: 'ready' must be true or false, got 'yes'"),
        (b"{", "repository index: the body is not JSON"),
    ],
)
def test_index_request_refused(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_index_request(body)
    assert caught.value.message.startswith(message)


def test_index_entries_one_per_name_sorted_and_ready() -> None:
    entries = [IndexEntry("m", "2"), IndexEntry("a"), IndexEntry("m", None)]
    assert index_entries(entries) == [
        {"name": "a", "state": "READY"},
        {"name": "m", "version": "2", "state": "READY"},
    ]


def test_index_reply_keeps_ready_models() -> None:
    reply = [
        {"name": "a", "version": "1", "state": "READY"},
        {"name": "b"},
        {"name": "c", "state": "UNAVAILABLE", "reason": "unloaded"},
        {"name": "d", "version": 3},
    ]
    assert parse_index_reply(reply) == (
        IndexEntry("a", "1"),
        IndexEntry("b"),
        IndexEntry("d", "3"),
    )


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ({"models": []}, "a repository index is a JSON list, got dict"),
        ([{"version": "1"}], "repository index entry 0 has no string 'name'"),
        (["a"], "repository index entry 0 has no string 'name'"),
    ],
)
def test_index_reply_refused(reply: object, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_index_reply(reply)
    assert caught.value.message == message

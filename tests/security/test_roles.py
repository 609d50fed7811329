"""Roles (issue 19): the handshake says node or client, and a client cannot use peers' methods.

Against real nodes on 127.0.0.1: a client holding the mesh key, a plain
msgpack-RPC client of an open node (no handshake at all: a client), and a
device holding only the node's client key (--client-key-file). The
transcript that binds a role into both proofs is checked in memory.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh.config import load_node_config
from mesh.core.membership.gossip import Gossip, Load
from mesh.core.wire import auth
from mesh.errors import AuthError, BadRequest, ConfigError, Forbidden
from mesh.node.node import Node
from mesh.rpc import RpcClient
from mesh.sdk.client import MeshClient
from mesh.sdk.sync import Client
from tests.helpers.nodes import node_config, running_node
from tests.helpers.raw_rpc import RawConnection

pytestmark = pytest.mark.timeout(60)

KEY = b"roles-test-mesh-key-0123456789abcdef"
CLIENT_KEY = b"roles-test-client-key-0123456789abc"
NONCE_C = b"c" * 32
NONCE_S = b"s" * 32
# Every peer method; a well-formed enough call to reach the role check.
PEER_CALLS = [("steal", [{"thief": "x"}])]
PEER_NOTIFICATIONS = ["gossip", "result", "handoff", "cancel", "nudge", "giveback", "leaving"]


def gossip_from(name: str, node: Node) -> list[Any]:
    """Well-formed gossip of our mesh, in ``name``'s name."""
    load = Load(models=(), service_s={}, queued_s=0.0, free_slots=1, role="edge")
    gossip = Gossip(
        name=name,
        id="forged-id",
        incarnation=1,
        host=None,
        rpc_port=9,
        http_port=None,
        mesh_id=node.mesh_id,
        load=load,
    )
    return [gossip.to_wire()]


async def test_a_client_with_the_mesh_key_cannot_call_peer_methods(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with (
        running_node(node_config(mesh_key=KEY)) as node,
        RpcClient("127.0.0.1", node.port, key=KEY) as client,
    ):
        for method, params in PEER_CALLS:
            with pytest.raises(Forbidden, match=r"for mesh nodes only.*a client"):
                await client.call(method, params)
        for method in PEER_NOTIFICATIONS:
            client.connection.notify(method, gossip_from("evil", node))
        # What a client may do, it still can.
        assert await client.call("ping", []) == "pong"
        assert isinstance(await client.call("status", []), dict)
        assert await client.call("models", [])
        assert node.status()["peers"] == []
    ignored = [r for r in caplog.records if "not a node" in r.getMessage()]
    assert len(ignored) == 1  # logged once per connection, not once per message


async def test_a_plain_client_of_an_open_node_infers_but_cannot_steal() -> None:
    async with running_node() as node:
        raw = await RawConnection.open(node.port)
        try:
            x = np.zeros((1, 64), dtype=np.float32)
            tensor = {"dtype": "<f4", "shape": [1, 64], "data": x.tobytes()}
            infer = await raw.call(1, "infer", ["digits-small", {"X": tensor}])
            assert infer[2] is None, infer
            assert (await raw.call(2, "ping", []))[3] == "pong"
            steal = await raw.call(3, "steal", [{"thief": "x"}])
            assert steal[2][0] == "Forbidden"
            assert "role 'node'" in steal[2][1]
        finally:
            await raw.close()


async def test_a_node_cannot_gossip_in_another_nodes_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with (
        running_node(node_config(mesh_key=KEY)) as node,
        RpcClient("127.0.0.1", node.port, key=KEY, role="node", name="honest") as peer,
    ):
        peer.connection.notify("gossip", gossip_from("someone-else", node))
        assert await peer.call("ping", []) == "pong"
        assert node.status()["peers"] == []
    assert any("its handshake named it honest" in r.getMessage() for r in caplog.records)


async def test_a_client_key_uses_the_mesh_but_cannot_join_or_drain_it() -> None:
    config = node_config(mesh_key=KEY, client_key=CLIENT_KEY)
    async with running_node(config) as node:
        async with MeshClient(f"127.0.0.1:{node.port}", mesh_key=CLIENT_KEY) as device:
            answer = await device.infer("digits-small", {"X": np.zeros((1, 64), np.float32)})
            assert answer.ran_on == node.config.name
        async with RpcClient("127.0.0.1", node.port, key=CLIENT_KEY) as device_rpc:
            assert device_rpc.connection.sealed
            with pytest.raises(Forbidden):
                await device_rpc.call("steal", [{"thief": "x"}])
            with pytest.raises(Forbidden, match="drain needs the mesh key"):
                await device_rpc.call("drain", [])
            with pytest.raises(Forbidden, match="reload needs the mesh key"):
                await device_rpc.call("reload", [])
        posing = RpcClient("127.0.0.1", node.port, key=CLIENT_KEY, role="node", name="n9")
        with pytest.raises(Forbidden, match="cannot join the mesh as a node"):
            await posing.connect()
        # The mesh key may still claim the node role.
        async with RpcClient("127.0.0.1", node.port, key=KEY, role="node", name="n9") as member:
            with pytest.raises(BadRequest):  # past the role check, to the ask's own checks
                await member.call("steal", [{"thief": "n9"}])


def test_a_role_changed_on_the_way_breaks_both_proofs() -> None:
    """Someone in the middle turns a client's hello into a node's: the server's
    proof then covers claims the client never made, and the client refuses it."""
    sent = auth.Claims(role=auth.CLIENT, seal=auth.SEAL_SUITES, version=2)
    server = auth.ServerHandshake(key=KEY, server_nonce=NONCE_S)
    first = server.hello(
        [{"nonce": NONCE_C, "role": "node", "name": "mallory", "seal": list(auth.SEAL_SUITES)}]
    )
    binds = auth.transcript(sent, str(first["seal"]))
    with pytest.raises(AuthError, match="could not prove"):
        auth.verify_server_proof(KEY, NONCE_C, NONCE_S, first["proof"], binds)
    # And the client's proof, made over what it sent, does not pass the server.
    with pytest.raises(AuthError, match="mismatch"):
        server.hello([{"proof": auth.client_proof(KEY, NONCE_C, NONCE_S, binds)}])


def test_stripping_the_sealing_offer_breaks_the_proofs() -> None:
    sent = auth.Claims(role=auth.CLIENT, seal=auth.SEAL_SUITES, version=2)
    server = auth.ServerHandshake(key=KEY, server_nonce=NONCE_S)
    first = server.hello([{"nonce": NONCE_C, "role": "client", "seal": []}])
    assert first["seal"] == auth.SEAL_NONE
    binds = auth.transcript(sent, auth.SEAL_NONE)
    with pytest.raises(AuthError):
        auth.verify_server_proof(KEY, NONCE_C, NONCE_S, first["proof"], binds)


@pytest.mark.parametrize(
    ("hello", "role", "seal"),
    [
        ({}, auth.CLIENT, auth.SEAL_NONE),  # version 1: a client, plain
        ({"role": "client", "seal": list(auth.SEAL_SUITES)}, auth.CLIENT, "aes-256-gcm"),
        ({"role": "client", "seal": ["chacha20-poly1305"]}, auth.CLIENT, "chacha20-poly1305"),
        ({"role": "node", "name": "n1", "seal": ["rot13"]}, auth.NODE, auth.SEAL_NONE),
    ],
    ids=["v1", "client-sealed", "chacha-only", "node-no-common-suite"],
)
def test_the_session_says_who_the_caller_is_and_how_it_is_sealed(
    hello: dict[str, Any], role: str, seal: str
) -> None:
    server = auth.ServerHandshake(key=KEY, server_nonce=NONCE_S)
    claims = auth.parse_claims(hello)
    first = server.hello([{"nonce": NONCE_C, **hello}])
    binds = auth.transcript(claims, seal)
    auth.verify_server_proof(KEY, NONCE_C, NONCE_S, first["proof"], binds)
    assert server.hello([{"proof": auth.client_proof(KEY, NONCE_C, NONCE_S, binds)}]) == {
        "auth": "ok"
    }
    assert (server.session.role, server.session.seal) == (role, seal)
    assert server.session.name == hello.get("name", "")


@pytest.mark.parametrize(
    "hello",
    [
        {"role": "admin"},
        {"role": "node"},  # a node without a name
        {"role": "client", "name": "bad\nname"},
        {"role": "client", "seal": "aes-256-gcm"},
        {"role": "client", "key_id": 7},
    ],
    ids=["unknown-role", "nameless-node", "control-chars", "offer-not-a-list", "key-id-int"],
)
def test_malformed_claims_are_a_bad_request(hello: dict[str, Any]) -> None:
    server = auth.ServerHandshake(key=KEY, server_nonce=NONCE_S)
    with pytest.raises(BadRequest, match="hello:"):
        server.hello([{"nonce": NONCE_C, **hello}])


def test_a_client_key_file_is_read_checked_and_needs_a_mesh_key(tmp_path: Path) -> None:
    mesh_file, client_file = tmp_path / "mesh.key", tmp_path / "client.key"
    mesh_file.write_bytes(KEY + b"\n")
    client_file.write_bytes(CLIENT_KEY + b"\n")
    env = {"EDGEMESH_CLIENT_KEY_FILE": str(client_file), "EDGEMESH_SEAL": "false"}
    config = load_node_config({"mesh_key_file": str(mesh_file)}, env)
    assert (config.client_key, config.rpc.seal) == (CLIENT_KEY, False)
    assert load_node_config({"mesh_key_file": str(mesh_file)}, {}).rpc.seal
    with pytest.raises(ConfigError, match="needs a mesh key"):
        load_node_config({"client_key_file": str(client_file)}, {})
    with pytest.raises(ConfigError, match="holds the mesh key itself"):
        load_node_config({"mesh_key_file": str(mesh_file), "client_key_file": str(mesh_file)}, {})


async def test_the_blocking_client_uses_a_client_key_over_a_sealed_link() -> None:
    config = node_config(mesh_key=KEY, client_key=CLIENT_KEY)
    async with running_node(config) as node:

        def use(seal: bool) -> str:
            with Client(f"127.0.0.1:{node.port}", mesh_key=CLIENT_KEY, seal=seal) as client:
                answer = client.infer("digits-small", {"X": np.zeros((1, 64), np.float32)})
                return answer.ran_on

        assert await asyncio.to_thread(use, True) == node.config.name
        assert await asyncio.to_thread(use, False) == node.config.name

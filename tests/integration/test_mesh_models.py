"""``models`` shows what a node can route to, and where: here, on a peer, on the gateway.

Two nodes in one event loop on 127.0.0.1, ``n0`` (digits-small, with a real
gateway serving digits-large) and ``n1`` (cnn-heavy); the views are read
over msgpack-RPC, the SDK, Open Inference Protocol's repository index and
the ``edgemesh models`` command run as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from mesh import Client, MeshClient, ModelLocation
from mesh.config import GatewayClientConfig, HttpConfig, RuntimeConfig
from mesh.gateway.server import Gateway
from mesh.node.node import Node
from tests.helpers import MODELS_DIR
from tests.helpers.cli import run_edgemesh
from tests.helpers.gateway import gateway_config, misbehaving_server, running_gateway
from tests.helpers.nodes import converged, mesh_node_config, running_node
from tests.helpers.raw_rpc import RawConnection

pytestmark = pytest.mark.timeout(90)


@contextlib.asynccontextmanager
async def two_nodes_and_a_gateway(
    gateway_url: str | None = None,
) -> AsyncIterator[tuple[Node, Node, Gateway]]:
    large = RuntimeConfig(model_dirs=(MODELS_DIR,), model_names=("digits-large",))
    async with contextlib.AsyncExitStack() as stack:
        gateway = await stack.enter_async_context(running_gateway(gateway_config(runtime=large)))
        first = replace(
            mesh_node_config("n0", None, models=("digits-small",)),
            gateway=GatewayClientConfig(url=gateway_url or gateway.url),
            http=HttpConfig(port=0),
        )
        a = await stack.enter_async_context(running_node(first))
        second = replace(
            mesh_node_config("n1", a.port, models=("cnn-heavy",)), http=HttpConfig(port=0)
        )
        b = await stack.enter_async_context(running_node(second))
        await converged((a, b))
        yield a, b, gateway


async def call(node: Node, method: str, params: list[Any]) -> list[Any]:
    """One call on its own connection: [1, msgid, error, result]."""
    connection = await RawConnection.open(node.port)
    try:
        return await connection.call(1, method, params)
    finally:
        await connection.close()


def places(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["name"], e["where"], e["node"]) for e in entries]


async def post_index(port: int, body: object) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/v2/repository/index", json=body) as response,
    ):
        return response.status, await response.json()


async def test_the_mesh_view_lists_each_model_where_it_is() -> None:
    async with two_nodes_and_a_gateway() as (a, b, gateway):
        reply = await call(a, "models", [{"scope": "mesh"}])
        assert reply[2] is None, reply
        view = reply[3]
        assert places(view["models"]) == [
            ("cnn-heavy", "peer", "n1"),
            ("digits-large", "gateway", gateway.url),
            ("digits-small", "here", "n0"),
        ]
        assert view["gateway"] == {"url": gateway.url, "error": None}
        here = view["models"][2]
        assert here["sha256"] == a.runtime.spec("digits-small").sha256
        assert here["inputs"][0]["name"] == "X"  # the whole signature, as models() gives it
        assert view["models"][0]["sha256"] == b.runtime.spec("cnn-heavy").sha256
        assert view["models"][1]["sha256"] is None

        # n1 has no gateway: its view says so, and lists n0's model as a peer's.
        reply = await call(b, "models", [{"scope": "mesh"}])
        assert places(reply[3]["models"]) == [
            ("cnn-heavy", "here", "n1"),
            ("digits-small", "peer", "n0"),
        ]
        assert reply[3]["gateway"] is None

        # The SDK reads the same view.
        async with MeshClient([f"127.0.0.1:{a.port}"]) as client:
            located = await client.mesh_models()
        assert [(m.name, m.where, m.node) for m in located] == places(view["models"])
        assert located[2].info is not None and located[2].info.name == "digits-small"
        assert isinstance(located[0], ModelLocation) and located[0].info is None
        assert located.gateway == gateway.url and located.gateway_error is None

        # And the blocking Client (its own loop, in a thread: ours serves the nodes).
        def blocking() -> list[tuple[str, str, str]]:
            with Client(f"127.0.0.1:{a.port}") as client:
                return [(m.name, m.where, m.node) for m in client.mesh_models()]

        assert await asyncio.to_thread(blocking) == places(view["models"])


async def test_models_without_params_is_unchanged_and_bad_options_are_refused() -> None:
    async with two_nodes_and_a_gateway() as (a, _, _):
        reply = await call(a, "models", [])
        assert reply[2] is None
        assert reply[3] == [a.runtime.spec("digits-small").to_wire()]
        assert (await call(a, "models", [{"scope": "local"}]))[3] == reply[3]

        refused = await call(a, "models", [{"scope": "world"}])
        assert refused[2] == ["BadRequest", "models: scope must be 'local' or 'mesh', got 'world'"]
        refused = await call(a, "models", [{"where": "mesh"}])
        assert refused[2] == ["BadRequest", "models: unknown option(s) 'where'; accepted: 'scope'"]


async def test_a_gateway_that_keeps_no_index_leaves_its_models_unknown() -> None:
    async with (
        misbehaving_server() as (url, _),
        two_nodes_and_a_gateway(gateway_url=url) as (a, _, _),
    ):
        view = (await call(a, "models", [{"scope": "mesh"}]))[3]
        assert places(view["models"]) == [
            ("cnn-heavy", "peer", "n1"),
            ("digits-small", "here", "n0"),
        ]
        assert view["gateway"] == {
            "url": url,
            "error": "the gateway does not list its models (no repository index: HTTP 404)",
        }


async def test_the_repository_index_over_http() -> None:
    async with two_nodes_and_a_gateway() as (a, b, gateway):
        assert await post_index(gateway.port, {}) == (
            200,
            [{"name": "digits-large", "version": "1", "state": "READY"}],
        )
        assert await post_index(gateway.port, {"ready": True}) == (
            200,
            [{"name": "digits-large", "version": "1", "state": "READY"}],
        )
        status, body = await post_index(gateway.port, {"ready": "yes"})
        assert status == 400 and body["code"] == "BadRequest"

        # A node lists what it can route to: its own versions and its peers'
        # (gossip says which version each file is); the gateway's without one.
        version = a.runtime.spec("digits-small").version
        assert a.http_port is not None and b.http_port is not None
        assert await post_index(a.http_port, {}) == (
            200,
            [
                {
                    "name": "cnn-heavy",
                    "version": b.runtime.spec("cnn-heavy").version,
                    "state": "READY",
                },
                {"name": "digits-large", "state": "READY"},
                {"name": "digits-small", "version": version, "state": "READY"},
            ],
        )


async def test_the_models_command_shows_where_each_model_is() -> None:
    async with two_nodes_and_a_gateway() as (a, _, _):
        node = ("--node", f"127.0.0.1:{a.port}")
        code, out, err = await run_edgemesh("models", *node)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["model", "where", "version", "inputs", "outputs", "sha256"]
        rows = [line.split()[:3] for line in lines[2:]]
        assert rows[0] == ["cnn-heavy", "peer", "n1"]
        assert rows[1][:2] == ["digits-large", "gateway"]
        assert rows[2][:2] == ["digits-small", "here"]
        assert "X float32[-1, 64]" in lines[4]

        code, out, err = await run_edgemesh("models", *node, "--json")
        assert code == 0, err
        assert places(json.loads(out)["models"])[0] == ("cnn-heavy", "peer", "n1")

        # --local is the node's own models, as before.
        code, out, err = await run_edgemesh("models", *node, "--local")
        assert code == 0, err
        assert out.splitlines()[0].split()[:2] == ["model", "version"]
        assert [line.split()[0] for line in out.splitlines()[2:]] == ["digits-small"]


async def test_a_gateway_in_front_of_an_upstream_lists_the_upstreams_index() -> None:
    large = RuntimeConfig(model_dirs=(MODELS_DIR,), model_names=("digits-large",))
    async with (
        running_gateway(gateway_config(runtime=large)) as back,
        running_gateway(
            gateway_config(name="front", upstream=GatewayClientConfig(url=back.url))
        ) as front,
        misbehaving_server() as (bare_url, _),
        running_gateway(
            gateway_config(name="bare", upstream=GatewayClientConfig(url=bare_url))
        ) as bare,
    ):
        assert await post_index(front.port, {}) == (
            200,
            [{"name": "digits-large", "version": "1", "state": "READY"}],
        )
        # An upstream that keeps no index: the models are unknown, never "none".
        status, body = await post_index(bare.port, {})
        assert status == 502 and body["code"] == "MethodNotFound", body

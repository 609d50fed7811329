"""Several nodes in one event loop on 127.0.0.1: forming a mesh, watching it, refusing strangers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from mesh import MeshClient
from mesh.config import MeshConfig, NodeConfig
from mesh.node.node import Node
from tests.helpers import KEY
from tests.helpers.nodes import node_config, running_node
from tests.helpers.raw_rpc import RawConnection

FAST = {"gossip_interval_s": 0.05, "suspect_after_s": 0.4, "dead_after_s": 0.3}


def mesh_node(
    name: str, *, peers: tuple[str, ...] = (), mdns: bool = False, **mesh: Any
) -> NodeConfig:
    return node_config(
        name=name,
        mesh_key=mesh.pop("key", KEY),
        mesh=MeshConfig(
            mdns=mdns,
            interfaces=("127.0.0.1",) if mdns else None,
            peers=peers,
            **{**FAST, **mesh},
        ),
    )


def view(node: Node) -> dict[str, str]:
    """Each peer's state as this node sees it."""
    assert node._membership is not None
    return {p["name"]: p["state"] for p in node._membership.peers_status()}


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        # Polling is the point: the state is another component's, with no event to wait on.
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def nodes(*configs: NodeConfig) -> AsyncIterator[list[Node]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_node(c)) for c in configs]


async def test_a_chain_of_bootstrap_peers_forms_a_full_mesh() -> None:
    async with running_node(mesh_node("a")) as a:  # noqa: SIM117 - c stops first, on purpose
        async with running_node(mesh_node("b", peers=(f"127.0.0.1:{a.port}",))) as b:
            async with running_node(mesh_node("c", peers=(f"127.0.0.1:{b.port}",))) as c:
                await eventually(
                    lambda: (
                        view(a) == {"b": "alive", "c": "alive"}
                        and view(b) == {"a": "alive", "c": "alive"}
                        and view(c) == {"a": "alive", "b": "alive"}
                    )
                )
                async with MeshClient(f"127.0.0.1:{a.port}", mesh_key=KEY) as client:
                    status = await client.status()
                peers = {p["name"]: p for p in status["peers"]}
                assert set(peers) == {"b", "c"}
                assert peers["c"]["address"] == f"127.0.0.1:{c.port}"
                assert "digits-small" in peers["c"]["models"]
            # c stopped: its connections dropped, so it is dead well before the timeouts.
            await eventually(lambda: view(a).get("c") == "dead", timeout=3.0)
            await eventually(lambda: view(b).get("c") == "dead", timeout=3.0)
            assert view(a)["b"] == "alive"


async def test_mdns_on_loopback_forms_a_mesh_with_no_configuration() -> None:
    configs = [mesh_node(name, mdns=True) for name in ("m1", "m2", "m3")]
    async with nodes(*configs) as (m1, m2, m3):
        await eventually(
            lambda: all(
                view(n) == {o: "alive" for o in ("m1", "m2", "m3") if o != n.config.name}
                for n in (m1, m2, m3)
            ),
            timeout=15.0,
        )


async def test_a_node_with_another_key_is_never_used(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with running_node(mesh_node("home")) as home:
        stranger = mesh_node("stranger", peers=(f"127.0.0.1:{home.port}",), key=b"x" * 32)
        async with running_node(stranger) as other:
            await asyncio.sleep(1.0)
            assert view(home) == {}
            assert view(other) == {}
    refusals = [r for r in caplog.records if "refused peer" in r.getMessage()]
    assert len(refusals) == 1  # logged once, not once per attempt


async def test_a_peer_that_accepts_and_never_answers_is_given_up_on() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # hold the connection open, say nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = mesh_node("patient", peers=(f"127.0.0.1:{port}",), connect_timeout_s=0.2)
        async with running_node(config) as node:
            await asyncio.sleep(0.6)
            assert view(node) == {}
            async with MeshClient(f"127.0.0.1:{node.port}", mesh_key=KEY) as client:
                assert await client.ping() > 0  # the event loop was never stalled
    finally:
        server.close()
        await server.wait_closed()


async def test_nonsense_gossip_is_ignored_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_node(mesh_node("target", key=None)) as node:
        raw = await RawConnection.open(node.port)
        # Gossip is a node's: say so, as a node's own links do.
        await raw.call(0, "hello", [{"nonce": b"n" * 32, "role": "node", "name": "tester"}])
        for bad in (
            [{"name": "evil", "incarnation": -1}],
            [{"name": "x" * 10_000}],
            ["not a map"],
            [{"name": "nan", "id": "1", "incarnation": 1, "rpc_port": 99999}],
        ):
            raw.send([2, "gossip", bad])
        assert await raw.call(1, "ping", []) == [1, 1, None, "pong"]
        await raw.close()
        assert view(node) == {}
    bad_gossip = [r for r in caplog.records if "bad gossip" in r.getMessage()]
    assert len(bad_gossip) == 1


async def test_a_node_whose_cpu_is_saturated_is_not_declared_dead() -> None:
    """Default timings; the busy node's inference threads take every core for seconds."""
    defaults: dict[str, Any] = {
        "gossip_interval_s": 0.2,
        "suspect_after_s": 0.8,
        "dead_after_s": 0.6,
    }
    async with running_node(mesh_node("observer", **defaults)) as observer:
        busy_config = mesh_node("busy", peers=(f"127.0.0.1:{observer.port}",), **defaults)
        async with running_node(busy_config) as busy:
            await eventually(lambda: view(observer).get("busy") == "alive")
            seen: set[str] = set()
            images = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
            async with MeshClient(f"127.0.0.1:{busy.port}", mesh_key=KEY) as client:

                async def hammer() -> None:
                    for _ in range(4):
                        await client.infer("cnn-heavy", {"image": images})

                async def watch() -> None:
                    while True:
                        seen.add(view(observer).get("busy", "missing"))
                        await asyncio.sleep(0.05)

                watcher = asyncio.create_task(watch())
                try:
                    await asyncio.gather(*(hammer() for _ in range(6)))
                finally:
                    watcher.cancel()
            assert seen == {"alive"}


async def test_a_node_given_its_own_address_as_peer_does_not_link_to_itself() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = mesh_node("loner", peers=(f"127.0.0.1:{port}",))
    config = dataclasses.replace(config, port=port)
    async with running_node(config) as node:
        await asyncio.sleep(0.5)
        assert view(node) == {}
        assert node._membership is not None
        assert node._membership.stats()["links"] == 0

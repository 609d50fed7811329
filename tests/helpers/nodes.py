"""Real nodes in the test's own event loop, on 127.0.0.1 with free ports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from mesh.config import Emulation, MeshConfig, NodeConfig, RuntimeConfig, WorkConfig
from mesh.node.node import Node
from tests.helpers import MODELS_DIR

__all__ = [
    "SERVICE_MS",
    "converged",
    "counters",
    "crash",
    "mesh_node_config",
    "mesh_of",
    "node_config",
    "running_node",
]

# The emulated service time of mesh_node_config's nodes: long enough that a
# burst queues up and peers have something to steal.
SERVICE_MS = 10.0


def node_config(**overrides: Any) -> NodeConfig:
    """A node config for tests: loopback, a free port, the digits models, no mDNS."""
    settings: dict[str, Any] = {
        "name": "test-node",
        "host": "127.0.0.1",
        "port": 0,
        # Tests never multicast on the machine's interfaces; those that test
        # discovery bind mDNS to 127.0.0.1 themselves.
        "mesh": MeshConfig(mdns=False),
        "runtime": RuntimeConfig(
            model_dirs=(MODELS_DIR,),
            model_names=("digits-small", "cnn-heavy"),
            per_model_concurrency=2,
            executor_threads=2,
        ),
    }
    settings.update(overrides)
    return NodeConfig(**settings)


@contextlib.asynccontextmanager
async def running_node(config: NodeConfig | None = None) -> AsyncIterator[Node]:
    """A Node serving on 127.0.0.1 for the duration of the block."""
    node = Node(config or node_config())
    task = asyncio.create_task(node.run())
    ready = asyncio.create_task(node.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    _RUNS[node] = task
    try:
        yield node
    finally:
        del _RUNS[node]
        node.stop()
        if not task.cancelled():  # crash() cancelled it, or it runs still
            await task


# The task running each node of running_node, so that crash() can end it.
_RUNS: dict[Node, asyncio.Task[None]] = {}


async def crash(node: Node) -> None:
    """End ``node`` as SIGKILL would: every connection it has is reset at once,
    without a word (no answer, no goodbye, nothing buffered sent), and it does
    nothing more. Its peers learn of it only from their own connections.

    Node.stop() would not do: the node then answers what it owes with an
    error and closes its connections in order.
    """
    task = _RUNS[node]
    server, membership = node._server, node._membership
    if server is not None:
        for connection in list(server._connections):
            connection.abort()
    if membership is not None:
        for link in list(membership._links.values()):
            link.connection.abort()
    # Nothing of it runs after this turn of the loop.
    task.cancel()
    await asyncio.wait({task})


def mesh_node_config(
    name: str,
    first_port: int | None,
    *,
    models: Sequence[str] = ("digits-small",),
    speed: float = 1.0,
    steal: bool = True,
) -> Any:
    return node_config(
        name=name,
        mesh=MeshConfig(
            mdns=False,
            peers=() if first_port is None else (f"127.0.0.1:{first_port}",),
            gossip_interval_s=0.05,
        ),
        runtime=RuntimeConfig(
            model_dirs=(MODELS_DIR,),
            model_names=tuple(models),
            per_model_concurrency=1,
            executor_threads=1,
        ),
        work=WorkConfig(
            slots=1, steal=steal, emulation=Emulation(speed=speed, service_ms=SERVICE_MS)
        ),
    )


@contextlib.asynccontextmanager
async def mesh_of(
    specs: Sequence[dict[str, Any]],
) -> AsyncIterator[list[Node]]:
    """Nodes on 127.0.0.1, each bootstrapped from the first, once all see each other."""
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[Node] = []
        for index, spec in enumerate(specs):
            first = nodes[0].port if nodes else None
            config = mesh_node_config(f"n{index}", first, **spec)
            nodes.append(await stack.enter_async_context(running_node(config)))
        await converged(nodes)
        yield nodes


async def converged(nodes: Sequence[Node]) -> None:
    async with asyncio.timeout(10):
        while True:
            views = [node.status()["peers"] for node in nodes]
            if all(
                sum(1 for p in view if p["state"] == "alive" and p["connected"]) == len(nodes) - 1
                for view in views
            ):
                return
            await asyncio.sleep(0.02)


def counters(node: Node) -> dict[str, Any]:
    counted: dict[str, Any] = node.status()["counters"]
    return counted

"""A node's counters add up on their face, over a mixed run, on every node:

    requests  == served + failed + client_gone + in_flight
    offloaded == served_by_gateway + offload_failed + offload_cancelled + offload_in_flight

Three nodes in one event loop on 127.0.0.1: ``a`` (digits-small, with a
real gateway serving digits-large), ``b`` (cnn-heavy, no gateway) and ``c``
(digits-small, with a gateway that fails: the stand-in V2 server, as a real
one never fails on purpose). Clients speak bare msgpack-RPC, so a client
can go away mid-request by closing its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from mesh.config import GatewayClientConfig, RuntimeConfig
from mesh.core.wire.tensors import encode_tensor
from mesh.node.counters import RequestCounters
from mesh.node.node import Node
from tests.helpers import MODELS_DIR
from tests.helpers.gateway import gateway_config, misbehaving_server, running_gateway
from tests.helpers.nodes import converged, counters, mesh_node_config, running_node
from tests.helpers.raw_rpc import RawConnection

pytestmark = pytest.mark.timeout(90)


def digits(rows: int = 1, width: int = 64) -> dict[str, Any]:
    x = np.random.default_rng(rows).random((rows, width), dtype=np.float32)
    return {"X": encode_tensor(x)}


def image() -> dict[str, Any]:
    x = np.zeros((1, 3, 64, 64), np.float32)
    return {"image": encode_tensor(x)}


async def infer(node: Node, *params: Any) -> list[Any]:
    """One infer call on its own connection: [1, msgid, error, result]."""
    connection = await RawConnection.open(node.port)
    try:
        return await connection.call(1, "infer", list(params))
    finally:
        await connection.close()


def error_code(reply: list[Any]) -> str | None:
    return None if reply[2] is None else str(reply[2][0])


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` (counters change with no event to wait on), at most 20 s."""
    for _ in range(2000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"waited 20 s for {what}")


_NAMES = (
    "requests",
    "served",
    "failed",
    "client_gone",
    "in_flight",
    "offloaded",
    "served_by_gateway",
    "offload_failed",
    "offload_cancelled",
    "offload_in_flight",
)


def identities(node: Node) -> tuple[int, int, int, int]:
    # .get: a counter missing from status counts as 0, so the sums are what fails.
    c = {name: counters(node).get(name, 0) for name in _NAMES}
    return (
        c["requests"],
        c["served"] + c["failed"] + c["client_gone"] + c["in_flight"],
        c["offloaded"],
        c["served_by_gateway"]
        + c["offload_failed"]
        + c["offload_cancelled"]
        + c["offload_in_flight"],
    )


def holds(node: Node) -> bool:
    requests, outcomes, offloaded, offload_outcomes = identities(node)
    return requests == outcomes and offloaded == offload_outcomes


async def test_every_identity_holds_on_every_node_over_a_mixed_run() -> None:
    large = RuntimeConfig(model_dirs=(MODELS_DIR,), model_names=("digits-large",))
    async with contextlib.AsyncExitStack() as stack:
        gateway = await stack.enter_async_context(running_gateway(gateway_config(runtime=large)))
        failing_url, _ = await stack.enter_async_context(misbehaving_server())
        a = await stack.enter_async_context(
            running_node(
                replace(mesh_node_config("a", None), gateway=GatewayClientConfig(url=gateway.url))
            )
        )
        b = await stack.enter_async_context(
            running_node(mesh_node_config("b", a.port, models=("cnn-heavy",)))
        )
        c = await stack.enter_async_context(
            running_node(
                replace(mesh_node_config("c", a.port), gateway=GatewayClientConfig(url=failing_url))
            )
        )
        nodes = (a, b, c)
        await converged(nodes)
        identities_held = [holds(node) for node in nodes]

        # Served in the mesh: here or on c (digits-small), stolen by b (cnn-heavy).
        replies = await asyncio.gather(
            *(infer(a, "digits-small", digits()) for _ in range(4)),
            *(infer(a, "cnn-heavy", image()) for _ in range(3)),
        )
        assert [error_code(r) for r in replies] == [None] * 7
        # Offloaded and served by the gateway; offloaded and failed there:
        # inputs that do not fit (the client's fault, still an offload that
        # failed) and a model nobody has, the gateway included.
        for _ in range(2):
            assert error_code(await infer(a, "digits-large", digits())) is None
        assert error_code(await infer(a, "digits-large", digits(width=10))) == "InvalidInput"
        assert error_code(await infer(a, "nope", digits())) == "ModelNotFound"

        # A client that goes away while c's gateway works on its request.
        gone = await RawConnection.open(c.port)
        gone.send([0, 1, "infer", ["hang", digits()]])
        await until(lambda: counters(c)["in_flight"] == 1, "the offload")
        await gone.close()
        await until(lambda: counters(c)["in_flight"] == 0, "the cancel")
        # A failing gateway, until its breaker opens and refuses at once.
        for _ in range(4):
            assert error_code(await infer(c, "boom", digits(), {"deadline_ms": 2000})) in (
                "Overloaded",
                "ModelNotFound",
            )
        assert counters(c)["offload_failed"] == 4
        gateway_status = c.status()["gateway"]
        assert gateway_status["state"] in ("open", "half_open")

        # Refused: b has no gateway and nobody makes a 1 ms deadline.
        reply = await infer(b, "digits-small", digits(), {"deadline_ms": 1})
        assert error_code(reply) == "Overloaded"
        # Malformed: no inputs; an unknown option.
        assert error_code(await infer(a, "digits-small")) == "BadRequest"
        assert error_code(await infer(a, "digits-small", digits(), {"when": 1})) == "BadRequest"

        # A client that sends a burst for b to steal and leaves at once:
        # what was not answered yet is client_gone on a.
        burst = await RawConnection.open(a.port)
        for msgid in range(10):
            burst.send([0, msgid, "infer", ["cnn-heavy", image()]])
        await burst.writer.drain()
        await until(lambda: counters(a)["in_flight"] > 0, "the burst")
        await burst.close()

        for node in nodes:
            await until(
                lambda node=node: counters(node)["in_flight"] == 0,  # type: ignore[misc]
                "the end",
            )
        identities_held += [holds(node) for node in nodes]
        assert identities_held == [True] * 6, [identities(node) for node in nodes]

        ca, cb, cc = counters(a), counters(b), counters(c)
        assert (ca["offloaded"], ca["served_by_gateway"], ca["offload_failed"]) == (4, 2, 2)
        assert ca["client_gone"] >= 1
        assert ca["errors"]["BadRequest"] == 2
        assert ca["served_remote"] >= 3
        assert (cc["offloaded"], cc["offload_cancelled"], cc["client_gone"]) == (5, 1, 1)
        assert cb["refused"] == 1 and cb["failed"] == 1


async def test_a_cancelled_request_is_client_gone_not_served_nor_failed() -> None:
    request_counters = RequestCounters()
    started = asyncio.Event()

    async def routed() -> None:
        with request_counters.routing():
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(routed())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    counted = request_counters.to_status({}, {})
    assert {
        k: counted[k] for k in ("requests", "served", "failed", "client_gone", "in_flight")
    } == {
        "requests": 1,
        "served": 0,
        "failed": 0,
        "client_gone": 1,
        "in_flight": 0,
    }

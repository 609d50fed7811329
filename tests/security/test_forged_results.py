"""Forged answers (issue 19): only the node holding a request may answer it.

The attack from the issue, replayed against a real keyed node on 127.0.0.1:
a program holding the mesh key queues nothing itself, asks the owner for its
queued requests with ``steal``, then sends ``result`` notifications with a
label of its choosing. Before roles and binding the owner handed over the
other client's inputs and answered with the forged label (``ran_on: "evil"``).

A client may not steal at all (Forbidden). A node that is not the holder may
not answer, and a node may not answer in another's name: its handshake fixed
its name, and the owner takes a result only from the connection of the node
holding that request, at the epoch it holds it under.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from mesh.config import Emulation, RuntimeConfig, WorkConfig
from mesh.core.wire.handover import parse_grant
from mesh.core.wire.tensors import encode_tensors
from mesh.errors import Forbidden
from mesh.node.node import Node
from mesh.rpc import RpcClient
from mesh.sdk.client import MeshClient
from tests.helpers import MODELS_DIR
from tests.helpers.nodes import counters, node_config, running_node

pytestmark = pytest.mark.timeout(60)

KEY = b"forged-results-test-key-0123456789"
MODEL = "digits-small"
REQUESTS = 6


def slow_owner() -> Any:
    # One slot and 300 ms a call: a burst of six leaves five queued to steal.
    return node_config(
        name="owner",
        mesh_key=KEY,
        runtime=RuntimeConfig(
            model_dirs=(MODELS_DIR,),
            model_names=(MODEL,),
            per_model_concurrency=1,
            executor_threads=1,
        ),
        work=WorkConfig(slots=1, emulation=Emulation(service_ms=300.0)),
    )


def steal_ask(node: Node, thief: str) -> dict[str, Any]:
    """A thief's ask that a slow victim always grants: fast, idle, close by."""
    sha = {spec.name: spec.sha256 for spec in node.runtime.specs()}[MODEL]
    return {
        "thief": thief,
        "models": {MODEL: sha},
        "slots": 8,
        "free_slots": 8,
        "wait_s": 0.0,
        "service_s": {MODEL: 0.001},
        "rtt_s": 0.0005,
        "bandwidth_bps": 1e9,
    }


def forged_result(node: Node, seq: int, epoch: int, ran_on: str) -> list[Any]:
    outputs = encode_tensors({"label": np.array([7], dtype=np.int64)})
    return [node.id, seq, epoch, ran_on, {"outputs": outputs}]


async def queue_burst(node: Node, client: MeshClient) -> list[asyncio.Task[Any]]:
    inputs = {"X": np.zeros((1, 64), dtype=np.float32)}
    calls = [
        asyncio.create_task(client.infer(MODEL, inputs, deadline=30.0)) for _ in range(REQUESTS)
    ]
    async with asyncio.timeout(10):
        # Polling the node's figures: there is no event for "queued".
        while counters(node)["in_flight"] < REQUESTS:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return calls


async def test_a_key_holding_client_can_neither_steal_nor_answer() -> None:
    async with (
        running_node(slow_owner()) as owner,
        MeshClient(f"127.0.0.1:{owner.port}", mesh_key=KEY) as victim,
    ):
        calls = await queue_burst(owner, victim)
        async with RpcClient("127.0.0.1", owner.port, key=KEY) as evil:
            with pytest.raises(Forbidden, match="for mesh nodes only"):
                await evil.call("steal", [steal_ask(owner, "evil")])
            for seq in range(1, REQUESTS + 1):
                evil.connection.notify("result", forged_result(owner, seq, 0, "evil"))
            assert await evil.call("ping", []) == "pong"
        answers = await asyncio.gather(*calls)
    assert [answer.ran_on for answer in answers] == ["owner"] * REQUESTS
    assert counters(owner)["stolen_out"] == 0


async def test_a_node_that_does_not_hold_a_request_cannot_answer_it() -> None:
    async with (
        running_node(slow_owner()) as owner,
        MeshClient(f"127.0.0.1:{owner.port}", mesh_key=KEY) as victim,
    ):
        calls = await queue_burst(owner, victim)
        holder = RpcClient("127.0.0.1", owner.port, key=KEY, role="node", name="holder")
        evil = RpcClient("127.0.0.1", owner.port, key=KEY, role="node", name="evil")
        async with holder, evil:
            # A node steals only as itself.
            with pytest.raises(Forbidden, match="steals as itself"):
                await evil.call("steal", [steal_ask(owner, "holder")])
            reply = await holder.call("steal", [steal_ask(owner, "holder")])
            jobs, _ = parse_grant(reply, 0.0)
            assert jobs, "the slow owner granted nothing to steal"
            for job in jobs:
                # In its own name, and in the holder's: neither counts.
                for ran_on in ("evil", "holder"):
                    evil.connection.notify(
                        "result", forged_result(owner, job.key[1], job.epoch, ran_on)
                    )
                # The real holder's answer for an epoch it does not hold: stale.
                holder.connection.notify(
                    "result", forged_result(owner, job.key[1], job.epoch + 1, "holder")
                )
            assert await evil.call("ping", []) == "pong"
            assert await holder.call("ping", []) == "pong"
            assert not any(call.done() for call in calls)
            # The holder gives them back unrun; the owner runs them itself.
            for job in jobs:
                holder.connection.notify("giveback", [owner.id, job.key[1], job.epoch, "holder"])
            answers = await asyncio.gather(*calls)
    assert [answer.ran_on for answer in answers] == ["owner"] * REQUESTS
    assert counters(owner)["served_remote"] == 0


async def test_a_result_that_beats_its_handoff_counts_once_the_handoff_names_its_sender() -> None:
    """The race binding must not break: Y stole from X and answered before
    X's hand-off reached the owner. Y's result waits for that hand-off; one
    for any other holder makes it worthless, and a made-up one never counts."""
    async with (
        running_node(slow_owner()) as owner,
        MeshClient(f"127.0.0.1:{owner.port}", mesh_key=KEY) as victim,
    ):
        calls = await queue_burst(owner, victim)
        x = RpcClient("127.0.0.1", owner.port, key=KEY, role="node", name="x")
        y = RpcClient("127.0.0.1", owner.port, key=KEY, role="node", name="y")
        async with x, y:
            jobs, _ = parse_grant(await x.call("steal", [steal_ask(owner, "x")]), 0.0)
            assert len(jobs) >= 2, "the slow owner granted too little to steal"
            first, second, *rest = jobs
            for job in (first, second):
                y.connection.notify("result", forged_result(owner, job.key[1], job.epoch, "y"))
            assert await y.call("ping", []) == "pong"  # both results are in
            # X hands the first to Y (Y's early result counts) and the second to z.
            for job, to in ((first, "y"), (second, "z")):
                x.connection.notify("handoff", [owner.id, job.key[1], job.epoch, to, 5.0])
            assert await x.call("ping", []) == "pong"
            # X gives the rest back unrun; z never answers, so the owner takes
            # the second back when z's lease ends: give it back from z's name instead.
            for job in rest:
                x.connection.notify("giveback", [owner.id, job.key[1], job.epoch, "x"])
            async with RpcClient("127.0.0.1", owner.port, key=KEY, role="node", name="z") as z:
                z.connection.notify("giveback", [owner.id, second.key[1], second.epoch, "z"])
                assert await z.call("ping", []) == "pong"
            answers = await asyncio.gather(*calls)
    ran_on = sorted(answer.ran_on for answer in answers)
    assert ran_on == sorted(["y"] + ["owner"] * (REQUESTS - 1))
    assert counters(owner)["served_remote"] == 1

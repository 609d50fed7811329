"""Graceful drain, in one event loop: nodes on 127.0.0.1 and a gateway, all real.

A node asked to drain mid-burst answers every request it had accepted (run
here or by peers), refuses later ones with Draining, leaves its peers with
no orphaned job, tells them it left, and returns by itself; the SDK fails
over on Draining. The gateway drains the same way over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest

from mesh.cli.main import main
from mesh.config import Emulation, GatewayServerConfig, HttpConfig, RuntimeConfig, WorkConfig
from mesh.errors import Draining, MeshError
from mesh.gateway.server import Gateway, RuntimeService
from mesh.rpc import RpcClient
from mesh.sdk.client import MeshClient
from tests.helpers import KEY, MODELS_DIR
from tests.helpers.nodes import counters, mesh_of, node_config, running_node
from tests.helpers.raw_rpc import RawConnection

pytestmark = pytest.mark.timeout(60)

BURST = 120
LATE = 20


def tensor(row: np.ndarray[Any, Any]) -> dict[str, Any]:
    x = np.ascontiguousarray(row[None, :], dtype=np.float32)
    return {"dtype": "<f4", "shape": list(x.shape), "data": x.tobytes()}


def labels(images: np.ndarray[Any, Any]) -> list[int]:
    session = ort.InferenceSession(
        str(MODELS_DIR / "digits-small.onnx"), providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run(["label"], {"X": images.astype(np.float32)})
    return [int(v) for v in expected]


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        # Polling: the conditions are other objects' state, with no event to wait on.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_draining_the_entry_mid_burst_answers_each_request_once_and_orphans_nothing(
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    images = np.resize(digits[0], (BURST + LATE, 64))
    async with mesh_of([{}, {}, {}]) as nodes:
        entry, *peers = nodes
        async with RpcClient("127.0.0.1", entry.port) as rpc:

            async def one(i: int) -> Any:
                options = {"request_id": f"r{i}"}
                try:
                    return await rpc.call(
                        "infer", ["digits-small", {"X": tensor(images[i])}, options], timeout=30
                    )
                except MeshError as exc:
                    return exc

            async with asyncio.TaskGroup() as group:
                early = [group.create_task(one(i)) for i in range(BURST)]
                await until(lambda: counters(entry)["requests"] >= BURST)
                await asyncio.sleep(0.15)  # mid-burst: most still queued or running
                accepted = counters(entry)["requests"]
                owned = entry._sharing.scheduler.owned()
                entry.drain()
                late = [group.create_task(one(i)) for i in range(BURST, BURST + LATE)]
            # The entry finished by itself and closed our connection.
            await until(lambda: rpc.closed)
    assert owned > 10, "the drain came too late to test anything"
    results = [task.result() for task in early]
    expected = labels(images)
    # Every request it had accepted is answered, with the right answer.
    assert accepted == BURST
    for i, result in enumerate(results):
        assert not isinstance(result, MeshError), (i, result)
        assert int(np.frombuffer(result["label"]["data"], "<i8")[0]) == expected[i]
    # Later ones were refused, with a typed error a client fails over on.
    for task in late:
        assert isinstance(task.result(), Draining), task.result()
    entry_counts = counters(entry)
    assert entry_counts["abandoned"] == 0
    assert entry_counts["served_local"] + entry_counts["served_remote"] == BURST
    assert entry_counts["errors"] == {"Draining": LATE}
    for peer in peers:
        counts = counters(peer)
        assert counts["orphaned"] == 0, counts
        # Told, not suspected: the peer knows it left.
        view = peer.status()["peers"]
        (row,) = [p for p in view if p["name"] == entry.config.name]
        assert row["state"] == "dead" and row["reason"] == "left the mesh", row
    assert sum(counters(p)["stolen_in"] for p in peers) > 0  # peers took work from it


async def test_the_sdk_fails_over_on_draining_and_every_call_is_answered(
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    images = np.resize(digits[0], (150, 64)).astype(np.float32)
    async with mesh_of([{}, {}, {}]) as nodes:
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        async with MeshClient(addresses, timeout=30) as client:
            assert client.address == addresses[0]  # all idle: the first, in order
            drained = asyncio.Event()

            async def drain_soon() -> None:
                await until(lambda: counters(nodes[0])["requests"] >= 60)
                nodes[0].drain()
                drained.set()

            async with asyncio.TaskGroup() as group:
                group.create_task(drain_soon())
                answers = await client.infer_many(
                    "digits-small", ({"X": row[None]} for row in images), concurrency=32
                )
            assert drained.is_set()
            assert client.address != addresses[0]
        entry = counters(nodes[0])
    # What the draining node had taken, it answered itself (nothing was
    # lost and re-sent); the rest it refused, and the SDK sent elsewhere.
    taken = entry["requests"] - entry["errors"].get("Draining", 0)
    assert sum(a.node == addresses[0] for a in answers) == taken
    assert [int(a["label"][0]) for a in answers] == labels(images)
    assert len({a.request_id for a in answers}) == len(images)
    assert {a.node for a in answers} > {addresses[0]}  # some answered after the failover


async def test_drain_needs_the_mesh_key_and_the_command_waits_for_the_end(tmp_path: Path) -> None:
    async with running_node(node_config(mesh_key=KEY)) as node:
        raw = await RawConnection.open(node.port)
        try:
            reply = await raw.call(1, "drain", [])
        finally:
            await raw.close()
        assert reply[2][0] == "AuthError", reply
        assert not node.draining
        key_file = tmp_path / "key"
        key_file.write_bytes(KEY)
        argv = ["drain", "--node", f"127.0.0.1:{node.port}", "--mesh-key-file", str(key_file)]
        assert await asyncio.to_thread(main, [*argv, "--wait"]) == 0
        assert node.draining


async def test_a_drain_that_runs_out_of_time_answers_what_is_left_with_draining(
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    """A lone slow node (200 ms a call) with 6 requests and a 0.3 s drain timeout."""
    config = node_config(
        drain_timeout_s=0.3,
        runtime=RuntimeConfig(
            model_dirs=(MODELS_DIR,),
            model_names=("digits-small",),
            per_model_concurrency=1,
            executor_threads=1,
        ),
        work=WorkConfig(slots=1, emulation=Emulation(speed=1.0, service_ms=200.0)),
    )
    async with running_node(config) as node, RpcClient("127.0.0.1", node.port) as rpc:

        async def one(i: int) -> Any:
            try:
                return await rpc.call(
                    "infer", ["digits-small", {"X": tensor(digits[0][i])}, {}], timeout=30
                )
            except MeshError as exc:
                return exc

        async with asyncio.TaskGroup() as group:
            calls = [group.create_task(one(i)) for i in range(6)]
            await until(lambda: counters(node)["requests"] == 6)
            node.drain()
        results = [call.result() for call in calls]
        await until(lambda: rpc.closed)
    errors = [r for r in results if isinstance(r, MeshError)]
    assert 1 <= len(errors) <= 5, results
    assert all(isinstance(e, Draining) and "drain timeout" in e.message for e in errors)
    assert counters(node)["abandoned"] == len(errors)


# --- the gateway --------------------------------------------------------------------


def infer_body(row: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": [1, 64], "data": row.astype(float).tolist()}
        ]
    }


@contextlib.asynccontextmanager
async def gateway(drain_timeout_s: float) -> AsyncIterator[tuple[Gateway, asyncio.Task[None]]]:
    config = GatewayServerConfig(
        host="127.0.0.1",
        http=HttpConfig(port=0),
        runtime=RuntimeConfig(
            model_dirs=(MODELS_DIR,),
            model_names=("digits-small",),
            per_model_concurrency=1,
            executor_threads=1,
        ),
        slots=1,
        emulation=Emulation(speed=1.0, service_ms=150.0),
        drain_timeout_s=drain_timeout_s,
    )
    server = Gateway(config)
    task = asyncio.create_task(server.run())
    try:
        await until(lambda: server.ready.is_set() or task.done(), timeout=30)
        yield server, task
    finally:
        server.stop()
        await task


def running(server: Gateway) -> bool:
    service = server.service
    return isinstance(service, RuntimeService) and service.status()["running"] > 0


async def post(session: aiohttp.ClientSession, url: str, row: np.ndarray[Any, Any]) -> Any:
    async with session.post(url, json=infer_body(row)) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("timeout_s", "answered"), [(10.0, 3), (0.2, None)], ids=["in time", "out of time"]
)
async def test_the_gateway_drains_admitted_requests_and_refuses_new_ones(
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
    timeout_s: float,
    answered: int | None,
) -> None:
    async with gateway(timeout_s) as (server, task), aiohttp.ClientSession() as session:
        url = f"{server.url}/v2/models/digits-small/infer"
        async with asyncio.TaskGroup() as group:
            admitted = [group.create_task(post(session, url, digits[0][i])) for i in range(3)]
            await until(lambda: running(server))
            server.drain()
            status, body = await post(session, url, digits[0][5])
            assert (status, body["code"]) == (503, "Draining"), body
            async with session.get(f"{server.url}/v2/health/ready") as ready:
                assert ready.status == 503
        await asyncio.wait_for(task, 10)  # it returned by itself
    results = [call.result() for call in admitted]
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    if answered is not None:
        assert len(ok) == answered, results
    else:
        # Out of time: what was left got a typed 503, never a dropped connection.
        assert refused, results
        assert all(r == (503, r[1]) and r[1]["code"] == "Draining" for r in refused), refused

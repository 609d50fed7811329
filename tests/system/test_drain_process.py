"""SIGTERM drains: real ``edgemesh node`` and ``edgemesh gateway`` processes.

Three nodes on 127.0.0.1 (``--no-mdns``, bootstrapped from the first), each
an emulated one-slot device of 20 ms a call, with a default deadline so long
that admission never refuses. An independent msgpack-RPC client sends a
burst to one node and that node is sent SIGTERM half a second in: every
request gets exactly one answer (the right one) or a typed Draining error,
none is left without an answer; the node exits 0 within its drain timeout
and its peers hold no orphaned job and know it left. Then the SDK, given
the two survivors, loses none of a burst when the node it uses is drained.
The gateway drains the same way over HTTP.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest

from mesh import MeshClient
from mesh.demo.processes import start_gateway_process, stop_process
from mesh.errors import Draining, MeshError
from mesh.rpc import RpcClient
from tests.helpers import MODELS_DIR
from tests.helpers.fleet import NodeFleet

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

NAMES = ("alpha", "beta", "gamma")
BURST = 300
SIGTERM_AFTER_S = 0.5
DRAIN_TIMEOUT_S = 10.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[NodeFleet]:
    fleet = NodeFleet(
        tmp_path,
        extra=[
            "--default-deadline-ms",
            "600000",
            "--emulate-speed",
            "1",
            "--drain-timeout",
            str(DRAIN_TIMEOUT_S),
        ],
    )
    try:
        for name in NAMES:
            fleet.start(name)
        yield fleet
    finally:
        fleet.stop_all()


def labels(rows: np.ndarray[Any, Any]) -> list[int]:
    session = ort.InferenceSession(str(MODELS_DIR / "digits-small.onnx"))
    (expected,) = session.run(["label"], {"X": rows})
    return [int(v) for v in expected]


def tensor(row: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {"dtype": "<f4", "shape": [1, 64], "data": row.tobytes()}


async def exited(process: subprocess.Popen[bytes], within_s: float) -> tuple[int, float]:
    """The exit status of ``process`` and how long after now it came."""
    started = time.monotonic()
    while process.poll() is None:
        if time.monotonic() - started > within_s:
            raise AssertionError(f"still running {within_s} s after SIGTERM")
        await asyncio.sleep(0.05)
    return process.returncode, time.monotonic() - started


async def peer_view(fleet: NodeFleet, name: str, of: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``name``'s counters, and its row for peer ``of``."""
    async with fleet.client(name) as client:
        status = await client.status()
    (row,) = [p for p in status["peers"] if p["name"] == of]
    return status["counters"], row


async def test_sigterm_on_a_loaded_entry_leaves_no_request_unanswered(
    fleet: NodeFleet, digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    rows = np.resize(digits[0].astype(np.float32), (BURST, 64))
    expected = labels(rows)
    entry = fleet.processes["alpha"]
    host, port = fleet.address("alpha").split(":")

    # --- an independent client, one connection to the entry --------------------
    async with RpcClient(host, int(port), key=fleet.key) as rpc:

        async def one(i: int) -> Any:
            try:
                reply = await rpc.call(
                    "infer",
                    ["digits-small", {"X": tensor(rows[i : i + 1])}, {"request_id": f"q{i}"}],
                    timeout=60,
                )
            except MeshError as exc:
                return exc
            return int(np.frombuffer(reply["label"]["data"], "<i8")[0])

        async with asyncio.TaskGroup() as group:
            calls = [group.create_task(one(i)) for i in range(BURST)]
            await asyncio.sleep(SIGTERM_AFTER_S)
            entry.send_signal(signal.SIGTERM)
        code, took_s = await exited(entry, DRAIN_TIMEOUT_S + 5)
    results = [call.result() for call in calls]
    answered = [i for i, r in enumerate(results) if not isinstance(r, MeshError)]
    refused = [r for r in results if isinstance(r, MeshError)]
    # Exactly one outcome each: the right answer, or Draining (never a
    # connection that just ended, which would be a bare PeerUnavailable).
    assert [results[i] for i in answered] == [expected[i] for i in answered]
    assert all(isinstance(r, Draining) for r in refused), {type(r).__name__ for r in refused}
    assert len(answered) > BURST // 4, (len(answered), refused[:3])
    assert code == 0
    assert took_s < DRAIN_TIMEOUT_S
    for peer in ("beta", "gamma"):
        counters, row = await peer_view(fleet, peer, "alpha")
        assert counters["orphaned"] == 0, counters
        assert (row["state"], row["reason"]) == ("dead", "left the mesh"), row

    # --- the SDK, given both survivors, loses nothing when its node drains -----------
    survivors = [fleet.address(name) for name in ("beta", "gamma")]
    async with MeshClient(survivors, mesh_key=fleet.key, timeout=60) as client:
        first = client.address
        victim = next(fleet.processes[n] for n in ("beta", "gamma") if fleet.address(n) == first)
        async with asyncio.TaskGroup() as group:
            burst = group.create_task(
                client.infer_many(
                    "digits-small", ({"X": rows[i : i + 1]} for i in range(BURST)), concurrency=64
                )
            )
            await asyncio.sleep(SIGTERM_AFTER_S)
            victim.send_signal(signal.SIGTERM)
        answers = burst.result()
        assert client.address != first
    assert [int(a["label"][0]) for a in answers] == expected
    assert len({a.request_id for a in answers}) == BURST
    assert (await exited(victim, DRAIN_TIMEOUT_S + 5))[0] == 0


async def test_sigterm_drains_the_gateway(
    tmp_path: Path, digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    process, port = start_gateway_process(
        tmp_path,
        extra=["--slots", "1", "--emulate-service-ms", "300", "--model", "digits-small"],
    )
    url = f"http://127.0.0.1:{port}"

    def body(i: int) -> dict[str, Any]:
        row = digits[0][i].astype(float).tolist()
        return {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64], "data": row}]}

    try:
        async with aiohttp.ClientSession() as session:

            async def post(i: int) -> tuple[int, dict[str, Any]]:
                async with session.post(f"{url}/v2/models/digits-small/infer", json=body(i)) as r:
                    return r.status, await r.json()

            async with asyncio.TaskGroup() as group:
                admitted = [group.create_task(post(i)) for i in range(3)]
                await asyncio.sleep(0.2)  # in: one runs, two wait for the slot
                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(5):
                    while True:  # another process's state: nothing to wait on
                        async with session.get(f"{url}/v2/health/ready") as ready:
                            if ready.status == 503:
                                break
                        await asyncio.sleep(0.02)
                status, refused = await post(5)
            assert (status, refused["code"]) == (503, "Draining"), refused
            assert [task.result()[0] for task in admitted] == [200, 200, 200]
        code, _ = await exited(process, DRAIN_TIMEOUT_S + 5)
        assert code == 0
    finally:
        stop_process(process)

"""An owner SIGKILLed mid-burst while its peers hold its work: real ``edgemesh node`` processes.

Three processes on 127.0.0.1 (``--no-mdns``, bootstrapped from the first),
each emulating a one-slot device of 40 ms a call, so that what the peers
steal outlasts the time membership takes to declare the owner dead. An SDK
client given all three sends a burst to the node it chose (the owner); once
both peers hold some of it, the owner is SIGKILLed. Every call must get
exactly one correct answer under its own request id (those the owner had
not answered come from a survivor, retried there), and the survivors must
end holding nothing: what they held for the dead owner is dropped
(``orphaned``), not left queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from mesh.sdk.client import MeshClient
from tests.helpers import MODELS_DIR
from tests.helpers.fleet import NodeFleet

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

NAMES = ("alpha", "beta", "gamma")
BURST = 120


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[NodeFleet]:
    # About owner death, not admission: the mesh takes the whole burst.
    fleet = NodeFleet(tmp_path, service_ms="40", extra=["--default-deadline-ms", "600000"])
    try:
        for name in NAMES:
            fleet.start(name)
        yield fleet
    finally:
        fleet.stop_all()


async def status(fleet: NodeFleet, name: str) -> dict[str, Any]:
    async with fleet.client(name) as client:
        return await client.status()


async def wait_for_mesh(fleet: NodeFleet) -> None:
    async with asyncio.timeout(30):
        while True:
            views = [await status(fleet, name) for name in NAMES]
            alive = [sum(p["state"] == "alive" for p in view["peers"]) for view in views]
            if alive == [len(NAMES) - 1] * len(NAMES):
                return
            await asyncio.sleep(0.1)


def held(view: dict[str, Any]) -> int:
    scheduler = view["scheduler"]
    return int(scheduler["queued"]) + int(scheduler["running"])


async def test_an_owner_killed_mid_burst_leaves_one_answer_per_call_and_no_orphans(
    fleet: NodeFleet, digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    images = digits[0][:BURST].astype(np.float32)
    ids = [f"digit-{i}" for i in range(BURST)]
    await wait_for_mesh(fleet)
    by_address = {fleet.address(name): name for name in NAMES}
    async with MeshClient(list(by_address), mesh_key=fleet.key, timeout=60) as client:
        owner = by_address[client.address]
        peers = [name for name in NAMES if name != owner]
        calls = [
            asyncio.ensure_future(
                client.infer("digits-small", {"X": images[i : i + 1]}, request_id=ids[i])
            )
            for i in range(BURST)
        ]
        # Mid-burst: some calls answered, and both peers holding the owner's work.
        async with asyncio.timeout(20):
            while True:
                views = [await status(fleet, peer) for peer in peers]
                if sum(c.done() for c in calls) >= 10 and min(map(held, views)) >= 5:
                    break
                await asyncio.sleep(0.01)
        fleet.processes[owner].send_signal(signal.SIGKILL)
        answers = await asyncio.gather(*calls)

    session = ort.InferenceSession(str(MODELS_DIR / "digits-small.onnx"))
    (expected,) = session.run(["label"], {"X": images})
    assert [int(a["label"][0]) for a in answers] == expected.tolist()
    assert [a.request_id for a in answers] == ids
    retried = [a for a in answers if by_address[a.node] != owner]
    assert 0 < len(retried) < BURST, "the kill should come mid-burst"
    assert {a.ran_on for a in retried} <= set(peers)

    # The survivors hold nothing for the dead owner, and answered each retry once.
    async with asyncio.timeout(20):
        while True:
            views = [await status(fleet, peer) for peer in peers]
            if all(held(v) == 0 and v["scheduler"]["owned"] == 0 for v in views):
                break
            await asyncio.sleep(0.05)
    counted = [v["counters"] for v in views]
    assert sum(c["orphaned"] for c in counted) > 0, counted
    assert sum(c["requests"] for c in counted) == len(retried), counted
    assert sum(c["served_local"] + c["served_remote"] for c in counted) == len(retried)
    assert all(c["failed"] == 0 for c in counted), counted
    with contextlib.suppress(subprocess.TimeoutExpired):
        fleet.processes[owner].wait(timeout=5)

"""Work stealing between real ``edgemesh node`` processes, and a thief SIGKILLed mid-burst.

Three processes on 127.0.0.1 (``--no-mdns``, bootstrapped from the first),
each emulating a device (``--emulate-service-ms``, one slot), so that a
burst sent to one node is worth sharing even on two cores. Every answer is
compared with running the model directly in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
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

NAMES = ("entry", "thief-a", "thief-b")
SERVICE_MS = "20"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[NodeFleet]:
    # About stealing, not admission: the mesh takes the whole burst.
    fleet = NodeFleet(tmp_path, service_ms=SERVICE_MS, extra=["--default-deadline-ms", "600000"])
    try:
        for name in NAMES:
            fleet.start(name)
        yield fleet
    finally:
        fleet.stop_all()


async def statuses(mesh: NodeFleet, names: tuple[str, ...] = NAMES) -> dict[str, Any]:
    out = {}
    for name in names:
        async with mesh.client(name) as client:
            out[name] = await client.status()
    return out


async def wait_for_mesh(mesh: NodeFleet) -> None:
    async with asyncio.timeout(30):
        while True:
            views = await statuses(mesh)
            if all(
                sum(1 for p in view["peers"] if p["state"] == "alive") == len(NAMES) - 1
                for view in views.values()
            ):
                return
            await asyncio.sleep(0.1)


def expected_labels(images: np.ndarray[Any, Any]) -> list[int]:
    session = ort.InferenceSession(
        str(MODELS_DIR / "digits-small.onnx"), providers=["CPUExecutionProvider"]
    )
    (labels,) = session.run(["label"], {"X": images})
    return [int(v) for v in labels]


async def burst(
    client: MeshClient, images: np.ndarray[Any, Any]
) -> list[dict[str, np.ndarray[Any, Any]]]:
    return list(
        await asyncio.gather(
            *(
                client.infer("digits-small", {"X": images[i : i + 1]}, request_id=f"digit-{i}")
                for i in range(len(images))
            )
        )
    )


def test_a_burst_at_one_node_is_shared_by_all_three(
    mesh: NodeFleet, digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    images = digits[0][:150].astype(np.float32)

    async def run() -> dict[str, Any]:
        await wait_for_mesh(mesh)
        async with mesh.client("entry") as client:
            answers = await burst(client, images)
        assert [int(a["label"][0]) for a in answers] == expected_labels(images)
        return await statuses(mesh)

    views = asyncio.run(run())
    entry = views["entry"]["counters"]
    assert entry["requests"] == 150
    assert entry["served_local"] + entry["served_remote"] == 150
    for name in NAMES[1:]:
        assert views[name]["counters"]["stolen_in"] > 0, (name, views[name]["counters"])
    assert views["entry"]["emulation"] == {"speed": 1.0, "service_ms": 20.0}


def test_a_thief_killed_mid_burst_loses_nothing(
    mesh: NodeFleet, digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    images = digits[0][:240].astype(np.float32)
    victim = "thief-a"

    async def kill_when_holding() -> None:
        # SIGKILL the thief once it holds stolen work it has not finished.
        async with asyncio.timeout(20), mesh.client(victim) as client:
            while True:
                status = await client.status()
                scheduler = status["scheduler"]
                if status["counters"]["stolen_in"] > 0 and scheduler["queued"] > 2:
                    break
                await asyncio.sleep(0.01)
        mesh.processes[victim].send_signal(signal.SIGKILL)

    async def run() -> dict[str, Any]:
        await wait_for_mesh(mesh)
        async with mesh.client("entry") as client:
            work = asyncio.ensure_future(burst(client, images))
            await kill_when_holding()
            started = time.monotonic()
            answers = await work
        # Every request answered once (the RPC gives one answer per call) and right.
        assert [int(a["label"][0]) for a in answers] == expected_labels(images)
        assert time.monotonic() - started < 30
        return await statuses(mesh, ("entry", "thief-b"))

    views = asyncio.run(run())
    entry = views["entry"]["counters"]
    assert entry["requeued"] > 0, entry
    assert entry["served_local"] + entry["served_remote"] == 240
    assert entry["failed"] == 0
    with contextlib.suppress(subprocess.TimeoutExpired):
        mesh.processes[victim].wait(timeout=5)

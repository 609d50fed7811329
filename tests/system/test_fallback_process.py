"""Cloud fallback with real processes: ``edgemesh gateway`` and nodes started with ``--gateway``.

Two nodes emulate devices of 20 ms a call with one slot each (a mesh of
100 requests a second, whatever two cores can do), serving only
digits-small. The gateway runs every bundled model for real (no padding),
so it has far more capacity than the mesh. Every answer is compared with
running the model directly in this process, wherever it ran.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from mesh.demo.processes import start_gateway_process
from mesh.errors import Overloaded
from mesh.sdk.client import Inference, MeshClient
from tests.helpers import MODELS_DIR
from tests.helpers.fleet import NodeFleet

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

NAMES = ("entry", "peer")


class Fleet(NodeFleet):
    """Two nodes with ``--gateway``, and the gateway process they point at."""

    gateway_port = 0

    def start_gateway(self) -> None:
        # The same port on a restart: the nodes know the gateway by its URL.
        process, self.gateway_port = start_gateway_process(self.workdir, port=self.gateway_port)
        self.processes["gateway"] = process

    def start_node(self, name: str) -> None:
        self.start(name, ["--gateway", f"http://127.0.0.1:{self.gateway_port}"])

    def client(self, name: str = NAMES[0]) -> MeshClient:
        return super().client(name)

    def kill_gateway(self) -> None:
        process = self.processes.pop("gateway")
        process.send_signal(signal.SIGKILL)
        process.wait(10)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    try:
        fleet.start_gateway()
        for name in NAMES:
            fleet.start_node(name)
        yield fleet
    finally:
        fleet.stop_all()


def direct(model: str, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
    session = ort.InferenceSession(str(MODELS_DIR / f"{model}.onnx"))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"X": x}), strict=True))


def assert_outputs(got: Inference, want: dict[str, np.ndarray[Any, Any]]) -> None:
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-5)


async def wait_formed(fleet: Fleet) -> None:
    """Until the entry node sees its peer alive with a measured service time."""
    deadline = time.monotonic() + 20
    async with fleet.client() as client:
        while time.monotonic() < deadline:
            status = await client.status()
            peers = [p for p in status["peers"] if p["state"] == "alive"]
            if peers and all(p.get("service_s") for p in peers):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the mesh did not form: {status['peers']}")


async def counters(fleet: Fleet, name: str = NAMES[0]) -> dict[str, Any]:
    async with fleet.client(name) as client:
        return dict((await client.status())["counters"])


@pytest.fixture
def rows(digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    return digits[0][:200].astype(np.float32)


async def test_a_model_only_the_gateway_has_is_answered_there(
    fleet: Fleet, rows: np.ndarray[Any, Any]
) -> None:
    x = rows[:5]
    async with fleet.client() as client:
        answer = await client.infer("digits-large", {"X": x}, deadline=5)
        status = await client.status()
    assert answer.ran_on == "gateway"
    assert_outputs(answer, direct("digits-large", x))
    assert status["counters"]["offloaded"] == 1
    assert status["counters"]["served_by_gateway"] == 1
    assert status["gateway"]["state"] == "closed"


async def test_under_capacity_nothing_leaves_the_mesh(
    fleet: Fleet, rows: np.ndarray[Any, Any]
) -> None:
    await wait_formed(fleet)
    async with fleet.client() as client:
        # 20 requests of 20 ms on two devices: about 200 ms, well inside 2 s.
        answers = await asyncio.gather(
            *(client.infer("digits-small", {"X": rows[i : i + 1]}) for i in range(20))
        )
    assert {a.ran_on for a in answers} <= set(NAMES)
    for i, answer in enumerate(answers):
        assert_outputs(answer, direct("digits-small", rows[i : i + 1]))
    c = await counters(fleet)
    assert c["offloaded"] == 0
    assert c["served_local"] + c["served_remote"] == 20


async def test_a_burst_beyond_capacity_is_partly_offloaded_and_fully_answered(
    fleet: Fleet, rows: np.ndarray[Any, Any]
) -> None:
    await wait_formed(fleet)
    async with fleet.client() as client:
        # 150 requests with 500 ms to live; the mesh does about 45 in that
        # time (with its headroom), so the rest must go to the gateway.
        answers = await asyncio.gather(
            *(
                client.infer("digits-small", {"X": rows[i : i + 1]}, deadline=0.5)
                for i in range(150)
            )
        )
    places = [a.ran_on for a in answers]
    in_mesh = sum(p in NAMES for p in places)
    at_gateway = places.count("gateway")
    assert in_mesh + at_gateway == 150, places
    assert 10 <= in_mesh <= 60, places
    assert at_gateway >= 90, places
    for i, answer in enumerate(answers):
        assert_outputs(answer, direct("digits-small", rows[i : i + 1]))
    c = await counters(fleet)
    assert c["offloaded"] == at_gateway
    assert c["failed"] == 0 and c["expired"] == 0


async def test_a_dead_gateway_opens_the_breaker_and_a_restarted_one_closes_it(
    fleet: Fleet, rows: np.ndarray[Any, Any]
) -> None:
    x = rows[:1]
    async with fleet.client() as client:
        await client.infer("digits-large", {"X": x}, deadline=5)
        fleet.kill_gateway()
        # Each request that needs the gateway fails fast and says why;
        # after three failures the circuit is open and nothing is sent.
        for _ in range(5):
            started = time.perf_counter()
            with pytest.raises(Overloaded, match="no node in the mesh serves model 'digits-large'"):
                await client.infer("digits-large", {"X": x}, deadline=5)
            assert time.perf_counter() - started < 1.0
        with pytest.raises(Overloaded, match="circuit open"):
            await client.infer("digits-large", {"X": x}, deadline=5)
        status = await client.status()
        assert status["gateway"]["state"] in ("open", "half_open")
        # The mesh itself carries on.
        await client.infer("digits-small", {"X": x})

        fleet.start_gateway()
        deadline = time.monotonic() + 40
        while (await client.status())["gateway"]["state"] != "closed":
            assert time.monotonic() < deadline, "the breaker never closed again"
            await asyncio.sleep(0.1)
        answer = await client.infer("digits-large", {"X": x}, deadline=5)
    assert answer.ran_on == "gateway"
    assert_outputs(answer, direct("digits-large", x))
    assert (await counters(fleet))["offload_failed"] >= 6

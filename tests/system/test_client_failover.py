"""The SDK fails over when its node is SIGKILLed mid-batch: real ``edgemesh node`` processes.

Three processes on 127.0.0.1 (``--no-mdns``, bootstrapped from the first),
each emulating a one-slot device of 20 ms a call, with a default deadline
so long that admission never refuses. One client is given all three
addresses; while it runs a batch, the node it is connected to is killed.
Every request must still be answered exactly once, correctly.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from mesh import MeshClient
from tests.helpers import MODELS_DIR
from tests.helpers.fleet import NodeFleet

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

NAMES = ("alpha", "beta", "gamma")
REQUESTS = 300
KILL_AT = 120  # requests handed to the client before the kill; 64 of them in flight


class Processes(NodeFleet):
    def kill(self, address: str) -> str:
        (name,) = (n for n in self.processes if self.address(n) == address)
        self.processes[name].send_signal(signal.SIGKILL)
        return name


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    # About failover, not admission: the mesh takes every request.
    processes = Processes(tmp_path, extra=["--default-deadline-ms", "600000"])
    try:
        for name in NAMES:
            processes.start(name)
        yield processes
    finally:
        processes.stop_all()


async def test_killing_the_node_in_use_loses_no_request(
    processes: Processes, digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    rows = np.resize(digits[0].astype(np.float32), (REQUESTS, 64))
    addresses = [processes.address(name) for name in NAMES]
    killed: list[str] = []
    async with MeshClient(addresses, mesh_key=processes.key, timeout=60) as client:
        first = client.address

        def batch() -> Iterator[dict[str, np.ndarray[Any, Any]]]:
            for i in range(REQUESTS):
                if i == KILL_AT:
                    killed.append(processes.kill(client.address))
                yield {"X": rows[i : i + 1]}

        answers = await client.infer_many("digits-small", batch(), concurrency=64)
        after = client.address
    assert killed, "the node in use was never killed"
    assert after != first
    session = ort.InferenceSession(str(MODELS_DIR / "digits-small.onnx"))
    (expected,) = session.run(["label"], {"X": rows})
    assert len(answers) == REQUESTS
    assert [int(a["label"][0]) for a in answers] == expected.tolist()
    assert len({a.request_id for a in answers}) == REQUESTS
    entries = {a.node for a in answers}
    assert first in entries
    assert len(entries) >= 2, entries
    # Requests run on the survivors (or, before the kill, on the dead node).
    assert {a.ran_on for a in answers} <= set(NAMES)
    # Sent after the kill: answered by the survivors, and run there.
    assert all(a.node != first and a.ran_on != killed[0] for a in answers[KILL_AT:])

"""An owner that crashes while its peers hold its work (issue 18): real nodes in one loop.

Three nodes on 127.0.0.1, each emulating a 40 ms device with one slot, and
an SDK client given all three. A burst goes to the node the client chose
(the owner); once both peers hold some of it, the owner crashes: every
connection it has is reset at once and it does nothing more (see
``tests.helpers.nodes.crash``). The client's calls waiting on it fail over,
with the same request ids, to the survivors; the survivors drop what they
held for the dead owner when membership declares it dead (or finish it and
send the result nowhere) and end holding nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from mesh.node.node import Node
from mesh.sdk.client import MeshClient
from tests.helpers import MODELS_DIR
from tests.helpers.nodes import counters, crash, mesh_of

pytestmark = pytest.mark.timeout(60)

BURST = 150


def expected_labels(images: np.ndarray[Any, Any]) -> list[int]:
    session = ort.InferenceSession(
        str(MODELS_DIR / "digits-small.onnx"), providers=["CPUExecutionProvider"]
    )
    (labels,) = session.run(["label"], {"X": images})
    return [int(v) for v in labels]


def holding(node: Node) -> int:
    """Jobs queued or running at ``node``."""
    assert node._work is not None
    scheduler = node._work.scheduler
    return scheduler.queued() + scheduler.running()


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds, for 10 s at most."""
    async with asyncio.timeout(10):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def test_an_owner_that_crashes_mid_burst_is_retried_elsewhere_with_one_answer_each(
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]],
) -> None:
    images = digits[0][:BURST].astype(np.float32)
    ids = [f"digit-{i}" for i in range(BURST)]
    async with mesh_of([{"speed": 0.25}] * 3) as nodes:
        ports = {f"127.0.0.1:{node.port}": node for node in nodes}
        async with MeshClient(list(ports), heartbeat=1.0) as client:
            owner = ports[client.address]
            peers = [node for node in nodes if node is not owner]
            calls = [
                asyncio.ensure_future(
                    client.infer(
                        "digits-small", {"X": images[i : i + 1]}, deadline=30, request_id=ids[i]
                    )
                )
                for i in range(BURST)
            ]
            # Mid-burst: some calls answered, and both peers still holding plenty.
            await until(
                lambda: sum(c.done() for c in calls) >= 20 and min(map(holding, peers)) >= 5
            )
            held = {peer.config.name: holding(peer) for peer in peers}
            await crash(owner)
            answers = await asyncio.gather(*calls)

        # One answer per call, each right, under the id it was sent with.
        assert [int(a["label"][0]) for a in answers] == expected_labels(images)
        assert [a.request_id for a in answers] == ids
        retried = [a for a in answers if ports[a.node] is not owner]
        assert 0 < len(retried) < BURST, "the crash should come mid-burst"
        assert all(a.ran_on != owner.config.name for a in retried)

        # The survivors answered each retried call once and hold nothing for the dead owner.
        await until(lambda: not any(map(holding, peers)))
        seen = [counters(peer) for peer in peers]
        for peer, counted in zip(peers, seen, strict=True):
            assert peer._work is not None and peer._work.scheduler.owned() == 0
            assert counted["failed"] == 0, counted
        assert sum(c["requests"] for c in seen) == len(retried)
        assert sum(c["served_local"] + c["served_remote"] for c in seen) == len(retried)
        # They held the owner's work when it died, and dropped what was left of it.
        assert sum(c["orphaned"] for c in seen) > 0, (held, seen)

"""Work stealing between real nodes in one event loop, over real RPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgpack
import numpy as np
import onnxruntime as ort
import pytest

from mesh.errors import DeadlineExceeded, ModelNotFound, Overloaded
from mesh.sdk.client import MeshClient
from tests.helpers import MODELS_DIR
from tests.helpers.nodes import counters, mesh_of, running_node
from tests.helpers.raw_rpc import RawConnection

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def digits_small() -> Any:
    return ort.InferenceSession(
        str(MODELS_DIR / "digits-small.onnx"), providers=["CPUExecutionProvider"]
    )


async def test_a_burst_at_one_node_is_shared_and_every_answer_is_right(
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], digits_small: Any
) -> None:
    images = digits[0][:90]
    async with (
        mesh_of([{}, {}, {}]) as nodes,
        MeshClient(f"127.0.0.1:{nodes[0].port}") as client,
    ):
        answers = await asyncio.gather(
            *(
                client.infer("digits-small", {"X": images[i : i + 1]}, deadline=30)
                for i in range(len(images))
            )
        )
        for image, answer in zip(images, answers, strict=True):
            (expected,) = digits_small.run(["label"], {"X": image[None, :]})
            assert answer["label"].tolist() == expected.tolist()
        entry, *others = (counters(node) for node in nodes)
        assert entry["requests"] == 90
        # (A request stolen away may be stolen back: it then counts as both
        # stolen_out and served_local, so the sum that holds is this one.)
        assert entry["served_local"] + entry["served_remote"] == 90
        for other in others:
            assert other["stolen_in"] > 0, other
        assert entry["served_remote"] == sum(o["stolen_in"] for o in others)
        assert entry["late_dropped"] == 0


async def test_detail_says_where_a_request_ran() -> None:
    async with (
        mesh_of([{"models": ("cnn-heavy",)}, {"models": ("digits-small",)}]) as nodes,
        contextlib.AsyncExitStack() as stack,
    ):
        raw = await RawConnection.open(nodes[0].port)
        stack.push_async_callback(raw.close)
        x = np.zeros((1, 64), dtype=np.float32)
        tensor = {"dtype": "<f4", "shape": [1, 64], "data": x.tobytes()}
        reply = await raw.call(1, "infer", ["digits-small", {"X": tensor}, {"detail": True}])
        assert reply[2] is None, reply
        # n0 does not hold digits-small: it owns the request, n1 steals and runs it.
        assert reply[3]["ran_on"] == "n1"
        assert set(reply[3]["outputs"]) == {"label", "probabilities"}
        assert counters(nodes[1])["stolen_in"] == 1


async def test_a_model_nobody_holds_is_not_found_at_once() -> None:
    async with (
        mesh_of([{}, {}]) as nodes,
        MeshClient(f"127.0.0.1:{nodes[0].port}") as client,
    ):
        with pytest.raises(ModelNotFound, match="no node in the mesh serves model 'nope'"):
            await client.infer("nope", {"X": np.zeros((1, 64), np.float32)})


async def test_requests_that_cannot_finish_in_time_never_run() -> None:
    async with (
        mesh_of([{"steal": False}]) as nodes,
        MeshClient(f"127.0.0.1:{nodes[0].port}") as client,
    ):
        x = np.zeros((1, 64), np.float32)
        # One slot, 10 ms a call: of 20 requests with 35 ms to live, the
        # first few fit; the rest are refused at the door (no gateway), or,
        # where the estimate was too kind, dropped from the queue unrun.
        outcomes = await asyncio.gather(
            *(client.infer("digits-small", {"X": x}, deadline=0.035) for _ in range(20)),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, Overloaded)]
        missed = [o for o in outcomes if isinstance(o, DeadlineExceeded)]
        answered = [o for o in outcomes if isinstance(o, dict)]
        assert len(refused) + len(missed) + len(answered) == 20, outcomes
        assert refused, outcomes
        assert answered, outcomes
        assert all("of its 35 ms deadline" in r.message for r in refused)
        assert all("missed its deadline of 35 ms" in m.message for m in missed)
        c = counters(nodes[0])
        assert c["refused"] == len(refused)
        assert c["expired"] == len(missed)
        assert c["served_local"] == len(answered)


async def test_stealing_off_keeps_work_where_it_entered() -> None:
    async with (
        mesh_of([{"steal": False}, {"steal": False}]) as nodes,
        MeshClient(f"127.0.0.1:{nodes[0].port}") as client,
    ):
        x = np.zeros((1, 64), np.float32)
        await asyncio.gather(*(client.infer("digits-small", {"X": x}) for _ in range(20)))
        assert counters(nodes[0])["served_local"] == 20
        assert counters(nodes[1])["stolen_in"] == 0
        assert counters(nodes[1])["steal_requests"] == 0


async def test_a_client_that_leaves_takes_its_queued_requests_with_it() -> None:
    async with mesh_of([{"steal": False}]) as nodes:
        raw = await RawConnection.open(nodes[0].port)
        x = np.zeros((1, 64), dtype=np.float32)
        tensor = {"dtype": "<f4", "shape": [1, 64], "data": x.tobytes()}
        for msgid in range(30):
            raw.send([0, msgid, "infer", ["digits-small", {"X": tensor}]])
        await asyncio.sleep(0.03)
        await raw.close()
        async with asyncio.timeout(5):
            # Polling a node's figures: there is no event to wait on.
            while counters(nodes[0])["in_flight"]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        c = counters(nodes[0])
        assert c["cancelled"] > 0
        assert c["served_local"] + c["cancelled"] == 30
        assert c["served_local"] < 30


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("steal", [], "steal takes 1 parameters"),
        ("steal", [{"thief": "x"}], "steal ask lacks"),
        (
            "steal",
            [
                {
                    "thief": "x",
                    "models": {},
                    "slots": 0,
                    "free_slots": 1,
                    "wait_s": 0,
                    "service_s": {},
                    "rtt_s": 0.001,
                    "bandwidth_bps": 1e6,
                }
            ],
            "slots must be at least 1",
        ),
    ],
    ids=["no-params", "missing-fields", "zero-slots"],
)
async def test_a_malformed_steal_is_refused_with_a_reason(
    method: str, params: list[Any], expected: str
) -> None:
    async with running_node() as node:
        raw = await RawConnection.open(node.port)
        try:
            # Peers' methods are a node's: say so, as a node's own links do.
            await raw.call(1, "hello", [{"nonce": b"n" * 32, "role": "node", "name": "x"}])
            reply = await raw.call(7, method, params)
        finally:
            await raw.close()
        assert reply[2][0] == "BadRequest"
        assert expected in reply[2][1]


async def test_nonsense_notifications_are_ignored_and_the_node_keeps_serving() -> None:
    async with running_node() as node:
        raw = await RawConnection.open(node.port)
        try:
            await raw.call(1, "hello", [{"nonce": b"n" * 32, "role": "node", "name": "x"}])
            for method in ("result", "handoff", "cancel", "nudge"):
                raw.send([2, method, ["garbage", -1]])
            raw.send_raw(msgpack.packb([2, "result", [node.id, 1, 0, "x", {"error": "nope"}]]))
            reply = await raw.call(9, "ping", [])
        finally:
            await raw.close()
        assert reply == [1, 9, None, "pong"]
        # The well-formed result names a request this node never owned: dropped.
        assert counters(node)["late_dropped"] == 1

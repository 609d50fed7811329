"""Joint inference with real nodes and a real gateway on 127.0.0.1.

digits-small answers at the edge; its unsure rows escalate to digits-large
on the gateway (or on a peer). Expected rows come from the pure rule
(mesh.core.policy.escalation) applied to the small model's own outputs, and
the expected values from running both models here with onnxruntime.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import numpy as np
import onnxruntime as ort
import pytest

from mesh.config import Emulation, GatewayClientConfig, HttpConfig, RuntimeConfig
from mesh.core.policy.escalation import EscalationRule, unsure_rows
from mesh.core.wire.tensors import decode_tensors, encode_tensors
from mesh.gateway.server import Gateway
from mesh.node.node import Node
from mesh.rpc import RpcClient
from mesh.runtime.runtime import Runtime
from mesh.sdk.client import MeshClient
from tests.helpers import MODELS_DIR
from tests.helpers.gateway import (
    gateway_config,
    gateway_runtime,
    misbehaving_server,
    running_gateway,
)
from tests.helpers.nodes import mesh_node_config, node_config, running_node

RULE = EscalationRule(model="digits-small", to="digits-large", threshold=0.9)
Arrays = dict[str, np.ndarray[Any, Any]]


@pytest.fixture(scope="module")
def digits() -> np.ndarray[Any, Any]:
    data = np.load(MODELS_DIR / "digits-test.npz")
    rows: np.ndarray[Any, Any] = data["X"][:60].astype(np.float32)
    return rows


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with gateway_runtime() as loaded:
        yield loaded


@pytest.fixture(scope="module")
def reference(digits: np.ndarray[Any, Any]) -> dict[str, Arrays]:
    """Both models' outputs on the test rows, run here with onnxruntime itself."""
    out: dict[str, Arrays] = {}
    for model in ("digits-small", "digits-large"):
        session = ort.InferenceSession(
            str(MODELS_DIR / f"{model}.onnx"), providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        out[model] = dict(zip(names, session.run(None, {"X": digits}), strict=True))
    return out


@pytest.fixture
async def gateway(runtime: Runtime) -> AsyncIterator[Gateway]:
    async with running_gateway(gateway_config(), runtime) as gw:
        yield gw


def gateway_url(gateway: Gateway) -> str:
    return gateway.url


def edge_config(url: str, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "gateway": GatewayClientConfig(url=url, timeout_s=5.0),
        "escalation": (RULE,),
        "runtime": RuntimeConfig(
            model_dirs=(MODELS_DIR,),
            model_names=("digits-small",),
            per_model_concurrency=2,
            executor_threads=2,
        ),
    }
    return node_config(**{**settings, **overrides})


async def infer(node: Node, x: np.ndarray[Any, Any], **options: Any) -> dict[str, Any]:
    async with RpcClient("127.0.0.1", node.port) as client:
        reply = await client.call(
            "infer", ["digits-small", encode_tensors({"X": x}), {"detail": True, **options}]
        )
    assert isinstance(reply, dict)
    reply["outputs"] = decode_tensors(reply["outputs"])
    return reply


def expect_rows(
    reference: dict[str, Arrays], rows: tuple[int, ...], outputs: Arrays, n: int
) -> None:
    """Rows ``rows`` hold the large model's answers; every other row the small one's."""
    picked = np.zeros(n, dtype=bool)
    picked[list(rows)] = True
    small, large = reference["digits-small"], reference["digits-large"]
    for name in ("label", "probabilities"):
        want = np.where(
            picked.reshape(-1, *([1] * (small[name].ndim - 1))), large[name][:n], small[name][:n]
        )
        np.testing.assert_allclose(outputs[name], want, rtol=1e-5, atol=1e-6)


async def test_threshold_zero_escalates_nothing_and_above_one_everything(
    gateway: Gateway, digits: np.ndarray[Any, Any], reference: dict[str, Arrays]
) -> None:
    x = digits[:20]
    async with running_node(edge_config(gateway_url(gateway))) as node:
        none = await infer(node, x, escalate_threshold=0)
        every = await infer(node, x, escalate_threshold=1.01)
    assert none["escalation"]["escalated"] is False
    assert none["escalation"]["escalation_reason"] == "confident"
    assert none["escalation"]["escalated_rows"] == 0
    expect_rows(reference, (), none["outputs"], 20)
    fields = every["escalation"]
    assert fields["escalated"] is True
    assert fields["escalated_rows"] == fields["batch_rows"] == 20
    assert fields["escalation_ran_on"] == "gateway"
    assert fields["edge_ran_on"] == every["ran_on"] == "test-node"
    expect_rows(reference, tuple(range(20)), every["outputs"], 20)


async def test_mid_threshold_escalates_exactly_the_rows_the_rule_picks(
    gateway: Gateway, digits: np.ndarray[Any, Any], reference: dict[str, Arrays]
) -> None:
    n = len(digits)
    rows = unsure_rows(reference["digits-small"]["probabilities"], RULE.threshold)
    # The test means something only if some rows are sure and some are not.
    assert 0 < len(rows) < n
    async with running_node(edge_config(gateway_url(gateway))) as node:
        reply = await infer(node, digits)
        escalation = node.status()["escalation"]
    fields = reply["escalation"]
    assert fields["escalated"] is True
    assert fields["escalation_threshold"] == RULE.threshold
    assert fields["escalated_rows"] == fields["unsure_rows"] == len(rows)
    expect_rows(reference, rows, reply["outputs"], n)
    assert escalation["escalated"] == 1
    assert escalation["escalated_rows"] == len(rows)
    assert escalation["checked_rows"] == n


async def test_a_request_can_opt_out_or_set_its_own_threshold(
    gateway: Gateway, digits: np.ndarray[Any, Any], reference: dict[str, Arrays]
) -> None:
    n = len(digits)
    low = 0.6
    rows = unsure_rows(reference["digits-small"]["probabilities"], low)
    async with running_node(edge_config(gateway_url(gateway))) as node:
        out = await infer(node, digits, escalate=False)
        own = await infer(node, digits, escalate_threshold=low)
        status = node.status()["escalation"]
    assert out["escalation"]["escalated"] is False
    assert out["escalation"]["escalation_reason"] == "opted_out"
    expect_rows(reference, (), out["outputs"], n)
    assert own["escalation"]["escalation_threshold"] == low
    assert own["escalation"]["escalated_rows"] == len(rows)
    expect_rows(reference, rows, own["outputs"], n)
    assert status["opted_out"] == 1
    assert status["checked"] == status["escalated"] + status["kept_at_edge"] == 2


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_target_returns_the_edge_answer(
    digits: np.ndarray[Any, Any], reference: dict[str, Arrays]
) -> None:
    # Nothing listens at the gateway's address: the gateway is down.
    url = f"http://127.0.0.1:{closed_port()}"
    async with running_node(edge_config(url)) as node:
        reply = await infer(node, digits, escalate_threshold=1.01)
        status = node.status()
    fields = reply["escalation"]
    assert fields["escalated"] is False
    assert fields["escalation_reason"] == "unreachable"
    assert fields["escalation_error"]
    expect_rows(reference, (), reply["outputs"], len(digits))
    assert status["escalation"]["failed_by_reason"]["unreachable"] == 1
    assert status["escalation"]["escalation_failed"] == 1
    # The client was answered: a served request, not a failed one.
    assert status["counters"]["served"] == 1
    assert status["counters"]["failed"] == 0


async def test_a_late_target_returns_the_edge_answer_within_the_deadline(
    digits: np.ndarray[Any, Any], reference: dict[str, Arrays]
) -> None:
    # A gateway that takes the call and never answers in time (a WAN stall
    # cannot be caused on loopback): its model "hang" sleeps 5 s.
    rule = EscalationRule(model="digits-small", to="hang", threshold=0.9)
    async with (
        misbehaving_server() as (url, _),
        running_node(edge_config(url, escalation=(rule,))) as node,
    ):
        started = time.monotonic()
        reply = await infer(node, digits[:8], escalate_threshold=1.01, deadline_ms=400)
        took = time.monotonic() - started
        status = node.status()["escalation"]
    fields = reply["escalation"]
    assert fields["escalated"] is False
    assert fields["escalation_reason"] == "late"
    expect_rows(reference, (), reply["outputs"], 8)
    assert status["failed_by_reason"]["late"] == 1
    # Answered by the deadline's end, not the gateway's 5 s (a bound, not a speed).
    assert took < 3


async def test_a_gateway_that_cannot_make_the_deadline_is_unreachable_in_time(
    runtime: Runtime, digits: np.ndarray[Any, Any], reference: dict[str, Arrays]
) -> None:
    # A real gateway taking 2 s a call refuses a 400 ms request at once.
    slow = gateway_config(emulation=Emulation(speed=1.0, service_ms=2000))
    async with (
        running_gateway(slow, runtime) as gw,
        running_node(edge_config(gateway_url(gw))) as node,
    ):
        reply = await infer(node, digits[:8], escalate_threshold=1.01, deadline_ms=400)
    fields = reply["escalation"]
    assert fields["escalated"] is False
    assert fields["escalation_reason"] == "unreachable"
    assert "deadline" in fields["escalation_error"]
    expect_rows(reference, (), reply["outputs"], 8)


async def test_a_missing_target_model_is_said_not_raised(
    gateway: Gateway, digits: np.ndarray[Any, Any]
) -> None:
    rule = EscalationRule(model="digits-small", to="no-such-model", threshold=0.9)
    async with running_node(edge_config(gateway_url(gateway), escalation=(rule,))) as node:
        reply = await infer(node, digits[:4], escalate_threshold=1.01)
    assert reply["escalation"]["escalated"] is False
    assert reply["escalation"]["escalation_reason"] == "no_target"


async def test_the_target_may_be_a_peer(
    digits: np.ndarray[Any, Any], reference: dict[str, Arrays]
) -> None:
    # No gateway: n0 holds the small model, n1 the large one.
    first = mesh_node_config("n0", None, models=("digits-small",))
    async with running_node(dataclasses.replace(first, escalation=(RULE,))) as n0:
        second = mesh_node_config("n1", n0.port, models=("digits-large",))
        async with running_node(second) as n1:
            async with asyncio.timeout(10):
                # Polling gossip's effect: there is no event to wait on.
                while not n0.work.scheduler.holders("digits-large"):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            reply = await infer(n0, digits[:10], escalate_threshold=1.01)
    assert reply["escalation"]["escalated"] is True
    assert reply["escalation"]["escalation_ran_on"] == n1.config.name
    expect_rows(reference, tuple(range(10)), reply["outputs"], 10)


@pytest.mark.parametrize(("version", "escalated"), [("1", True), ("9", False)])
async def test_a_rule_may_pin_the_targets_version(
    digits: np.ndarray[Any, Any], version: str, escalated: bool
) -> None:
    # No gateway: n1 holds digits-large version 1 and nothing else.
    rule = dataclasses.replace(RULE, version=version)
    first = mesh_node_config("n0", None, models=("digits-small",))
    async with running_node(dataclasses.replace(first, escalation=(rule,))) as n0:
        second = mesh_node_config("n1", n0.port, models=("digits-large",))
        async with running_node(second) as n1:
            async with asyncio.timeout(10):
                # Polling gossip's effect: there is no event to wait on.
                while not n0.work.scheduler.holders("digits-large"):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            reply = await infer(n0, digits[:4], escalate_threshold=1.01)
            rules = n0.status()["escalation"]["rules"]
    fields = reply["escalation"]
    assert rules["digits-small"]["version"] == version
    assert fields["escalated"] is escalated
    if escalated:
        assert fields["escalation_ran_on"] == n1.config.name
    else:
        assert fields["escalation_reason"] == "no_target"
        assert "version" in fields["escalation_error"]


async def test_http_answers_carry_the_fields_and_take_the_parameters(
    gateway: Gateway, digits: np.ndarray[Any, Any]
) -> None:
    async with running_node(edge_config(gateway_url(gateway), http=HttpConfig(port=0))) as node:
        url = f"http://127.0.0.1:{node.http_port}/v2/models/digits-small/infer"
        body = {
            "inputs": [
                {
                    "name": "X",
                    "shape": [2, 64],
                    "datatype": "FP32",
                    "data": digits[:2].ravel().tolist(),
                }
            ]
        }
        async with aiohttp.ClientSession() as session:
            every = {**body, "parameters": {"escalate_threshold": 1.01}}
            async with session.post(url, json=every) as response:
                assert response.status == 200
                escalated = await response.json()
            async with session.post(url, json={**body, "parameters": {"escalate": False}}) as r:
                kept = await r.json()
            async with session.post(url, json={**body, "parameters": {"escalate": "no"}}) as r:
                assert r.status == 400
                assert "escalate must be true or false" in (await r.json())["error"]
    assert escalated["parameters"]["escalated"] is True
    assert escalated["parameters"]["escalation_ran_on"] == "gateway"
    assert escalated["parameters"]["ran_on"] == "test-node"
    assert kept["parameters"]["escalated"] is False
    assert kept["parameters"]["escalation_reason"] == "opted_out"


async def test_the_sdk_sends_the_options_and_reads_the_fields(
    gateway: Gateway, digits: np.ndarray[Any, Any]
) -> None:
    async with (
        running_node(edge_config(gateway_url(gateway))) as node,
        MeshClient(f"127.0.0.1:{node.port}") as client,
    ):
        every = await client.infer("digits-small", {"X": digits[:3]}, escalate_threshold=1.01)
        kept = await client.infer("digits-small", {"X": digits[:3]}, escalate=False)
    assert every.escalated is True
    assert every.escalation is not None
    assert every.escalation["escalation_ran_on"] == "gateway"
    assert kept.escalated is False
    assert kept.escalation is not None
    assert kept.escalation["escalation_reason"] == "opted_out"


async def test_a_model_without_a_rule_answers_as_before(
    gateway: Gateway, digits: np.ndarray[Any, Any]
) -> None:
    async with running_node(edge_config(gateway_url(gateway), escalation=())) as node:
        reply = await infer(node, digits[:2], escalate_threshold=1.01)
        status = node.status()["escalation"]
    assert "escalation" not in reply
    assert status["checked"] == 0


async def test_a_client_that_leaves_during_the_escalation_is_counted_once(
    digits: np.ndarray[Any, Any],
) -> None:
    rule = EscalationRule(model="digits-small", to="hang", threshold=0.9)
    async with (
        misbehaving_server() as (url, _),
        running_node(edge_config(url, escalation=(rule,))) as node,
    ):
        call = asyncio.create_task(infer(node, digits[:2], escalate_threshold=1.01))
        async with asyncio.timeout(10):
            # Polling the node's figures: there is no event for "escalating now".
            while node.status()["escalation"]["in_flight"] != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        call.cancel()  # closes the client's connection: the node cancels the request
        with contextlib.suppress(asyncio.CancelledError):
            await call
        async with asyncio.timeout(10):
            while node.status()["escalation"]["client_gone"] != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        status = node.status()
    escalation = status["escalation"]
    assert escalation["in_flight"] == 0
    assert escalation["checked"] == 1
    assert escalation["escalated"] + escalation["kept_at_edge"] == 0
    assert status["counters"]["client_gone"] == 1

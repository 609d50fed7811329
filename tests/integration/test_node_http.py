"""A node's Open Inference Protocol endpoint: the same routing as RPC, mesh first, gateway last.

Nodes and a gateway in one event loop on 127.0.0.1, each with its real
runtime; HTTP requests from aiohttp. What is checked here is the node's
side: a request that comes in over HTTP is owned, stolen and offloaded
exactly as an RPC one (the protocol itself is tested in test_http_api.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from typing import Any

import aiohttp
import numpy as np
import pytest

from mesh.config import GatewayClientConfig, HttpConfig, RuntimeConfig
from mesh.node.node import Node
from mesh.runtime.runtime import Runtime
from tests.helpers import MODELS_DIR
from tests.helpers.gateway import gateway_config, misbehaving_server, running_gateway
from tests.helpers.nodes import converged, counters, mesh_node_config, running_node

pytestmark = pytest.mark.timeout(60)


def http_node(name: str, first: int | None, **overrides: Any) -> Any:
    return replace(mesh_node_config(name, first, **overrides), http=HttpConfig(port=0))


def infer_body(x: np.ndarray[Any, Any], **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    if parameters:
        body["parameters"] = parameters
    return body


async def post(node: Node, model: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{node.http_port}/v2/models/{model}/infer"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        return response.status, json.loads(await response.read())


async def get(node: Node, path: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{node.http_port}{path}") as response,
    ):
        text = await response.read()
        return response.status, json.loads(text) if text else {}


def outputs(reply: dict[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in reply["outputs"]}


@pytest.fixture(scope="module")
def expected() -> Any:
    x = np.random.default_rng(5).random((3, 64), dtype=np.float32)
    with Runtime(RuntimeConfig(model_dirs=(MODELS_DIR,))) as runtime:
        small = asyncio.run(runtime.infer("digits-small", {"X": x}))
        large = asyncio.run(runtime.infer("digits-large", {"X": x}))
    return x, small, large


async def test_a_node_serves_v2_and_says_where_it_ran(expected: Any) -> None:
    x, small, _ = expected
    async with running_node(http_node("solo", None)) as node:
        assert (await get(node, "/v2/health/ready"))[0] == 200
        status, server = await get(node, "/v2")
        assert status == 200 and server["name"] == "edgemesh"
        status, meta = await get(node, "/v2/models/digits-small")
        assert status == 200 and meta["inputs"][0]["name"] == "X"
        status, reply = await post(node, "digits-small", infer_body(x))
        assert status == 200, reply
        assert reply["parameters"]["ran_on"] == "solo"
        got = outputs(reply)
        np.testing.assert_array_equal(got["label"], small["label"])
        np.testing.assert_allclose(got["probabilities"], small["probabilities"], rtol=1e-6)
        assert counters(node)["served_local"] == 1


async def test_an_http_request_is_stolen_like_an_rpc_one(expected: Any) -> None:
    x, small, _ = expected
    async with contextlib.AsyncExitStack() as stack:
        entry = await stack.enter_async_context(
            running_node(http_node("n0", None, models=("cnn-heavy",)))
        )
        holder = await stack.enter_async_context(running_node(mesh_node_config("n1", entry.port)))
        await converged([entry, holder])
        # The entry does not hold digits-small: it owns the request, n1 runs it,
        # and its metadata comes from n1 too.
        status, meta = await get(entry, "/v2/models/digits-small")
        assert status == 200 and meta["name"] == "digits-small"
        status, reply = await post(entry, "digits-small", infer_body(x))
        assert status == 200, reply
        assert reply["parameters"]["ran_on"] == "n1"
        np.testing.assert_array_equal(outputs(reply)["label"], small["label"])
        assert counters(holder)["stolen_in"] == 1


async def test_over_http_a_model_only_the_gateway_has_runs_there(expected: Any) -> None:
    x, _, large = expected
    config = gateway_config(
        runtime=RuntimeConfig(model_dirs=(MODELS_DIR,), model_names=("digits-large",))
    )
    async with running_gateway(config) as gateway:
        config = replace(http_node("edge", None), gateway=GatewayClientConfig(url=gateway.url))
        async with running_node(config) as node:
            status, meta = await get(node, "/v2/models/digits-large")
            assert status == 200 and meta["name"] == "digits-large"
            status, reply = await post(node, "digits-large", infer_body(x))
            assert status == 200, reply
            assert reply["parameters"]["ran_on"] == "gateway"
            np.testing.assert_array_equal(outputs(reply)["label"], large["label"])
            assert counters(node)["offloaded"] == 1
            # Nobody has this one, the gateway included.
            status, reply = await post(node, "nope", infer_body(x))
            assert status == 404
            assert "neither does the gateway" in reply["error"]


async def test_without_a_gateway_a_hopeless_deadline_is_503_at_once(expected: Any) -> None:
    x, _, _ = expected
    async with running_node(http_node("solo", None)) as node:
        status, reply = await post(node, "digits-small", infer_body(x, deadline_ms=1))
        assert status == 503
        assert "of its 1 ms deadline" in reply["error"]
        assert "no cloud gateway" in reply["error"]
        assert counters(node)["refused"] == 1


async def test_a_hanging_gateway_costs_a_request_its_deadline_and_no_more() -> None:
    # A real gateway never hangs or answers garbage on purpose: the
    # stand-in from test_gateway.py does.
    async with misbehaving_server() as (url, _):
        config = replace(http_node("edge", None), gateway=GatewayClientConfig(url=url))
        async with running_node(config) as node:
            x = np.zeros((1, 64), np.float32)
            for _ in range(3):  # the breaker's threshold
                started = asyncio.get_running_loop().time()
                status, reply = await post(node, "hang", infer_body(x, deadline_ms=200))
                took = asyncio.get_running_loop().time() - started
                assert status == 503, reply
                assert reply["code"] == "Overloaded"
                assert "did not answer within 200 ms" in reply["error"]
                assert 0.15 < took < 1.0
            status, reply = await post(node, "garbage", infer_body(x, deadline_ms=200))
            assert status == 503 and "circuit open" in reply["error"], reply
            gateway = node.status()["gateway"]
            assert gateway["state"] in ("open", "half_open")
            assert counters(node)["offload_failed"] == 4

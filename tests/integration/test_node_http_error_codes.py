"""Every HTTP error a node sends is ``{"error": ..., "code": ...}``, as the README says,
including those HTTP itself raises (no such route, wrong method).

A real node on 127.0.0.1 with its HTTP port; requests from aiohttp.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from mesh.config import HttpConfig
from mesh.errors import MeshError, error_from_wire
from mesh.node.node import Node
from tests.helpers.nodes import node_config, running_node

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    async with running_node(replace(node_config(), http=HttpConfig(port=0))) as running:
        yield running


async def error_of(node: Node, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    url = f"http://127.0.0.1:{node.http_port}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body) as response,
    ):
        return response.status, json.loads(await response.read())


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "message"),
    [
        ("GET", "/v1/models", 404, "MethodNotFound", "no route for GET /v1/models"),
        ("GET", "/", 404, "MethodNotFound", "no route for GET /"),
        (
            "GET",
            "/v2/models/digits-small/infer",
            405,
            "MethodNotFound",
            "method GET is not allowed on /v2/models/digits-small/infer; allowed: POST",
        ),
        ("DELETE", "/v2/health/live", 405, "MethodNotFound", "method DELETE is not allowed"),
        ("GET", "/v2/models/no-such-model", 404, "ModelNotFound", "no-such-model"),
        ("POST", "/v2/models/digits-small/infer", 400, None, ""),
    ],
)
async def test_every_error_body_has_a_code(
    node: Node, method: str, path: str, status: int, code: str | None, message: str
) -> None:
    got, body = await error_of(node, method, path, b"{not json")
    assert got == status
    assert set(body) == {"error", "code"}, body
    assert isinstance(body["error"], str) and message in body["error"]
    assert isinstance(body["code"], str)
    if code is not None:
        assert body["code"] == code
    # The code turns back into the error tree's class, not a generic RemoteError.
    error = error_from_wire([body["code"], body["error"]])
    assert isinstance(error, MeshError) and error.code == body["code"]

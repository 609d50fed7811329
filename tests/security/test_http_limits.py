"""HTTP bounds a request by time and bytes: slow headers and idle connections
are closed, a body that lies about its length fails within the timeout, the
JSON part of a request is capped, bodies held at once fit a budget, and a
max-size JSON request never makes a watching peer suspect the node."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from mesh.config import HttpConfig, RpcConfig
from mesh.core.wire import oip
from mesh.demo.processes import start_node_process, stop_process
from mesh.node.node import Node
from tests.helpers import KEY
from tests.helpers.nodes import node_config, running_node

TIGHT = HttpConfig(port=0, idle_timeout_s=0.5, body_timeout_s=0.5, max_json_bytes=64 * 1024)
INFER = "/v2/models/digits-small/infer"


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    async with running_node(node_config(http=TIGHT)) as running:
        yield running


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection; everything the server sends until it
    closes, and how long that took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(data)
        await writer.drain()
        received = b""
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
        return received, time.monotonic() - started
    finally:
        writer.close()


def http_port(node: Node) -> int:
    assert node.http_port is not None
    return node.http_port


async def test_headers_that_never_end_are_cut_off(node: Node) -> None:
    received, took = await exchange(http_port(node), b"POST /v2 HTTP/1.1\r\nHost: x\r\n")
    assert received == b""  # closed, nothing answered
    assert took < 3


async def test_an_idle_connection_is_closed(node: Node) -> None:
    received, took = await exchange(http_port(node), b"")
    assert received == b"" and took < 3


async def test_a_content_length_larger_than_the_body_fails_in_time(node: Node) -> None:
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        'Content-Length: 1000\r\n\r\n{"inputs": ['
    ).encode()
    received, took = await exchange(http_port(node), request)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"did not arrive within 0.5 s" in received
    assert took < 4  # the timeout, a short linger, then closed


async def test_a_huge_chunk_size_fails_in_time(node: Node) -> None:
    request = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\nffffffffffff\r\nabc"
    ).encode()
    received, took = await exchange(http_port(node), request)
    status = received.split(b"\r\n", 1)[0]
    # 408 once the time is up, or 413 as the declared chunk passes the limit.
    assert status in (b"HTTP/1.1 408 Request Timeout", b"HTTP/1.1 413 Request Entity Too Large")
    assert took < 4


def json_body(rows: int) -> bytes:
    x = np.zeros((rows, 64), np.float32)
    return oip.encode_infer_request({"X": x}, binary=False)[0]


async def test_json_past_its_limit_is_refused_with_a_pointer_to_binary(node: Node) -> None:
    url = f"http://127.0.0.1:{http_port(node)}{INFER}"
    big = json_body(2000)
    assert len(big) > TIGHT.max_json_bytes
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=big) as response:
            assert response.status == 413
            body = await response.json()
        assert body["code"] == "MessageTooLarge"
        assert "binary tensor extension" in body["error"]
        # The same tensor as binary data: the JSON part is small, so it is served.
        x = np.zeros((2000, 64), np.float32)
        payload, json_length = oip.encode_infer_request({"X": x}, binary=True)
        assert json_length is not None and len(payload) > TIGHT.max_json_bytes
        headers = {"Inference-Header-Content-Length": str(json_length)}
        async with http.post(url, data=payload, headers=headers) as response:
            assert response.status == 200, await response.text()
        # A chunked JSON body (no declared length) is cut off at the limit too.

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 8192):
                yield big[start : start + 8192]

        async with http.post(url, data=chunks()) as response:
            assert response.status == 413


async def test_bodies_held_at_once_fit_the_budget() -> None:
    # A node's HTTP bodies count against the budget its RPC server keeps.
    budget = 100_000
    config = node_config(http=HttpConfig(port=0), rpc=RpcConfig(max_bytes_in_flight=budget))
    async with running_node(config) as node:
        url = f"http://127.0.0.1:{http_port(node)}{INFER}"
        x = np.zeros((500, 64), np.float32)
        payload, json_length = oip.encode_infer_request({"X": x}, binary=True)
        assert len(payload) > budget
        headers = {"Inference-Header-Content-Length": str(json_length)}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=payload, headers=headers) as response:
                assert response.status == 503
                body = await response.json()
            assert body["code"] == "Overloaded" and "budget" in body["error"]
            small = json_body(1)
            async with http.post(url, data=small) as response:
                assert response.status == 200
        assert node._server is not None
        assert node._server.budget.used == 0


async def test_a_max_size_json_request_does_not_make_a_peer_suspect_the_node(
    tmp_path: Path,
) -> None:
    """Two real nodes; one takes the largest JSON request it accepts, three
    times, while the other watches it: not one suspicion."""
    limit = HttpConfig().max_json_bytes
    rows = 1
    while len(json_body(rows * 2)) <= limit:
        rows *= 2
    body = json_body(rows)
    while len(body) + 64 * 8 <= limit:  # grow to just under the limit
        rows += max(1, (limit - len(body)) // (64 * 5))
        candidate = json_body(rows)
        if len(candidate) > limit:
            break
        body = candidate
    assert limit // 2 < len(body) <= limit
    flags = ["--no-mdns", "--model", "digits-small", "--executor-threads", "1"]
    busy, busy_port = start_node_process(
        tmp_path, name="busy", key=KEY, extra=[*flags, "--http-port", "0"]
    )
    watcher = None
    try:
        watcher, _ = start_node_process(
            tmp_path,
            name="watcher",
            key=KEY,
            extra=[*flags, "--peer", f"127.0.0.1:{busy_port}", "--log-level", "info"],
        )
        ready = json.loads((tmp_path / "busy.ready.json").read_text())
        url = f"http://127.0.0.1:{ready['http_port']}{INFER}"
        watcher_log = tmp_path / "watcher.log"
        for _ in range(150):  # the watcher joins within seconds
            if "peer busy joined" in watcher_log.read_text():
                break
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(url, data=io.BytesIO(body)) as response:
                    assert response.status == 200, await response.text()
        await asyncio.sleep(1.0)  # time for a late suspicion to show
        # Read before stopping: leaving makes peers suspect each other, rightly.
        lines = watcher_log.read_text().splitlines()
    finally:
        if watcher is not None:
            stop_process(watcher)
        stop_process(busy)
    assert any("peer busy joined" in line for line in lines)
    assert not [line for line in lines if "suspect" in line], lines

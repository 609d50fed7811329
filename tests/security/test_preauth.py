"""Before a connection proves the mesh key it may hold only a little: a few KB,
a few seconds, a place in a capped queue; a source that keeps failing waits.
After it, idle and trickling connections are closed, and all connections
together hold a bounded number of bytes."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import numpy as np
import pytest

from mesh.config import Emulation, NodeConfig, RpcConfig, WorkConfig
from mesh.core.wire.tensors import encode_tensors
from mesh.node.node import Node
from mesh.rpc.server import RpcServer
from tests.helpers import KEY
from tests.helpers.attack import closed_with, v1_handshake
from tests.helpers.nodes import node_config, running_node
from tests.helpers.raw_rpc import RawConnection

FAST = RpcConfig(
    preauth_max_bytes=4096,
    handshake_timeout_s=0.6,
    idle_timeout_s=60.0,
    message_timeout_s=60.0,
    max_unauthenticated=6,
    max_unauthenticated_per_source=4,
    auth_failure_burst=3,
    auth_failures_per_s=0.5,
)


def keyed(rpc: RpcConfig = FAST, **overrides: object) -> NodeConfig:
    return node_config(mesh_key=KEY, rpc=rpc, **overrides)


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    async with running_node(keyed()) as running:
        yield running


def server_of(node: Node) -> RpcServer:
    assert node._server is not None
    return node._server


async def test_a_stranger_cannot_start_a_huge_message(node: Node) -> None:
    raw = await RawConnection.open(node.port)
    # A request declaring a 60 MiB binary: refused from its header.
    raw.send_raw(b"\x94\x00\x01\xa5hello\x91\xc6" + struct.pack(">I", 60 << 20) + b"x" * 1000)
    notice = await closed_with(raw)
    assert notice is not None and notice[0] == "MessageTooLarge", notice


async def trickle(raw: RawConnection, data: bytes, piece: int, pause: float) -> bool:
    """Send ``data`` ``piece`` bytes at a time; True if the node closed the connection first."""
    for start in range(0, len(data), piece):
        if raw.reader.at_eof() or raw.writer.is_closing():
            return True
        try:
            raw.send_raw(data[start : start + piece])
            await raw.writer.drain()
        except ConnectionError:
            return True
        await asyncio.sleep(pause)
    return False


async def test_a_stranger_cannot_send_more_than_a_few_kb_in_small_pieces(node: Node) -> None:
    # Fifteen strings of 1000 bytes: no header in the first 4 KB declares
    # too much, but no handshake message needs 15 KB.
    message = msgpack.packb([0, 1, "hello", ["s" * 1000 for _ in range(15)]])
    raw = await RawConnection.open(node.port)
    assert await trickle(raw, message, 1024, 0.02)
    notice = await closed_with(raw)
    assert notice is None or notice[0] == "MessageTooLarge", notice


async def test_the_handshake_must_finish_in_time(node: Node) -> None:
    raw = await RawConnection.open(node.port)
    notice = await closed_with(raw, timeout=5.0)
    assert notice is not None and notice[0] == "AuthError", notice
    assert "no handshake within" in notice[1]
    assert server_of(node).expired["handshake"] >= 1


async def test_slowloris_before_the_handshake_is_closed(node: Node) -> None:
    raw = await RawConnection.open(node.port)
    message = msgpack.packb([0, 1, "hello", [{"nonce": b"n" * 32}]])
    # A byte every 0.1 s: the whole hello would take 5 s.
    assert await trickle(raw, message, 1, 0.1)
    await closed_with(raw)
    assert server_of(node).expired["handshake"] >= 1


async def test_unauthenticated_connections_are_capped_per_source(node: Node) -> None:
    waiting = [await RawConnection.open(node.port) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert server_of(node).unauthenticated == 4
    extra = await RawConnection.open(node.port)
    notice = await closed_with(extra)
    assert notice is not None and notice[0] == "Overloaded", notice
    assert server_of(node).refused["unauthenticated"] == 1
    door = node.status()["rpc"]
    assert (door["unauthenticated"], door["refused"]["unauthenticated"]) == (4, 1)
    # Those waiting are still served: the handshake works on them.
    await v1_handshake(waiting[0], KEY)
    assert server_of(node).unauthenticated == 3
    for raw in waiting:
        await raw.close()


async def test_wrong_proofs_are_rate_limited_per_source(node: Node) -> None:
    async def wrong_proof() -> list[Any]:
        raw = await RawConnection.open(node.port)
        first = await raw.call(1, "hello", [{"nonce": b"c" * 32}])
        if first[2] is not None:
            return first
        reply = await raw.call(2, "hello", [{"proof": b"\x00" * 32}])
        await raw.close()
        return reply

    for _ in range(3):  # the burst
        reply = await wrong_proof()
        assert reply[2][0] == "AuthError"
    # The fourth is turned away before it may even try.
    raw = await RawConnection.open(node.port)
    notice = await closed_with(raw)
    assert notice is not None and notice[0] == "AuthError", notice
    assert "too many failed handshakes" in notice[1]
    assert server_of(node).refused["auth_failures"] >= 1
    # The bucket refills (0.5 a second): the right key gets in again.
    await asyncio.sleep(2.2)
    raw = await RawConnection.open(node.port)
    await v1_handshake(raw, KEY)
    reply = await raw.call(3, "ping", [])
    assert reply[2] is None
    await raw.close()


async def test_after_the_handshake_big_messages_are_allowed(node: Node) -> None:
    raw = await RawConnection.open(node.port)
    await v1_handshake(raw, KEY)
    # 1 MB of parameters: parsed (and refused by ping for what they are, not their size).
    reply = await raw.call(3, "ping", [b"z" * (1 << 20)])
    assert reply[2] is None or reply[2][0] == "BadRequest", reply
    await raw.close()


async def test_idle_and_trickling_connections_are_closed() -> None:
    rpc = RpcConfig(**{**FAST.__dict__, "idle_timeout_s": 0.6, "message_timeout_s": 0.8})
    async with running_node(keyed(rpc)) as node:
        idle = await RawConnection.open(node.port)
        await v1_handshake(idle, KEY)
        notice = await closed_with(idle)
        assert notice is not None and "idle for" in notice[1], notice

        slow = await RawConnection.open(node.port)
        await v1_handshake(slow, KEY)
        # A message of 100 bytes, a byte at a time, every 0.1 s: never idle, too slow.
        message = msgpack.packb([0, 9, "ping", [b"s" * 90]])
        assert await trickle(slow, message, 1, 0.1)
        await closed_with(slow)
        assert server_of(node).expired["slow"] == 1
        assert server_of(node).expired["idle"] >= 1


def infer_message(msgid: int) -> bytes:
    inputs = {"X": np.zeros((1, 64), dtype=np.float32)}
    return msgpack.packb(
        [0, msgid, "infer", ["digits-small", encode_tensors(inputs), {}]], use_bin_type=True
    )


async def test_bytes_in_flight_over_the_budget_are_refused_with_overloaded() -> None:
    size = len(infer_message(1))
    rpc = RpcConfig(**{**FAST.__dict__, "max_bytes_in_flight": 2 * size + size // 2})
    slow = WorkConfig(slots=1, emulation=Emulation(speed=1.0, service_ms=400))
    async with running_node(keyed(rpc, work=slow)) as node:
        raw = await RawConnection.open(node.port)
        await v1_handshake(raw, KEY)
        raw.send_raw(b"".join(infer_message(10 + i) for i in range(3)))
        replies: dict[int, Any] = {}
        async with asyncio.timeout(10):
            while len(replies) < 3:
                reply = await raw.receive()
                assert reply is not None
                replies[reply[1]] = reply[2]
        refused = [msgid for msgid, error in replies.items() if error is not None]
        assert refused == [12], replies
        assert replies[12][0] == "Overloaded" and "budget" in replies[12][1]
        # Everything answered: the budget is whole again.
        assert server_of(node).budget.used == 0
        # A message still arriving counts too: one bigger than what is left closes its connection.
        other = await RawConnection.open(node.port)
        await v1_handshake(other, KEY)
        other.send_raw(
            b"\x94\x00\x07\xa4ping\x91\xc6" + struct.pack(">I", 10 * size) + b"q" * (3 * size)
        )
        notice = await closed_with(other)
        assert notice is not None and notice[0] == "Overloaded", notice
        await raw.close()
        assert server_of(node).budget.used == 0

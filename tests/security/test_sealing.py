"""Private links (issue 19): with a key, every frame after the handshake is sealed.

A relay in the test sits between a client and a server on 127.0.0.1 and
sees every byte, as a machine on the LAN would. It passes the handshake's
plain msgpack messages (two each way) and then either only records what goes
by, or changes a sealed frame, plays one twice or swaps two: each of those
must close the connection, with the reason in the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest

from mesh.config import RpcConfig
from mesh.core.wire import auth
from mesh.errors import PeerUnavailable
from mesh.rpc import Methods, RpcClient, RpcConnection, RpcServer
from mesh.sdk.client import MeshClient
from tests.helpers.nodes import converged, mesh_node_config, node_config, running_node
from tests.helpers.rpc_server import bound_port, serving_rpc

pytestmark = pytest.mark.timeout(60)

KEY = b"sealing-test-key-0123456789abcdef"
# Bytes no msgpack framing, header or tag would contain by chance.
SECRET = np.frombuffer(b"CAMERA-FRAME-0042" * 16, dtype=np.uint8)[:256].copy()

# What the relay does with the client's sealed frames, in order: it gets
# each frame (header and body) and returns the frames to pass on.
Meddler = Callable[[bytes], list[bytes]]


class Relay:
    """A TCP relay on 127.0.0.1: records both directions, may meddle with the
    client's sealed frames once the handshake's plain messages are through."""

    def __init__(
        self, target_port: int, meddle: Meddler | None = None, *, sealed: bool = True
    ) -> None:
        self.target_port = target_port
        self.meddle = meddle
        # A plain link has no frames to find: the relay only copies.
        self.sealed = sealed
        self.seen = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        upstream = self._client_to_server if self.sealed else self._copy
        for task in (
            asyncio.create_task(upstream(reader, up_writer)),
            asyncio.create_task(self._copy(up_reader, writer)),
        ):
            self._pumps.add(task)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.seen += data
                writer.write(data)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            # The handshake: two plain msgpack messages from the client.
            unpacker = msgpack.Unpacker()
            plain = 0
            while plain < 2:
                data = await reader.read(1)
                self.seen += data
                writer.write(data)
                unpacker.feed(data)
                plain += sum(1 for _ in unpacker)
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(struct.unpack(">I", header)[0])
                self.seen += header + body
                frames = [header + body] if self.meddle is None else self.meddle(header + body)
                for frame in frames:
                    writer.write(frame)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def echo(_: RpcConnection, params: list[Any]) -> Any:
    return params[0]


def serving(
    key: bytes | None = KEY, config: RpcConfig | None = None
) -> contextlib.AbstractAsyncContextManager[RpcServer]:
    return serving_rpc(Methods(inline={"echo": echo}), name="sealing-test", key=key, config=config)


@pytest.mark.parametrize("seal", [True, False], ids=["sealed", "plain-control"])
async def test_an_observer_on_the_path_never_sees_a_tensor_in_the_clear(seal: bool) -> None:
    config = node_config(name="private", mesh_key=KEY)
    async with running_node(config) as node, Relay(node.port, sealed=seal) as relay:
        rpc = RpcConfig(seal=seal)
        async with RpcClient("127.0.0.1", relay.port, key=KEY, config=rpc) as client:
            assert client.connection.sealed is seal
            tensor = {"dtype": "|u1", "shape": [256], "data": SECRET.tobytes()}
            # The node refuses the shape (the model wants float32 [1, 64]) and
            # says so: what matters is what crossed the wire on the way there.
            with contextlib.suppress(Exception):
                await client.call("infer", ["digits-small", {"X": tensor}])
            assert await client.call("ping", []) == "pong"
        assert (SECRET.tobytes()[:64] in relay.seen) is not seal


async def test_a_changed_byte_closes_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    def flip_the_last_byte(frame: bytes) -> list[bytes]:
        return [frame[:-1] + bytes([frame[-1] ^ 1])]

    async with (
        serving() as server,
        Relay(bound_port(server), flip_the_last_byte) as relay,
        RpcClient("127.0.0.1", relay.port, key=KEY) as client,
    ):
        with pytest.raises(PeerUnavailable):
            await client.call("echo", ["hi"], timeout=5)
    assert any("sealed frame 0 failed its check" in r.getMessage() for r in caplog.records)


async def test_a_replayed_frame_closes_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    def twice(frame: bytes) -> list[bytes]:
        return [frame, frame]

    async with (
        serving() as server,
        Relay(bound_port(server), twice) as relay,
        RpcClient("127.0.0.1", relay.port, key=KEY) as client,
    ):
        # The first copy is answered, the second closes the link.
        assert await client.call("echo", ["once"], timeout=5) == "once"
        await client.connection.wait_closed()
        with pytest.raises(PeerUnavailable):
            await client.call("echo", ["again"], timeout=5)
    assert any("sealed frame 1 failed its check" in r.getMessage() for r in caplog.records)


async def test_frames_out_of_order_close_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    held: list[bytes] = []

    def swap_the_first_two(frame: bytes) -> list[bytes]:
        if not held:
            held.append(frame)
            return []
        return [frame, held.pop()]

    async with (
        serving() as server,
        Relay(bound_port(server), swap_the_first_two) as relay,
        RpcClient("127.0.0.1", relay.port, key=KEY) as client,
    ):
        first = asyncio.create_task(client.call("echo", ["first"], timeout=5))
        await asyncio.sleep(0.05)  # a frame of its own for each call
        second = asyncio.create_task(client.call("echo", ["second"], timeout=5))
        results = await asyncio.gather(first, second, return_exceptions=True)
    assert all(isinstance(result, PeerUnavailable) for result in results), results
    assert any("sealed frame 0 failed its check" in r.getMessage() for r in caplog.records)


async def test_a_node_with_seal_off_keeps_links_plain_and_a_client_agrees() -> None:
    config = node_config(name="plain", mesh_key=KEY, rpc=RpcConfig(seal=False))
    async with (
        running_node(config) as node,
        RpcClient("127.0.0.1", node.port, key=KEY) as client,
    ):
        assert not client.connection.sealed
        assert await client.call("ping", []) == "pong"


async def test_stealing_between_nodes_and_sdk_calls_work_over_sealed_links() -> None:
    owner_config = dataclasses.replace(
        mesh_node_config("n0", None, models=("cnn-heavy",)), mesh_key=KEY
    )
    async with running_node(owner_config) as owner:
        thief_config = dataclasses.replace(
            mesh_node_config("n1", owner.port, models=("digits-small",)), mesh_key=KEY
        )
        async with running_node(thief_config) as thief:
            await converged([owner, thief])
            async with MeshClient(f"127.0.0.1:{owner.port}", mesh_key=KEY) as client:
                answer = await client.infer(
                    "digits-small", {"X": np.zeros((1, 64), dtype=np.float32)}, deadline=10
                )
            assert answer.ran_on == "n1"
            for node in (owner, thief):
                server = node._server
                assert server is not None
                served = list(server._connections)
                assert served, "no peer link reached this node"
                assert all(c.sealed for c in served)
                assert all(c.role == auth.NODE for c in served if c.peer_name)


async def test_a_sealed_frame_still_arriving_counts_against_the_byte_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key holder cannot dodge the node's memory budget by sealing: the
    frame it is sending counts as it arrives, and the node's refusal comes
    sealed, so the client can read it."""
    caplog.set_level(logging.WARNING)
    config = RpcConfig(max_bytes_in_flight=1_000_000)
    async with (
        serving(config=config) as server,
        RpcClient("127.0.0.1", bound_port(server), key=KEY) as client,
    ):
        connection = client.connection
        assert connection.sealed
        frame = connection._wire(b"\x00" * 2_000_000)
        transport = connection._transport
        assert transport is not None
        transport.write(frame[:1_500_000])  # never finished
        async with asyncio.timeout(10):
            await connection.wait_closed()
    assert any("reports: Overloaded" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("suite", ["aes-256-gcm", "chacha20-poly1305"])
async def test_many_calls_of_every_size_cross_a_sealed_link_intact(
    suite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small messages share frames, big ones get their own, both directions,
    many in flight: every answer comes back whole, with either suite."""
    # A client that offers only one suite gets that one.
    monkeypatch.setattr(auth, "SEAL_SUITES", (suite,))
    rng = np.random.default_rng(19)
    sizes = [int(size) for size in rng.choice([0, 1, 200, 5_000, 70_000, 300_000, 1_500_000], 120)]
    blobs = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in sizes]
    async with (
        serving() as server,
        RpcClient("127.0.0.1", bound_port(server), key=KEY) as client,
    ):
        assert client.connection.sealed
        served = next(iter(server._connections))
        assert served._handshake is not None
        assert served._handshake.session.seal == suite
        answers = await asyncio.gather(*(client.call("echo", [blob]) for blob in blobs))
    assert answers == blobs

"""Shared helpers: real nodes on 127.0.0.1, raw msgpack-RPC sockets, the bundled data."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from mesh.config import MeshConfig, NodeConfig, RuntimeConfig
from mesh.node.node import Node

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
KEY = b"0123456789abcdef0123456789abcdef"


def node_config(**overrides: Any) -> NodeConfig:
    """A node config for tests: loopback, a free port, the digits models, no mDNS."""
    settings: dict[str, Any] = {
        "name": "test-node",
        "host": "127.0.0.1",
        "port": 0,
        # Tests never multicast on the machine's interfaces; those that test
        # discovery bind mDNS to 127.0.0.1 themselves.
        "mesh": MeshConfig(mdns=False),
        "runtime": RuntimeConfig(
            model_dirs=(MODELS_DIR,),
            model_names=("digits-small", "cnn-heavy"),
            per_model_concurrency=2,
            executor_threads=2,
        ),
    }
    settings.update(overrides)
    return NodeConfig(**settings)


@contextlib.asynccontextmanager
async def running_node(config: NodeConfig | None = None) -> AsyncIterator[Node]:
    """A Node serving on 127.0.0.1 for the duration of the block."""
    node = Node(config or node_config())
    task = asyncio.create_task(node.run())
    ready = asyncio.create_task(node.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    try:
        yield node
    finally:
        node.stop()
        await task


class RawConnection:
    """A bare msgpack-RPC socket, as a client in another language would have."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.unpacker = msgpack.Unpacker(raw=False)

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, message: list[Any]) -> None:
        self.writer.write(msgpack.packb(message, use_bin_type=True))

    async def receive(self, timeout: float = 10.0) -> Any:
        """The next message, or None when the node closed the connection."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.unpacker:
                    return message
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.unpacker.feed(data)

    async def call(self, msgid: int, method: str, params: list[Any]) -> list[Any]:
        self.send([0, msgid, method, params])
        reply = await self.receive()
        assert reply is not None, f"connection closed instead of answering {method}"
        return list(reply)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The held-out digits and their labels, as saved by models/build.py."""
    with np.load(MODELS_DIR / "digits-test.npz") as data:
        return data["X"], data["y"]

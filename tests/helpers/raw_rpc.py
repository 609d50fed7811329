"""A bare msgpack-RPC socket, for tests that speak the wire as another language would."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgpack

__all__ = ["RawConnection"]


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

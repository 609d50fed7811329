"""A bare msgpack-RPC server on 127.0.0.1 in the test's event loop, with only the methods given."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from mesh.config import RpcConfig
from mesh.rpc import Methods, RpcServer

__all__ = ["bound_port", "serving_rpc"]


@contextlib.asynccontextmanager
async def serving_rpc(
    methods: Methods,
    *,
    name: str,
    key: bytes | None = None,
    config: RpcConfig | None = None,
) -> AsyncIterator[RpcServer]:
    """An ``RpcServer`` listening on a free port until the block ends.

    ``name`` is what its handshake's hello says; ``key`` seals its links when given.
    """
    server = RpcServer(
        host="127.0.0.1",
        port=0,
        config=config or RpcConfig(),
        methods=methods,
        key=key,
        hello_info=lambda: {"name": name},
    )
    await server.start()
    listening = asyncio.Event()
    task = asyncio.create_task(server.serve(listening))
    await listening.wait()
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def bound_port(server: RpcServer) -> int:
    """The port ``server`` listens on (it must have started)."""
    assert server.bound_port is not None
    return server.bound_port

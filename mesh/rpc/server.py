"""Accepting msgpack-RPC connections."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Callable
from typing import Any

from mesh.config import RpcConfig
from mesh.core.wire import auth
from mesh.errors import PeerUnavailable
from mesh.rpc.connection import Methods, RpcConnection

__all__ = ["RpcServer"]


class RpcServer:
    """Accepts msgpack-RPC connections and serves ``methods`` on each.

    With a mesh ``key``, every connection must pass the ``hello`` handshake
    before anything else; without one, the server is open to anyone who can
    reach the port. Call :meth:`start` to bind, then run :meth:`serve`.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        config: RpcConfig,
        methods: Methods,
        key: bytes | None,
        hello_info: Callable[[], dict[str, Any]],
    ) -> None:
        self._host = host
        self._port = port
        self._config = config
        self._methods = methods
        self._key = key
        self._hello_info = hello_info
        self._tasks: asyncio.TaskGroup | None = None
        self._connections: set[RpcConnection] = set()
        self._server: asyncio.Server | None = None
        self.bound_port: int | None = None

    @property
    def connections(self) -> int:
        """Open connections now."""
        return len(self._connections)

    @property
    def in_flight(self) -> int:
        """Concurrent calls (``infer``) being worked on now, over every connection."""
        return sum(connection.in_flight for connection in self._connections)

    async def close_gracefully(self, timeout_s: float) -> None:
        """Stop accepting, then close every connection after what it has queued
        is written (answers included); wait up to ``timeout_s`` for them to go.

        A draining node calls this once it has answered everything, so that
        the last answers reach their callers; :meth:`serve` ending aborts
        whatever is left.
        """
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.close()
        if connections:
            waiting = [asyncio.ensure_future(c.wait_closed()) for c in connections]
            try:
                await asyncio.wait(waiting, timeout=timeout_s)
            finally:
                for future in waiting:
                    future.cancel()

    async def start(self, sock: socket.socket | None = None) -> int:
        """Bind the listening socket, or adopt ``sock`` (bound already, see
        :mod:`mesh.listening`); returns the port (useful when asked for port 0)."""
        loop = asyncio.get_running_loop()
        try:
            if sock is not None:
                self._server = await loop.create_server(
                    self._new_connection, sock=sock, start_serving=False
                )
            else:
                self._server = await loop.create_server(
                    self._new_connection, self._host, self._port, start_serving=False
                )
        except OSError as exc:
            raise PeerUnavailable(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        self.bound_port = int(self._server.sockets[0].getsockname()[1])
        return self.bound_port

    async def serve(self, listening: asyncio.Event | None = None) -> None:
        """Accept connections until cancelled; then drop every connection.

        ``listening`` is set once connections are being accepted.
        """
        if self._server is None:
            raise RuntimeError("RpcServer.start() must be awaited before serve()")
        server = self._server
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            try:
                await server.start_serving()
                if listening is not None:
                    listening.set()
                await asyncio.Event().wait()
            finally:
                server.close()
                for connection in list(self._connections):
                    connection.abort()

    def _new_connection(self) -> RpcConnection:
        return _ServedConnection(
            self,
            config=self._config,
            methods=self._methods,
            handshake=auth.ServerHandshake(
                key=self._key, server_nonce=secrets.token_bytes(auth.NONCE_BYTES)
            ),
            hello_info=self._hello_info,
        )

    def _adopt(self, connection: RpcConnection) -> None:
        """Run a newly accepted connection inside the server's task group."""
        if self._tasks is None:
            connection.abort()
            return
        self._connections.add(connection)
        self._tasks.create_task(self._run(connection))

    async def _run(self, connection: RpcConnection) -> None:
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)


class _ServedConnection(RpcConnection):
    """A connection the server accepted: it hands itself to the server to run."""

    def __init__(self, server: RpcServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server._adopt(self)

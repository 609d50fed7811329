"""Accepting msgpack-RPC connections, and bounding what strangers may hold.

With a mesh key, a connection that has not yet proved it is held short
(``RpcConfig`` names each limit): it may send a few KB, must finish the
handshake within seconds, and waits in a queue capped in all and per source
address; a source whose handshakes keep failing is refused for a while
(:class:`~mesh.core.policy.exposure.StrangerGate` decides). Every accepted
connection is closed when it goes idle or trickles a message too slowly, and
all of them together may hold only so many bytes of unanswered requests
(:class:`~mesh.core.policy.exposure.ByteBudget`): past it, ``Overloaded``.
One sweep a second checks the clocks, rather than a timer per connection.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable
from typing import Any

from mesh.config import RpcConfig
from mesh.core.policy.exposure import (
    AUTH_FAILURES,
    TOO_MANY_WAITING,
    ByteBudget,
    ExposureLimits,
    StrangerGate,
)
from mesh.core.wire import auth
from mesh.core.wire.framing import Request, RpcFraming
from mesh.errors import AuthError, MeshError, Overloaded, PeerUnavailable, ProtocolError
from mesh.rpc.connection import ERROR_NOTICE, Methods, RpcConnection

__all__ = ["RpcServer"]

log = logging.getLogger(__name__)

# The longest the sweep that enforces the timeouts sleeps.
_SWEEP_S = 1.0


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
        client_key: bytes | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._config = config
        self._methods = methods
        self._key = key
        # A second key whose holders are clients only (--client-key-file).
        self._client_key = client_key
        self._hello_info = hello_info
        self._tasks: asyncio.TaskGroup | None = None
        self._connections: set[RpcConnection] = set()
        self._server: asyncio.Server | None = None
        self.bound_port: int | None = None
        self._gate = StrangerGate(
            ExposureLimits(
                max_unauthenticated=config.max_unauthenticated,
                max_unauthenticated_per_source=config.max_unauthenticated_per_source,
                auth_failure_burst=config.auth_failure_burst,
                auth_failures_per_s=config.auth_failures_per_s,
            )
        )
        self.budget = ByteBudget(config.max_bytes_in_flight)
        # Connections turned away at the door, by reason, for status and tests.
        self.refused: dict[str, int] = {TOO_MANY_WAITING: 0, AUTH_FAILURES: 0}
        # Connections closed by the sweep, by reason.
        self.expired: dict[str, int] = {"handshake": 0, "idle": 0, "slow": 0}

    @property
    def unauthenticated(self) -> int:
        """Connections accepted and waiting for their handshake now."""
        return self._gate.waiting

    def exposure_status(self) -> dict[str, Any]:
        """What strangers and big requests hold now, and what was turned away
        (``status()["rpc"]``): connections waiting for their handshake, those
        refused at the door and closed by a clock, by reason, and the bytes of
        the byte budget in use."""
        return {
            "unauthenticated": self._gate.waiting,
            "refused": dict(self.refused),
            "timed_out": dict(self.expired),
            "bytes_in_flight": self.budget.used,
            "max_bytes_in_flight": self.budget.limit,
        }

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
                await self._sweep()
            finally:
                server.close()
                for connection in list(self._connections):
                    connection.abort()

    async def _sweep(self) -> None:
        """Close connections past a deadline, until cancelled."""
        config = self._config
        interval = min(_SWEEP_S, config.handshake_timeout_s / 4, config.idle_timeout_s / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for connection in list(self._connections):
                if isinstance(connection, _ServedConnection):
                    reason = connection.expired(now)
                    if reason is not None:
                        self.expired[reason] += 1

    def _new_connection(self) -> RpcConnection:
        return _ServedConnection(
            self,
            config=self._config,
            methods=self._methods,
            handshake=auth.ServerHandshake(
                key=self._key,
                server_nonce=secrets.token_bytes(auth.NONCE_BYTES),
                client_key=self._client_key,
                seal=self._config.seal,
            ),
            hello_info=self._hello_info,
        )

    def _adopt(self, connection: _ServedConnection) -> None:
        """Run a newly accepted connection inside the server's task group,
        unless it comes from a stranger who may not wait for a handshake now."""
        if self._tasks is None:
            connection.abort()
            return
        if not connection.trusted:
            refusal = self._gate.admit(connection.source, connection.accepted_at)
            if refusal is not None:
                self.refused[refusal.kind] += 1
                connection.expel(
                    AuthError(refusal.reason)
                    if refusal.kind == AUTH_FAILURES
                    else Overloaded(refusal.reason)
                )
                return
            connection.admitted = True
        self._connections.add(connection)
        self._tasks.create_task(self._run(connection))

    def _settled(self, connection: _ServedConnection, *, failed: bool) -> None:
        """``connection`` proved the key, or left (``failed``: by a wrong proof or the clock)."""
        self._gate.settled(connection.source, failed=failed, now=asyncio.get_running_loop().time())

    async def _run(self, connection: RpcConnection) -> None:
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)


class _ServedConnection(RpcConnection):
    """A connection the server accepted: it hands itself to the server to run,
    and keeps to the server's limits (see the module's docstring)."""

    def __init__(self, server: RpcServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server = server
        config: RpcConfig = kwargs["config"]
        handshake: auth.ServerHandshake = kwargs["handshake"]
        # An open node (no key) trusts every connection from the start.
        self.trusted = handshake.authenticated
        if not self.trusted:
            self._framing = RpcFraming(
                max_message_size=config.max_message_bytes,
                # (The framing needs room for at least the smallest messages.)
                initial_limit=max(64, min(config.preauth_max_bytes, config.max_message_bytes)),
            )
        # Counted in by the server's gate (and so to be counted out once).
        self.admitted = False
        self.source = "?"
        self.accepted_at = self._loop.time()
        # Bytes of this connection in the server's budget: a message arriving,
        # and the requests received and not yet answered, by msgid.
        self._partial_held = 0
        self._held: dict[int, int] = {}
        # For the slow-message clock: when the message arriving was first
        # seen, and how many messages had been parsed by then.
        self._arriving_since: float | None = None
        self._arriving_after = 0
        self._timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.source = self.peer_host or self.peer
        self._server._adopt(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        budget = self._server.budget
        budget.give_back(self._partial_held + sum(self._held.values()))
        self._partial_held = 0
        self._held.clear()
        if self.admitted and not self.trusted:
            self.admitted = False
            failed = self._timed_out or isinstance(self._close_reason, AuthError)
            self._server._settled(self, failed=failed)

    def expel(self, error: MeshError) -> None:
        """Tell the peer why in one small write, then drop the connection at once
        (a peer that does not read must not keep it open through a graceful close)."""
        self._close_reason = error
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(self._wire(self._framing.notification(ERROR_NOTICE, error.to_wire())))
        self.abort()

    def expired(self, now: float) -> str | None:
        """Close the connection if a clock ran out; which one, or None."""
        if self.closed:
            return None
        config = self._config
        if not self.trusted and now - self.accepted_at > config.handshake_timeout_s:
            self._timed_out = True
            self.expel(AuthError(f"no handshake within {config.handshake_timeout_s:g} s; closing"))
            return "handshake"
        if self.in_flight == 0 and now - max(self.last_received, self.accepted_at) > (
            config.idle_timeout_s
        ):
            self.expel(PeerUnavailable(f"idle for {config.idle_timeout_s:g} s; closing"))
            return "idle"
        framing = self._framing
        # (On a sealed link a frame still arriving counts as a message arriving.)
        arriving = self.unparsed_bytes
        if arriving == 0 or framing.messages != self._arriving_after:
            self._arriving_since = now if arriving else None
            self._arriving_after = framing.messages
        elif self._arriving_since is None:
            self._arriving_since = now
        elif now - self._arriving_since > config.message_timeout_s:
            self.expel(
                ProtocolError(
                    f"a message took longer than {config.message_timeout_s:g} s to arrive; closing"
                )
            )
            return "slow"
        return None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A message still arriving holds its bytes too; past the budget, the
        # connection that would grow it is the one let go.
        pending = 0 if self.closed else self.unparsed_bytes
        if pending != self._partial_held:
            budget = self._server.budget
            budget.give_back(self._partial_held)
            self._partial_held = 0
            if pending and not budget.take(pending):
                self.expel(Overloaded(budget.refusal(pending)))
                return
            self._partial_held = pending

    def _on_hello(self, request: Request) -> None:
        super()._on_hello(request)
        if not self.trusted and self._handshake is not None and self._handshake.authenticated:
            self.trusted = True
            self._framing.lift_limit()
            if self.admitted:
                self.admitted = False
                self._server._settled(self, failed=False)

    def _on_request(self, request: Request) -> None:
        if request.method in self._methods.concurrent and self.trusted:
            size = self._framing.last_message_size
            budget = self._server.budget
            if not budget.take(size):
                self._respond_error(request.msgid, Overloaded(budget.refusal(size)))
                return
            self._held[request.msgid] = self._held.get(request.msgid, 0) + size
        super()._on_request(request)

    def _respond(self, msgid: int, result: Any) -> None:
        self._release(msgid)
        super()._respond(msgid, result)

    def _respond_error(self, msgid: int, error: MeshError) -> None:
        self._release(msgid)
        super()._respond_error(msgid, error)

    def _release(self, msgid: int) -> None:
        if self._held:
            held = self._held.pop(msgid, 0)
            if held:
                self._server.budget.give_back(held)

"""msgpack-RPC over asyncio streams: the thin edge around :mod:`mesh.core.framing`.

One :class:`RpcConnection` per TCP connection, symmetric: either side may
call, answer and notify, which is what node-to-node traffic needs. Calls are
pipelined: many may be in flight on one connection and answers come back in
any order. Outgoing messages written in the same event-loop turn are
coalesced into one ``write`` so that a burst of small calls costs one
syscall, not one each.

:class:`RpcServer` accepts connections and, when the node holds a mesh key,
lets nothing but the ``hello`` handshake through until the peer has proved
it holds the key. :class:`RpcClient` opens a connection and performs that
handshake from the other side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.config import RpcConfig
from mesh.core import auth
from mesh.core.framing import (
    MAX_MSGID,
    NEED_DATA,
    InvalidMessage,
    Notification,
    Request,
    Response,
    RpcFraming,
    encode_notification,
    encode_request,
    encode_response,
)
from mesh.errors import (
    AuthError,
    InternalError,
    MeshError,
    MethodNotFound,
    Overloaded,
    PeerUnavailable,
    ProtocolError,
    RpcTimeout,
    error_from_wire,
)

__all__ = [
    "Methods",
    "RpcClient",
    "RpcConnection",
    "RpcServer",
    "parse_address",
]

log = logging.getLogger(__name__)

# How much one read asks for: large enough that a big tensor arrives in few
# reads, small enough to keep a pipelined stream of small calls responsive.
_READ_CHUNK = 256 * 1024
# The name of the notification that tells a peer why we are about to close.
ERROR_NOTICE = "error"

InlineMethod = Callable[["RpcConnection", list[Any]], Any]
ConcurrentMethod = Callable[["RpcConnection", list[Any]], Awaitable[Any]]
NotificationHandler = Callable[["RpcConnection", list[Any]], None]


@dataclass(frozen=True)
class Methods:
    """What a connection answers.

    ``inline`` methods are quick and never wait (``ping``, ``status``); they
    are answered right in the read loop, in order, with no task per call.
    ``concurrent`` methods (``infer``) each run in their own task so that a
    slow one never holds up the others, up to the connection's in-flight
    limit. ``notifications`` are one-way messages; they get no reply.
    """

    inline: Mapping[str, InlineMethod] = field(default_factory=dict)
    concurrent: Mapping[str, ConcurrentMethod] = field(default_factory=dict)
    notifications: Mapping[str, NotificationHandler] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Every callable method name, sorted."""
        return sorted({*self.inline, *self.concurrent, "hello"})


def parse_address(address: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as a ``(host, port)`` pair."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"address {address!r} has no port; expected HOST:PORT")
        host, port_text = address, str(default_port)
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"address {address!r} is not HOST:PORT with a port in 1..65535")
    return host, int(port_text)


class RpcConnection:
    """One msgpack-RPC connection, driven by :meth:`run`.

    ``handshake`` is the server side's mesh-key state; None means this side
    does not ask the peer to authenticate (a client, or when the peer has
    already been checked by the client's own handshake).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        config: RpcConfig,
        methods: Methods,
        handshake: auth.ServerHandshake | None = None,
        hello_info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._config = config
        self._methods = methods
        self._handshake = handshake
        self._hello_info = hello_info
        self._framing = RpcFraming(max_message_size=config.max_message_bytes)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_msgid = 0
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._running: set[asyncio.Task[None]] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._closing = False
        self._close_reason: MeshError | None = None
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed; calls then fail at once."""
        return self._closing

    @property
    def in_flight(self) -> int:
        """Concurrent requests from the peer being worked on now."""
        return len(self._running)

    # --- running -------------------------------------------------------------

    async def run(self) -> None:
        """Read and dispatch until the connection ends; then fail what is pending."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                try:
                    await self._read_loop()
                finally:
                    # The peer can no longer receive answers: stop their work.
                    for task in self._running:
                        task.cancel()
        finally:
            self._finish()
            self._writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await self._writer.wait_closed()

    async def _read_loop(self) -> None:
        while not self._closing:
            try:
                data = await self._reader.read(_READ_CHUNK)
            except OSError as exc:
                self._close_reason = PeerUnavailable(f"connection to {self.peer} lost: {exc}")
                return
            if not data:
                return
            try:
                self._framing.receive_data(data)
                while not self._closing:
                    event = self._framing.next_event()
                    if event is NEED_DATA:
                        break
                    self._dispatch(event)  # type: ignore[arg-type]
            except ProtocolError as exc:
                log.warning("closing connection from %s: %s", self.peer, exc.message)
                self._send(encode_notification(ERROR_NOTICE, exc.to_wire()))
                self.close(exc)
            self._flush()
            try:
                await self._writer.drain()
            except OSError as exc:
                self._close_reason = PeerUnavailable(f"connection to {self.peer} lost: {exc}")
                return

    def _finish(self) -> None:
        self._closing = True
        reason = self._close_reason or PeerUnavailable(f"connection to {self.peer} closed")
        error = (
            reason
            if isinstance(reason, PeerUnavailable)
            else PeerUnavailable(
                f"connection to {self.peer} closed: {reason.code}: {reason.message}"
            )
        )
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    def close(self, reason: MeshError | None = None) -> None:
        """Flush what is queued, then close; pending calls fail with PeerUnavailable."""
        if self._closing:
            return
        self._closing = True
        if reason is not None and self._close_reason is None:
            self._close_reason = reason
        self._flush()
        # close() sends whatever is buffered before the FIN; the read loop
        # then sees EOF and run() finishes.
        self._writer.close()

    def abort(self) -> None:
        """Drop the connection at once, without flushing."""
        self._closing = True
        self._writer.transport.abort()

    # --- calling -------------------------------------------------------------

    async def call(self, method: str, params: list[Any], *, timeout: float | None = None) -> Any:
        """Call ``method`` on the peer and wait for its answer.

        Raises the error the peer answered with (mapped onto the error tree),
        :class:`RpcTimeout` after ``timeout`` seconds (the connection's
        default when None), or :class:`PeerUnavailable` if the connection is
        or becomes closed.
        """
        if self._closing:
            raise PeerUnavailable(f"connection to {self.peer} is closed")
        msgid = self._allocate_msgid()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msgid] = future
        limit = self._config.call_timeout_s if timeout is None else timeout
        try:
            self._send(encode_request(msgid, method, params, limit=self._config.max_message_bytes))
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            raise RpcTimeout(
                f"{method} on {self.peer} got no answer within {limit:.3g} s"
            ) from None
        finally:
            self._pending.pop(msgid, None)

    def notify(self, method: str, params: list[Any]) -> None:
        """Send a notification; it gets no answer and may be lost with the connection."""
        if self._closing:
            raise PeerUnavailable(f"connection to {self.peer} is closed")
        self._send(encode_notification(method, params, limit=self._config.max_message_bytes))

    def _allocate_msgid(self) -> int:
        msgid = self._next_msgid
        while msgid in self._pending:
            msgid = (msgid + 1) & MAX_MSGID
        self._next_msgid = (msgid + 1) & MAX_MSGID
        return msgid

    # --- writing -------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._outbox.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox or self._writer.transport.is_closing():
            self._outbox.clear()
            return
        data = self._outbox[0] if len(self._outbox) == 1 else b"".join(self._outbox)
        self._outbox.clear()
        self._writer.write(data)

    def _respond(self, msgid: int, result: Any) -> None:
        try:
            data = encode_response(msgid, None, result, limit=self._config.max_message_bytes)
        except MeshError as exc:
            data = encode_response(msgid, exc.to_wire(), None)
        self._send(data)

    def _respond_error(self, msgid: int, error: MeshError) -> None:
        self._send(encode_response(msgid, error.to_wire(), None))

    # --- dispatching ---------------------------------------------------------

    def _dispatch(self, event: Request | Response | Notification | InvalidMessage) -> None:
        if isinstance(event, Request):
            self._on_request(event)
        elif isinstance(event, Response):
            self._on_response(event)
        elif isinstance(event, Notification):
            self._on_notification(event)
        elif event.msgid is not None:
            self._respond_error(event.msgid, event.error)
        else:
            raise event.error

    def _on_request(self, request: Request) -> None:
        method = request.method
        if method == "hello":
            self._on_hello(request)
            return
        if self._handshake is not None and not self._handshake.authenticated:
            self._respond_error(
                request.msgid,
                AuthError("this node requires the mesh-key handshake (hello) before any call"),
            )
            self.close(AuthError("call before the mesh-key handshake"))
            return
        inline = self._methods.inline.get(method)
        if inline is not None:
            try:
                result = inline(self, request.params)
            except MeshError as exc:
                self._respond_error(request.msgid, exc)
            except Exception:
                log.exception("method %s failed unexpectedly", method)
                self._respond_error(
                    request.msgid, InternalError(f"{method} failed; see the node's log")
                )
            else:
                self._respond(request.msgid, result)
            return
        concurrent = self._methods.concurrent.get(method)
        if concurrent is None:
            self._respond_error(
                request.msgid,
                MethodNotFound(
                    f"no method {method!r}; this node serves {', '.join(self._methods.names())}"
                ),
            )
            return
        limit = self._config.max_in_flight_per_connection
        if len(self._running) >= limit or self._tasks is None:
            self._respond_error(
                request.msgid,
                Overloaded(
                    f"{limit} requests already in flight on this connection; "
                    "wait for answers or open another connection"
                ),
            )
            return
        task = self._tasks.create_task(self._run_concurrent(concurrent, request))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_concurrent(self, method: ConcurrentMethod, request: Request) -> None:
        try:
            result = await method(self, request.params)
        except MeshError as exc:
            if not self._closing:
                self._respond_error(request.msgid, exc)
        except Exception:
            log.exception("method %s failed unexpectedly", request.method)
            if not self._closing:
                self._respond_error(
                    request.msgid, InternalError(f"{request.method} failed; see the node's log")
                )
        else:
            if not self._closing:
                self._respond(request.msgid, result)

    def _on_hello(self, request: Request) -> None:
        handshake = self._handshake or auth.ServerHandshake(key=None, server_nonce=b"")
        try:
            result = handshake.hello(request.params)
        except AuthError as exc:
            log.warning("refused %s: %s", self.peer, exc.message)
            self._respond_error(request.msgid, exc)
            self.close(exc)
            return
        except MeshError as exc:
            self._respond_error(request.msgid, exc)
            return
        if self._hello_info is not None and result.get("auth") != "hmac-sha256":
            result = {**self._hello_info(), **result}
        self._respond(request.msgid, result)

    def _on_response(self, response: Response) -> None:
        future = self._pending.get(response.msgid)
        if future is None or future.done():
            # A call that timed out or was cancelled: its answer is not wanted.
            log.debug(
                "dropping response %d from %s: no call waits for it", response.msgid, self.peer
            )
            return
        if response.error is None:
            future.set_result(response.result)
        else:
            future.set_exception(error_from_wire(response.error))

    def _on_notification(self, notification: Notification) -> None:
        if notification.method == ERROR_NOTICE:
            error = error_from_wire(notification.params)
            log.warning("%s reports: %s: %s", self.peer, error.code, error.message)
            self._close_reason = error
            return
        handler = self._methods.notifications.get(notification.method)
        if handler is None:
            log.debug("ignoring notification %r from %s", notification.method, self.peer)
            return
        try:
            handler(self, notification.params)
        except MeshError as exc:
            log.warning(
                "bad %s notification from %s: %s", notification.method, self.peer, exc.message
            )


class RpcServer:
    """Accepts msgpack-RPC connections and serves ``methods`` on each.

    With a mesh ``key``, every connection must pass the ``hello`` handshake
    before anything else; without one, the server is open to anyone who can
    reach the port.
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

    async def start(self) -> int:
        """Bind the listening socket; returns the port (useful when asked for port 0)."""
        try:
            self._server = await asyncio.start_server(
                self._accept, self._host, self._port, limit=1024 * 1024, start_serving=False
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

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._tasks is not None
        handshake = auth.ServerHandshake(
            key=self._key, server_nonce=secrets.token_bytes(auth.NONCE_BYTES)
        )
        connection = RpcConnection(
            reader,
            writer,
            config=self._config,
            methods=self._methods,
            handshake=handshake,
            hello_info=self._hello_info,
        )
        self._connections.add(connection)
        self._tasks.create_task(self._serve_connection(connection))

    async def _serve_connection(self, connection: RpcConnection) -> None:
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)


class RpcClient:
    """One outgoing connection with the handshake done; use as ``async with``.

    ``key`` is the mesh key: with one, the client refuses a node that cannot
    prove it holds the same key (and an open node); without one, it refuses
    a node that demands a key, with a clear :class:`AuthError`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        config: RpcConfig | None = None,
        key: bytes | None = None,
        methods: Methods | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._config = config or RpcConfig()
        self._key = key
        self._methods = methods or Methods()
        self._connection: RpcConnection | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.hello: dict[str, Any] = {}

    @property
    def connection(self) -> RpcConnection:
        """The live connection; PeerUnavailable before connect or after close."""
        if self._connection is None:
            raise PeerUnavailable(f"not connected to {self.host}:{self.port}")
        return self._connection

    @property
    def closed(self) -> bool:
        """Whether the connection is gone (or was never opened)."""
        return self._connection is None or self._connection.closed

    async def __aenter__(self) -> RpcClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Open the connection and run the mesh-key handshake."""
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(self._config.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, limit=1024 * 1024
                )
        except TimeoutError:
            raise PeerUnavailable(f"cannot connect to {where}: timed out") from None
        except OSError as exc:
            raise PeerUnavailable(f"cannot connect to {where}: {exc.strerror or exc}") from exc
        self._connection = RpcConnection(reader, writer, config=self._config, methods=self._methods)
        self._reader_task = asyncio.create_task(self._connection.run(), name=f"rpc-reader {where}")
        try:
            await self._handshake()
        except BaseException:
            await self.aclose()
            raise

    async def _handshake(self) -> None:
        client_nonce = secrets.token_bytes(auth.NONCE_BYTES)
        timeout = self._config.connect_timeout_s
        first = await self.connection.call("hello", [{"nonce": client_nonce}], timeout=timeout)
        if not isinstance(first, dict):
            raise ProtocolError(f"hello answered {type(first).__name__}; expected a map")
        mode = first.get("auth")
        where = f"{self.host}:{self.port}"
        if mode == "none":
            if self._key is not None:
                raise AuthError(
                    f"{where} runs an open mesh (no key) but we hold a mesh key; refusing it"
                )
            self.hello = first
            return
        if mode != "hmac-sha256":
            raise ProtocolError(f"hello: unknown auth mode {mode!r} from {where}")
        if self._key is None:
            raise AuthError(f"{where} requires a mesh key; give one (--mesh-key-file or mesh_key=)")
        server_nonce = auth.check_nonce(first.get("nonce"))
        auth.verify_server_proof(self._key, client_nonce, server_nonce, first.get("proof"))
        proof = auth.client_proof(self._key, client_nonce, server_nonce)
        second = await self.connection.call("hello", [{"proof": proof}], timeout=timeout)
        if not isinstance(second, dict) or second.get("auth") != "ok":
            raise AuthError(f"{where} did not accept our mesh-key proof")
        self.hello = second

    async def call(self, method: str, params: list[Any], *, timeout: float | None = None) -> Any:
        """Call a method on the node; see :meth:`RpcConnection.call`."""
        return await self.connection.call(method, params, timeout=timeout)

    async def aclose(self) -> None:
        """Close the connection and wait for its reader to finish."""
        if self._connection is not None:
            self._connection.close()
        if self._reader_task is not None:
            task, self._reader_task = self._reader_task, None
            await task

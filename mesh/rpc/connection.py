"""One msgpack-RPC connection: an asyncio Protocol around :mod:`mesh.core.wire.framing`.

The connection is symmetric: either side may call, answer and notify, which
is what node-to-node traffic needs. Calls are pipelined: many may be in
flight and answers come back in any order.

It is a Protocol rather than a pair of streams because bytes are then parsed
in the same callback that receives them: no extra copy into a stream buffer
and no extra event-loop turn per message. Outgoing messages produced in one
loop turn are joined into one ``write``, so a burst of small calls costs one
syscall. Beside it: :mod:`mesh.rpc.methods` (what it answers),
:mod:`mesh.rpc.calls` (calls waiting for answers, with their deadlines),
:mod:`mesh.rpc.handshake` (the ``hello`` steps), :mod:`mesh.rpc.outbox`
(writing) and :mod:`mesh.rpc.sealed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mesh.config import RpcConfig
from mesh.core.wire import auth, sealing
from mesh.core.wire.framing import (
    NEED_DATA,
    InvalidMessage,
    Notification,
    Request,
    Response,
    RpcFraming,
)
from mesh.errors import (
    AuthError,
    InternalError,
    MeshError,
    Overloaded,
    PeerUnavailable,
    ProtocolError,
    error_from_wire,
)
from mesh.rpc.calls import PendingCalls
from mesh.rpc.handshake import LinkHandshake
from mesh.rpc.methods import ConcurrentMethod, InlineMethod, Methods
from mesh.rpc.outbox import Outbox
from mesh.rpc.sealed import SealedLink

__all__ = ["ERROR_NOTICE", "Methods", "RpcConnection"]

log = logging.getLogger(__name__)

# The notification that tells a peer why we are about to close.
ERROR_NOTICE = "error"
# Outgoing bytes buffered in the transport before we stop reading new
# requests from this peer until it has read our answers.
_WRITE_HIGH_WATER = 4 * 1024 * 1024


class RpcConnection(asyncio.Protocol):
    """One msgpack-RPC connection; :meth:`run` owns its tasks until it ends.

    ``handshake`` is the server side's mesh-key state; None means this side
    does not ask the peer to authenticate (a client, which checks the server
    with its own handshake instead).
    """

    def __init__(
        self,
        *,
        config: RpcConfig,
        methods: Methods,
        handshake: auth.ServerHandshake | None = None,
        hello_info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._config = config
        self._methods = methods
        self._handshake = handshake
        self._serving_peer = handshake is not None
        self._hello = LinkHandshake(handshake, hello_info)
        self._framing = RpcFraming(max_message_size=config.max_message_bytes)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._calls = PendingCalls(self._loop)
        outbox = self._outbox = Outbox(self._loop)
        # Bound once: these are called for every message.
        self._send = outbox.send
        self._flush = outbox.flush
        self._running: set[asyncio.Task[None]] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._closing = False
        self._close_reason: MeshError | None = None
        self._lost = asyncio.Event()
        self.peer = "(not connected)"
        # The peer's IP address, as the connection sees it (None before it is made).
        self.peer_host: str | None = None
        # When the peer last sent us anything (loop time; -inf before it did):
        # membership counts any message, not only gossip, as a sign of life.
        self.last_received = float("-inf")
        # Sealing (mesh.core.wire.sealing): None on a plain link until the
        # handshake's switch (see LinkHandshake): every byte after it is sealed.
        self._opener: sealing.Opener | None = None
        # Whether a client's peer-only notifications were logged (once per connection).
        self._warned_role = False

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed; calls then fail at once."""
        return self._closing

    @property
    def role(self) -> str:
        """The peer's role: for a server, what its handshake proved (``"client"``
        until then); for the side that dialed, ``"node"`` (we only dial nodes)."""
        return self._hello.role

    @property
    def peer_name(self) -> str:
        """The node name the peer's handshake declared ("" for a client or the dialing side)."""
        return self._hello.peer_name

    @property
    def by_client_key(self) -> bool:
        """Whether the peer proved the node's client key (a client only, never a member)."""
        return self._hello.by_client_key

    @property
    def unparsed_bytes(self) -> int:
        """Bytes received and not yet parsed into messages: a message still
        arriving, and on a sealed link a frame still arriving too."""
        opener = self._opener
        return self._framing.buffered + (0 if opener is None else opener.buffered)

    @property
    def sealed(self) -> bool:
        """Whether frames on this link are sealed now."""
        return self._outbox.sealed is not None

    @property
    def bytes_sent(self) -> int:
        """Bytes handed to the transport, for figures such as gossip cost."""
        return self._outbox.bytes_sent

    @property
    def in_flight(self) -> int:
        """Concurrent requests from the peer being worked on now."""
        return len(self._running)

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = self._outbox.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.peer_host = str(peer[0]) if isinstance(peer, tuple) else None
        self._calls.peer = self.peer
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        # Nothing is read until run() holds the task group that answers it.
        transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.last_received = self._loop.time()
        try:
            opener = self._opener
            if opener is not None:
                for plaintext in opener.receive_data(data):
                    if self._closing:
                        break
                    self._feed(plaintext)
                if opener.broken is not None:
                    raise opener.broken
            else:
                self._feed(data)
                if self._hello.switch is not None:
                    self._start_sealing(data)
        except ProtocolError as exc:
            log.warning("closing connection with %s: %s", self.peer, exc.message)
            self._send(self._framing.notification(ERROR_NOTICE, exc.to_wire()))
            self.close(exc)
        self._flush()

    def _feed(self, data: bytes) -> None:
        self._framing.receive_data(data)
        hello = self._hello
        while not self._closing and hello.switch is None:
            event = self._framing.next_event()
            if event is NEED_DATA:
                break
            self._dispatch(event)  # type: ignore[arg-type]

    def _start_sealing(self, data: bytes) -> None:
        """The handshake's last message was just parsed: seal from the next byte on.

        What was queued before it (the server's ``ok``) still goes out plain.
        Bytes that came after it in the same chunk are already sealed frames.
        """
        session = self._hello.take_switch()
        self._flush()
        sealed = self._outbox.sealed = SealedLink(
            session,
            serving=self._handshake is not None,
            max_message_bytes=self._config.max_message_bytes,
        )
        self._opener = sealed.opener
        rest = self._framing.buffered
        if rest:
            if rest > len(data):
                raise ProtocolError("plain bytes before the end of the handshake's last message")
            self._framing = RpcFraming(max_message_size=self._config.max_message_bytes)
            for plaintext in sealed.opener.receive_data(data[len(data) - rest :]):
                self._feed(plaintext)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._close_reason is None:
            self._close_reason = PeerUnavailable(f"connection to {self.peer} lost: {exc}")
        self._closing = True
        self._fail_pending()
        self._lost.set()

    def pause_writing(self) -> None:
        # An accepted peer that does not read our answers: stop taking its
        # requests until it does. (A client keeps reading: answers to its own
        # calls are what it waits for.)
        if self._serving_peer and self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        transport = self._transport
        if self._serving_peer and transport is not None and not transport.is_closing():
            transport.resume_reading()

    # --- lifetime ----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it is lost; then stop the work it started."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
            try:
                await self._lost.wait()
            finally:
                # The peer can no longer receive answers: stop their work.
                for task in self._running:
                    task.cancel()
                if self._transport is not None:
                    self._transport.abort()

    def _fail_pending(self) -> None:
        self._calls.fail_all(self._close_reason)

    def close(self, reason: MeshError | None = None) -> None:
        """Flush what is queued, then close; pending calls fail with PeerUnavailable."""
        if self._closing:
            return
        self._closing = True
        if reason is not None and self._close_reason is None:
            self._close_reason = reason
        self._flush()
        if self._transport is not None:
            # close() sends what is buffered, then the FIN; connection_lost follows.
            self._transport.close()
        else:
            self._lost.set()

    def abort(self) -> None:
        """Drop the connection at once, without flushing."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()
        else:
            self._lost.set()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""
        await self._lost.wait()

    # --- calling -------------------------------------------------------------------

    async def call(self, method: str, params: list[Any], *, timeout: float | None = None) -> Any:
        """Call ``method`` on the peer and wait for its answer.

        Raises the error the peer answered with (mapped onto the error tree),
        :class:`RpcTimeout` after ``timeout`` seconds (the connection's
        default when None), or :class:`PeerUnavailable` if the connection is
        or becomes closed.
        """
        if self._closing:
            raise PeerUnavailable(f"connection to {self.peer} is closed")
        calls = self._calls
        msgid = calls.allocate()
        data = self._framing.request(msgid, method, params)
        future = calls.expect(
            msgid, method, self._config.call_timeout_s if timeout is None else timeout
        )
        self._send(data)
        try:
            return await future
        finally:
            calls.forget(msgid)

    async def finish_handshake(
        self, params: list[Any], session: auth.Session, *, timeout: float
    ) -> Any:
        """Send the final ``hello``; once the node accepts it, seal every frame
        after its answer with ``session``'s keys (a session whose seal is
        ``"none"`` stays plain)."""
        self._hello.final_hello(self._calls.next_msgid(), session)
        return await self.call("hello", params, timeout=timeout)

    def notify(self, method: str, params: list[Any]) -> None:
        """Send a notification; it gets no answer and may be lost with the connection."""
        if self._closing:
            raise PeerUnavailable(f"connection to {self.peer} is closed")
        self._send(self._framing.notification(method, params))

    def send_encoded(self, data: bytes) -> None:
        """Send one message that is already encoded, such as a notification for many peers.

        Encode it with :mod:`mesh.core.wire.framing` under this connection's size limit.
        """
        if self._closing:
            raise PeerUnavailable(f"connection to {self.peer} is closed")
        self._send(data)

    # --- writing -------------------------------------------------------------------

    def _wire(self, data: bytes) -> bytes:
        """``data`` as it goes on the wire now (see :meth:`Outbox.wire`)."""
        return self._outbox.wire(data)

    def _respond(self, msgid: int, result: Any) -> None:
        try:
            data = self._framing.response(msgid, None, result)
        except MeshError as exc:
            data = self._framing.response(msgid, exc.to_wire(), None)
        self._send(data)

    def _respond_error(self, msgid: int, error: MeshError) -> None:
        self._send(self._framing.response(msgid, error.to_wire(), None))

    # --- dispatching ---------------------------------------------------------------

    def _dispatch(self, event: Request | Response | Notification | InvalidMessage) -> None:
        if type(event) is Response:
            self._on_response(event)
        elif type(event) is Request:
            self._on_request(event)
        elif type(event) is Notification:
            self._on_notification(event)
        elif isinstance(event, InvalidMessage):
            if event.msgid is None:
                raise event.error
            self._respond_error(event.msgid, event.error)

    def _on_request(self, request: Request) -> None:
        method = request.method
        if method == "hello":
            self._on_hello(request)
            return
        if self._hello.awaited:
            self._respond_error(
                request.msgid,
                AuthError("this node requires the mesh-key handshake (hello) before any call"),
            )
            self.close(AuthError("call before the mesh-key handshake"))
            return
        try:
            inline, concurrent = self._methods.find(method, self.role)
        except MeshError as exc:
            self._respond_error(request.msgid, exc)
            return
        if concurrent is None:
            assert inline is not None
            self._run_inline(inline, request)
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

    def _run_inline(self, method: InlineMethod, request: Request) -> None:
        try:
            result = method(self, request.params)
        except MeshError as exc:
            self._respond_error(request.msgid, exc)
        except Exception:
            # The boundary of the peer's call: a bug here must not take the
            # connection down, and the peer deserves an answer.
            log.exception("method %s failed unexpectedly", request.method)
            self._respond_error(
                request.msgid, InternalError(f"{request.method} failed; see the node's log")
            )
        else:
            self._respond(request.msgid, result)

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
        try:
            result = self._hello.answer(request.params)
        except AuthError as exc:
            log.warning("refused %s: %s", self.peer, exc.message)
            self._respond_error(request.msgid, exc)
            self.close(exc)
            return
        except MeshError as exc:
            self._respond_error(request.msgid, exc)
            return
        self._respond(request.msgid, result)

    def _on_response(self, response: Response) -> None:
        hello = self._hello
        if response.msgid == hello.final_msgid:
            # The answer to our final hello: if it accepted us, the rest is sealed.
            hello.final_answered(accepted=response.error is None)
        self._calls.resolve(response.msgid, response.error, response.result)

    def _on_notification(self, notification: Notification) -> None:
        if notification.method == ERROR_NOTICE:
            error = error_from_wire(notification.params)
            log.warning("%s reports: %s: %s", self.peer, error.code, error.message)
            self._close_reason = error
            return
        if self._hello.awaited:
            # Gossip from a peer that has not proved the key must never count.
            error = AuthError("this node requires the mesh-key handshake before any message")
            self._send(self._framing.notification(ERROR_NOTICE, error.to_wire()))
            self.close(error)
            return
        if notification.method in self._methods.peer_only and self.role != auth.NODE:
            if not self._warned_role:
                self._warned_role = True
                log.warning(
                    "ignoring %s notifications from %s: it is a %s, not a node",
                    notification.method,
                    self.peer,
                    self.role,
                )
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

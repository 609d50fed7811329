"""One msgpack-RPC connection: an asyncio Protocol around :mod:`mesh.core.wire.framing`.

The connection is symmetric: either side may call, answer and notify, which
is what node-to-node traffic needs. Calls are pipelined: many may be in
flight and answers come back in any order.

It is a Protocol rather than a pair of streams because bytes are then parsed
in the same callback that receives them: no extra copy into a stream buffer
and no extra event-loop turn per message. Outgoing messages produced in one
loop turn are joined into one ``write``, so a burst of small calls costs one
syscall. Per-call timeouts share one timer per connection (a heap of
deadlines) instead of one timer each, which matters with thousands of calls
in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.config import RpcConfig
from mesh.core.wire import auth, sealing
from mesh.core.wire.framing import (
    MAX_MSGID,
    NEED_DATA,
    InvalidMessage,
    Notification,
    Request,
    Response,
    RpcFraming,
)
from mesh.errors import (
    AuthError,
    Forbidden,
    InternalError,
    MeshError,
    MethodNotFound,
    Overloaded,
    PeerUnavailable,
    ProtocolError,
    RpcTimeout,
    error_from_wire,
)
from mesh.rpc.sealed import SealedLink

__all__ = ["ERROR_NOTICE", "Methods", "RpcConnection"]

log = logging.getLogger(__name__)

# The notification that tells a peer why we are about to close.
ERROR_NOTICE = "error"
# Outgoing bytes buffered in the transport before we stop reading new
# requests from this peer until it has read our answers.
_WRITE_HIGH_WATER = 4 * 1024 * 1024
# Messages at least this big are written on their own rather than joined.
_JOIN_LIMIT = 64 * 1024

InlineMethod = Callable[["RpcConnection", list[Any]], Any]
ConcurrentMethod = Callable[["RpcConnection", list[Any]], Awaitable[Any]]
NotificationHandler = Callable[["RpcConnection", list[Any]], None]


@dataclass(frozen=True)
class Methods:
    """What a connection answers.

    ``inline`` methods are quick and never wait (``ping``, ``status``); they
    are answered right where the request is parsed, in order, with no task
    per call. ``concurrent`` methods (``infer``) each run in their own task
    so that a slow one never holds up the others, up to the connection's
    in-flight limit. ``notifications`` are one-way messages; they get no reply.

    ``peer_only`` names the methods and notifications only a caller that
    passed the handshake as a node may use (see :mod:`mesh.core.wire.auth`);
    a client calling one is answered :class:`~mesh.errors.Forbidden`.
    """

    inline: Mapping[str, InlineMethod] = field(default_factory=dict)
    concurrent: Mapping[str, ConcurrentMethod] = field(default_factory=dict)
    notifications: Mapping[str, NotificationHandler] = field(default_factory=dict)
    peer_only: frozenset[str] = frozenset()

    def names(self) -> list[str]:
        """Every callable method name, sorted."""
        return sorted({*self.inline, *self.concurrent, "hello"})


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
        self._hello_info = hello_info
        self._framing = RpcFraming(max_message_size=config.max_message_bytes)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_msgid = 0
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._running: set[asyncio.Task[None]] = set()
        self._tasks: asyncio.TaskGroup | None = None
        self._closing = False
        self._close_reason: MeshError | None = None
        self._lost = asyncio.Event()
        # Call deadlines: (when, sequence, future, method, seconds), earliest first.
        self._deadlines: list[tuple[float, int, asyncio.Future[Any], str, float]] = []
        self._sequence = itertools.count()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = float("inf")
        self.peer = "(not connected)"
        # The peer's IP address, as the connection sees it (None before it is made).
        self.peer_host: str | None = None
        # Bytes handed to the transport, for figures such as gossip cost.
        self.bytes_sent = 0
        # When the peer last sent us anything (loop time; -inf before it did):
        # membership counts any message, not only gossip, as a sign of life.
        self.last_received = float("-inf")
        # Sealing (mesh.core.wire.sealing): None on a plain link. _switch is
        # set by the handshake's last message: every byte after it is sealed.
        self._sealed: SealedLink | None = None
        self._opener: sealing.Opener | None = None
        self._switch: auth.Session | None = None
        # The client side's final hello, whose answer starts sealing.
        self._seal_msgid: int | None = None
        self._seal_session: auth.Session | None = None
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
        if self._handshake is None:
            return auth.NODE
        return self._handshake.session.role

    @property
    def peer_name(self) -> str:
        """The node name the peer's handshake declared ("" for a client or the dialing side)."""
        return "" if self._handshake is None else self._handshake.session.name

    @property
    def by_client_key(self) -> bool:
        """Whether the peer proved the node's client key (a client only, never a member)."""
        return self._handshake is not None and self._handshake.session.by_client_key

    @property
    def unparsed_bytes(self) -> int:
        """Bytes received and not yet parsed into messages: a message still
        arriving, and on a sealed link a frame still arriving too."""
        opener = self._opener
        return self._framing.buffered + (0 if opener is None else opener.buffered)

    @property
    def sealed(self) -> bool:
        """Whether frames on this link are sealed now."""
        return self._sealed is not None

    @property
    def in_flight(self) -> int:
        """Concurrent requests from the peer being worked on now."""
        return len(self._running)

    # --- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.peer_host = str(peer[0]) if isinstance(peer, tuple) else None
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
                if self._switch is not None:
                    self._start_sealing(self._switch, data)
        except ProtocolError as exc:
            log.warning("closing connection with %s: %s", self.peer, exc.message)
            self._send(self._framing.notification(ERROR_NOTICE, exc.to_wire()))
            self.close(exc)
        self._flush()

    def _feed(self, data: bytes) -> None:
        self._framing.receive_data(data)
        while not self._closing and self._switch is None:
            event = self._framing.next_event()
            if event is NEED_DATA:
                break
            self._dispatch(event)  # type: ignore[arg-type]

    def _start_sealing(self, session: auth.Session, data: bytes) -> None:
        """The handshake's last message was just parsed: seal from the next byte on.

        What was queued before it (the server's ``ok``) still goes out plain.
        Bytes that came after it in the same chunk are already sealed frames.
        """
        self._switch = None
        self._flush()
        sealed = self._sealed = SealedLink(
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
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()

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
        msgid = self._allocate_msgid()
        future: asyncio.Future[Any] = self._loop.create_future()
        data = self._framing.request(msgid, method, params)
        self._pending[msgid] = future
        self._send(data)
        self._add_deadline(
            future, method, self._config.call_timeout_s if timeout is None else timeout
        )
        try:
            return await future
        finally:
            self._pending.pop(msgid, None)

    async def finish_handshake(
        self, params: list[Any], session: auth.Session, *, timeout: float
    ) -> Any:
        """Send the final ``hello``; once the node accepts it, seal every frame
        after its answer with ``session``'s keys (a session whose seal is
        ``"none"`` stays plain)."""
        if session.seal != auth.SEAL_NONE:
            self._seal_msgid = self._next_msgid_after_pending()
            self._seal_session = session
        return await self.call("hello", params, timeout=timeout)

    def _next_msgid_after_pending(self) -> int:
        # The msgid call() will take next (see _allocate_msgid).
        msgid = self._next_msgid
        while msgid in self._pending:
            msgid = (msgid + 1) & MAX_MSGID
        return msgid

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

    def _allocate_msgid(self) -> int:
        msgid = self._next_msgid
        while msgid in self._pending:
            msgid = (msgid + 1) & MAX_MSGID
        self._next_msgid = (msgid + 1) & MAX_MSGID
        return msgid

    def _add_deadline(self, future: asyncio.Future[Any], method: str, seconds: float) -> None:
        when = self._loop.time() + seconds
        if len(self._deadlines) > 2 * len(self._pending) + 1024:
            # Answered calls leave their deadline behind until it comes up;
            # sweep them now and then so the heap tracks only live calls.
            self._deadlines = [entry for entry in self._deadlines if not entry[2].done()]
            heapq.heapify(self._deadlines)
        heapq.heappush(self._deadlines, (when, next(self._sequence), future, method, seconds))
        if when < self._deadline_at:
            self._arm_deadline_timer(when)

    def _arm_deadline_timer(self, when: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = when
        self._deadline_timer = self._loop.call_at(when, self._expire_calls)

    def _expire_calls(self) -> None:
        self._deadline_timer = None
        self._deadline_at = float("inf")
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][2].done() or deadlines[0][0] <= now):
            _, _, future, method, seconds = heapq.heappop(deadlines)
            if not future.done():
                future.set_exception(
                    RpcTimeout(f"{method} on {self.peer} got no answer within {seconds:.3g} s")
                )
        if deadlines:
            self._arm_deadline_timer(deadlines[0][0])

    # --- writing -------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._outbox.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox = self._outbox
        if not outbox:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            outbox.clear()
            return
        if self._sealed is not None:
            self.bytes_sent += self._sealed.write(transport, outbox)
            outbox.clear()
            return
        self.bytes_sent += sum(len(data) for data in outbox)
        if len(outbox) == 1:
            transport.write(outbox[0])
        else:
            # Join small messages into one write; hand big ones over as they
            # are, since copying megabytes into a join costs more than a syscall.
            small: list[bytes] = []
            for data in outbox:
                if len(data) < _JOIN_LIMIT:
                    small.append(data)
                    continue
                if small:
                    transport.write(b"".join(small))
                    small.clear()
                transport.write(data)
            if small:
                transport.write(b"".join(small))
        outbox.clear()

    def _wire(self, data: bytes) -> bytes:
        """``data`` as it goes on the wire now: one sealed frame on a sealed link.
        For a last word written past the outbox (see RpcServer's expel)."""
        if self._sealed is None:
            return data
        return self._sealed.frame(data)

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
        if self._handshake is not None and not self._handshake.authenticated:
            self._respond_error(
                request.msgid,
                AuthError("this node requires the mesh-key handshake (hello) before any call"),
            )
            self.close(AuthError("call before the mesh-key handshake"))
            return
        if method in self._methods.peer_only and self.role != auth.NODE:
            self._respond_error(
                request.msgid,
                Forbidden(
                    f"{method} is for mesh nodes only; this connection's handshake made it "
                    f"a {self.role} (a node says role 'node' in hello and holds the mesh key)"
                ),
            )
            return
        inline = self._methods.inline.get(method)
        if inline is not None:
            self._run_inline(inline, request)
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
            # Say who we are only once the peer may know it.
            result = {**self._hello_info(), **result}
        self._respond(request.msgid, result)
        session = handshake.session
        if result.get("auth") == "ok" and session.seal != auth.SEAL_NONE and self._sealed is None:
            self._switch = session

    def _on_response(self, response: Response) -> None:
        if response.msgid == self._seal_msgid:
            # The answer to our final hello: if it accepted us, the rest is sealed.
            self._seal_msgid = None
            if response.error is None:
                self._switch = self._seal_session
        future = self._pending.get(response.msgid)
        if future is None or future.done():
            # A call that timed out or was cancelled: its answer is not wanted.
            log.debug("dropping response %d from %s: nobody waits", response.msgid, self.peer)
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
        if self._handshake is not None and not self._handshake.authenticated:
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

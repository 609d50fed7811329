"""The calls one RPC connection made and still waits on: msgids, futures, deadlines.

Apart from :mod:`mesh.rpc.connection` because it is the calling side's own
bookkeeping, with no parsing or writing in it. Per-call timeouts share one
timer per connection (a heap of deadlines) instead of one timer each, which
matters with thousands of calls in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from typing import Any

from mesh.core.wire.framing import MAX_MSGID
from mesh.errors import MeshError, PeerUnavailable, RpcTimeout, error_from_wire

__all__ = ["PendingCalls"]

log = logging.getLogger(__name__)


class PendingCalls:
    """Calls waiting for their answer, by msgid, each with its deadline.

    ``peer`` names the other side in the errors and logs (the connection
    sets it once it knows it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_msgid = 0
        # Call deadlines: (when, sequence, future, method, seconds), earliest first.
        self._deadlines: list[tuple[float, int, asyncio.Future[Any], str, float]] = []
        self._sequence = itertools.count()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = float("inf")
        self.peer = "(not connected)"

    def next_msgid(self) -> int:
        """The msgid :meth:`allocate` will give next (for a call about to be sent)."""
        msgid = self._next_msgid
        while msgid in self._pending:
            msgid = (msgid + 1) & MAX_MSGID
        return msgid

    def allocate(self) -> int:
        """A msgid no pending call uses."""
        msgid = self.next_msgid()
        self._next_msgid = (msgid + 1) & MAX_MSGID
        return msgid

    def expect(self, msgid: int, method: str, seconds: float) -> asyncio.Future[Any]:
        """The future that gets the answer to ``msgid``, or RpcTimeout after ``seconds``."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[msgid] = future
        when = self._loop.time() + seconds
        if len(self._deadlines) > 2 * len(self._pending) + 1024:
            # Answered calls leave their deadline behind until it comes up;
            # sweep them now and then so the heap tracks only live calls.
            self._deadlines = [entry for entry in self._deadlines if not entry[2].done()]
            heapq.heapify(self._deadlines)
        heapq.heappush(self._deadlines, (when, next(self._sequence), future, method, seconds))
        if when < self._deadline_at:
            self._arm_deadline_timer(when)
        return future

    def forget(self, msgid: int) -> None:
        """The caller stopped waiting on ``msgid`` (answered, timed out or cancelled)."""
        self._pending.pop(msgid, None)

    def resolve(self, msgid: int, error: Any, result: Any) -> None:
        """Hand a response to the call that waits for it, if one still does."""
        future = self._pending.get(msgid)
        if future is None or future.done():
            # A call that timed out or was cancelled: its answer is not wanted.
            log.debug("dropping response %d from %s: nobody waits", msgid, self.peer)
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error_from_wire(error))

    def fail_all(self, reason: MeshError | None) -> None:
        """The connection closed (for ``reason``, if known): fail every pending
        call with PeerUnavailable and drop every deadline."""
        reason = reason or PeerUnavailable(f"connection to {self.peer} closed")
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

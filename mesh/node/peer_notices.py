"""What peers send to work sharing: ``steal`` asks and the ``result``,
``handoff``, ``cancel``, ``nudge`` and ``giveback`` notifications.

Each is parsed (see :mod:`mesh.core.wire.handover`) and checked against the
name the sender's handshake gave it before the scheduler hears of it: a node
steals, answers and gives back only as itself. :class:`PeerNotices` is a base
of :class:`~mesh.node.work_sharing.WorkSharing`, apart from it so that the
checks on what comes in sit together, away from the carrying out of what the
scheduler decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mesh.core.scheduling.jobs import Action
from mesh.core.scheduling.scheduler import Scheduler
from mesh.core.wire.handover import (
    Outcome,
    Tensors,
    encode_grant,
    parse_cancel,
    parse_giveback,
    parse_handoff,
    parse_nudge,
    parse_result,
    parse_steal_ask,
)
from mesh.errors import Forbidden, MeshError
from mesh.log_once import WarnOnce
from mesh.node.early_results import EarlyResults
from mesh.rpc import RpcConnection

__all__ = ["PeerNotices"]


class PeerNotices:
    """The handlers the node's RPC face calls for what peers send.

    The subclass provides the state (``node_id``, ``scheduler``, the early
    results and the warn-once log) and carries out the scheduler's actions
    (:meth:`_do`, :meth:`_rearm`) on its clock (:meth:`_now`).
    """

    node_id: str
    scheduler: Scheduler[Tensors]
    _early: EarlyResults
    _warn_once: WarnOnce

    def _do(
        self,
        actions: list[Action],
        *,
        outcome: Outcome | None = None,
        ran_on: str | None = None,
    ) -> None:
        raise NotImplementedError

    def _rearm(self) -> None:
        raise NotImplementedError

    def _now(self) -> float:
        raise NotImplementedError

    def on_steal(self, connection: RpcConnection, params: list[Any]) -> dict[str, Any]:
        """``steal``: hand queued work to the thief that asks (as itself only)."""
        ask = parse_steal_ask(params)
        if ask.thief != connection.peer_name:
            # Jobs are bound to the thief's name: results are accepted only
            # from the connection whose handshake gave that name.
            raise Forbidden(
                f"steal ask names thief {ask.thief!r} but this connection's handshake "
                f"named {connection.peer_name!r}; a node steals as itself"
            )
        now = self._now()
        if connection.closed:
            # The reply could not reach the thief: hand it nothing rather
            # than jobs that would wait out their lease in limbo.
            return encode_grant([], self.scheduler.load_summary(now), now)
        jobs, actions = self.scheduler.grant(ask, now)
        reply = encode_grant(jobs, self.scheduler.load_summary(now), now)
        self._do(actions)
        return reply

    def on_result(self, connection: RpcConnection, params: list[Any]) -> None:
        """``result``: a peer ran one of our requests; taken only from the node
        holding it, as its connection's handshake names it."""
        notice = self._parse(parse_result, params, connection)
        if notice is None or notice.owner_id != self.node_id:
            return
        sender = connection.peer_name
        if notice.ran_on != sender:
            self._refuse(connection, f"a result that says it ran on {notice.ran_on!r}")
            return
        holder = self.scheduler.holder(notice.seq, notice.epoch)
        if holder is not None and holder != sender:
            # Its hand-off may still be on the way over the holder's link.
            self._early.keep(notice.seq, notice.epoch, sender, notice.outcome)
            return
        self._do(
            self.scheduler.result(notice.seq, notice.epoch, self._now(), sender),
            outcome=notice.outcome,
            ran_on=sender,
        )

    def on_handoff(self, connection: RpcConnection, params: list[Any]) -> None:
        """``handoff``: a holder of our request passed it on."""
        notice = self._parse(parse_handoff, params, connection)
        if notice is None or notice.owner_id != self.node_id:
            return
        self.scheduler.handoff(
            notice.seq,
            notice.epoch,
            notice.holder,
            notice.lease_s,
            self._now(),
            notice.ask,
            sender=connection.peer_name,
        )
        self._rearm()
        if self.scheduler.holder(notice.seq, notice.epoch) == notice.holder:
            early = self._early.take(notice.seq, notice.epoch, notice.holder)
            if early is not None:
                self._do(
                    self.scheduler.result(notice.seq, notice.epoch, self._now(), notice.holder),
                    outcome=early,
                    ran_on=notice.holder,
                )

    def on_cancel(self, connection: RpcConnection, params: list[Any]) -> None:
        """``cancel``: an owner no longer wants a request we hold."""
        key = self._parse(parse_cancel, params, connection)
        if key is not None:
            self._do(self.scheduler.cancel_foreign(key, self._now(), connection.peer_name))

    def on_nudge(self, connection: RpcConnection, params: list[Any]) -> None:
        """``nudge``: a peer holds work we could take."""
        name = self._parse(parse_nudge, params, connection)
        if name is not None:
            self._do(self.scheduler.nudged(name, self._now()))

    def on_giveback(self, connection: RpcConnection, params: list[Any]) -> None:
        """``giveback``: a draining holder hands one of our requests back unrun."""
        notice = self._parse(parse_giveback, params, connection)
        if notice is None or notice.owner_id != self.node_id:
            return
        if notice.holder != connection.peer_name:
            self._refuse(connection, f"a giveback for holder {notice.holder!r}")
            return
        self._do(self.scheduler.given_back(notice.seq, notice.epoch, notice.holder, self._now()))

    # --- helpers ---------------------------------------------------------------

    def _parse(
        self, parse: Callable[[list[Any]], Any], params: list[Any], connection: RpcConnection
    ) -> Any:
        try:
            return parse(params)
        except MeshError as exc:
            self._warn_once(
                f"parse:{connection.peer}", "bad message from %s: %s", connection.peer, exc.message
            )
            return None

    def _refuse(self, connection: RpcConnection, what: str) -> None:
        self._warn_once(
            f"forged:{connection.peer}",
            "ignoring %s from %s: its handshake named it %r",
            what,
            connection.peer,
            connection.peer_name,
        )

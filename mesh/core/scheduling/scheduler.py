"""Where each request runs: ownership, queues, and work stealing, as pure rules.

The scheduler is fed events (a request arrives, a local run finishes, a peer
asks for work, a grant arrives, a result comes back, a peer dies, time
passes) and answers each with a list of actions for the node to carry out
(:class:`RunLocal`, :class:`Reply`, :class:`SendResult`, :class:`Steal`,
:class:`Nudge`, :class:`Handoff`, :class:`Cancel`, :class:`Abort`). It never
does I/O and never reads a clock: ``now`` comes in with every event.

It composes five parts, each with its own state and its rules in its
docstring: the owner's :mod:`.ledger` (ownership, epochs, leases: delivery
exactly once), the per-model :mod:`.queues`, the :mod:`.stealing` policy
(power of two choices, speed-weighted shares, hysteresis, nudges), the
:mod:`.estimates` that make load time rather than queue length, and the
:mod:`.timers` for deadlines, leases and back-offs (a request past its
deadline, or whose client left, leaves every queue without running). What
stays here is the order of things: which part hears of an event, and what
follows from it. The parts themselves, what the node reads of them, and the
steps every event ends with (start, steal, nudge; requeue, expire, stop) are
in :mod:`.parts`, the base of :class:`Scheduler`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from mesh.core.policy.capacity import Placement, place
from mesh.core.scheduling.draining import (
    DrainClock,
    abandoned,
    drain_complete,
    drain_grant,
    refused,
)
from mesh.core.scheduling.jobs import (
    Action,
    Cancel,
    GiveBack,
    Handoff,
    Job,
    JobKey,
    JobState,
    PeerLoad,
    Reply,
    SendResult,
    StealAsk,
    runs,
)
from mesh.core.scheduling.ledger import lease_s
from mesh.core.scheduling.parts import SchedulerParts, snapshot
from mesh.core.scheduling.reconcile import Holding, missing, report
from mesh.core.scheduling.stealing import movable, select_grant
from mesh.core.scheduling.timers import TimerKind
from mesh.errors import ModelNotFound

P = TypeVar("P")

__all__ = ["Scheduler", "snapshot"]


class Scheduler(SchedulerParts[P]):
    """The scheduling rules of one node. Not thread-safe; feed it from one loop.

    Made with ``Scheduler(node_id=, name=, models=, config=, rng=)``; its
    parts, the read-only questions (``owned()``, ``wait_s()``,
    ``load_summary()``...) and the steps every event ends with are
    :class:`~mesh.core.scheduling.parts.SchedulerParts`'.
    """

    # --- requests entering here ---------------------------------------------

    def placement(
        self,
        model: str,
        deadline: float | None,
        now: float,
        *,
        gateway: bool = False,
        default_s: float | None = None,
        sha256: str | None = None,
    ) -> Placement:
        """Whether a new request for ``model`` stays in the mesh (see mesh.core.policy.capacity).

        Its holders are this node, when the model runs here, and, when work
        is shared, every peer that runs the same model: they would all drain
        this node's queue for it, each from when it is free. ``gateway`` and
        ``default_s``: whether a gateway could take it instead, and the
        deadline a request without one is then judged by. ``sha256``: the
        version the request was resolved to (None: any).
        """
        sha = sha256
        here = runs(self._models, model, sha)
        holders = [self._estimates.capacity(self.name, model, now)] if here else []
        if self.config.steal:
            holders += self._peers.capacities(model, sha, now, self._estimates.estimate)
        return place(
            model=model,
            remaining_s=None if deadline is None else deadline - now,
            holders=holders,
            ahead=self._queues.count(model),
            queued=self.queued(),
            queue_cap=self.config.queue_cap,
            headroom=self.config.deadline_headroom,
            gateway=gateway,
            default_s=default_s,
        )

    def submit(
        self,
        *,
        model: str,
        payload: P,
        size_bytes: int,
        deadline: float | None,
        request_id: str | None,
        now: float,
        sha256: str | None = None,
    ) -> tuple[int, list[Action]]:
        """Take ownership of a new request; its seq, and what to do.

        ``sha256``: the version the request was resolved to; only a node
        holding that file runs it. None: this node's only version of
        ``model``, else any holder's. Raises ModelNotFound when neither this
        node nor any peer holds ``model`` (at ``sha256``). Ask
        :meth:`placement` first for whether it should stay in the mesh.
        """
        if self.drain is not None:
            raise refused(self.name)
        sha = sha256
        if sha is None and len(self._models.get(model, ())) == 1:
            (sha,) = self._models[model]
        if not runs(self._models, model, sha) and not (
            self.config.steal and self._peers.holders(model, sha)
        ):
            raise ModelNotFound(self._not_found(model))
        job = self._ledger.open(
            model=model,
            sha256=sha,
            payload=payload,
            size_bytes=size_bytes,
            deadline=deadline,
            request_id=request_id,
            now=now,
        )
        self.counters["requests"] += 1
        self._queue(job)
        return job.key[1], self._after_change(now)

    def cancel(self, seq: int, now: float) -> list[Action]:
        """The client of ``seq`` went away: forget it everywhere, answer nothing."""
        owned = self._ledger.answer(seq)
        if owned is None:
            return []
        self.counters["cancelled"] += 1
        return self._drop_everywhere(owned) + self._after_change(now)

    # --- answers: from a local run, or a thief -------------------------------------

    def finished(self, job: Job[P], *, took_s: float | None, now: float) -> list[Action]:
        """A local run of ``job`` ended (its outcome is the node's to keep).

        ``took_s`` is its service time, or None when it failed or was aborted
        (a failure says nothing about speed).
        """
        if not self._queues.finish(job):
            return self._after_change(now)  # aborted earlier: already accounted
        self._ledger.release(job.key)
        if took_s is not None and not job.crowded:
            self.observe_service(job.model, took_s)
        actions: list[Action] = []
        if self._ledger.is_ours(job.key):
            # The current epoch answers, run from our queue or stolen back
            # from a peer (its holder is then a peer, or us after a handoff).
            if self._ledger.settle(job.key[1], job.epoch):
                self.counters["served_local"] += 1
                actions.append(Reply(job.key[1]))
            else:
                self.counters["late_dropped"] += 1
        else:
            self.counters["stolen_in"] += 1
            actions.append(SendResult(job))
        return actions + self._after_change(now)

    def result(self, seq: int, epoch: int, now: float, sender: str | None = None) -> list[Action]:
        """A peer ran our request ``seq``; Reply if it is the current epoch and
        ``sender`` (the peer's name, when known) holds it."""
        if not self._ledger.settle(seq, epoch, away=True, holder=sender):
            # Answered already, given up on, or taken back: exactly once means
            # this copy goes nowhere. (Nor does one from a node not holding it.)
            self.counters["late_dropped"] += 1
            return []
        self.counters["served_remote"] += 1
        return [Reply(seq)]

    def holder(self, seq: int, epoch: int) -> str | None:
        """The peer holding our request ``seq`` at ``epoch``; None when none does."""
        owned = self._ledger.away(seq, epoch)
        return None if owned is None else owned.holder

    def handoff(
        self,
        seq: int,
        epoch: int,
        holder: str,
        lease_s: float,
        now: float,
        ask: int | None = None,
        sender: str | None = None,
    ) -> None:
        """A holder (``sender``, when known: it must be the one) passed our
        request on to ``holder`` (for its steal ask ``ask``)."""
        owned = self._ledger.away(seq, epoch, sender)
        if owned is not None:
            self._ledger.hand_to(owned, holder, now + lease_s, ask)
            self._timers.add(now + lease_s, TimerKind.LEASE, owned.job.key, epoch)

    # --- peers ------------------------------------------------------------------

    def peer_update(self, name: str, load: PeerLoad, now: float) -> list[Action]:
        """Fresh gossip from ``name``."""
        self._peers.update(name, load, now)
        return self._after_change(now)

    def peer_lost(self, name: str, now: float) -> list[Action]:
        """``name`` died or restarted: take back what it held, drop what it owned."""
        self._peers.lost(name)
        for owned in self._ledger.held_by(name):
            self._take_back(owned)
        # Nobody is left to answer what ``name`` owned; its client retries elsewhere.
        orphans = self._ledger.orphans(name)
        self.counters["orphaned"] += len(orphans)
        actions = [action for job in orphans for action in self._stop(job)]
        return actions + self._fail_unholdable() + self._after_change(now)

    def nudged(self, by: str, now: float) -> list[Action]:
        """``by`` says it holds work we could take."""
        self._peers.nudged(by)
        if not self._hungry() or self._peers.stealing_from is not None:
            return []
        return [self._steal_from(by, now)]

    # --- stealing: the thief's side ---------------------------------------------

    def granted(
        self,
        victim: str,
        jobs: Iterable[Job[P]],
        victim_load: PeerLoad | None,
        *,
        took_s: float | None,
        reply_bytes: int,
        now: float,
        ask: int | None = None,
    ) -> list[Action]:
        """The answer to our :class:`Steal` (numbered ``ask``): the jobs ``victim`` handed over."""
        taken = list(jobs)
        self._asks.settle(victim, ask)
        backoff_until = self._peers.answered(
            victim, len(taken), victim_load, took_s=took_s, reply_bytes=reply_bytes, now=now
        )
        if backoff_until is not None:
            self.counters["steals_empty"] += 1
            self._timers.add(backoff_until, TimerKind.BACKOFF, (victim, 0))
        actions: list[Action] = []
        for job in taken:
            if not self._ledger.is_ours(job.key) and self.drain is not None:
                # A steal sent before we began draining: hand it straight back.
                self.counters["given_back"] += 1
                actions.append(GiveBack(job.owner, job.key[0], job.key[1], job.epoch))
            elif not self._ledger.is_ours(job.key):
                actions += self._hold(job, now)
            elif self._ledger.came_home(job):
                self._queues.push(job, front=True)  # old work: it goes before newer arrivals
            else:
                self.counters["late_dropped"] += 1  # answered or taken back meanwhile
        return actions + self._after_change(now)

    def steal_failed(self, victim: str, now: float, ask: int | None = None) -> list[Action]:
        """Our :class:`Steal` got no answer (the victim errored or went away)."""
        return self.granted(victim, (), None, took_s=None, reply_bytes=0, now=now, ask=ask)

    def _hold(self, job: Job[P], now: float) -> list[Action]:
        """Hold another owner's ``job``, counted once: a copy at an epoch we
        already hold (or older) is a duplicate; a newer one replaces ours."""
        ours = self._ledger.holding(job.key)
        if ours is not None and ours.epoch >= job.epoch:
            self.counters["late_dropped"] += 1
            return []
        actions = [] if ours is None else self._stop(ours)
        job.enqueued_at = now
        self._ledger.hold(job)
        self._queue(job)
        return actions

    # --- reconciling grants (the rules: mesh.core.scheduling.reconcile) ------------

    def holding(self) -> Holding:
        """What we hold for other owners, and how far our steal asks are settled."""
        return report(self._ledger.held(), self._asks.settled())

    def reconcile(self, peer: str, holding: Holding, now: float) -> list[Action]:
        """``peer`` reports what it holds: take back at once what we believe it
        holds for us and it does not."""
        listed = holding.jobs.get(self.node_id, ())
        gone = missing(self._ledger.held_by(peer), listed, holding.asks)
        for owned in gone:
            self.counters["reclaimed"] += 1
            self._take_back(owned)
        return self._after_change(now) if gone else []

    # --- stealing: the victim's side --------------------------------------------

    def grant(self, ask: StealAsk, now: float) -> tuple[list[Job[P]], list[Action]]:
        """A peer asks for work: the jobs to hand over (already dequeued), and actions.

        Only queued jobs move, newest first, each only if the thief finishes
        it sooner than we would by the hysteresis margin, and no more than
        the thief's share of what we have queued.
        """
        if not self.config.steal:
            return [], []
        candidates = [
            job for job in self._queues.newest_first() if movable(job, ask, self.config, now)
        ]
        if not candidates:
            return [], []
        if self.drain is not None:
            granted = drain_grant(
                ask, candidates, self._estimates, self._peers.items(), self.config, now
            )
        else:
            granted = select_grant(
                ask, candidates, self._estimates, self._peers.items(), self.config, now
            )
        actions: list[Action] = []
        for job, thief_finish in granted:
            self._queues.leave(job)
            job.moves += 1
            lease = lease_s(self.config, thief_finish)
            if self._ledger.pass_on(job, ask.thief, now + lease, ask.ask):
                self._timers.add(now + lease, TimerKind.LEASE, job.key, job.epoch)
            else:
                actions.append(
                    Handoff(job.owner, job.key[0], job.key[1], job.epoch, ask.thief, lease, ask.ask)
                )
        jobs = [job for job, _ in granted]
        if jobs:
            self.counters["stolen_out"] += len(jobs)
            self._peers.note_thief(ask, jobs, self._estimates, now)
        return jobs, actions + self._after_change(now)

    def cancel_foreign(self, key: JobKey, now: float, sender: str | None = None) -> list[Action]:
        """An owner no longer wants ``key`` from us (``sender``, when known: only
        the request's owner may cancel it)."""
        held = self._ledger.holding(key)
        if held is not None and sender is not None and held.owner != sender:
            return []
        job = self._ledger.release(key)
        if job is None:
            return []
        self.counters["cancelled"] += 1
        return self._stop(job) + self._after_change(now)

    # --- draining (the rules: mesh.core.scheduling.draining) --------------------

    def start_drain(self, timeout_s: float, now: float) -> list[Action]:
        """Drain: refuse new requests, steal nothing, give others' queued jobs
        back, and hand queued work of our own to any peer that asks."""
        if self.drain is not None:
            return []
        self.drain = DrainClock(now, timeout_s)
        actions: list[Action] = []
        for job in self._ledger.held():
            if job.state is JobState.QUEUED:
                self._ledger.release(job.key)
                self._queues.leave(job)
                self.counters["given_back"] += 1
                actions.append(GiveBack(job.owner, job.key[0], job.key[1], job.epoch))
        return actions + self._after_change(now)

    def drained(self) -> bool:
        """Whether a draining node may leave now: it owes and holds nothing."""
        return self.drain is not None and drain_complete(
            owned=len(self._ledger), queued=self.queued(), running=self.running()
        )

    def abandon(self, now: float) -> list[Action]:
        """The drain ran out of time: answer what is still owned with Draining,
        cancel what peers run for it, stop and give back what we run for others."""
        timeout_s = 0.0 if self.drain is None else self.drain.timeout_s
        actions: list[Action] = []
        for seq, owned in self._ledger.give_up_all():
            job = owned.job
            self.counters["abandoned"] += 1
            error = abandoned(self.name, job.request_id or str(seq), job.model, timeout_s)
            actions += [*self._drop_everywhere(owned), Reply(seq, error)]
        for job in self._ledger.held():
            self._ledger.release(job.key)
            actions += self._stop(job)
            self.counters["given_back"] += 1
            actions.append(GiveBack(job.owner, job.key[0], job.key[1], job.epoch))
        return actions

    def given_back(self, seq: int, epoch: int, holder: str, now: float) -> list[Action]:
        """``holder`` (draining) handed our request ``seq`` back unrun: requeue it now."""
        owned = self._ledger.away(seq, epoch)
        if owned is None or owned.holder != holder:
            return []  # answered, taken back already, or not that holder's to give
        self._take_back(owned)
        return self._after_change(now)

    # --- time -----------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Deadlines, leases and back-offs that have fallen due."""
        actions: list[Action] = []
        for timer in self._timers.due(now):
            if timer.kind is TimerKind.DEADLINE:
                actions += self._expire(timer.key, timer.epoch, now)
            elif timer.kind is TimerKind.LEASE:
                owned = self._ledger.lease_ran_out(timer.key, timer.epoch, now)
                if owned is not None and owned.holder is not None:
                    actions.append(Cancel(owned.holder, owned.job.key))
                    self._take_back(owned)
        return actions + self._after_change(now)

"""The owner's ledger: whose request is where, under which epoch, until when.

The node a request enters owns it and must answer it exactly once. The
ledger keeps, per owned request, the job itself (payload and all, so that it
can be taken back), the peer holding it (None while it is here) and that
holder's lease. Taking a request back bumps its epoch, so that a result
carrying the old one is recognised as stale and dropped.

It also keeps the other side: jobs of other owners that this node holds
(stolen from a peer), by key, so that their owner can cancel them and so
that they can be dropped when their owner dies.

Bookkeeping only: the ledger neither queues nor runs anything, and decides
nothing about where work goes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from mesh.core.scheduling.jobs import Job, JobKey, JobState, SchedulerConfig
from mesh.errors import DeadlineExceeded

P = TypeVar("P")

__all__ = ["Ledger", "Owned", "lease_s", "missed_deadline"]


@dataclass(slots=True)
class Owned(Generic[P]):
    """The owner's record of one request it must answer."""

    job: Job[P]  # kept, payload and all, so the request can be taken back
    holder: str | None = None  # peer name; None while it is here
    lease_until: float | None = None
    # The holder's steal ask that took it, when known: reconciliation
    # (mesh.core.scheduling.reconcile) needs it to tell lost from in flight.
    ask: int | None = None


class Ledger(Generic[P]):
    """Requests this node owns, by seq, and others' jobs it holds, by key."""

    def __init__(self, node_id: str, name: str) -> None:
        self.node_id = node_id
        self.name = name
        self._seq = 0  # the last seq given out
        self._owned: dict[int, Owned[P]] = {}
        self._held: dict[JobKey, Job[P]] = {}

    # --- ours -------------------------------------------------------------------

    def __len__(self) -> int:
        """Requests this node must still answer."""
        return len(self._owned)

    def __contains__(self, seq: object) -> bool:
        return seq in self._owned

    def is_ours(self, key: JobKey) -> bool:
        """Whether ``key`` names a request this node owns (or owned)."""
        return key[0] == self.node_id

    def open(
        self,
        *,
        model: str,
        sha256: str | None,
        payload: P,
        size_bytes: int,
        deadline: float | None,
        request_id: str | None,
        now: float,
    ) -> Job[P]:
        """Take ownership of a new request: its job, under the next seq, at epoch 0."""
        self._seq += 1
        job: Job[P] = Job(
            key=(self.node_id, self._seq),
            owner=self.name,
            model=model,
            sha256=sha256,
            epoch=0,
            payload=payload,
            size_bytes=size_bytes,
            deadline=deadline,
            request_id=request_id,
            enqueued_at=now,
        )
        self._owned[self._seq] = Owned(job)
        return job

    def current(self, seq: int, epoch: int) -> Owned[P] | None:
        """The record of ``seq`` if it is still unanswered and at ``epoch``."""
        owned = self._owned.get(seq)
        return owned if owned is not None and owned.job.epoch == epoch else None

    def away(self, seq: int, epoch: int, holder: str | None = None) -> Owned[P] | None:
        """Like :meth:`current`, and only while a peer holds it (``holder``, when given).

        Results and hand-offs pass the name their connection's handshake
        gave as ``holder``: only the node holding a request, at the epoch it
        holds it under, may answer it or pass it on.
        """
        owned = self.current(seq, epoch)
        if owned is None or owned.holder is None:
            return None
        return owned if holder is None or owned.holder == holder else None

    def answer(self, seq: int) -> Owned[P] | None:
        """Forget ``seq``: it is answered (or its client left). Its record, if any."""
        return self._owned.pop(seq, None)

    def settle(
        self, seq: int, epoch: int, *, away: bool = False, holder: str | None = None
    ) -> bool:
        """Answer ``seq`` if it is at ``epoch`` (and, with ``away``, held by a
        peer: ``holder``, when given); False when this copy is stale (answered,
        given up or taken back) or not the sender's to answer."""
        owned = self.away(seq, epoch, holder) if away else self.current(seq, epoch)
        if owned is not None:
            del self._owned[seq]
        return owned is not None

    def held_by(self, holder: str) -> list[Owned[P]]:
        """The records of requests ``holder`` holds for us."""
        return [owned for owned in self._owned.values() if owned.holder == holder]

    def pass_on(self, job: Job[P], thief: str, lease_until: float, ask: int | None = None) -> bool:
        """A thief took queued ``job`` from us: True when it is ours (now held by
        ``thief`` until ``lease_until``); False when it was another owner's
        (released here: that owner must be told who holds it now)."""
        if not self.is_ours(job.key):
            self._held.pop(job.key, None)
            return False
        # Queued here, it is its record's current job.
        owned = self.current(job.key[1], job.epoch)
        if owned is not None:
            self.hand_to(owned, thief, lease_until, ask)
        return True

    def hand_to(
        self, owned: Owned[P], holder: str, lease_until: float, ask: int | None = None
    ) -> None:
        """``holder`` now holds the request, until ``lease_until`` at the latest;
        ``ask`` is the number of the holder's steal ask that took it, if known."""
        owned.holder = holder
        owned.lease_until = lease_until
        owned.ask = ask

    def take_back(self, owned: Owned[P]) -> Job[P]:
        """Its holder failed us: a fresh job for it here under ``epoch + 1``."""
        old = owned.job
        # A new job, not the old one changed: a copy of the old one may still
        # be in flight. It keeps ``enqueued_at``, and so its place: it is old work.
        job = replace(
            old,
            epoch=old.epoch + 1,
            moves=0,
            started_at=None,
            crowded=False,
            state=JobState.QUEUED,
        )
        self._home(owned, job)
        return job

    def came_home(self, job: Job[P]) -> bool:
        """We stole back one of our own requests; False if it was answered or
        taken back meanwhile (then the copy is stale)."""
        owned = self.current(job.key[1], job.epoch)
        if owned is None:
            return False
        self._home(owned, job)
        return True

    @staticmethod
    def _home(owned: Owned[P], job: Job[P]) -> None:
        # Here again, it is under no lease.
        owned.job = job
        owned.holder = None
        owned.lease_until = None
        owned.ask = None

    def lease_ran_out(self, key: JobKey, epoch: int, now: float) -> Owned[P] | None:
        """The record whose holder's lease for ``key`` at ``epoch`` ended by ``now``."""
        owned = self.away(key[1], epoch)
        if owned is None or owned.lease_until is None or owned.lease_until > now:
            return None
        return owned

    def expired(self, key: JobKey, epoch: int, now: float) -> Owned[P] | None:
        """Answer and return ``key``'s record if its deadline has passed by ``now``."""
        owned = self.current(key[1], epoch)
        if owned is None or owned.job.deadline is None or owned.job.deadline > now:
            return None
        del self._owned[key[1]]
        return owned

    def unholdable(self, runnable: Callable[[str, str | None], bool]) -> list[tuple[int, Owned[P]]]:
        """Answer and return the queued requests whose model (at its sha256) no live node runs."""
        gone = [
            (seq, owned)
            for seq, owned in self._owned.items()
            if owned.holder is None
            and owned.job.state is JobState.QUEUED
            and not runnable(owned.job.model, owned.job.sha256)
        ]
        for seq, _ in gone:
            del self._owned[seq]
        return gone

    # --- others' ------------------------------------------------------------------

    def holding(self, key: JobKey) -> Job[P] | None:
        """The job of another owner held here under ``key``, if any."""
        return self._held.get(key)

    def hold(self, job: Job[P]) -> None:
        """Keep another owner's ``job``, taken from a peer."""
        self._held[job.key] = job

    def release(self, key: JobKey) -> Job[P] | None:
        """Stop holding ``key`` (run, granted on, cancelled); the job, if held."""
        return self._held.pop(key, None)

    def expire_held(self, key: JobKey, epoch: int) -> Job[P] | None:
        """Release and return the held job ``key`` if it is still queued at ``epoch``
        (a running one finishes; its owner answers the client itself)."""
        job = self._held.get(key)
        if job is None or job.epoch != epoch or job.state is not JobState.QUEUED:
            return None
        del self._held[key]
        return job

    def held(self) -> list[Job[P]]:
        """Every job this node holds for other owners (a draining node gives them back)."""
        return list(self._held.values())

    def give_up_all(self) -> list[tuple[int, Owned[P]]]:
        """Answer and return every request still owned (a drain that ran out of time)."""
        owned = list(self._owned.items())
        self._owned.clear()
        return owned

    def orphans(self, owner: str) -> list[Job[P]]:
        """Release and return every job held for ``owner`` (which died)."""
        jobs = [job for job in self._held.values() if job.owner == owner]
        for job in jobs:
            del self._held[job.key]
        return jobs

    # --- timers -------------------------------------------------------------------

    def deadline_live(self, key: JobKey, epoch: int) -> bool:
        """Whether a deadline timer for ``key`` at ``epoch`` can still matter."""
        if self.is_ours(key):
            return self.current(key[1], epoch) is not None
        job = self._held.get(key)
        return job is not None and job.epoch == epoch and job.state is JobState.QUEUED

    def lease_live(self, key: JobKey, epoch: int, until: float) -> bool:
        """Whether a lease timer for ``key`` at ``epoch``, ending ``until``, still matters."""
        owned = self.away(key[1], epoch)
        return owned is not None and owned.lease_until == until


def lease_s(config: SchedulerConfig, thief_finish_s: float) -> float:
    """How long a thief that should finish in ``thief_finish_s`` may hold a request."""
    return config.lease_min_s + config.lease_factor * thief_finish_s


def missed_deadline(seq: int, owned: Owned[P]) -> DeadlineExceeded:
    """The error a client gets when request ``seq`` was not answered by its deadline."""
    job = owned.job
    deadline = job.deadline if job.deadline is not None else job.enqueued_at
    allowed_ms = round((deadline - job.enqueued_at) * 1000, 3)
    where = "queued" if owned.holder is None else f"held by {owned.holder}"
    if job.state is JobState.RUNNING:
        where = "running"
    return DeadlineExceeded(
        f"request {job.request_id or seq} for {job.model} missed its deadline "
        f"of {allowed_ms:g} ms ({where} when it passed)"
    )

"""The scheduler's parts, what the node reads of them, and the steps every event ends with.

:class:`SchedulerParts` is the base of :class:`~mesh.core.scheduling.scheduler.Scheduler`,
kept apart so that the scheduler's module holds the events alone. It composes
the five parts (the owner's :mod:`.ledger`, the per-model :mod:`.queues`, the
:mod:`.stealing` policy, the :mod:`.estimates` and the :mod:`.timers`), answers
the read-only questions the node asks (its models, load, holders, next
deadline; :func:`snapshot` for ``status()``), and holds the steps that follow
an event: start what can start, then steal or nudge (``_after_change``);
queue, take back, expire, stop, and fail what nobody can run.

Pure: no I/O, no clock; ``now`` comes in with every call.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any, Generic, TypeVar

from mesh.core.scheduling.draining import DrainClock, drain_nudges
from mesh.core.scheduling.estimates import Estimates
from mesh.core.scheduling.jobs import (
    Abort,
    Action,
    Cancel,
    Job,
    JobKey,
    JobState,
    ModelShas,
    Nudge,
    PeerLoad,
    Reply,
    RunLocal,
    SchedulerConfig,
    Steal,
    runs,
)
from mesh.core.scheduling.ledger import Ledger, Owned, missed_deadline
from mesh.core.scheduling.queues import Queues
from mesh.core.scheduling.reconcile import Asks
from mesh.core.scheduling.stealing import Peers
from mesh.core.scheduling.timers import Timer, TimerKind, Timers
from mesh.errors import ModelNotFound

P = TypeVar("P")

__all__ = ["SchedulerParts", "snapshot"]


class SchedulerParts(Generic[P]):
    """The state of one node's scheduler and the steps its events share; the
    events themselves are :class:`~mesh.core.scheduling.scheduler.Scheduler`'s."""

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        models: ModelShas,
        config: SchedulerConfig,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.name = name
        self.config = config
        # What this node serves (name → sha256 of each version): what it
        # advertises, takes in steals and resolves new requests to.
        self._models: dict[str, frozenset[str]] = dict(models)
        # What it still runs: those, and retired versions with work left.
        self._runnable: dict[str, frozenset[str]] = dict(models)
        self._ledger: Ledger[P] = Ledger(node_id, name)
        self._queues: Queues[P] = Queues()
        self._peers = Peers(config, rng or random.Random())
        self._estimates = Estimates(
            models=self._models,
            slots=config.slots,
            default_s=config.default_service_s,
            queued=self._queues.counts,
            running=lambda: self._queues.running,
            gossiped=self._peers.gossiped_service,
        )
        self._timers = Timers(self._timer_live)
        self.counters: Counter[str] = Counter()
        self._asks = Asks()  # our steal asks, numbered (see .reconcile)
        # Set once the node drains (see mesh.core.scheduling.draining).
        self.drain: DrainClock | None = None

    # --- what the node asks ---------------------------------------------------

    @property
    def models(self) -> ModelShas:
        """Models served here: name → sha256 of each version."""
        return self._models

    def set_models(self, serving: ModelShas, retiring: ModelShas | None = None) -> None:
        """What this node now serves, and the retired versions it still runs
        (queued or running work of theirs finishes here, but they take no
        new work and are not advertised)."""
        self._models.clear()
        self._models.update(serving)
        self._runnable.clear()
        self._runnable.update(serving)
        for model, shas in (retiring or {}).items():
            self._runnable[model] = self._runnable.get(model, frozenset()) | shas

    def uses(self, model: str, sha256: str) -> bool:
        """Whether a job queued or running here is for ``model`` at ``sha256``."""
        return self._queues.uses(model, sha256)

    def service_s(self, model: str) -> float | None:
        """This node's measured service time for ``model``; None before a run."""
        return self._estimates.here(model)

    def observe_service(self, model: str, took_s: float) -> None:
        """A measured service time for ``model`` here (a warm-up call, say)."""
        self._estimates.observe(model, took_s)

    def measured(self) -> dict[str, float]:
        """Every measured service time, for gossip."""
        return self._estimates.measured()

    def owned(self) -> int:
        """Requests this node must still answer."""
        return len(self._ledger)

    def queued(self) -> int:
        """Jobs waiting here, runnable or not."""
        return self._queues.total()

    def running(self) -> int:
        """Jobs running here."""
        return len(self._queues.running)

    def free_slots(self) -> int:
        """Slots with nothing running in them."""
        return max(0, self.config.slots - len(self._queues.running))

    def queued_s(self) -> float:
        """Queued (not running) work in seconds per slot: a newcomer's wait."""
        return self._estimates.queued_s()

    def wait_s(self, now: float) -> float:
        """Time until a job queued now could start here."""
        return self._estimates.wait_s(now)

    def holders(self, model: str) -> list[str]:
        """Peers that run ``model``, as gossip last said."""
        return self._peers.holders(model, None)

    def holds(self, seq: int) -> bool:
        """Whether request ``seq`` is still this node's to answer."""
        return seq in self._ledger

    def peer_activity(self) -> dict[str, dict[str, Any]]:
        """Per-peer steal figures, for ``status()``."""
        return self._peers.activity()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do; None if never."""
        return self._timers.next_deadline()

    def shares_work(self) -> bool:
        """Whether a request queued here now could be run by a peer: stealing
        is on and some peer runs a model we run."""
        return self.config.steal and self._peers.run_any(self._models)

    def load_summary(self, now: float) -> PeerLoad:
        """This node's load as gossip and steal replies carry it."""
        return PeerLoad(
            models=self._models,
            service_s=self.measured(),
            queued_s=self.wait_s(now),
            free_slots=self.free_slots(),
            slots=self.config.slots,
        )

    # --- internals -----------------------------------------------------------------

    def _after_change(self, now: float) -> list[Action]:
        """Start what can start; then, idle, steal; or, loaded, nudge."""
        actions: list[Action] = []
        limit = self.config.slots
        if not self.shares_work():
            # Nobody could take queued work off us, so keeping it stealable
            # buys nothing: hand the runtime more at once, so that its threads
            # go from one call to the next without a round trip through the
            # event loop (a small model runs in tens of microseconds).
            limit = max(limit, self.config.solo_depth)
        while len(self._queues.running) < limit:
            job = self._queues.next_runnable(self._runnable)
            if job is None:
                break
            if job.deadline is not None and job.deadline <= now:
                # Its deadline passed before its timer fired: expire it, never run it.
                actions += self._expire(job.key, job.epoch, now)
                if job.state is not JobState.QUEUED:
                    continue
            self._queues.start(job, now, self.config.slots)
            actions.append(RunLocal(job))
        if not self.config.steal:
            return actions
        if self._hungry():
            victim = self._peers.pick_victim(self.wait_s(now), self._estimates.cheapest_s(), now)
            if victim is not None:
                actions.append(self._steal_from(victim, now))
        if self.queued():
            # What is still queued waits for a slot here, or cannot run here
            # at all: idle peers that hold the model should come for it.
            actions += self._nudges(now)
        return actions

    def _hungry(self) -> bool:
        return (
            self.drain is None
            and self.config.steal
            and len(self._queues.running) < self.config.slots
            and not self._queues.total(self._models)
            and bool(self._models)
        )

    def _steal_from(self, victim: str, now: float) -> Steal:
        self.counters["steal_requests"] += 1
        steal = self._peers.steal(victim, self.name, self.load_summary(now))
        return replace(steal, ask=replace(steal.ask, ask=self._asks.open(victim)))

    def _nudges(self, now: float) -> list[Action]:
        """Nudge idle peers that could finish what we have queued sooner."""
        waiting = self._queues.counts().keys()
        if self.drain is not None:
            names = drain_nudges(self._peers.items(), waiting, self.config, now)
            self.counters["nudges_sent"] += len(names)
            return [Nudge(name) for name in names]
        names = self._peers.to_nudge(waiting, self._queues.newest_first, self._estimates, now)
        self.counters["nudges_sent"] += len(names)
        return [Nudge(name) for name in names]

    def _queue(self, job: Job[P], *, front: bool = False) -> None:
        """Queue a job new here (at this epoch), with a timer for its deadline."""
        if job.deadline is not None:
            self._timers.add(job.deadline, TimerKind.DEADLINE, job.key, job.epoch)
        self._queues.push(job, front=front)

    def _take_back(self, owned: Owned[P]) -> None:
        """Requeue an owned request here under a new epoch (its holder failed us)."""
        self.counters["requeued"] += 1
        self._queue(self._ledger.take_back(owned), front=True)  # old work goes first

    def _expire(self, key: JobKey, epoch: int, now: float) -> list[Action]:
        if self._ledger.is_ours(key):
            owned = self._ledger.expired(key, epoch, now)
            if owned is None:
                return []
            self.counters["expired"] += 1
            error = missed_deadline(key[1], owned)
            return [*self._drop_everywhere(owned), Reply(key[1], error)]
        job = self._ledger.expire_held(key, epoch)
        if job is not None:
            self._queues.leave(job)
            self.counters["expired"] += 1
        return []

    def _drop_everywhere(self, owned: Owned[P]) -> list[Action]:
        if owned.holder is not None:
            return [Cancel(owned.holder, owned.job.key)]
        return self._stop(owned.job)

    def _stop(self, job: Job[P]) -> list[Action]:
        """Take ``job`` out of its queue, or abort it if it is running."""
        return [Abort(job)] if self._queues.stop(job) else []

    def _fail_unholdable(self) -> list[Action]:
        """Answer owned requests no live node can run any more."""
        actions: list[Action] = []
        for seq, owned in self._ledger.unholdable(self._holdable):
            self._queues.leave(owned.job)
            self.counters["failed"] += 1
            actions.append(Reply(seq, ModelNotFound(self._not_found(owned.job.model))))
        return actions

    def _holdable(self, model: str, sha256: str | None) -> bool:
        """Whether this node or a live peer runs ``model`` at ``sha256``."""
        return runs(self._runnable, model, sha256) or bool(self._peers.holders(model, sha256))

    def _not_found(self, model: str) -> str:
        known = set(self._models) | self._peers.known_models()
        available = ", ".join(f"'{m}'" for m in sorted(known)) or "none"
        return f"no node in the mesh serves model '{model}'; available models: {available}"

    def _timer_live(self, timer: Timer) -> bool:
        if timer.kind is TimerKind.BACKOFF:
            return self._peers.backoff_live(timer.key[0], timer.when)
        if timer.kind is TimerKind.LEASE:
            return self._ledger.lease_live(timer.key, timer.epoch, timer.when)
        return self._ledger.deadline_live(timer.key, timer.epoch)


def snapshot(scheduler: SchedulerParts[Any], now: float) -> dict[str, Any]:
    """The scheduler's state in a few figures, for ``status()``."""
    return {
        "owned": scheduler.owned(),
        "queued": scheduler.queued(),
        "running": scheduler.running(),
        "slots": scheduler.config.slots,
        "free_slots": scheduler.free_slots(),
        "wait_ms": round(scheduler.wait_s(now) * 1000, 3),
        "service_ms": {m: round(s * 1000, 3) for m, s in sorted(scheduler.measured().items())},
        "stealing": scheduler.config.steal,
    }

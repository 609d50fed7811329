"""Where each request runs: ownership, queues, and work stealing, as pure rules.

The scheduler is fed events (a request arrives, a local run finishes, a peer
asks for work, a grant arrives, a result comes back, a peer dies, time
passes) and answers each with a list of actions for the node to carry out
(:class:`RunLocal`, :class:`Reply`, :class:`SendResult`, :class:`Steal`,
:class:`Nudge`, :class:`Handoff`, :class:`Cancel`, :class:`Abort`). It never
does I/O and never reads a clock: ``now`` comes in with every event.

The rules, in the words of docs/PROTOCOL.md and DESIGN.md:

* **Ownership.** The node a request enters owns it: ``{seq: holder, epoch,
  lease}``. The owner answers exactly once. A holder that dies, or whose lease
  runs out, makes the owner take the request back with ``epoch + 1``; a result
  that carries an older epoch is dropped. Execution is at least once,
  delivery exactly once.
* **Stealing is pull.** A node with a free slot and nothing runnable queued
  asks a loaded peer for work, choosing between two sampled candidates the
  one with more queued work (power of two choices). The victim hands over
  only queued requests, never running ones, newest first, while the thief
  would finish each one sooner than the victim would, transfer included, by
  a margin (hysteresis), and never more than the thief's speed-weighted share
  of the queue. A request moves at most ``max_moves`` times.
* **Load is time.** Per-model service-time averages (measured here, gossiped
  by peers) turn queues into seconds, so a slow device gets less.
* **Nudges.** A node holding queued work tells idle peers that hold the model,
  so they steal within one round trip instead of one gossip period.
* **Deadlines and cancellation.** A request past its deadline, or whose client
  left, is dropped from every queue without running.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mesh.core.policy.capacity import Capacity, Placement, place, water_level
from mesh.core.scheduling.estimates import ewma
from mesh.core.scheduling.jobs import (
    Abort,
    Action,
    Cancel,
    Handoff,
    Job,
    JobKey,
    JobState,
    Nudge,
    PeerLoad,
    Reply,
    RunLocal,
    SchedulerConfig,
    SendResult,
    Steal,
    StealAsk,
)
from mesh.errors import DeadlineExceeded, ModelNotFound

P = TypeVar("P")

__all__ = ["Scheduler", "snapshot"]


@dataclass(slots=True)
class _Owned(Generic[P]):
    """The owner's record of one request it must answer."""

    job: Job[P]  # kept, payload and all, so the request can be taken back
    holder: str | None = None  # peer name; None while it is here
    lease_until: float | None = None


@dataclass(slots=True)
class _Peer:
    load: PeerLoad
    # When it should be done with work we just granted it. Until then our
    # own estimate of its load beats its gossip, which may have been sent
    # before the grant arrived; after it, it may be idle again.
    busy_until: float = -math.inf
    # Whether ``load`` is our estimate (after a grant) rather than its word.
    overridden: bool = False
    last_nudged: float = -math.inf
    backoff_until: float = -math.inf
    empty_streak: int = 0  # empty answers to our steals in a row
    rtt_s: float | None = None
    bandwidth_bps: float | None = None
    stole_from_us: int = 0
    we_stole: int = 0
    last_steal_at: float | None = None


# Deadline heap entries: (when, kind, key, epoch). Stale entries are skipped.
_DEADLINE = 0
_LEASE = 1
_BACKOFF = 2


class Scheduler(Generic[P]):
    """The scheduling rules of one node. Not thread-safe; feed it from one loop."""

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        models: Mapping[str, str],
        config: SchedulerConfig,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.name = name
        self.config = config
        self._models = dict(models)  # what runs here: name → sha256
        self._rng = rng or random.Random()
        self._seq = 0
        self._owned: dict[int, _Owned[P]] = {}
        # Queued jobs by model, oldest first; jobs that left stay, marked
        # GONE, until they reach the front (removal from the middle is O(n)).
        self._queues: dict[str, deque[Job[P]]] = {}
        self._queued_count: Counter[str] = Counter()
        self._foreign: dict[JobKey, Job[P]] = {}  # others' jobs held here
        self._running: dict[JobKey, Job[P]] = {}
        self._service: dict[str, float] = {}  # measured here, EWMA
        self._peers: dict[str, _Peer] = {}
        self._stealing_from: str | None = None
        self._timers: list[tuple[float, int, JobKey, int]] = []
        self.counters: Counter[str] = Counter()

    # --- what the node asks ---------------------------------------------------

    @property
    def models(self) -> Mapping[str, str]:
        """Models that run here: name → sha256."""
        return self._models

    def service_s(self, model: str) -> float | None:
        """This node's measured service time for ``model``; None before a run."""
        return self._service.get(model)

    def observe_service(self, model: str, took_s: float) -> None:
        """A measured service time for ``model`` here (a warm-up call, say)."""
        self._service[model] = ewma(self._service.get(model), took_s)

    def measured(self) -> dict[str, float]:
        """Every measured service time, for gossip."""
        return dict(self._service)

    def owned(self) -> int:
        """Requests this node must still answer."""
        return len(self._owned)

    def queued(self) -> int:
        """Jobs waiting here, runnable or not."""
        return sum(self._queued_count.values())

    def running(self) -> int:
        return len(self._running)

    def free_slots(self) -> int:
        return max(0, self.config.slots - len(self._running))

    def queued_s(self) -> float:
        """Queued (not running) work in seconds per slot: a newcomer's wait."""
        total = 0.0
        for model, count in self._queued_count.items():
            if count:
                total += count * self._estimate(model)
        return total / self.config.slots

    def wait_s(self, now: float) -> float:
        """Time until a job queued now could start here."""
        return self.queued_s() + self._running_left_s(now) / self.config.slots

    def holders(self, model: str) -> list[str]:
        """Peers that run ``model``, as gossip last said."""
        return self._holders(model, None)

    def holds(self, seq: int) -> bool:
        return seq in self._owned

    def peer_activity(self) -> dict[str, dict[str, Any]]:
        """Per-peer steal figures, for ``status()``."""
        return {
            name: {
                "stolen_by_peer": peer.stole_from_us,
                "stolen_from_peer": peer.we_stole,
                "last_steal_at": peer.last_steal_at,
                "rtt_ms": None if peer.rtt_s is None else round(peer.rtt_s * 1000, 3),
            }
            for name, peer in sorted(self._peers.items())
        }

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do; None if never."""
        timers = self._timers
        while timers and not self._timer_live(timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    # --- requests entering here ---------------------------------------------

    def placement(self, model: str, deadline: float | None, now: float) -> Placement:
        """Whether a new request for ``model`` stays in the mesh (see mesh.core.policy.capacity).

        Its holders are this node, when the model runs here, and, when work
        is shared, every peer that runs the same model: they would all drain
        this node's queue for it, each from when it is free.
        """
        sha = self._models.get(model)
        holders: list[Capacity] = []
        if sha is not None:
            # Queued work for other models also stands before ours here.
            other = sum(
                n * self._estimate(m) for m, n in self._queued_count.items() if n and m != model
            )
            holders.append(
                Capacity(
                    name=self.name,
                    free_in_s=(self._running_left_s(now) + other) / self.config.slots,
                    slots=self.config.slots,
                    service_s=self._estimate(model),
                )
            )
        if self.config.steal:
            for name in self._holders(model, sha):
                peer = self._peers[name]
                load = peer.load
                holders.append(
                    Capacity(
                        name=name,
                        free_in_s=max(load.queued_s, peer.busy_until - now) + self._rtt_s(peer),
                        slots=load.slots,
                        service_s=load.service_s.get(model) or self._estimate(model),
                    )
                )
        return place(
            model=model,
            remaining_s=None if deadline is None else deadline - now,
            holders=holders,
            ahead=self._queued_count[model],
            queued=self.queued(),
            queue_cap=self.config.queue_cap,
            headroom=self.config.deadline_headroom,
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
    ) -> tuple[int, list[Action]]:
        """Take ownership of a new request; its seq, and what to do.

        Raises ModelNotFound when neither this node nor any peer holds ``model``.
        Ask :meth:`placement` first for whether it should stay in the mesh.
        """
        sha = self._models.get(model)
        if sha is None and not (self.config.steal and self._holders(model, None)):
            raise ModelNotFound(self._not_found(model))
        self._seq += 1
        seq = self._seq
        job: Job[P] = Job(
            key=(self.node_id, seq),
            owner=self.name,
            model=model,
            sha256=sha,
            epoch=0,
            payload=payload,
            size_bytes=size_bytes,
            deadline=deadline,
            request_id=request_id,
            enqueued_at=now,
        )
        self._owned[seq] = _Owned(job)
        self.counters["requests"] += 1
        if deadline is not None:
            self._timer(deadline, _DEADLINE, job.key, 0)
        self._enqueue(job)
        return seq, self._after_change(now)

    def cancel(self, seq: int, now: float) -> list[Action]:
        """The client of ``seq`` went away: forget it everywhere, answer nothing."""
        owned = self._owned.pop(seq, None)
        if owned is None:
            return []
        self.counters["cancelled"] += 1
        actions = self._drop_everywhere(owned)
        return actions + self._after_change(now)

    # --- local runs -------------------------------------------------------------

    def finished(self, job: Job[P], *, took_s: float | None, now: float) -> list[Action]:
        """A local run of ``job`` ended (its outcome is the node's to keep).

        ``took_s`` is its service time, or None when it failed or was aborted
        (a failure says nothing about speed).
        """
        if self._running.pop(job.key, None) is None:
            return self._after_change(now)  # aborted earlier: already accounted
        self._foreign.pop(job.key, None)
        job.state = JobState.GONE
        if took_s is not None and not job.crowded:
            self.observe_service(job.model, took_s)
        actions: list[Action] = []
        if job.key[0] == self.node_id:
            owned = self._owned.get(job.key[1])
            # The current epoch answers, run from our queue or stolen back
            # from a peer (its holder is then a peer, or us after a handoff).
            if owned is not None and owned.job.epoch == job.epoch:
                del self._owned[job.key[1]]
                self.counters["served_local"] += 1
                actions.append(Reply(job.key[1]))
            else:
                self.counters["late_dropped"] += 1
        else:
            self.counters["stolen_in"] += 1
            actions.append(SendResult(job))
        return actions + self._after_change(now)

    # --- results from thieves -------------------------------------------------

    def result(self, seq: int, epoch: int, now: float) -> list[Action]:
        """A peer ran our request ``seq``; Reply if it is the current epoch."""
        owned = self._owned.get(seq)
        if owned is None or owned.job.epoch != epoch or owned.holder is None:
            # Answered already, given up on, or taken back: exactly once means
            # this copy goes nowhere.
            self.counters["late_dropped"] += 1
            return []
        del self._owned[seq]
        self.counters["served_remote"] += 1
        return [Reply(seq)]

    def handoff(self, seq: int, epoch: int, holder: str, lease_s: float, now: float) -> None:
        """A holder passed our request on to ``holder``."""
        owned = self._owned.get(seq)
        if owned is None or owned.job.epoch != epoch or owned.holder is None:
            return
        owned.holder = holder
        self._lease(owned, lease_s, now)

    # --- peers ------------------------------------------------------------------

    def peer_update(self, name: str, load: PeerLoad, now: float) -> list[Action]:
        """Fresh gossip from ``name``."""
        peer = self._peers.get(name)
        if peer is None:
            self._peers[name] = _Peer(load)
        elif now < peer.busy_until:
            # Its models and speeds are news; its queue is older than our grant.
            peer.load = PeerLoad(
                models=load.models,
                service_s=load.service_s,
                queued_s=max(load.queued_s, peer.busy_until - now),
                free_slots=min(load.free_slots, peer.load.free_slots),
                slots=load.slots,
            )
        else:
            peer.load = load
            peer.overridden = False
        return self._after_change(now)

    def peer_lost(self, name: str, now: float) -> list[Action]:
        """``name`` died or restarted: take back what it held, drop what it owned."""
        self._peers.pop(name, None)
        if self._stealing_from == name:
            self._stealing_from = None
        actions: list[Action] = []
        for owned in list(self._owned.values()):
            if owned.holder == name:
                self._take_back(owned, now)
        for key, job in list(self._foreign.items()):
            if job.owner != name:
                continue
            # Nobody is left to answer; the client retries on another node.
            self.counters["orphaned"] += 1
            del self._foreign[key]
            if job.state is JobState.RUNNING:
                self._running.pop(key, None)
                actions.append(Abort(job))
            self._leave_queue(job)
        return actions + self._fail_unholdable() + self._after_change(now)

    def nudged(self, by: str, now: float) -> list[Action]:
        """``by`` says it holds work we could take."""
        peer = self._peers.get(by)
        if peer is not None:
            # It knows its queue better than our back-off guesses.
            peer.backoff_until = -math.inf
            peer.empty_streak = 0
        if not self._hungry() or self._stealing_from is not None:
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
    ) -> list[Action]:
        """The answer to our :class:`Steal`: the jobs ``victim`` handed over."""
        if self._stealing_from == victim:
            self._stealing_from = None
        taken = list(jobs)
        peer = self._peers.get(victim)
        if peer is not None:
            if took_s is not None:
                self._observe_link(peer, reply_bytes, took_s)
            if victim_load is not None:
                peer.load = victim_load
            if not taken:
                self.counters["steals_empty"] += 1
                # Each empty answer in a row doubles the wait (up to 16x): a
                # victim whose queue is not worth sharing is asked rarely.
                peer.empty_streak += 1
                backoff = self.config.steal_backoff_s * 2 ** min(peer.empty_streak - 1, 4)
                peer.backoff_until = now + backoff
                self._timer(peer.backoff_until, _BACKOFF, (victim, 0), 0)
            else:
                peer.empty_streak = 0
                peer.we_stole += len(taken)
                peer.last_steal_at = now
        for job in taken:
            if job.key[0] == self.node_id:
                self._came_home(job)
                continue
            job.enqueued_at = now
            self._foreign[job.key] = job
            if job.deadline is not None:
                self._timer(job.deadline, _DEADLINE, job.key, job.epoch)
            self._enqueue(job)
        return self._after_change(now)

    def _came_home(self, job: Job[P]) -> None:
        """We stole back one of our own requests: it is ours to run, under no lease."""
        owned = self._owned.get(job.key[1])
        if owned is None or owned.job.epoch != job.epoch:
            self.counters["late_dropped"] += 1  # answered or taken back meanwhile
            return
        owned.job = job
        owned.holder = None
        owned.lease_until = None
        self._enqueue(job, front=True)  # old work: it goes before newer arrivals

    def steal_failed(self, victim: str, now: float) -> list[Action]:
        """Our :class:`Steal` got no answer (the victim errored or went away)."""
        return self.granted(victim, (), None, took_s=None, reply_bytes=0, now=now)

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
            job
            for job in self._queued_newest_first()
            if job.moves < self.config.max_moves
            and ask.models.get(job.model) is not None
            and (job.sha256 is None or ask.models[job.model] == job.sha256)
            and (job.deadline is None or job.deadline > now)
        ]
        if not candidates:
            return [], []
        share = min(self._share(ask, candidates, now), self.config.max_grant_jobs)
        # Our finish time for the newest runnable queued job; each one we give
        # away brings the next one's forward by its service time per slot.
        victim_finish = self._local_finish_s(now)
        thief_ready = ask.wait_s + ask.rtt_s
        thief_parallel = max(1, ask.slots)
        granted: list[tuple[Job[P], float]] = []
        sent_bytes = 0
        for job in candidates:
            if len(granted) >= share:
                break
            if granted and sent_bytes + job.size_bytes > self.config.max_grant_bytes:
                break
            mine = self._runs_here_s(job.model)
            theirs = self._thief_service_s(ask, job.model)
            transfer = (sent_bytes + job.size_bytes) / ask.bandwidth_bps
            thief_finish = thief_ready + transfer + theirs * (len(granted) + 1) / thief_parallel
            ours = victim_finish if mine is not None else math.inf
            if not thief_finish + self._margin_s(theirs) < ours:
                break  # older jobs finish sooner here still: stop
            granted.append((job, thief_finish))
            sent_bytes += job.size_bytes
            if mine is not None:
                victim_finish -= mine / self.config.slots
        actions: list[Action] = []
        for job, thief_finish in granted:
            self._leave_queue(job)
            job.moves += 1
            lease_s = self._lease_s(thief_finish)
            if job.key[0] == self.node_id:
                owned = self._owned[job.key[1]]
                owned.holder = ask.thief
                self._lease(owned, lease_s, now)
            else:
                self._foreign.pop(job.key, None)
                actions.append(
                    Handoff(job.owner, job.key[0], job.key[1], job.epoch, ask.thief, lease_s)
                )
        jobs = [job for job, _ in granted]
        if jobs:
            self.counters["stolen_out"] += len(jobs)
            self._note_thief(ask, jobs, now)
        return jobs, actions + self._after_change(now)

    def _note_thief(self, ask: StealAsk, jobs: list[Job[P]], now: float) -> None:
        """Count the thief as busy with what it took, until it should be done."""
        peer = self._peers.get(ask.thief)
        if peer is None:
            return
        peer.stole_from_us += len(jobs)
        peer.last_steal_at = now
        work = sum(self._thief_service_s(ask, j.model) for j in jobs) / max(1, ask.slots)
        wait = ask.wait_s + ask.rtt_s + work
        peer.busy_until = now + wait
        peer.overridden = True
        peer.load = PeerLoad(
            models=peer.load.models,
            service_s=peer.load.service_s,
            queued_s=wait,
            free_slots=0,
            slots=peer.load.slots,
        )

    def load_summary(self, now: float) -> PeerLoad:
        """This node's load as gossip and steal replies carry it."""
        return PeerLoad(
            models=self._models,
            service_s=self.measured(),
            queued_s=self.wait_s(now),
            free_slots=self.free_slots(),
            slots=self.config.slots,
        )

    # --- time -----------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Deadlines, leases and back-offs that have fallen due."""
        actions: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, kind, key, epoch = heapq.heappop(timers)
            if kind == _DEADLINE:
                actions += self._expire(key, epoch, now)
            elif kind == _LEASE:
                owned = self._owned.get(key[1])
                if (
                    owned is not None
                    and owned.job.epoch == epoch
                    and owned.holder is not None
                    and owned.lease_until is not None
                    and owned.lease_until <= now
                ):
                    actions.append(Cancel(owned.holder, owned.job.key))
                    self._take_back(owned, now)
        return actions + self._after_change(now)

    # --- internals: queues ------------------------------------------------------

    def _enqueue(self, job: Job[P], *, front: bool = False) -> None:
        queue = self._queues.setdefault(job.model, deque())
        if front:
            queue.appendleft(job)
        else:
            queue.append(job)
        job.state = JobState.QUEUED
        self._queued_count[job.model] += 1

    def _leave_queue(self, job: Job[P]) -> None:
        if job.state is JobState.QUEUED:
            self._queued_count[job.model] -= 1
            job.state = JobState.GONE

    def _queued_newest_first(self) -> Iterator[Job[P]]:
        """Queued jobs of every model, newest first."""
        live = [queue for model, queue in self._queues.items() if self._queued_count[model]]
        newest_first = (
            (job for job in reversed(queue) if job.state is JobState.QUEUED) for queue in live
        )
        yield from heapq.merge(*newest_first, key=lambda job: -job.enqueued_at)

    def _next_runnable(self) -> Job[P] | None:
        """The oldest queued job of a model that runs here."""
        best: Job[P] | None = None
        for model, queue in self._queues.items():
            if model not in self._models:
                continue
            while queue and queue[0].state is not JobState.QUEUED:
                queue.popleft()
            if queue and (best is None or queue[0].enqueued_at < best.enqueued_at):
                best = queue[0]
        return best

    def _runnable_queued(self) -> int:
        return sum(n for m, n in self._queued_count.items() if m in self._models)

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
        while len(self._running) < limit:
            job = self._next_runnable()
            if job is None:
                break
            if job.deadline is not None and job.deadline <= now:
                # Its deadline passed before its timer fired: expire it, never run it.
                actions += self._expire(job.key, job.epoch, now)
                if job.state is not JobState.QUEUED:
                    continue
            self._queues[job.model].popleft()
            self._queued_count[job.model] -= 1
            job.state = JobState.RUNNING
            job.started_at = now
            # Beyond the slots it waits inside the runtime: its time from
            # start to end is not its service time.
            job.crowded = len(self._running) >= self.config.slots
            self._running[job.key] = job
            actions.append(RunLocal(job))
        if not self.config.steal:
            return actions
        if self._hungry():
            steal = self._pick_victim(now)
            if steal is not None:
                actions.append(steal)
        if self.queued():
            # What is still queued waits for a slot here, or cannot run here
            # at all: idle peers that hold the model should come for it.
            actions += self._nudges(now)
        return actions

    def shares_work(self) -> bool:
        """Whether a request queued here now could be run by a peer: stealing
        is on and some peer runs a model we run."""
        if not self.config.steal:
            return False
        return any(
            self._models.get(model) == sha
            for peer in self._peers.values()
            for model, sha in peer.load.models.items()
        )

    def _hungry(self) -> bool:
        return (
            self.config.steal
            and len(self._running) < self.config.slots
            and not self._runnable_queued()
            and bool(self._models)
        )

    # --- internals: choosing ---------------------------------------------------

    def _pick_victim(self, now: float) -> Steal | None:
        """Power of two choices among peers with queued work, by gossiped load.

        A peer's queued work may be for models we do not hold; it then says
        so with an empty grant, and we leave it alone for a back-off.
        """
        if self._stealing_from is not None:
            return None
        # Worth asking only if the peer's queue outlasts what one job costs
        # us, round trip and margin included; anything less, its own grant
        # check would refuse (a peer that knows better nudges us instead).
        service = min(
            (self._estimate(m) for m in self._models), default=self.config.default_service_s
        )
        my_wait = self.wait_s(now)
        candidates = [
            name
            for name, peer in self._peers.items()
            if peer.backoff_until <= now
            and peer.load.queued_s > my_wait + self._rtt_s(peer) + service + self._margin_s(service)
        ]
        if not candidates:
            return None
        if len(candidates) == 1:
            choice = candidates[0]
        else:
            first, second = self._rng.sample(candidates, 2)
            choice = max(first, second, key=lambda n: self._peers[n].load.queued_s)
        return self._steal_from(choice, now)

    def _steal_from(self, victim: str, now: float) -> Steal:
        self._stealing_from = victim
        self.counters["steal_requests"] += 1
        peer = self._peers.get(victim)
        rtt = peer.rtt_s if peer is not None and peer.rtt_s is not None else None
        bandwidth = peer.bandwidth_bps if peer is not None and peer.bandwidth_bps else None
        return Steal(
            victim,
            StealAsk(
                thief=self.name,
                models=self._models,
                slots=self.config.slots,
                free_slots=self.free_slots(),
                wait_s=self.wait_s(now),
                service_s=self.measured(),
                rtt_s=rtt if rtt is not None else self.config.default_rtt_s,
                bandwidth_bps=bandwidth or self.config.default_bandwidth_bps,
            ),
        )

    def _nudges(self, now: float) -> list[Action]:
        """Nudge idle peers that could run what we have queued."""
        waiting = {m for m, n in self._queued_count.items() if n}
        actions: list[Action] = []
        for name, peer in self._peers.items():
            load = peer.load
            if now - peer.last_nudged < self.config.nudge_interval_s:
                continue
            wait = self._idle_wait(peer, now)
            if wait is None:
                continue
            if not any(m in load.models for m in waiting):
                continue
            if not self._worth_moving_to(peer, wait, now):
                continue
            peer.last_nudged = now
            self.counters["nudges_sent"] += 1
            actions.append(Nudge(name))
        return actions

    def _idle_wait(self, peer: _Peer, now: float) -> float | None:
        """The wait at ``peer`` if it has a free slot (or should by now), else None."""
        if now < peer.busy_until:
            return None  # busy with what we granted it
        if peer.overridden:
            return 0.0  # it should have finished what we granted; no news since
        return peer.load.queued_s if peer.load.free_slots > 0 else None

    def _worth_moving_to(self, peer: _Peer, wait: float, now: float) -> bool:
        """Whether ``peer``, waiting ``wait`` already, would finish our newest job sooner."""
        load = peer.load
        for job in self._queued_newest_first():
            if job.model not in load.models or job.moves >= self.config.max_moves:
                continue
            theirs = load.service_s.get(job.model) or self._estimate(job.model)
            mine = self._local_finish_s(now) if job.model in self._models else math.inf
            transfer = job.size_bytes / (peer.bandwidth_bps or self.config.default_bandwidth_bps)
            finish = wait + self._rtt_s(peer) + transfer + theirs
            return finish + self._margin_s(theirs) < mine
        return False

    def _rtt_s(self, peer: _Peer) -> float:
        return peer.rtt_s if peer.rtt_s is not None else self.config.default_rtt_s

    def _margin_s(self, service_s: float) -> float:
        """Hysteresis: the least gain for which a job moves."""
        return max(self.config.min_gain_s, self.config.gain_fraction * service_s)

    def _share(self, ask: StealAsk, candidates: list[Job[P]], now: float) -> int:
        """How many of our queued jobs the thief may take: its fair share.

        Water-filling: the queued jobs are split so that we, the thief and
        every peer that could help with the same model finish at the same
        time, each according to its speed (jobs per second) and the work it
        already has. The thief's part of that split is its share. Counting
        the other helpers is what splits a burst N ways in one round of
        steals instead of halving it again and again.
        """
        model = candidates[0].model
        mine = self._runs_here_s(model)
        theirs = self._thief_service_s(ask, model)
        thief = (ask.wait_s + ask.rtt_s, max(1, ask.slots) / theirs)
        others: list[tuple[float, float]] = []
        if mine is not None:
            others.append((self._running_left_s(now) / self.config.slots, self.config.slots / mine))
        for name, peer in self._peers.items():
            load = peer.load
            if name == ask.thief or model not in load.models:
                continue
            service = load.service_s.get(model) or theirs
            others.append((load.queued_s, max(1, load.free_slots) / service))
        level = water_level([thief, *others], len(candidates))
        wait, rate = thief
        return max(1, round((level - wait) * rate)) if level > wait else 0

    # --- internals: estimates -----------------------------------------------------

    def _estimate(self, model: str) -> float:
        """Service time of ``model`` for queue estimates, here or, unheld, at peers."""
        measured = self._service.get(model)
        if measured is not None:
            return measured
        for peer in self._peers.values():
            theirs = peer.load.service_s.get(model)
            if theirs is not None:
                return theirs
        return self.config.default_service_s

    def _thief_service_s(self, ask: StealAsk, model: str) -> float:
        """The thief's service time for ``model``: its own word, else ours, else a default."""
        return ask.service_s.get(model) or self._service.get(model) or self._estimate(model)

    def _local_finish_s(self, now: float) -> float:
        """When the newest runnable job queued here would finish."""
        work = sum(
            n * self._estimate(m) for m, n in self._queued_count.items() if n and m in self._models
        )
        return (self._running_left_s(now) + work) / self.config.slots

    def _runs_here_s(self, model: str) -> float | None:
        """Our service time for ``model``; None when it cannot run here."""
        if model not in self._models:
            return None
        return self._service.get(model, self.config.default_service_s)

    def _running_left_s(self, now: float) -> float:
        left = 0.0
        for job in self._running.values():
            started = job.started_at if job.started_at is not None else now
            left += max(0.0, started + self._estimate(job.model) - now)
        return left

    def _observe_link(self, peer: _Peer, reply_bytes: int, took_s: float) -> None:
        if reply_bytes < _SMALL_REPLY_BYTES or peer.rtt_s is None:
            peer.rtt_s = ewma(peer.rtt_s, took_s)
            return
        moving = took_s - peer.rtt_s
        if moving > 0:
            peer.bandwidth_bps = ewma(peer.bandwidth_bps, reply_bytes / moving)

    def _lease_s(self, thief_finish_s: float) -> float:
        return self.config.lease_min_s + self.config.lease_factor * thief_finish_s

    def _lease(self, owned: _Owned[P], lease_s: float, now: float) -> None:
        owned.lease_until = now + lease_s
        self._timer(owned.lease_until, _LEASE, owned.job.key, owned.job.epoch)

    # --- internals: taking back, expiring, dropping -------------------------------------

    def _take_back(self, owned: _Owned[P], now: float) -> None:
        """Requeue an owned request here under a new epoch (its holder failed us)."""
        old = owned.job
        job: Job[P] = Job(
            key=old.key,
            owner=old.owner,
            model=old.model,
            sha256=old.sha256,
            epoch=old.epoch + 1,
            payload=old.payload,
            size_bytes=old.size_bytes,
            deadline=old.deadline,
            request_id=old.request_id,
            enqueued_at=old.enqueued_at,  # it keeps its place: it is old work
        )
        owned.job = job
        owned.holder = None
        owned.lease_until = None
        self.counters["requeued"] += 1
        if job.deadline is not None:
            self._timer(job.deadline, _DEADLINE, job.key, job.epoch)
        self._enqueue(job, front=True)

    def _expire(self, key: JobKey, epoch: int, now: float) -> list[Action]:
        if key[0] == self.node_id:
            owned = self._owned.get(key[1])
            if owned is None or owned.job.epoch != epoch:
                return []
            job = owned.job
            if job.deadline is None or job.deadline > now:
                return []
            del self._owned[key[1]]
            self.counters["expired"] += 1
            allowed_ms = round((job.deadline - job.enqueued_at) * 1000, 3)
            where = "queued" if owned.holder is None else f"held by {owned.holder}"
            if job.state is JobState.RUNNING:
                where = "running"
            error = DeadlineExceeded(
                f"request {job.request_id or key[1]} for {job.model} missed its deadline "
                f"of {allowed_ms:g} ms ({where} when it passed)"
            )
            return [*self._drop_everywhere(owned), Reply(key[1], error)]
        job_here = self._foreign.get(key)
        if job_here is None or job_here.epoch != epoch or job_here.state is not JobState.QUEUED:
            return []  # running ones finish; the owner answers the client itself
        del self._foreign[key]
        self._leave_queue(job_here)
        self.counters["expired"] += 1
        return []

    def _drop_everywhere(self, owned: _Owned[P]) -> list[Action]:
        job = owned.job
        if owned.holder is not None:
            return [Cancel(owned.holder, job.key)]
        if job.state is JobState.RUNNING:
            self._running.pop(job.key, None)
            job.state = JobState.GONE
            return [Abort(job)]
        self._leave_queue(job)
        return []

    def cancel_foreign(self, key: JobKey, now: float) -> list[Action]:
        """An owner no longer wants ``key`` from us."""
        job = self._foreign.pop(key, None)
        if job is None:
            return []
        actions: list[Action] = []
        if job.state is JobState.RUNNING:
            self._running.pop(key, None)
            job.state = JobState.GONE
            actions.append(Abort(job))
        else:
            self._leave_queue(job)
        self.counters["cancelled"] += 1
        return actions + self._after_change(now)

    def _fail_unholdable(self) -> list[Action]:
        """Answer owned requests no live node can run any more."""
        actions: list[Action] = []
        for seq, owned in list(self._owned.items()):
            job = owned.job
            if owned.holder is not None or job.state is not JobState.QUEUED:
                continue
            if job.model in self._models or self._holders(job.model, None):
                continue
            del self._owned[seq]
            self._leave_queue(job)
            self.counters["failed"] += 1
            actions.append(Reply(seq, ModelNotFound(self._not_found(job.model))))
        return actions

    # --- internals: helpers ---------------------------------------------------

    def _holders(self, model: str, sha: str | None) -> list[str]:
        return [
            name
            for name, peer in self._peers.items()
            if model in peer.load.models and (sha is None or peer.load.models[model] == sha)
        ]

    def _not_found(self, model: str) -> str:
        known = set(self._models)
        for peer in self._peers.values():
            known.update(peer.load.models)
        available = ", ".join(f"'{m}'" for m in sorted(known)) or "none"
        return f"no node in the mesh serves model '{model}'; available models: {available}"

    def _timer(self, when: float, kind: int, key: JobKey, epoch: int) -> None:
        timers = self._timers
        if len(timers) > 2 * (len(self._owned) + len(self._foreign)) + 1024:
            # Answered requests leave their timers behind until they come up;
            # sweep now and then so the heap tracks only live ones.
            timers[:] = [entry for entry in timers if self._timer_live(entry)]
            heapq.heapify(timers)
        heapq.heappush(timers, (when, kind, key, epoch))

    def _timer_live(self, entry: tuple[float, int, JobKey, int]) -> bool:
        _, kind, key, epoch = entry
        if kind == _BACKOFF:
            peer = self._peers.get(key[0])
            return peer is not None and peer.backoff_until == entry[0]
        if key[0] == self.node_id:
            owned = self._owned.get(key[1])
            if owned is None or owned.job.epoch != epoch:
                return False
            if kind == _LEASE:
                return owned.holder is not None and owned.lease_until == entry[0]
            return True
        job = self._foreign.get(key)
        return job is not None and job.epoch == epoch and job.state is JobState.QUEUED


# A steal reply smaller than this measures round-trip time, not bandwidth.
_SMALL_REPLY_BYTES = 16 * 1024


def snapshot(scheduler: Scheduler[Any], now: float) -> dict[str, Any]:
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

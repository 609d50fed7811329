"""A discrete-event simulation of schedulers on an unreliable network, pure.

Several :class:`~mesh.core.scheduling.scheduler.Scheduler` objects are driven
only through their public event → actions interface, as
``mesh/node/work_sharing.py`` drives one, with the node's I/O played here:

* ``RunLocal`` runs for a drawn service time, then ``finished``;
* ``Steal`` is a call: the ask travels, the victim's ``grant`` answers, the
  reply travels back to ``granted``, or the call fails after a timeout or
  when the thief learns the victim died (``steal_failed``). A reply is
  matched to its call once: a second or late one is dropped, as any
  msgpack-RPC client drops a response whose msgid is no longer waited for;
* ``SendResult``, ``Handoff``, ``Cancel`` and ``Nudge`` are notifications;
* ``Reply`` is the client's answer, checked against what the client sent.

The network loses, duplicates (notifications and call requests, never a
response), delays and so reorders messages; each node has its own clock
(an offset and a bounded drift), and every duration that crosses the wire is
relative, as on the real wire. A node dies at a drawn time: it does nothing
more, the others learn it after a drawn detection delay, and from then on
drop what still arrives from it (its connection is closed). A client whose
owner died retries the request on another live node with the same request
id and what is left of its deadline, as the SDK does.

Everything runs on one event clock (``t``, "true" time); the schedulers only
ever see their own clock. No I/O, no asyncio, no wall clock: a scenario and
its seed fix the whole run, so a failing case replays exactly.

The scenario's types, the event clock and the network are in
:mod:`tests.helpers.sim_network` (importable from here too); this module
holds the nodes' part: the schedulers, the I/O played for them, the clients.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial

from mesh.core.membership.gossip import Holding
from mesh.core.scheduling.jobs import (
    Abort,
    Action,
    Cancel,
    GiveBack,
    Handoff,
    Job,
    JobKey,
    Nudge,
    PeerLoad,
    Reply,
    RunLocal,
    SchedulerConfig,
    SendResult,
    Steal,
    StealAsk,
)
from mesh.core.scheduling.scheduler import Scheduler
from mesh.errors import DeadlineExceeded, MeshError
from tests.helpers.sim_network import Arrival, Death, Network, NodeSpec, Scenario, SimNetwork

__all__ = ["MODEL", "SERVICE_S", "Arrival", "Death", "Network", "NodeSpec", "Scenario", "Sim"]

MODEL = "digits-small"
SHA = "ab" * 32
SERVICE_S = 0.01  # seconds per request on a speed-1 device


@dataclass(slots=True)
class Request:
    """A client's request, across the owners it tried."""

    rid: str
    deadline: float | None  # true time
    tried: list[str] = field(default_factory=list)
    owner: tuple[str, int] | None = None  # (owner id, seq) of the current attempt
    answers: list[str] = field(default_factory=list)  # "ok" or an error code


class Sim(SimNetwork):
    """One run of a :class:`Scenario`; :meth:`run`, then :meth:`violations`."""

    def __init__(self, scenario: Scenario) -> None:
        super().__init__(scenario)
        self.nodes = {n: self._scheduler(n, i) for i, n in enumerate(self.names)}
        self.requests: dict[str, Request] = {}
        self.owned_by: dict[tuple[str, int], str] = {}  # (owner id, seq) → rid
        self.replies: Counter[tuple[str, int]] = Counter()
        self.errors: list[str] = []  # invariants broken along the way
        self.starts: Counter[tuple[JobKey, int]] = Counter()  # (key, epoch) → runs started
        self.runs_after_answer = 0  # runs started after the client had its answer
        self._ids = itertools.count(1)
        self._runs: dict[tuple[str, JobKey, int], int] = {}  # running here → token
        # Steal calls in flight: thief, victim, when sent, the ask's number.
        self._calls: dict[int, tuple[str, str, float, int | None]] = {}
        self._arrived: dict[tuple[str, JobKey, int], float] = {}
        self._cancelled: dict[tuple[str, JobKey], float] = {}
        self._learned: dict[tuple[str, str], float] = {}  # (observer, dead) → when
        self._pending_arrivals = 0
        for a in self.names:
            for b in self.names:
                if a != b:
                    self.nodes[b].peer_update(a, self.nodes[a].load_summary(self.now(a)), 0.0)
        for arrival in scenario.arrivals:
            self._pending_arrivals += 1
            self._at(arrival.at, partial(self._arrive, arrival))
        for death in scenario.deaths:
            self._at(death.at, partial(self._die, self.names[death.node]))
        for name in self.names:
            self._at(self.rng.uniform(0, self.net.gossip_s), partial(self._gossip, name))

    def _scheduler(self, name: str, index: int) -> Scheduler[str]:
        spec = self.specs[name]
        config = SchedulerConfig(
            slots=spec.slots,
            solo_depth=spec.slots,
            lease_min_s=self.scenario.lease_min_s,
        )
        s: Scheduler[str] = Scheduler(
            node_id=f"id-{name}",
            name=name,
            models={MODEL: frozenset({SHA})},
            config=config,
            rng=random.Random(self.scenario.seed * 31 + index),
        )
        s.observe_service(MODEL, SERVICE_S / spec.speed)
        return s

    # --- what a test reads ---------------------------------------------------------------------

    def counter(self, name: str) -> int:
        return sum(s.counters[name] for s in self.nodes.values())

    def run(self, *, horizon_s: float = 20.0, max_events: int = 200_000) -> None:
        """Until every request is answered and the live nodes are idle, or the horizon."""
        for _ in range(max_events):
            if self._settled() or self.t > horizon_s:
                return
            self._step()
        self.errors.append(f"not settled after {max_events} events (t={self.t:.3f})")

    def violations(self) -> list[str]:
        """Every invariant broken, along the way and at the end; empty when all hold."""
        found = list(self.errors)
        for rid, request in self.requests.items():
            if len(request.answers) != 1:
                found.append(f"{rid} got {len(request.answers)} answers: {request.answers}")
            elif request.deadline is None and request.answers != ["ok"]:
                found.append(f"{rid} had no deadline but got {request.answers}")
        for name in self.alive():
            s = self.nodes[name]
            if (s.owned(), s.queued(), s.running()) != (0, 0, 0):
                found.append(
                    f"{name} not idle at the end: owned {s.owned()}, "
                    f"queued {s.queued()}, running {s.running()}"
                )
            answered = sum(n for (owner, _), n in self.replies.items() if owner == s.node_id)
            if s.counters["requests"] != answered:
                found.append(f"{name} took {s.counters['requests']} requests, answered {answered}")
        return found

    def story(self, last: int = 80) -> str:
        """The run's last events, to read when an invariant fails."""
        return "\n".join(self.trace[-last:])

    # --- the clock -----------------------------------------------------------------------------

    def _step(self) -> None:
        """The next event or the next scheduler timer, whichever comes first."""
        timers = []
        for name in self.alive():
            deadline = self.nodes[name].next_deadline()
            if deadline is not None:
                timers.append((self.clocks[name].true(deadline), name, deadline))
        when, name, local = min(timers, default=(float("inf"), "", 0.0))
        if self._events and self._events[0][0] <= when:
            at, _, event = heapq.heappop(self._events)
            self.t = max(self.t, at)
            event()
        else:
            self.t = max(self.t, when)
            # Float rounding between clocks must not leave a timer just short of due.
            now = max(self.now(name), local)
            self.do(name, self.nodes[name].tick(now))

    def _settled(self) -> bool:
        if self._pending_arrivals or self._calls:
            return False
        if any(not r.answers for r in self.requests.values()):
            return False
        return all(
            (s.owned(), s.queued(), s.running()) == (0, 0, 0)
            for n, s in self.nodes.items()
            if n not in self.dead
        )

    # --- clients -------------------------------------------------------------------------------

    def _arrive(self, arrival: Arrival) -> None:
        self._pending_arrivals -= 1
        for _ in range(arrival.count):
            rid = f"r{len(self.requests)}"
            deadline = None if arrival.deadline_s is None else self.t + arrival.deadline_s
            request = self.requests[rid] = Request(rid, deadline)
            name = self.names[arrival.node]
            self._submit(request, name if name not in self.dead else self._untried(request))

    def _untried(self, request: Request) -> str:
        """A live node the client has not tried (the SDK's failover); deaths are
        permanent and only a death makes a client move, so there is one."""
        return self.rng.choice([n for n in self.alive() if n not in request.tried])

    def _submit(self, request: Request, name: str) -> None:
        s, now = self.nodes[name], self.now(name)
        request.tried.append(name)
        if request.deadline is not None and request.deadline <= self.t:
            request.answers.append(DeadlineExceeded.code)  # the SDK gives up itself
            self._log(f"{request.rid} past its deadline before retrying on {name}")
            return
        deadline = None if request.deadline is None else now + (request.deadline - self.t)
        seq, actions = s.submit(
            model=MODEL,
            payload=request.rid,
            size_bytes=1000,
            deadline=deadline,
            request_id=request.rid,
            now=now,
        )
        request.owner = (s.node_id, seq)
        self.owned_by[request.owner] = request.rid
        self._arrived[(name, request.owner, 0)] = self.t
        self._log(f"{request.rid} submitted to {name} as seq {seq}")
        self.do(name, actions)

    def _reply(self, name: str, action: Reply, outcome: str | None) -> None:
        key = (self.nodes[name].node_id, action.seq)
        self.replies[key] += 1
        rid = self.owned_by.get(key)
        if rid is None or self.replies[key] > 1:
            self.errors.append(f"{name} answered seq {action.seq} ({rid}) again, or unknown")
            return
        request = self.requests[rid]
        if action.error is not None:
            if not isinstance(action.error, MeshError):
                self.errors.append(f"{rid}: untyped error {action.error!r}")
            request.answers.append(action.error.code)
        elif outcome != rid:
            self.errors.append(f"{rid} answered with the result of {outcome}")
            request.answers.append("wrong")
        else:
            request.answers.append("ok")
        self._log(f"{name} answers {rid}: {request.answers[-1]}")

    # --- deaths and gossip ---------------------------------------------------------------------

    def _die(self, name: str) -> None:
        if name in self.dead or len(self.alive()) == 1:
            return  # the last node stays: someone must serve the retries
        self.dead[name] = self.t
        self._log(f"{name} dies")
        for token in [k for k in self._runs if k[0] == name]:
            del self._runs[token]
        for call, (thief, *_) in list(self._calls.items()):
            if thief == name:
                del self._calls[call]
        for other in self.alive():
            delay = self.rng.uniform(*self.net.detect_s)
            self._at(self.t + delay, partial(self._learn, other, name))
        # Its clients see their connection reset and go to another node.
        for request in self.requests.values():
            owner = request.owner
            if owner is not None and owner[0] == f"id-{name}" and not request.answers:
                retry = self.t + self.rng.uniform(*self.net.latency_s)
                self._at(retry, partial(self._retry, request))

    def _retry(self, request: Request) -> None:
        if not request.answers:
            self._submit(request, self._untried(request))

    def _learn(self, name: str, gone: str) -> None:
        if name in self.dead:
            return
        self.knows_dead[name].add(gone)
        self._learned[(name, gone)] = self.t
        self._log(f"{name} learns {gone} died")
        for call, (thief, victim, *_) in list(self._calls.items()):
            if thief == name and victim == gone:  # its connection closed: the call fails
                self._steal_failed(call)
        self.do(name, self.nodes[name].peer_lost(gone, self.now(name)))

    def _gossip(self, name: str) -> None:
        if name in self.dead:
            return
        s = self.nodes[name]
        load, holding = s.load_summary(self.now(name)), s.holding()
        for other in self.names:
            if other != name:
                self._send(name, other, partial(self._heard, other, name, load, holding))
        if not self._settled():
            self._at(self.t + self.net.gossip_s, partial(self._gossip, name))

    def _heard(self, name: str, peer: str, load: PeerLoad, holding: Holding) -> None:
        """Gossip, as membership hands it on: the load, then what the peer holds."""
        s = self.nodes[name]
        self.do(name, s.peer_update(peer, load, self.now(name)))
        self.do(name, s.reconcile(peer, holding, self.now(name)))

    # --- the node's part -----------------------------------------------------------------------

    def do(self, name: str, actions: list[Action], *, outcome: str | None = None) -> None:
        """Carry out ``name``'s actions; ``outcome`` is the result a plain Reply gives."""
        for action in actions:
            if isinstance(action, RunLocal):
                self._start(name, action.job)
            elif isinstance(action, Reply):
                self._reply(name, action, outcome)
            elif isinstance(action, SendResult):
                job = action.job
                self._send(name, job.owner, partial(self._on_result, job))
            elif isinstance(action, Steal):
                self._steal(name, action.victim, action.ask)
            elif isinstance(action, Nudge):
                peer = action.peer
                self._send(name, peer, partial(self._on_nudge, peer, name))
            elif isinstance(action, Handoff):
                h = action
                self._send(name, h.owner, partial(self._on_handoff, h))
            elif isinstance(action, Cancel):
                c = action
                self._send(name, c.holder, partial(self._on_cancel, c.holder, c.key))
            elif isinstance(action, GiveBack):
                g = action
                self._send(name, g.owner, partial(self._on_give_back, g, name))
            elif isinstance(action, Abort):
                token = (name, action.job.key, action.job.epoch)
                if self._runs.pop(token, None) is None:
                    self.errors.append(f"{name} aborts {action.job.key} which is not running")
                self._log(f"{name} aborts {action.job.request_id} e{action.job.epoch}")
            else:  # pragma: no cover - an action the simulation does not know
                raise TypeError(f"unknown action {action!r}")

    def _start(self, name: str, job: Job[str]) -> None:
        token = (name, job.key, job.epoch)
        self._log(f"{name} runs {job.request_id} e{job.epoch} (owner {job.owner})")
        self._check_start(name, job)
        self.starts[(job.key, job.epoch)] += 1
        self._runs[token] = run = next(self._ids)
        jitter = 1 + self.rng.uniform(-1, 1) * self.net.service_jitter
        took = SERVICE_S / self.specs[name].speed * jitter

        def done() -> None:
            if self._runs.get(token) != run or name in self.dead:
                return  # aborted meanwhile, or the node died
            del self._runs[token]
            now, took_local = self.now(name), took * self.clocks[name].rate
            self.do(
                name,
                self.nodes[name].finished(job, took_s=took_local, now=now),
                outcome=job.payload,
            )

        self._at(self.t + took, done)

    def _check_start(self, name: str, job: Job[str]) -> None:
        """The rules a run must keep when it starts (see the module's docstring)."""
        where = f"{name} started {job.request_id} e{job.epoch}"
        if (name, job.key, job.epoch) in self._runs:
            self.errors.append(f"{where} while it runs there")
        if self.starts[(job.key, job.epoch)]:
            self.errors.append(f"{where}, which had started before (same epoch)")
        if job.deadline is not None and job.deadline <= self.now(name):
            self.errors.append(f"{where} past its deadline")
        rid = self.owned_by.get(job.key)
        if rid is not None and self.requests[rid].answers:
            self.runs_after_answer += 1
        if job.key[0] == self.nodes[name].node_id:
            if self.replies[job.key]:
                self.errors.append(f"{where} after answering it")
            return
        arrived = self._arrived.get((name, job.key, job.epoch), -1.0)
        cancelled = self._cancelled.get((name, job.key))
        if cancelled is not None and cancelled >= arrived:
            self.errors.append(f"{where} after its owner cancelled it there")
        learned = self._learned.get((name, job.owner))
        if learned is not None and learned >= arrived:
            self.errors.append(f"{where} after learning its owner {job.owner} died")

    def _on_result(self, job: Job[str]) -> None:
        s = self.nodes[job.owner]
        if s.node_id != job.key[0]:
            return  # another incarnation: work_sharing drops it
        self._log(f"{job.owner} gets the result of {job.request_id} e{job.epoch}")
        now = self.now(job.owner)
        self.do(job.owner, s.result(job.key[1], job.epoch, now), outcome=job.payload)

    def _on_nudge(self, name: str, by: str) -> None:
        self.do(name, self.nodes[name].nudged(by, self.now(name)))

    def _on_handoff(self, h: Handoff) -> None:
        s = self.nodes[h.owner]
        if s.node_id == h.owner_id:
            s.handoff(h.seq, h.epoch, h.holder, h.lease_s, self.now(h.owner), h.ask)

    def _on_give_back(self, g: GiveBack, holder: str) -> None:
        s = self.nodes[g.owner]
        if s.node_id == g.owner_id:
            self.do(g.owner, s.given_back(g.seq, g.epoch, holder, self.now(g.owner)))

    def _on_cancel(self, name: str, key: JobKey) -> None:
        self._cancelled[(name, key)] = self.t
        self.do(name, self.nodes[name].cancel_foreign(key, self.now(name)))

    def _steal(self, thief: str, victim: str, ask: StealAsk) -> None:
        call = next(self._ids)
        self._calls[call] = (thief, victim, self.t, ask.ask)
        if victim in self.knows_dead[thief]:
            self._at(self.t, partial(self._steal_failed, call))
            return
        self._at(self.t + self.net.steal_timeout_s, partial(self._steal_failed, call))
        self._send(thief, victim, partial(self._on_steal, call, thief, victim, ask))

    def _steal_failed(self, call: int) -> None:
        entry = self._calls.pop(call, None)
        if entry is not None:
            thief, victim, _, number = entry
            self.do(thief, self.nodes[thief].steal_failed(victim, self.now(thief), number))

    def _on_steal(self, call: int, thief: str, victim: str, ask: StealAsk) -> None:
        s, now = self.nodes[victim], self.now(victim)
        jobs, actions = s.grant(ask, now)
        # On the wire: copies, with what is left of each deadline.
        sent = [(replace(j), None if j.deadline is None else j.deadline - now) for j in jobs]
        load = s.load_summary(now)
        self._log(f"{victim} grants {[j.request_id for j in jobs]} to {thief}")
        self.do(victim, actions)
        self._send(
            victim,
            thief,
            partial(self._on_grant, call, thief, victim, sent, load),
            duplicates=False,
        )

    def _on_grant(
        self,
        call: int,
        thief: str,
        victim: str,
        sent: list[tuple[Job[str], float | None]],
        load: PeerLoad,
    ) -> None:
        entry = self._calls.pop(call, None)
        if entry is None:
            self._log(
                f"{thief} drops a late grant from {victim}: {[j.request_id for j, _ in sent]}"
            )
            return
        now = self.now(thief)
        jobs = []
        for job, left in sent:
            jobs.append(
                replace(job, deadline=None if left is None else now + left, enqueued_at=now)
            )
            self._arrived[(thief, job.key, job.epoch)] = self.t
        took = (self.t - entry[2]) * self.clocks[thief].rate
        size = sum(j.size_bytes for j in jobs)
        actions = self.nodes[thief].granted(
            victim, jobs, load, took_s=took, reply_bytes=size, now=now, ask=entry[3]
        )
        self.do(thief, actions)

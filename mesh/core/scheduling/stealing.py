"""Work stealing as rules: whom a thief asks, and what a victim hands over.

Stealing is pull. A node with a free slot and nothing runnable queued asks a
loaded peer for work, choosing between two sampled candidates the one with
more queued work (power of two choices, :meth:`Peers.pick_victim`). The
victim hands over only queued requests, never running ones, newest first,
while the thief would finish each one sooner than the victim would, transfer
included, by a margin (hysteresis, :func:`margin_s`), and never more than the
thief's speed-weighted share of the queue (:func:`share`). A node holding
work that idle peers could finish sooner nudges them (:meth:`Peers.to_nudge`),
so that they steal within one round trip instead of one gossip period.

:class:`Peers` is what this node knows of each peer; what it knows of
itself comes in as :class:`~mesh.core.scheduling.estimates.Estimates`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, ItemsView, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mesh.core.policy.capacity import Capacity, water_level
from mesh.core.scheduling.estimates import Estimates, ewma
from mesh.core.scheduling.jobs import (
    Job,
    ModelShas,
    PeerLoad,
    SchedulerConfig,
    Steal,
    StealAsk,
    runs,
)

P = TypeVar("P")

__all__ = [
    "PeerState",
    "Peers",
    "choose_grant",
    "margin_s",
    "movable",
    "observe_link",
    "rtt_s",
    "select_grant",
    "share",
    "worth_moving_to",
]

# A steal reply smaller than this measures round-trip time, not bandwidth.
_SMALL_REPLY_BYTES = 16 * 1024
# Consecutive empty answers past which a victim's back-off stops doubling.
_MAX_BACKOFF_DOUBLINGS = 4


@dataclass(slots=True)
class PeerState:
    """One peer as this node sees it."""

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


def margin_s(config: SchedulerConfig, service_s: float) -> float:
    """Hysteresis: the least gain for which a job of ``service_s`` moves."""
    return max(config.min_gain_s, config.gain_fraction * service_s)


def rtt_s(config: SchedulerConfig, peer: PeerState) -> float:
    """The round trip to ``peer``: measured, else the configured default."""
    return peer.rtt_s if peer.rtt_s is not None else config.default_rtt_s


def observe_link(peer: PeerState, reply_bytes: int, took_s: float) -> None:
    """Learn the link to ``peer`` from a steal that took ``took_s`` for ``reply_bytes``.

    A small reply is all round trip; a big one, less the round trip, is bandwidth.
    """
    if reply_bytes < _SMALL_REPLY_BYTES or peer.rtt_s is None:
        peer.rtt_s = ewma(peer.rtt_s, took_s)
        return
    moving = took_s - peer.rtt_s
    if moving > 0:
        peer.bandwidth_bps = ewma(peer.bandwidth_bps, reply_bytes / moving)


class Peers:
    """Every live peer's state, and the one steal this node has in flight."""

    def __init__(self, config: SchedulerConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._peers: dict[str, PeerState] = {}
        self.stealing_from: str | None = None  # the victim of our steal in flight

    def get(self, name: str) -> PeerState | None:
        return self._peers.get(name)

    def items(self) -> ItemsView[str, PeerState]:
        return self._peers.items()

    # --- what gossip and membership say ----------------------------------------------

    def update(self, name: str, load: PeerLoad, now: float) -> None:
        """Fresh gossip from ``name``."""
        peer = self._peers.get(name)
        if peer is None:
            self._peers[name] = PeerState(load)
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

    def lost(self, name: str) -> None:
        """``name`` died or restarted: forget it, and any steal from it."""
        self._peers.pop(name, None)
        if self.stealing_from == name:
            self.stealing_from = None

    def nudged(self, by: str) -> None:
        """``by`` says it has work for us: it knows its queue better than our back-off."""
        peer = self._peers.get(by)
        if peer is not None:
            peer.backoff_until = -math.inf
            peer.empty_streak = 0

    def holders(self, model: str, sha: str | None) -> list[str]:
        """Peers that run ``model`` (at ``sha``, unless None), as gossip last said."""
        return [name for name, peer in self._peers.items() if runs(peer.load.models, model, sha)]

    def known_models(self) -> set[str]:
        """Every model some peer runs."""
        return {model for peer in self._peers.values() for model in peer.load.models}

    def run_any(self, models: ModelShas) -> bool:
        """Whether some peer runs one of ``models`` at one of the same sha256s."""
        return any(
            not shas.isdisjoint(models.get(model, ()))
            for peer in self._peers.values()
            for model, shas in peer.load.models.items()
        )

    def gossiped_service(self) -> Iterator[Mapping[str, float]]:
        """Each peer's service times, as it gossiped them."""
        return (peer.load.service_s for peer in self._peers.values())

    def rtt_s(self, peer: PeerState) -> float:
        """The round trip to ``peer``: measured, else the configured default."""
        return rtt_s(self.config, peer)

    def backoff_live(self, name: str, until: float) -> bool:
        """Whether ``name``'s back-off still ends at ``until`` (its timer is not stale)."""
        peer = self._peers.get(name)
        return peer is not None and peer.backoff_until == until

    def activity(self) -> dict[str, dict[str, Any]]:
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

    def capacities(
        self, model: str, sha: str | None, now: float, estimate: Callable[[str], float]
    ) -> list[Capacity]:
        """Each holder of ``model`` as the fallback decision sees it: when it is free."""
        capacities = []
        for name in self.holders(model, sha):
            peer = self._peers[name]
            load = peer.load
            capacities.append(
                Capacity(
                    name=name,
                    free_in_s=max(load.queued_s, peer.busy_until - now) + self.rtt_s(peer),
                    slots=load.slots,
                    service_s=load.service_s.get(model) or estimate(model),
                )
            )
        return capacities

    # --- the thief's side -------------------------------------------------------

    def pick_victim(self, wait_s: float, service_s: float, now: float) -> str | None:
        """Power of two choices among peers with queued work, by gossiped load.

        ``wait_s`` is our own wait and ``service_s`` the cheapest job we run.
        A peer's queued work may be for models we do not hold; it then says
        so with an empty grant, and we leave it alone for a back-off.
        """
        if self.stealing_from is not None:
            return None
        # Worth asking only if the peer's queue outlasts what one job costs
        # us, round trip and margin included; anything less, its own grant
        # check would refuse (a peer that knows better nudges us instead).
        margin = margin_s(self.config, service_s)
        candidates = [
            name
            for name, peer in self._peers.items()
            if peer.backoff_until <= now
            and peer.load.queued_s > wait_s + self.rtt_s(peer) + service_s + margin
        ]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(candidates, 2)
        return max(first, second, key=lambda n: self._peers[n].load.queued_s)

    def steal(self, victim: str, thief: str, load: PeerLoad) -> Steal:
        """We, ``thief``, ask ``victim`` for work: the message, telling it our
        ``load`` and what we know of the link between us."""
        self.stealing_from = victim
        peer = self._peers.get(victim)
        rtt = peer.rtt_s if peer is not None else None
        bandwidth = peer.bandwidth_bps if peer is not None else None
        ask = StealAsk(
            thief=thief,
            models=load.models,
            slots=load.slots,
            free_slots=load.free_slots,
            wait_s=load.queued_s,
            service_s=load.service_s,
            rtt_s=rtt if rtt is not None else self.config.default_rtt_s,
            bandwidth_bps=bandwidth or self.config.default_bandwidth_bps,
        )
        return Steal(victim, ask)

    def answered(
        self,
        victim: str,
        taken: int,
        victim_load: PeerLoad | None,
        *,
        took_s: float | None,
        reply_bytes: int,
        now: float,
    ) -> float | None:
        """``victim`` answered our steal with ``taken`` jobs; when its back-off ends,
        if the answer was empty and the victim is still known, else None."""
        if self.stealing_from == victim:
            self.stealing_from = None
        peer = self._peers.get(victim)
        if peer is None:
            return None
        if took_s is not None:
            observe_link(peer, reply_bytes, took_s)
        if victim_load is not None:
            peer.load = victim_load
        if taken:
            peer.empty_streak = 0
            peer.we_stole += taken
            peer.last_steal_at = now
            return None
        # Each empty answer in a row doubles the wait (up to 16x): a victim
        # whose queue is not worth sharing is asked rarely.
        peer.empty_streak += 1
        doublings = min(peer.empty_streak - 1, _MAX_BACKOFF_DOUBLINGS)
        peer.backoff_until = now + self.config.steal_backoff_s * 2**doublings
        return peer.backoff_until

    # --- the victim's side --------------------------------------------------------

    def note_thief(self, ask: StealAsk, jobs: list[Job[P]], here: Estimates, now: float) -> None:
        """Count the thief as busy with what it took, until it should be done."""
        peer = self._peers.get(ask.thief)
        if peer is None:
            return
        peer.stole_from_us += len(jobs)
        peer.last_steal_at = now
        work = sum(here.for_thief(ask.service_s, j.model) for j in jobs) / max(1, ask.slots)
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

    def to_nudge(
        self,
        waiting: Collection[str],
        newest_first: Callable[[], Iterable[Job[P]]],
        here: Estimates,
        now: float,
    ) -> list[str]:
        """Idle peers, not nudged lately, that run a model in ``waiting`` (jobs
        queued here) and would finish one sooner than we would; each is marked
        nudged ``now``."""
        names = []
        for name, peer in self._peers.items():
            if now - peer.last_nudged < self.config.nudge_interval_s:
                continue
            wait = _idle_wait(peer, now)
            if wait is None:
                continue
            if not any(m in peer.load.models for m in waiting):
                continue
            if not worth_moving_to(peer, wait, newest_first(), here, self.config, now):
                continue
            peer.last_nudged = now
            names.append(name)
        return names


def _idle_wait(peer: PeerState, now: float) -> float | None:
    """The wait at ``peer`` if it has a free slot (or should by now), else None."""
    if now < peer.busy_until:
        return None  # busy with what we granted it
    if peer.overridden:
        return 0.0  # it should have finished what we granted; no news since
    return peer.load.queued_s if peer.load.free_slots > 0 else None


def movable(job: Job[P], ask: StealAsk, config: SchedulerConfig, now: float) -> bool:
    """Whether queued ``job`` may go to the thief at all: moves left, same model, in time."""
    return (
        job.moves < config.max_moves
        and runs(ask.models, job.model, job.sha256)
        and (job.deadline is None or job.deadline > now)
    )


def share(
    ask: StealAsk,
    candidates: list[Job[P]],
    here: Estimates,
    peers: Iterable[tuple[str, PeerState]],
    now: float,
) -> int:
    """How many of our queued ``candidates`` the thief may take: its fair share.

    Water-filling: the queued jobs are split so that we, the thief and every
    peer that could help with the same model finish at the same time, each
    according to its speed (jobs per second) and the work it already has.
    The thief's part of that split is its share. Counting the other helpers
    is what splits a burst N ways in one round of steals instead of halving
    it again and again.
    """
    model = candidates[0].model
    mine = here.runs_here_s(model, candidates[0].sha256)
    theirs = here.for_thief(ask.service_s, model)
    thief = (ask.wait_s + ask.rtt_s, max(1, ask.slots) / theirs)
    others: list[tuple[float, float]] = []
    if mine is not None:
        others.append((here.running_left_s(now) / here.slots, here.slots / mine))
    for name, peer in peers:
        load = peer.load
        if name == ask.thief or model not in load.models:
            continue
        service = load.service_s.get(model) or theirs
        others.append((load.queued_s, max(1, load.free_slots) / service))
    level = water_level([thief, *others], len(candidates))
    wait, rate = thief
    return max(1, round((level - wait) * rate)) if level > wait else 0


def select_grant(
    ask: StealAsk,
    candidates: list[Job[P]],
    here: Estimates,
    peers: Iterable[tuple[str, PeerState]],
    config: SchedulerConfig,
    now: float,
) -> list[tuple[Job[P], float]]:
    """What to hand a thief of our :func:`movable` ``candidates`` (newest first,
    at least one), each job with when the thief should finish it: up to its
    :func:`share` and the grant's caps, while it beats us (:func:`choose_grant`)."""
    limit = min(share(ask, candidates, here, peers, now), config.max_grant_jobs)
    return choose_grant(ask, candidates, limit, here, config, now)


def choose_grant(
    ask: StealAsk,
    candidates: list[Job[P]],
    limit: int,
    here: Estimates,
    config: SchedulerConfig,
    now: float,
) -> list[tuple[Job[P], float]]:
    """Which of ``candidates`` (newest first) go to the thief, each with when
    the thief should finish it: at most ``limit``, within the grant's byte
    cap, and only while the thief beats us by the hysteresis margin."""
    # Our finish time for the newest runnable queued job; each one we give
    # away brings the next one's forward by its service time per slot.
    victim_finish = here.finish_s(now)
    thief_ready = ask.wait_s + ask.rtt_s
    thief_parallel = max(1, ask.slots)
    granted: list[tuple[Job[P], float]] = []
    sent_bytes = 0
    for job in candidates:
        if len(granted) >= limit:
            break
        if granted and sent_bytes + job.size_bytes > config.max_grant_bytes:
            break
        mine = here.runs_here_s(job.model, job.sha256)
        theirs = here.for_thief(ask.service_s, job.model)
        transfer = (sent_bytes + job.size_bytes) / ask.bandwidth_bps
        thief_finish = thief_ready + transfer + theirs * (len(granted) + 1) / thief_parallel
        ours = victim_finish if mine is not None else math.inf
        if not thief_finish + margin_s(config, theirs) < ours:
            break  # older jobs finish sooner here still: stop
        granted.append((job, thief_finish))
        sent_bytes += job.size_bytes
        if mine is not None:
            victim_finish -= mine / here.slots
    return granted


def worth_moving_to(
    peer: PeerState,
    wait: float,
    newest_first: Iterable[Job[P]],
    here: Estimates,
    config: SchedulerConfig,
    now: float,
) -> bool:
    """Whether ``peer``, waiting ``wait`` already, would finish our newest movable job sooner."""
    load = peer.load
    for job in newest_first:
        if not runs(load.models, job.model, job.sha256) or job.moves >= config.max_moves:
            continue
        theirs = load.service_s.get(job.model) or here.estimate(job.model)
        mine = here.finish_s(now) if runs(here.models, job.model, job.sha256) else math.inf
        transfer = job.size_bytes / (peer.bandwidth_bps or config.default_bandwidth_bps)
        finish = wait + rtt_s(config, peer) + transfer + theirs
        return finish + margin_s(config, theirs) < mine
    return False

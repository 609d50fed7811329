"""Draining: what a node that is leaving does with the work it has, as pure rules.

A node drains on SIGTERM or SIGINT, or when ``edgemesh drain`` asks it to. It
must leave nothing silent behind, and it should leave quickly. From the
moment it drains, the :class:`~mesh.core.scheduling.scheduler.Scheduler` (in
drain mode) follows these rules:

* **No new work.** A new request is refused with :class:`~mesh.errors.Draining`
  (a :class:`~mesh.errors.PeerUnavailable`: clients send it to another node
  under the same request id). The node steals nothing.
* **Queued work it owns** keeps running here as slots free, and any peer
  that asks for work is handed its share of all of it (:func:`drain_grant`),
  not only what it would finish sooner: this node is going, so its own
  speed no longer counts. Peers that run a queued model are nudged
  (:func:`drain_nudges`) so that they ask within a round trip. What peers
  run for it comes back as results, as always: it owns those requests until
  it has answered them.
* **Queued work it holds for other owners** is given back at once
  (:class:`~mesh.core.scheduling.jobs.GiveBack`): the owner requeues it
  now instead of waiting for the lease to run out. Running work finishes,
  and its result goes to its owner as always.
* **Done** when it owns nothing, holds nothing and runs nothing
  (:func:`drain_complete`).
* **Out of time** (:class:`DrainClock`): every request it still owns is
  answered with :func:`abandoned` (a Draining error: retry elsewhere with
  the same request id) and whatever a peer runs for it is cancelled; what
  it still runs for other owners is stopped and given back.

Pure: no I/O, no clock; ``now`` comes in with every call.
"""

from __future__ import annotations

import math
from collections.abc import Collection, ItemsView
from dataclasses import dataclass
from typing import TypeVar

from mesh.core.policy.capacity import water_level
from mesh.core.scheduling.estimates import Estimates
from mesh.core.scheduling.jobs import Job, SchedulerConfig, StealAsk
from mesh.core.scheduling.stealing import PeerState
from mesh.errors import ConfigError, Draining

P = TypeVar("P")

__all__ = ["DrainClock", "abandoned", "drain_complete", "drain_grant", "drain_nudges", "refused"]


@dataclass(frozen=True, slots=True)
class DrainClock:
    """When a drain began and how long it may take."""

    started: float
    timeout_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout_s) and self.timeout_s >= 0):
            raise ConfigError(f"drain timeout must be >= 0 seconds, got {self.timeout_s!r}")

    @property
    def deadline(self) -> float:
        """When whatever is left gets an error."""
        return self.started + self.timeout_s

    def overdue(self, now: float) -> bool:
        """Whether the drain timeout has passed by ``now``."""
        return now >= self.deadline

    def left_s(self, now: float) -> float:
        """Seconds left before the timeout (0 once it has passed)."""
        return max(0.0, self.deadline - now)


def drain_complete(*, owned: int, queued: int, running: int) -> bool:
    """Whether a draining node may leave: nothing to answer, nothing queued or running."""
    return owned == 0 and queued == 0 and running == 0


def refused(name: str) -> Draining:
    """The error a new request gets at a draining node."""
    return Draining(
        f"node {name} is draining (shutting down) and takes no new requests; "
        "send this one to another node of the mesh"
    )


def abandoned(name: str, request: str, model: str, timeout_s: float) -> Draining:
    """The error of an owned request still unanswered when the drain timeout passed."""
    return Draining(
        f"node {name} shut down before request {request} for {model} was answered "
        f"(its drain timeout of {timeout_s:g} s passed); send it again, with the same "
        "request id, to another node of the mesh"
    )


def drain_grant(
    ask: StealAsk,
    candidates: list[Job[P]],
    here: Estimates,
    peers: ItemsView[str, PeerState],
    config: SchedulerConfig,
    now: float,
) -> list[tuple[Job[P], float]]:
    """What a draining node hands a thief of its movable ``candidates`` (newest
    first), each with when the thief should finish it.

    The thief's share of the whole queue when it is split, water-filling, among
    the thief and every other peer that runs the same model, by speed and the
    work each already has: this node leaves, so it is not counted, and no job
    has to beat this node's own finish time. At least one job; within the
    grant's caps (jobs and bytes).
    """
    if not candidates:
        return []
    model = candidates[0].model
    theirs = here.for_thief(ask.service_s, model)
    ready = ask.wait_s + ask.rtt_s
    thief = (ready, max(1, ask.slots) / theirs)
    others = [
        (
            peer.load.queued_s,
            max(1, peer.load.free_slots) / (peer.load.service_s.get(model) or theirs),
        )
        for name, peer in peers
        if name != ask.thief and model in peer.load.models
    ]
    level = water_level([thief, *others], len(candidates))
    share = max(1, round((level - ready) * thief[1])) if level > ready else 1
    limit = min(share, config.max_grant_jobs)
    granted: list[tuple[Job[P], float]] = []
    sent_bytes = 0
    for job in candidates:
        if len(granted) >= limit:
            break
        if granted and sent_bytes + job.size_bytes > config.max_grant_bytes:
            break
        sent_bytes += job.size_bytes
        service = here.for_thief(ask.service_s, job.model)
        transfer = sent_bytes / ask.bandwidth_bps
        finish = ready + transfer + service * (len(granted) + 1) / max(1, ask.slots)
        granted.append((job, finish))
    return granted


def drain_nudges(
    peers: ItemsView[str, PeerState],
    waiting: Collection[str],
    config: SchedulerConfig,
    now: float,
) -> list[str]:
    """Peers to nudge: every one that runs a model in ``waiting`` (queued here)
    and was not nudged within ``nudge_interval_s``; each is marked nudged ``now``.

    Busy or not: a nudge also ends the peer's back-off from us, so that it
    comes for our work as soon as it has a free slot, not when its back-off says.
    """
    names = []
    for name, peer in peers:
        if now - peer.last_nudged < config.nudge_interval_s:
            continue
        if not any(model in peer.load.models for model in waiting):
            continue
        peer.last_nudged = now
        names.append(name)
    return names

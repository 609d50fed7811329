"""Reconciling grants: what an owner believes a peer holds against what the peer says.

A grant can go astray: the victim hands jobs over and the reply never reaches
the thief (the connection broke as it was sent), or a holder drops an owner's
jobs because it took the owner for dead during a partition that has since
healed. Left alone, the owner would learn of it only when the lease ran out,
long after most deadlines.

So every node reports, in each gossip round (:class:`Holding`), the
``(seq, epoch)`` of every request it holds for each owner, and ``asks``: the
number up to which all of its own steal asks are settled (answered, or given
up so that a late answer is dropped). Asks are numbered by the thief
(:class:`Asks`); the victim records the number with each request it hands
over, and passes it on in a ``handoff``. An owner that hears a report from
``peer`` takes back at once (requeues under ``epoch + 1``, as when a lease
runs out) each request it believes ``peer`` holds that is:

- not listed at that epoch, and
- taken by an ask the peer has settled (``ask <= asks``): a grant for an ask
  still open may be in flight, and is left alone.

A request taken by an ask of unknown number (an older peer) is left to its
lease. Entries listed that the owner does not believe are held there (an
older epoch, an answered request) change nothing: a result they produce
carries a stale epoch and is dropped.

Why a report cannot overtake what it must follow: a holder's steal calls,
results, handoffs and gossip towards one owner all travel on the holder's
one link to that owner, in order. A result or handoff sent before the report
arrives before it; a grant answering a settled ask was read before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from mesh.core.membership.gossip import Holding
from mesh.core.scheduling.jobs import Job
from mesh.core.scheduling.ledger import Owned

P = TypeVar("P")

__all__ = ["Asks", "Holding", "missing", "report"]


class Asks:
    """A thief's numbering of its steal asks, and which are still open."""

    def __init__(self) -> None:
        self._last = 0
        self._open: dict[int, str] = {}  # ask number → victim

    def open(self, victim: str) -> int:
        """Number a new ask to ``victim``."""
        self._last += 1
        self._open[self._last] = victim
        return self._last

    def settle(self, victim: str, ask: int | None = None) -> None:
        """The ask ``ask`` (or, unnamed, the oldest open one to ``victim``) is
        answered or given up on."""
        if ask is None:
            ask = min((n for n, v in self._open.items() if v == victim), default=None)
        if ask is not None:
            self._open.pop(ask, None)

    def settled(self) -> int:
        """The highest number up to which every ask is settled."""
        return min(self._open) - 1 if self._open else self._last


def report(held: Iterable[Job[Any]], asks: int) -> Holding:
    """What this node tells the mesh it holds, for its gossip."""
    jobs: dict[str, list[tuple[int, int]]] = {}
    for job in held:
        jobs.setdefault(job.key[0], []).append((job.key[1], job.epoch))
    return Holding(asks=asks, jobs={owner: tuple(sorted(p)) for owner, p in jobs.items()})


def missing(
    believed: Iterable[Owned[P]], listed: Iterable[tuple[int, int]], asks: int
) -> list[Owned[P]]:
    """Of the records an owner believes a peer holds, those the peer's report
    shows it does not (see the module docstring for the rule)."""
    there = set(listed)
    return [
        owned
        for owned in believed
        if (owned.job.key[1], owned.job.epoch) not in there
        and owned.ask is not None
        and owned.ask <= asks
    ]

"""The scheduler's timers: deadlines, leases and back-offs, in one heap.

Nothing is ever removed from the middle of the heap: a request that is
answered, taken back or handed on simply leaves its timer behind, and the
timer is judged stale when it comes up (or when the heap is swept). Whether
an entry still matters is the owner's question, asked through the ``live``
predicate, so this module knows nothing of ledgers or peers.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from enum import IntEnum
from typing import NamedTuple

from mesh.core.scheduling.jobs import JobKey

__all__ = ["Timer", "TimerKind", "Timers"]


class TimerKind(IntEnum):
    """What falls due. The order breaks ties between timers for the same instant."""

    DEADLINE = 0  # a request's deadline (``key``, ``epoch``)
    LEASE = 1  # a holder's lease on one of our requests (``key``, ``epoch``)
    BACKOFF = 2  # a peer's steal back-off ends (``key`` is ``(peer, 0)``)


class Timer(NamedTuple):
    """One heap entry; ordered by ``when`` first."""

    when: float
    kind: TimerKind
    key: JobKey
    epoch: int


# Below this size the heap is never swept: stale entries cost less than sweeps.
_SWEEP_FLOOR = 1024


class Timers:
    """A min-heap of :class:`Timer` with lazy deletion.

    ``live`` says whether an entry still matters; stale ones are skipped by
    :meth:`next_deadline` and swept out whenever the heap has grown to twice
    what was live at the last sweep, so it tracks the live timers in
    amortised O(log n) per push.
    """

    def __init__(self, live: Callable[[Timer], bool]) -> None:
        self._live = live
        self._heap: list[Timer] = []
        self._live_at_sweep = 0

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, kind: TimerKind, key: JobKey, epoch: int = 0) -> None:
        """Fire at ``when`` (on the caller's clock)."""
        heap = self._heap
        if len(heap) > 2 * self._live_at_sweep + _SWEEP_FLOOR:
            # Answered requests leave their timers behind until they come up;
            # sweep now and then so the heap tracks only live ones.
            heap[:] = [entry for entry in heap if self._live(entry)]
            heapq.heapify(heap)
            self._live_at_sweep = len(heap)
        heapq.heappush(heap, Timer(when, kind, key, epoch))

    def next_deadline(self) -> float | None:
        """When the earliest live timer fires; None if none is left."""
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0].when if heap else None

    def due(self, now: float) -> Iterator[Timer]:
        """Pop every entry at or before ``now``, stale or not (the caller checks)."""
        heap = self._heap
        while heap and heap[0].when <= now:
            yield heapq.heappop(heap)

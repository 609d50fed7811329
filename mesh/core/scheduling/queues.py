"""The jobs waiting on one node: a queue per model, oldest first.

A job leaves a queue in three ways: it starts (from the front), it is granted
to a thief (from the back), or it expires or is cancelled (from anywhere).
Removing from the middle of a deque is O(n), so a job that leaves other than
by starting is only marked :attr:`JobState.GONE` and stays where it is until
it reaches the front, where :meth:`Queues.next_runnable` drops it. The counts
are kept exact all along, so "how much is queued" never walks a queue.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Container, Iterator
from typing import Generic, TypeVar

from mesh.core.scheduling.jobs import Job, JobState
from mesh.errors import InternalError

P = TypeVar("P")

__all__ = ["Queues"]


class Queues(Generic[P]):
    """Per-model FIFO queues with lazy deletion and exact per-model counts."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Job[P]]] = {}
        self._count: Counter[str] = Counter()

    def push(self, job: Job[P], *, front: bool = False) -> None:
        """Queue ``job``; at the ``front`` when it is old work coming back."""
        queue = self._queues.setdefault(job.model, deque())
        if front:
            queue.appendleft(job)
        else:
            queue.append(job)
        job.state = JobState.QUEUED
        self._count[job.model] += 1

    def leave(self, job: Job[P]) -> None:
        """``job`` leaves its queue (granted, expired, cancelled); a no-op unless queued."""
        if job.state is JobState.QUEUED:
            self._count[job.model] -= 1
            job.state = JobState.GONE

    def start(self, job: Job[P]) -> None:
        """Take ``job``, the front of its queue (see :meth:`next_runnable`), to run."""
        queue = self._queues[job.model]
        if not queue or queue[0] is not job:
            raise InternalError(f"job {job.key} is not at the front of its queue")
        queue.popleft()
        self._count[job.model] -= 1
        job.state = JobState.RUNNING

    def next_runnable(self, models: Container[str]) -> Job[P] | None:
        """The oldest queued job of any of ``models``, left in place."""
        best: Job[P] | None = None
        for model, queue in self._queues.items():
            if model not in models:
                continue
            while queue and queue[0].state is not JobState.QUEUED:
                queue.popleft()
            if queue and (best is None or queue[0].enqueued_at < best.enqueued_at):
                best = queue[0]
        return best

    def newest_first(self) -> Iterator[Job[P]]:
        """Queued jobs of every model, newest first (the end a thief takes from)."""
        live = [queue for model, queue in self._queues.items() if self._count[model]]
        newest_first = (
            (job for job in reversed(queue) if job.state is JobState.QUEUED) for queue in live
        )
        yield from heapq.merge(*newest_first, key=lambda job: -job.enqueued_at)

    def count(self, model: str) -> int:
        """Jobs queued for ``model``."""
        return self._count[model]

    def total(self, models: Container[str] | None = None) -> int:
        """Jobs queued, for every model or only for ``models``."""
        return sum(n for m, n in self._count.items() if models is None or m in models)

    def counts(self) -> dict[str, int]:
        """Jobs queued per model, models with none left out."""
        return {m: n for m, n in self._count.items() if n}

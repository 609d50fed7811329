"""The jobs on one node: a queue per model, oldest first, and those running.

A job leaves a queue in three ways: it starts (from the front), it is granted
to a thief (from the back), or it expires or is cancelled (from anywhere).
Removing from the middle of a deque is O(n), so a job that leaves other than
by starting is only marked :attr:`JobState.GONE` and stays where it is until
it reaches the front, where :meth:`Queues.next_runnable` drops it. The counts
are kept exact all along, so "how much is queued" never walks a queue.

A job that starts moves to the running set, where it stays until its run
ends or is aborted.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Collection, Container, Iterator
from typing import Generic, TypeVar

from mesh.core.scheduling.jobs import Job, JobKey, JobState, ModelShas, runs
from mesh.errors import InternalError

P = TypeVar("P")

__all__ = ["Queues"]


class Queues(Generic[P]):
    """Per-model FIFO queues with lazy deletion and exact per-model counts,
    and the set of jobs running here."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Job[P]]] = {}
        self._count: Counter[str] = Counter()
        self._running: dict[JobKey, Job[P]] = {}

    @property
    def running(self) -> Collection[Job[P]]:
        """The jobs running here."""
        return self._running.values()

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

    def start(self, job: Job[P], now: float, slots: int) -> None:
        """Run ``job``, the front of its queue (see :meth:`next_runnable`), from ``now``."""
        queue = self._queues[job.model]
        if not queue or queue[0] is not job:
            raise InternalError(f"job {job.key} is not at the front of its queue")
        queue.popleft()
        self._count[job.model] -= 1
        job.state = JobState.RUNNING
        job.started_at = now
        # Beyond the slots it waits inside the runtime: its time from start
        # to end is not its service time.
        job.crowded = len(self._running) >= slots
        self._running[job.key] = job

    def finish(self, job: Job[P]) -> bool:
        """``job``'s run ended; False when it was no longer running (aborted)."""
        if self._running.pop(job.key, None) is None:
            return False
        job.state = JobState.GONE
        return True

    def stop(self, job: Job[P]) -> bool:
        """Nobody wants ``job`` any more: out of its queue, or out of the running
        set; True when it was running (then the runtime must abort it)."""
        if job.state is JobState.RUNNING:
            self._running.pop(job.key, None)
            job.state = JobState.GONE
            return True
        self.leave(job)
        return False

    def next_runnable(self, models: ModelShas) -> Job[P] | None:
        """The oldest queued job of any of ``models`` (at a sha256 held), left in place.

        Only the front of each model's queue is looked at: a job for a
        version held only by peers waits there, and the jobs behind it with
        it, until a peer takes it (the owner nudges them).
        """
        best: Job[P] | None = None
        for model, queue in self._queues.items():
            if model not in models:
                continue
            while queue and queue[0].state is not JobState.QUEUED:
                queue.popleft()
            if (
                queue
                and runs(models, model, queue[0].sha256)
                and (best is None or queue[0].enqueued_at < best.enqueued_at)
            ):
                best = queue[0]
        return best

    def uses(self, model: str, sha256: str) -> bool:
        """Whether a job queued or running here is for ``model`` at ``sha256``."""
        if any(j.model == model and j.sha256 == sha256 for j in self._running.values()):
            return True
        queue = self._queues.get(model, ())
        return any(j.state is JobState.QUEUED and j.sha256 == sha256 for j in queue)

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

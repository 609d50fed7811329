"""Running estimates of how long things take, from what was measured.

Load is time, not queue length: a queue turns into seconds through per-model
service times, measured here (an EWMA of real runs) or, for a model this node
has not run, as a peer's gossip says. Everything here is arithmetic over
figures handed in; nothing reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mesh.core.policy.capacity import Capacity
from mesh.core.scheduling.jobs import Job, runs

__all__ = ["EWMA_WEIGHT", "Estimates", "ewma", "remaining_s", "work_s"]

# How much one new sample moves an average: 0.2 follows a device whose speed
# changes (thermal throttling, a competing process) within a handful of calls,
# while one outlier moves the estimate only a fifth of the way.
EWMA_WEIGHT = 0.2


def ewma(previous: float | None, sample: float, weight: float = EWMA_WEIGHT) -> float:
    """The moving average after ``sample``; the first sample is taken whole."""
    return sample if previous is None else previous + weight * (sample - previous)


class Estimates:
    """Time and capacity on this node: per-model service times, and what its
    queued and running work adds up to in seconds.

    It reads, and never changes, the queue counts, the running jobs and the
    peers' gossiped service times, through the views it is given.
    """

    def __init__(
        self,
        *,
        models: Mapping[str, frozenset[str]],
        slots: int,
        default_s: float,
        queued: Callable[[], Mapping[str, int]],
        running: Callable[[], Iterable[Job[Any]]],
        gossiped: Callable[[], Iterable[Mapping[str, float]]],
    ) -> None:
        self.models = models  # what runs here: name → sha256 of each version
        self.slots = slots
        self.default_s = default_s  # for a model nobody has measured yet
        self._queued = queued  # jobs queued per model
        self._running = running
        self._gossiped = gossiped  # each peer's service times
        self._measured: dict[str, float] = {}

    # --- service times ------------------------------------------------------------

    def observe(self, model: str, took_s: float) -> None:
        """A measured service time for ``model`` here."""
        self._measured[model] = ewma(self._measured.get(model), took_s)

    def here(self, model: str) -> float | None:
        """The measured service time of ``model`` here; None before a run."""
        return self._measured.get(model)

    def measured(self) -> dict[str, float]:
        """Every measured service time (a copy, for gossip)."""
        return dict(self._measured)

    def estimate(self, model: str) -> float:
        """Service time of ``model`` for queue estimates: measured here, else as
        the first peer that knows it gossiped, else the default."""
        measured = self._measured.get(model)
        if measured is not None:
            return measured
        for theirs in self._gossiped():
            service = theirs.get(model)
            if service is not None:
                return service
        return self.default_s

    def runs_here_s(self, model: str, sha256: str | None = None) -> float | None:
        """Our service time for ``model``, or the default; None when it cannot run
        here (nor at ``sha256``, the version a job was resolved to, when given)."""
        if not runs(self.models, model, sha256):
            return None
        return self._measured.get(model, self.default_s)

    def for_thief(self, theirs: Mapping[str, float], model: str) -> float:
        """A thief's service time for ``model``: its word (``theirs``), else ours,
        else the estimate."""
        return theirs.get(model) or self._measured.get(model) or self.estimate(model)

    def cheapest_s(self) -> float:
        """The service time of the quickest model here: what one job costs at least."""
        return min((self.estimate(m) for m in self.models), default=self.default_s)

    # --- work in seconds ----------------------------------------------------------

    def queued_s(self) -> float:
        """Queued (not running) work in seconds per slot."""
        return work_s(self._queued(), self.estimate) / self.slots

    def running_left_s(self, now: float) -> float:
        """What the running jobs still need, all slots together."""
        return remaining_s(self._running(), self.estimate, now)

    def wait_s(self, now: float) -> float:
        """Time until a job queued now could start here."""
        return self.queued_s() + self.running_left_s(now) / self.slots

    def finish_s(self, now: float) -> float:
        """When the newest runnable job queued here would finish."""
        runnable = {m: n for m, n in self._queued().items() if m in self.models}
        return (self.running_left_s(now) + work_s(runnable, self.estimate)) / self.slots

    def capacity(self, name: str, model: str, now: float) -> Capacity:
        """This node, called ``name``, as a holder of ``model`` for the fallback decision."""
        # Queued work for other models also stands before ours here.
        others = {m: n for m, n in self._queued().items() if m != model}
        return Capacity(
            name=name,
            free_in_s=(self.running_left_s(now) + work_s(others, self.estimate)) / self.slots,
            slots=self.slots,
            service_s=self.estimate(model),
        )


def work_s(counts: Mapping[str, int], estimate: Callable[[str], float]) -> float:
    """Seconds of work in ``counts`` (queued jobs per model), one slot."""
    return sum(n * estimate(model) for model, n in counts.items() if n)


def remaining_s(running: Iterable[Job[Any]], estimate: Callable[[str], float], now: float) -> float:
    """Seconds the ``running`` jobs still need, summed over slots, by their estimates."""
    left = 0.0
    for job in running:
        started = job.started_at if job.started_at is not None else now
        left += max(0.0, started + estimate(job.model) - now)
    return left

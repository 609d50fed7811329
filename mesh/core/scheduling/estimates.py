"""Running estimates of how long things take, from what was measured.

Load is time, not queue length: a queue turns into seconds through per-model
service times, measured here (an EWMA of real runs) or, for a model this node
has not run, as a peer's gossip says. Everything here is arithmetic over
figures handed in; nothing reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mesh.core.scheduling.jobs import Job

__all__ = ["EWMA_WEIGHT", "ServiceTimes", "ewma", "running_left_s", "work_s"]

# How much one new sample moves an average: 0.2 follows a device whose speed
# changes (thermal throttling, a competing process) within a handful of calls,
# while one outlier moves the estimate only a fifth of the way.
EWMA_WEIGHT = 0.2


def ewma(previous: float | None, sample: float, weight: float = EWMA_WEIGHT) -> float:
    """The moving average after ``sample``; the first sample is taken whole."""
    return sample if previous is None else previous + weight * (sample - previous)


class ServiceTimes:
    """Per-model service times on this node, and the estimate queues are priced with.

    ``default_s`` stands in for a model nobody has measured yet.
    """

    def __init__(self, default_s: float) -> None:
        self.default_s = default_s
        self._measured: dict[str, float] = {}

    def observe(self, model: str, took_s: float) -> None:
        """A measured service time for ``model`` here."""
        self._measured[model] = ewma(self._measured.get(model), took_s)

    def here(self, model: str) -> float | None:
        """The measured service time of ``model`` here; None before a run."""
        return self._measured.get(model)

    def measured(self) -> dict[str, float]:
        """Every measured service time (a copy, for gossip)."""
        return dict(self._measured)

    def estimate(self, model: str, gossiped: Iterable[Mapping[str, float]]) -> float:
        """Service time of ``model`` for queue estimates: measured here, else
        the first of ``gossiped`` (peers' figures) that knows it, else the default."""
        measured = self._measured.get(model)
        if measured is not None:
            return measured
        for theirs in gossiped:
            service = theirs.get(model)
            if service is not None:
                return service
        return self.default_s

    def runs_here_s(self, model: str, models: Mapping[str, str]) -> float | None:
        """Our service time for ``model``, or the default; None when it is not in ``models``."""
        if model not in models:
            return None
        return self._measured.get(model, self.default_s)

    def for_thief(
        self, theirs: Mapping[str, float], model: str, estimate: Callable[[str], float]
    ) -> float:
        """A thief's service time for ``model``: its word, else ours, else the estimate."""
        return theirs.get(model) or self._measured.get(model) or estimate(model)


def work_s(counts: Mapping[str, int], estimate: Callable[[str], float]) -> float:
    """Seconds of work in ``counts`` (queued jobs per model), one slot."""
    return sum(n * estimate(model) for model, n in counts.items() if n)


def running_left_s(
    running: Iterable[Job[Any]], estimate: Callable[[str], float], now: float
) -> float:
    """Seconds the ``running`` jobs still need, summed over slots, by their estimates."""
    left = 0.0
    for job in running:
        started = job.started_at if job.started_at is not None else now
        left += max(0.0, started + estimate(job.model) - now)
    return left

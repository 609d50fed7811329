"""Running estimates of how long things take, from what was measured."""

from __future__ import annotations

__all__ = ["EWMA_WEIGHT", "ewma"]

# How much one new sample moves an average: 0.2 follows a device whose speed
# changes (thermal throttling, a competing process) within a handful of calls,
# while one outlier moves the estimate only a fifth of the way.
EWMA_WEIGHT = 0.2


def ewma(previous: float | None, sample: float, weight: float = EWMA_WEIGHT) -> float:
    """The moving average after ``sample``; the first sample is taken whole."""
    return sample if previous is None else previous + weight * (sample - previous)

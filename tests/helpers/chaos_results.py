"""What a chaos run is told and what it produced, and the figures drawn from it afterwards.

The run itself is :mod:`tests.helpers.chaos`; this module holds its plain
data (:class:`ChaosConfig`, :class:`Call`, :class:`Fault`,
:class:`ChaosResult`) and :func:`recovery_times`, which reads the answers'
completion times after the run. Times are ``time.monotonic()``.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FAULT_KINDS",
    "SPEED_PATTERN",
    "Call",
    "ChaosConfig",
    "ChaosResult",
    "Fault",
    "recovery_times",
]

SPEED_PATTERN = (1.0, 1.0, 2.0, 4.0)
FAULT_KINDS = ("kill", "term", "stop")
BIN_S = 0.5  # throughput bins, for recovery
RECOVERED = 0.8  # a bin at this share of the pre-fault throughput counts as recovered
PRE_FAULT_S = 3.0  # the window before a fault that sets its pre-fault level


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run; the defaults are the benchmark's (60 s, 4 nodes, a fault every 5 s)."""

    nodes: int = 4
    speeds: tuple[float, ...] = ()  # empty: 1, 1, 2, 4 repeated
    service_ms: float = 20.0
    rate: float = 150.0  # requests per second
    duration_s: float = 60.0
    fault_every_s: float = 5.0
    faults: tuple[str, ...] = FAULT_KINDS
    restart_after_s: float = 1.0
    stop_for_s: float = 4.0  # past the SDK's 3 s heartbeat: a frozen entry is failed over
    term_wait_s: float = 15.0
    deadline_s: float | None = None
    grace_s: float = 15.0
    seed: int = 1
    entry_every: int = 2  # every Nth fault hits the client's own node (0: never on purpose)
    discovery: str = "peer"  # or "mdns"
    poll_s: float = 0.1
    max_in_flight: int = 4000

    def speed(self, index: int) -> float:
        pattern = self.speeds or SPEED_PATTERN
        return pattern[index % len(pattern)]

    @property
    def names(self) -> list[str]:
        return [f"n{i}" for i in range(self.nodes)]


@dataclass
class Call:
    """One request as the client saw it; times are ``time.monotonic()``."""

    rid: str
    sent: float
    done: float | None = None
    outcome: str = ""  # "ok", "wrong", or the error's code; "" while unanswered
    message: str = ""
    node: str = ""  # the address that answered
    ran_on: str = ""


@dataclass
class Fault:
    """One fault and what followed; times are ``time.monotonic()``."""

    kind: str
    node: str
    at: float
    entry: bool = False  # the node the client was using
    over: float | None = None  # SIGCONT sent, or the restarted node ready
    exit_code: int | None = None
    exit_s: float | None = None  # signal to exit (kill, term)
    detected: dict[str, float] = field(default_factory=dict)  # survivor -> when seen dead
    survivors: tuple[str, ...] = ()
    recover_s: float | None = None
    note: str = ""

    @property
    def detect_first_s(self) -> float | None:
        return min(self.detected.values()) - self.at if self.detected else None

    @property
    def detect_all_s(self) -> float | None:
        """When every survivor had seen it dead; None if one never did."""
        if not self.survivors or set(self.survivors) - set(self.detected):
            return None
        return max(self.detected[name] for name in self.survivors) - self.at


@dataclass
class ChaosResult:
    """What a run produced."""

    config: ChaosConfig
    calls: list[Call] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # request id -> outcomes recorded
    started: float = 0.0
    load_stopped: float = 0.0
    ended: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.calls)

    def count(self, outcome: str) -> int:
        return sum(1 for call in self.calls if call.outcome == outcome)

    @property
    def lost(self) -> int:
        return self.count("")

    @property
    def doubled(self) -> int:
        return sum(1 for n in self.outcomes.values() if n > 1)

    @property
    def errors(self) -> Counter[str]:
        return Counter(c.outcome for c in self.calls if c.outcome not in ("", "ok", "wrong"))

    def error_examples(self) -> dict[str, str]:
        """One message per error code."""
        examples: dict[str, str] = {}
        for call in self.calls:
            if call.outcome not in ("", "ok", "wrong"):
                examples.setdefault(call.outcome, call.message)
        return examples


def recovery_times(result: ChaosResult) -> None:
    """Set each fault's ``recover_s`` from the answers' completion times.

    The pre-fault level is the median throughput of ok answers in the
    ``BIN_S`` bins of the ``PRE_FAULT_S`` before the fault, at most the
    offered rate (the catch-up after an earlier fault must not raise the
    bar). The fault is recovered from at the end of the last ``BIN_S`` bin,
    from the fault to the next fault (or the end of the load), whose
    throughput is below ``RECOVERED`` of that level; 0 when none was.
    """
    done = [c.done for c in result.calls if c.outcome == "ok" and c.done is not None]
    if not done:
        return
    times = np.array(done)

    def per_s(starts: np.ndarray[Any, Any]) -> list[float]:
        return [np.count_nonzero((times >= t) & (times < t + BIN_S)) / BIN_S for t in starts]

    ends = [f.at for f in result.faults[1:]] + [result.load_stopped]
    for fault, until in zip(result.faults, ends, strict=True):
        before = int(min(PRE_FAULT_S, fault.at - result.started) / BIN_S)
        if before < 2:
            continue
        pre = per_s(fault.at - BIN_S * np.arange(1, before + 1))
        level = min(result.config.rate, statistics.median(pre))
        # Whole bins only: a part-bin cut off by the next fault or the end
        # of the load would look like a dip.
        after = fault.at + BIN_S * np.arange(int((until - fault.at) / BIN_S))
        rates = per_s(after)
        low = [t + BIN_S for t, r in zip(after, rates, strict=True) if r < RECOVERED * level]
        fault.recover_s = float(max(low) - fault.at) if low else 0.0

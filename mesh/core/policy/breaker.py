"""A circuit breaker for the gateway client, pure: time comes in as ``now``.

::

                 failure_threshold consecutive failures
    ┌────────┐ ───────────────────────────────────────▶ ┌──────┐
    │ closed │                                          │ open │ ◀─┐
    └────────┘ ◀──────────┐                             └──────┘   │ probe failed:
         ▲                │ probe succeeded                │       │ open again for twice
         │                │                  open_until    │       │ as long (≤ max_open_s)
         │           ┌───────────┐ ◀───── passed: probe ───┘       │
         └───────────│ half_open │ ────────────────────────────────┘
                     └───────────┘

Closed lets requests through; a success resets the count of consecutive
failures. Open refuses them until ``open_until``; then a probe is due. The
probe is a health check the client performs itself, not a real request,
so no user request is sacrificed to find out whether the gateway is back;
while it runs the breaker is half-open and still refuses requests.

Only the probe takes the breaker out of open. A request that was already
in flight when the circuit opened and ends later (either way) is counted
but moves nothing: a slow gateway that answers one straggler is not yet
a gateway to send all traffic to again.

What counts as a failure is :func:`judge`'s to say: the client reduces
each exchange to an :class:`Outcome` of plain values (an HTTP status, or
how it went wrong) and records what the verdict says. Slow is not broken:
a request whose own time ran out while the gateway answered others says
the gateway is busy, and a short deadline must not open the circuit for
everyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mesh.errors import ConfigError

__all__ = [
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "Exchange",
    "Outcome",
    "Verdict",
    "judge",
]


@dataclass(frozen=True)
class BreakerConfig:
    """When a node stops sending to a failing gateway, and how it probes it."""

    # Consecutive failures (no answer, a timeout, a 5xx other than 503,
    # garbage) that open the circuit.
    failure_threshold: int = 3
    # How long the circuit stays open before the first probe; doubled after
    # each failed probe up to max_open_s.
    open_s: float = 1.0
    max_open_s: float = 30.0


BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Decides whether requests may go to a peer that has been failing."""

    def __init__(self, config: BreakerConfig) -> None:
        """Check ``config``; ConfigError says which value is wrong."""
        if config.failure_threshold < 1:
            raise ConfigError(
                f"breaker failure_threshold must be >= 1, got {config.failure_threshold!r}"
            )
        if not 0 < config.open_s <= config.max_open_s:
            raise ConfigError(
                "breaker open_s must be positive and at most max_open_s, "
                f"got open_s={config.open_s!r}, max_open_s={config.max_open_s!r}"
            )
        self._config = config
        self._state: BreakerState = "closed"
        self._consecutive = 0
        # How long the circuit stays open this time; doubles per failed probe.
        self._period = config.open_s
        self._open_until = 0.0
        self.last_failure: str | None = None
        # Totals since start, for status().
        self.failures = 0
        self.successes = 0
        self.opened = 0
        self.probes = 0
        self.probe_failures = 0

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success (probe failures included)."""
        return self._consecutive

    @property
    def open_until(self) -> float:
        """When the current open period ends (meaningful only while open)."""
        return self._open_until

    def allow(self, now: float) -> bool:
        """Whether a request may be sent now. Only a closed circuit lets one through."""
        del now  # the open → probe transition is the client's, via begin_probe
        return self._state == "closed"

    def record_success(self, now: float) -> None:
        """A request got an answer (any answer that shows the peer works)."""
        del now
        self.successes += 1
        if self._state == "closed":
            self._consecutive = 0

    def record_failure(self, now: float, reason: str) -> None:
        """A request failed in a way that says the peer is not working."""
        self.failures += 1
        self.last_failure = reason
        if self._state != "closed":
            return  # a straggler sent before the circuit opened
        self._consecutive += 1
        if self._consecutive >= self._config.failure_threshold:
            self._period = self._config.open_s
            self._trip(now)

    def probe_due(self, now: float) -> bool:
        """Whether the circuit is open and its open period is over."""
        return self._state == "open" and now >= self._open_until

    def begin_probe(self, now: float) -> None:
        """The client starts a health check; requests stay refused meanwhile."""
        if not self.probe_due(now):
            raise RuntimeError(f"no probe is due (state {self._state})")
        self._state = "half_open"
        self.probes += 1

    def probe_succeeded(self, now: float) -> None:
        """The health check passed: close the circuit and forget the backoff."""
        del now
        if self._state != "half_open":
            raise RuntimeError(f"no probe is running (state {self._state})")
        self._state = "closed"
        self._consecutive = 0
        self._period = self._config.open_s

    def probe_failed(self, now: float, reason: str) -> None:
        """The health check failed: open again, for twice as long (capped)."""
        if self._state != "half_open":
            raise RuntimeError(f"no probe is running (state {self._state})")
        self.failures += 1
        self.probe_failures += 1
        self.last_failure = reason
        self._consecutive += 1
        self._period = min(self._period * 2, self._config.max_open_s)
        self._trip(now)

    def retry_in(self, now: float) -> float:
        """Seconds until the next probe is due; 0 when closed or probing."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._open_until - now)

    def status(self, now: float) -> dict[str, Any]:
        """A summary for status pages: state, when it retries, why, and totals."""
        return {
            "state": self._state,
            "retry_in_s": round(self.retry_in(now), 3),
            "consecutive_failures": self._consecutive,
            "last_failure": self.last_failure,
            "open_period_s": self._period,
            "failures": self.failures,
            "successes": self.successes,
            "opened": self.opened,
            "probes": self.probes,
            "probe_failures": self.probe_failures,
        }

    def _trip(self, now: float) -> None:
        if self._state == "closed":
            self.opened += 1
        self._state = "open"
        self._open_until = now + self._period


Exchange = Literal["request", "negotiation", "probe"]
"""What a call to the gateway was for.

``request``: an inference or a model's metadata, the calls users make.
``negotiation``: ``GET /v2``, asking which extensions the server speaks.
``probe``: ``GET /v2/health/ready``, the breaker's own health check.
"""

Verdict = Literal["works", "failure", "slow", "busy", "unknown"]
"""What an outcome says of the gateway.

``works``: it answered as a working server does (record a success).
``failure``: it is not working (record a failure; for a probe, the probe failed).
``slow``: the request ran out of time while the gateway answered others.
``busy``: it is alive and said so (503).
``unknown``: the answer says nothing either way.
Only ``works`` and ``failure`` move the breaker.
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one exchange with the gateway ended, in plain values.

    Either the gateway answered with ``status`` (and, for a 200, an answer
    that parsed), or ``error`` says why there is no usable answer:
    ``unreachable`` (no connection, or it was lost or cut off), ``timeout``
    (the request's own time ran out first), or ``garbled`` (the answer was
    not what the protocol says).
    """

    status: int | None = None
    error: Literal["unreachable", "timeout", "garbled"] | None = None
    # For a timeout: whether the gateway answered another call after this
    # one was sent.
    answered_others: bool = False

    def __post_init__(self) -> None:
        if (self.status is None) == (self.error is None):
            raise ValueError(f"an outcome has a status or an error, not both or neither: {self}")


def judge(outcome: Outcome, exchange: Exchange = "request") -> Verdict:
    """What ``outcome`` of an ``exchange`` says of the gateway, for its breaker."""
    if exchange == "probe":
        # A health check passes only on 200; anything else keeps it open.
        return "works" if outcome.status == 200 else "failure"
    if outcome.error == "timeout":
        # Answering others meanwhile means busy, not broken.
        return "slow" if outcome.answered_others else "failure"
    if outcome.error is not None:
        return "failure"
    status = outcome.status
    assert status is not None  # an Outcome has one or the other
    if status in (401, 403):
        # Our credentials are refused: every request will be, until someone
        # fixes the token, so fail fast and say why rather than keep sending.
        return "failure"
    if exchange == "negotiation":
        # A 5xx to this side question is not held against the gateway: the
        # request that follows it goes through the breaker and will tell.
        return "works" if status < 500 else "unknown"
    if status == 503:
        return "busy"
    if status >= 500:
        return "failure"
    # 200, and client errors (404, 400, ...): it answered, so it works.
    return "works"

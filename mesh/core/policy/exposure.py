"""What a server lets strangers hold: connections before the handshake, and bytes.

A node with a mesh key still accepts TCP connections from anyone who can
reach its port. Until a connection has proved the key it is a stranger's,
and a stranger may hold only a little: :class:`StrangerGate` caps how many
unauthenticated connections the node keeps, in all and per source address,
and rate-limits failed handshakes per source with a token bucket (a source
that keeps failing is refused until its bucket refills, so a guesser gets
about one try a second while a node that shares its address with it is held
up for a second at most). :class:`ByteBudget` bounds the bytes the node holds
for requests it has received but not yet answered, over every connection,
so that many large messages at once are refused with ``Overloaded`` instead
of growing memory.

Pure: the edge passes the time in and carries out the answer; the reasons
returned are the texts the refused peer is told.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AUTH_FAILURES",
    "TOO_MANY_WAITING",
    "ByteBudget",
    "ExposureLimits",
    "Refusal",
    "StrangerGate",
]


# Why a connection is turned away at the door.
AUTH_FAILURES = "auth_failures"
TOO_MANY_WAITING = "unauthenticated"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A connection turned away: ``kind`` (AUTH_FAILURES or TOO_MANY_WAITING), and
    ``reason``, the text the peer is told."""

    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class ExposureLimits:
    """The limits of :class:`StrangerGate` (see ``RpcConfig`` for each one's meaning)."""

    max_unauthenticated: int = 256
    max_unauthenticated_per_source: int = 32
    auth_failure_burst: int = 10
    auth_failures_per_s: float = 1.0
    # Sources remembered at most (addresses come from the network).
    max_sources: int = 4096


@dataclass(slots=True)
class _Source:
    waiting: int = 0
    tokens: float = 0.0
    updated: float = 0.0


class StrangerGate:
    """Decides whether a new connection from a source may wait for its handshake."""

    def __init__(self, limits: ExposureLimits) -> None:
        self._limits = limits
        self._sources: dict[str, _Source] = {}
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Connections accepted and not yet authenticated, from every source."""
        return self._waiting

    def admit(self, source: str, now: float) -> Refusal | None:
        """Count a new connection from ``source`` in; or the reason it is refused (not counted)."""
        limits = self._limits
        entry = self._sources.get(source)
        if entry is not None:
            self._refill(entry, now)
            if entry.tokens < 1.0:
                wait = (1.0 - entry.tokens) / limits.auth_failures_per_s
                return Refusal(
                    AUTH_FAILURES,
                    f"too many failed handshakes from {source}; try again in {wait:.1f} s "
                    "with the right mesh key",
                )
        if self._waiting >= limits.max_unauthenticated:
            return Refusal(
                TOO_MANY_WAITING,
                f"{self._waiting} connections are waiting for their handshake here; "
                "try again shortly",
            )
        if entry is not None and entry.waiting >= limits.max_unauthenticated_per_source:
            return Refusal(
                TOO_MANY_WAITING,
                f"{entry.waiting} connections from {source} are waiting for their handshake; "
                "finish those first",
            )
        if entry is None:
            entry = self._remember(source, now)
        entry.waiting += 1
        self._waiting += 1
        return None

    def settled(self, source: str, *, failed: bool, now: float) -> None:
        """A connection admitted from ``source`` authenticated, or ended without; ``failed``
        when it ended by a wrong or missing proof (or ran out of time for one)."""
        entry = self._sources.get(source)
        if entry is None:
            return
        if entry.waiting > 0:
            entry.waiting -= 1
            self._waiting -= 1
        if failed:
            self._refill(entry, now)
            entry.tokens = max(0.0, entry.tokens - 1.0)
        self._forget_if_clean(source, entry, now)

    def _refill(self, entry: _Source, now: float) -> None:
        limits = self._limits
        elapsed = max(0.0, now - entry.updated)
        entry.tokens = min(
            float(limits.auth_failure_burst), entry.tokens + elapsed * limits.auth_failures_per_s
        )
        entry.updated = now

    def _remember(self, source: str, now: float) -> _Source:
        if len(self._sources) >= self._limits.max_sources:
            # Forget the oldest idle source; one with connections waiting stays.
            for old, entry in self._sources.items():
                if entry.waiting == 0:
                    del self._sources[old]
                    break
        entry = _Source(tokens=float(self._limits.auth_failure_burst), updated=now)
        self._sources[source] = entry
        return entry

    def _forget_if_clean(self, source: str, entry: _Source, now: float) -> None:
        # A source with nothing waiting and a full bucket is the same as an unknown one.
        if entry.waiting == 0 and entry.tokens >= self._limits.auth_failure_burst:
            del self._sources[source]


class ByteBudget:
    """Bytes held for unanswered requests, over every connection, up to a limit."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a byte budget must be positive")
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Hold ``size`` more bytes if they fit; False (nothing held) if they do not."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        """Release ``size`` bytes taken earlier."""
        self.used = max(0, self.used - size)

    def refusal(self, size: int) -> str:
        """Why a message of ``size`` bytes was refused, for the peer."""
        return (
            f"this node holds {self.used} bytes of unanswered requests, and a message of "
            f"{size} bytes would pass its budget of {self.limit}; retry shortly or elsewhere"
        )

"""Which node a client uses, and where a call goes when that node is lost.

The SDK (:class:`mesh.sdk.client.MeshClient`) dials its candidate nodes,
asks each for its status and uses one connection at a time. The choices
it makes along the way are these, over plain values:

* :func:`score_s` and :func:`rank`: the best node is the live one with the
  least *score*, its own estimate of a new request's queueing wait plus
  the round trip, so a fast idle node far away and a busy one close by
  compare on one scale. Ties keep the caller's order of candidates.
* :class:`NodeChoice`: a call that lost its node fails over to a node it
  has not tried yet, under the same request id, so each node gets a call
  at most once. Nodes found down are left alone for ``down_memory_s``:
  the hundreds of calls failing over together must not each dial the
  dead node again.
* :func:`deadline_left_s` and :func:`give_up`: when a failover is
  pointless (its deadline is gone, or no node is left), and which error
  says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from mesh.errors import AuthError, MeshError, PeerUnavailable

__all__ = [
    "DOWN_MEMORY_S",
    "Dial",
    "NodeChoice",
    "Ranked",
    "deadline_left_s",
    "give_up",
    "rank",
    "score_s",
    "tried_text",
]

# How long a node found down is not dialled again.
DOWN_MEMORY_S = 1.0


def score_s(status: object, rtt_s: float) -> float:
    """A node's score from its ``status`` map: estimated wait plus round trip, seconds.

    The wait is the node's own ``scheduler.wait_ms``; a node that does not
    say (an older node, a malformed map) is taken as idle, so it is judged
    by its round trip alone. A node that is draining would only answer
    Draining: its score is unknown (inf), so it ranks after every node that
    takes work and is used only when nothing else answers.
    """
    if isinstance(status, dict) and status.get("draining") is True:
        return math.inf
    scheduler = status.get("scheduler") if isinstance(status, dict) else None
    wait_ms = scheduler.get("wait_ms") if isinstance(scheduler, dict) else None
    if isinstance(wait_ms, int | float) and not isinstance(wait_ms, bool) and wait_ms >= 0:
        return float(wait_ms) / 1000 + rtt_s
    return rtt_s


class Ranked(Protocol):
    """What :func:`rank` needs of a probed node."""

    @property
    def live(self) -> bool:
        """Whether it can be used now."""
        ...

    @property
    def score(self) -> float:
        """Its score in seconds (inf: unknown)."""
        ...


R = TypeVar("R", bound=Ranked)


def rank(found: Sequence[R]) -> list[R]:
    """``found`` best first: live ones, least score first; ties keep ``found``'s order."""
    # sorted() is stable, which is what keeps the caller's order on ties
    # (such as every node's load being unknown).
    return sorted(found, key=lambda node: (not node.live, node.score))


@dataclass(frozen=True, slots=True)
class Dial:
    """Which candidates to dial for one call."""

    # To probe, in the order the client was given them.
    addresses: tuple[str, ...]
    # Found down a moment ago, with why: they count as tried for this call.
    skipped: tuple[tuple[str, str], ...] = ()


class NodeChoice:
    """A client's candidates, and which of them were found down lately.

    Per call, the caller keeps ``tried`` (address → why it failed); the
    memory of nodes found down is shared by every call of the client.
    """

    def __init__(self, addresses: Sequence[str], *, down_memory_s: float = DOWN_MEMORY_S) -> None:
        """Choose among ``addresses`` (already checked, no duplicates)."""
        self.addresses = tuple(addresses)
        self._down_memory_s = down_memory_s
        # address → (when it was found down, why)
        self._down: dict[str, tuple[float, str]] = {}

    def dial(self, tried: Mapping[str, str], now: float, *, connecting: bool) -> Dial:
        """The candidates to dial for a call that has already tried ``tried``.

        Nodes found down within ``down_memory_s`` are skipped, except when
        ``connecting``: a client that connects (again) on purpose dials
        every candidate. An empty :attr:`Dial.addresses` means there is no
        node left to try.
        """
        fresh: list[str] = []
        skipped: list[tuple[str, str]] = []
        for address in self.addresses:
            if address in tried:
                continue
            down = None if connecting else self._down.get(address)
            if down is not None and now - down[0] < self._down_memory_s:
                skipped.append((address, down[1]))
                continue
            fresh.append(address)
        return Dial(tuple(fresh), tuple(skipped))

    def found_down(self, address: str, now: float, reason: str) -> None:
        """``address`` could not be reached, or its connection was lost, at ``now``."""
        self._down[address] = (now, reason)

    def found_live(self, address: str) -> None:
        """``address`` answered a probe: later calls may use it at once."""
        self._down.pop(address, None)


def deadline_left_s(deadline_s: float, elapsed_s: float, attempt: int) -> float | None:
    """The deadline a call's send number ``attempt`` (0 first) carries; None when it passed.

    The first send carries the deadline as given: finding a node to send it
    to is the client's time, not the mesh's. A failover carries what is
    left of it since the call began; with nothing left, the call gives up.
    """
    if attempt == 0:
        return deadline_s
    left = deadline_s - elapsed_s
    return left if left > 0 else None


def give_up(
    errors: Sequence[MeshError],
    tried: Mapping[str, str],
    *,
    connecting: bool,
    candidates: int,
) -> MeshError:
    """The error for a dial that reached no node; ``errors`` are the probes' own.

    Connecting to a single candidate raises its own error as it came; a
    connect that some node refused for our key is an AuthError. Otherwise
    PeerUnavailable, naming each node tried and why.
    """
    if connecting and candidates == 1 and errors:
        return errors[0]
    if connecting and any(isinstance(error, AuthError) for error in errors):
        return AuthError(f"the edgemesh nodes refused us{tried_text(tried)}")
    return PeerUnavailable(f"no edgemesh node could be reached{tried_text(tried)}")


def tried_text(tried: Mapping[str, str]) -> str:
    """``": a (why); b (why)"`` for messages; empty when nothing was tried."""
    if not tried:
        return ""
    return ": " + "; ".join(f"{address} ({why})" for address, why in tried.items())

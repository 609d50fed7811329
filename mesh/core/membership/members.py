"""The member table's records: a member as one node sees it, its timing, and the events.

:class:`~mesh.core.membership.peers.Membership` (the state machine, its rules
in its module's docstring) keeps one :class:`Member` per name, times its
suspicion and death by :class:`MembershipConfig`, and answers what it is fed
with the events here (:data:`Event`), which the driver in
:mod:`mesh.node.membership` acts on. Kept apart so that the rules read alone;
every name here is also importable from :mod:`mesh.core.membership.peers`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mesh.core.membership.gossip import Load, MemberState
from mesh.core.wire.addresses import format_address
from mesh.errors import ConfigError

__all__ = [
    "AddressLearned",
    "Event",
    "Member",
    "MemberDied",
    "MemberForgotten",
    "MemberJoined",
    "MemberRefuted",
    "MemberRestarted",
    "MemberSuspected",
    "MembershipConfig",
]

# --- the member table ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Failure-detection timing; the defaults suit a 200 ms gossip interval."""

    # Silence before suspicion: four missed gossip rounds, so a peer whose CPU
    # is saturated and gossips a few hundred ms late is not even suspected.
    suspect_after_s: float = 0.8
    # Suspicion, unrefuted, before death.
    dead_after_s: float = 0.6
    # Dead members are kept this long (shown as dead in status) and then
    # forgotten, so that none lingers as a ghost.
    forget_after_s: float = 30.0
    # Hearsay refutes a suspicion only if the other node heard from the member
    # this long after the suspicion began: message latency makes its report
    # look a little newer than it is, and a just-killed member must not be
    # revived by a report that was in flight when it died.
    hearsay_margin_s: float = 0.05
    # How often, at most, to tell the driver again about the same address for
    # a member it has not managed to reach.
    address_retry_s: float = 2.0

    def __post_init__(self) -> None:
        for name in (
            "suspect_after_s",
            "dead_after_s",
            "forget_after_s",
            "address_retry_s",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"membership: {name} must be a positive number, got {value!r}")
        if not math.isfinite(self.hearsay_margin_s) or self.hearsay_margin_s < 0:
            raise ConfigError(
                "membership: hearsay_margin_s must be a non-negative number,"
                f" got {self.hearsay_margin_s!r}"
            )


@dataclass(frozen=True, slots=True)
class Member:
    """One member as this node sees it. Times are the caller's clock."""

    name: str
    id: str
    incarnation: int
    host: str
    rpc_port: int
    http_port: int | None
    mesh_id: str
    state: MemberState
    load: Load
    # Last direct gossip from it; the only time our digest reports.
    last_heard: float
    state_since: float
    # Whether the driver has a live connection to it (direct gossip says yes,
    # connection_lost says no).
    connected: bool = True
    # The latest time another node says it heard from this process directly.
    last_vouched: float | None = None
    # Why it is suspect or dead; empty while alive.
    reason: str = ""

    @property
    def address(self) -> str:
        return format_address(self.host, self.rpc_port)

    def to_status(self, now: float) -> dict[str, Any]:
        """One row of ``status()["peers"]``."""
        return {
            "name": self.name,
            "id": self.id,
            "address": self.address,
            "http_port": self.http_port,
            "state": str(self.state),
            "reason": self.reason,
            "incarnation": self.incarnation,
            "connected": self.connected,
            "role": self.load.role,
            "models": [m.name for m in self.load.models],
            "service_s": dict(self.load.service_s),
            "queued_s": self.load.queued_s,
            "free_slots": self.load.free_slots,
            "last_heard_s": round(max(0.0, now - self.last_heard), 3),
        }


# --- events ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member is ALIVE and reachable: new, or back from DEAD (``rejoined``)."""

    name: str
    rejoined: bool = False

    @property
    def member_name(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    """Stop sending it new work; it has ``dead_after_s`` to be heard from."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class MemberRefuted:
    """A suspect member was heard from: directly (``via`` None) or through ``via``."""

    name: str
    via: str | None = None


@dataclass(frozen=True, slots=True)
class MemberDied:
    """Requeue whatever it held; it is no longer used."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class MemberForgotten:
    """A dead member left the table."""

    name: str


@dataclass(frozen=True, slots=True)
class MemberRestarted:
    """A new process of the same member is ALIVE; the old one's work is lost."""

    name: str
    old_incarnation: int
    new_incarnation: int


@dataclass(frozen=True, slots=True)
class AddressLearned:
    """Others hear from a member we cannot: the driver should connect to it."""

    name: str
    host: str
    rpc_port: int
    via: str = ""


Event = (
    MemberJoined
    | MemberSuspected
    | MemberRefuted
    | MemberDied
    | MemberForgotten
    | MemberRestarted
    | AddressLearned
)

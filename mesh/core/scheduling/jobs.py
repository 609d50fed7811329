"""What the scheduler works with: its settings, jobs, peers' loads, and the actions it returns.

The vocabulary of :mod:`mesh.core.scheduling.scheduler`, kept apart so that the rules
read on their own. Pure data: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from mesh.errors import ConfigError, MeshError

__all__ = [
    "Abort",
    "Action",
    "Cancel",
    "GiveBack",
    "Handoff",
    "Job",
    "JobKey",
    "JobState",
    "ModelShas",
    "Nudge",
    "PeerLoad",
    "Reply",
    "RunLocal",
    "SchedulerConfig",
    "SendResult",
    "Steal",
    "StealAsk",
    "models_to_wire",
    "runs",
]

P = TypeVar("P")

# Where a request is: owner's node id and the owner's sequence number for it.
JobKey = tuple[str, int]

# The models a node runs: model name → the sha256 of each version it holds.
ModelShas = Mapping[str, frozenset[str]]


def runs(models: ModelShas, model: str, sha256: str | None) -> bool:
    """Whether ``models`` has ``model`` at ``sha256`` (None: at any version)."""
    held = models.get(model)
    return held is not None and (sha256 is None or sha256 in held)


def models_to_wire(models: ModelShas) -> dict[str, str | list[str]]:
    """``models`` on the wire: a name's one sha256 as a string (as nodes that
    hold one version per name always sent it), several as a sorted list."""
    return {
        name: next(iter(shas)) if len(shas) == 1 else sorted(shas) for name, shas in models.items()
    }


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Knobs of the scheduling rules; the defaults suit LAN devices."""

    # Requests this node runs at once.
    slots: int = 1
    # Calls handed to the runtime at once when no peer could take work off
    # us (alone, or stealing off): enough to keep its threads busy.
    solo_depth: int = 64
    # Steal from peers (and let them steal from us). Off, every request runs
    # where it entered, or waits there for a holder of its model to take it.
    steal: bool = True
    # A move must save at least this much time...
    min_gain_s: float = 0.002
    # ...and at least this share of the thief's service time: a request never
    # moves for a gain smaller than the noise in the estimates (no ping-pong).
    gain_fraction: float = 0.5
    # A request changes node at most this often.
    max_moves: int = 2
    # Service time assumed for a model nobody has measured yet.
    default_service_s: float = 0.02
    # Link estimates until a steal has measured them.
    default_rtt_s: float = 0.002
    default_bandwidth_bps: float = 50e6
    # Largest grant, in requests and in payload bytes (a grant is one message).
    max_grant_jobs: int = 512
    max_grant_bytes: int = 16 * 1024 * 1024
    # A holder keeps a request at most lease_min_s + lease_factor * its
    # estimated finish before the owner takes it back.
    lease_min_s: float = 5.0
    lease_factor: float = 3.0
    # A peer is not nudged again sooner than this.
    nudge_interval_s: float = 0.02
    # After a victim had nothing for us, leave it alone this long (or until
    # its gossip says it has work again).
    steal_backoff_s: float = 0.05
    # Fallback (see mesh.core.policy.capacity): requests queued here at most before
    # new ones go to the gateway, and the share of a deadline kept as slack
    # for what the estimate leaves out: gossip a period old, and the round
    # trips of steals and results. With exact service times, 10 % let a
    # burst of 5 ms requests on three emulated devices run a few late.
    queue_cap: int = 1024
    deadline_headroom: float = 0.2

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ConfigError(f"scheduler slots must be >= 1, got {self.slots}")
        if self.queue_cap < 1:
            raise ConfigError(f"queue_cap must be >= 1, got {self.queue_cap}")
        if not 0 <= self.deadline_headroom < 1:
            raise ConfigError(f"deadline_headroom must be in [0, 1), got {self.deadline_headroom}")
        if self.max_moves < 0:
            raise ConfigError(f"max_moves must be >= 0, got {self.max_moves}")
        for name in ("default_service_s", "default_rtt_s", "default_bandwidth_bps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")


class JobState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    GONE = "gone"  # finished, granted away, expired, or cancelled


@dataclass(eq=False, slots=True)
class Job(Generic[P]):
    """One request as a queue holds it. ``payload`` is the node's (its inputs)."""

    key: JobKey
    owner: str  # the owner's node name, to route the result
    model: str
    # Checksum of the version the owner resolved the request to: only a node
    # holding this exact file may run it. None (from older owners): any
    # holder of that name will do.
    sha256: str | None
    epoch: int
    payload: P
    size_bytes: int
    deadline: float | None  # on this node's clock
    moves: int = 0
    request_id: str | None = None
    enqueued_at: float = 0.0
    started_at: float | None = None
    crowded: bool = False  # started beyond the node's slots (see Scheduler)
    state: JobState = JobState.QUEUED


@dataclass(frozen=True, slots=True)
class PeerLoad:
    """A peer as the scheduler needs it, from gossip or a steal reply."""

    models: ModelShas  # model name → sha256 of each version
    service_s: Mapping[str, float]
    # Time until a request queued there now could start: its queued and
    # running work, seconds per slot (gossip's "queued_s").
    queued_s: float
    free_slots: int
    # Requests it runs at once (older peers do not say: one).
    slots: int = 1


@dataclass(frozen=True, slots=True)
class StealAsk:
    """What a thief tells a victim about itself when asking for work."""

    thief: str  # node name
    models: ModelShas  # model name → sha256 of each version it can run
    slots: int
    free_slots: int
    wait_s: float  # its own work ahead of anything granted, seconds
    service_s: Mapping[str, float]
    rtt_s: float
    bandwidth_bps: float
    # The thief's number for this ask (rising, one series per process), so
    # that an owner can tell a grant the thief never got from one in flight
    # (see mesh.core.scheduling.reconcile). None from older peers.
    ask: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "thief": self.thief,
            "models": models_to_wire(self.models),
            "slots": self.slots,
            "free_slots": self.free_slots,
            "wait_s": self.wait_s,
            "service_s": dict(self.service_s),
            "rtt_s": self.rtt_s,
            "bandwidth_bps": self.bandwidth_bps,
        }
        if self.ask is not None:
            wire["ask"] = self.ask
        return wire


# --- actions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunLocal(Generic[P]):
    """Run ``job`` here now; report with :meth:`Scheduler.finished`."""

    job: Job[P]


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the client of owned request ``seq``: with the result the node
    holds for it when ``error`` is None, else with ``error``."""

    seq: int
    error: MeshError | None = None


@dataclass(frozen=True, slots=True)
class SendResult(Generic[P]):
    """Send the outcome of ``job`` (run here) to its owner, another node."""

    job: Job[P]


@dataclass(frozen=True, slots=True)
class Steal:
    """Ask ``victim`` for work with ``ask``; report with :meth:`Scheduler.granted`."""

    victim: str
    ask: StealAsk


@dataclass(frozen=True, slots=True)
class Nudge:
    """Tell ``peer`` we hold work it could take."""

    peer: str


@dataclass(frozen=True, slots=True)
class Handoff:
    """Tell ``owner`` that its request ``seq`` (``epoch``) is now held by ``holder``."""

    owner: str
    owner_id: str
    seq: int
    epoch: int
    holder: str
    lease_s: float
    # The number of ``holder``'s steal ask that took it (None if unknown).
    ask: int | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """Tell ``holder`` that it may drop ``key``: its owner no longer wants it."""

    holder: str
    key: JobKey


@dataclass(frozen=True, slots=True)
class Abort(Generic[P]):
    """Stop running ``job`` here; nobody wants its result any more."""

    job: Job[P]


@dataclass(frozen=True, slots=True)
class GiveBack:
    """Tell ``owner`` that we (draining) hand its request ``seq`` (``epoch``) back
    unrun: it should requeue it at once rather than wait for our lease to end."""

    owner: str
    owner_id: str
    seq: int
    epoch: int


Action = (
    RunLocal[Any]
    | Reply
    | SendResult[Any]
    | Steal
    | Nudge
    | Handoff
    | Cancel
    | Abort[Any]
    | GiveBack
)

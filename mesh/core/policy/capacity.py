"""What the mesh can finish in time, and when a request goes to the gateway instead.

Pure estimates over figures the scheduler already keeps (its own queue, its
peers' gossiped load). :func:`place` is the fallback rule of DESIGN.md: a
request stays in the mesh when some node holds its model, the entry node's
queue is under its cap, and the holders together would finish it within its
deadline, less a headroom; otherwise it goes to the cloud gateway (or, with
none, is refused at once with the reason). Only what cannot be served is
refused: a request without a deadline has none to miss, so without a
gateway it queues (bounded by the cap) however long the wait; with a
gateway, the default deadline judges whether the gateway is the better
place for it. :func:`water_level` is the shared arithmetic: how long a
number of requests takes when every helper works until the same moment,
each at its own speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Capacity", "Placement", "place", "water_level"]


@dataclass(frozen=True, slots=True)
class Capacity:
    """One node that could run the request's model."""

    name: str
    # Seconds until it could start on work from the entry node's queue.
    free_in_s: float
    slots: int
    # Its service time for the model, seconds per request and slot.
    service_s: float

    @property
    def rate(self) -> float:
        """Requests per second it completes with every slot busy."""
        return self.slots / self.service_s


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a new request should go, and why."""

    offload: bool
    # Why it leaves the mesh ("" when it stays): said to the client when
    # nothing can take it.
    reason: str = ""
    # No live node holds the model (the client may prefer ModelNotFound).
    no_holder: bool = False
    # The mesh's estimated finish, seconds from now (None: not estimated).
    finish_s: float | None = None


STAY = Placement(offload=False)


def place(
    *,
    model: str,
    remaining_s: float | None,
    holders: Sequence[Capacity],
    ahead: int,
    queued: int,
    queue_cap: int,
    headroom: float,
    gateway: bool,
    default_s: float | None,
) -> Placement:
    """Whether a request for ``model`` stays in the mesh.

    ``holders`` are the nodes that could run it, ``ahead`` the requests for
    the same model already queued where it would queue, ``queued`` all
    requests queued there, and ``remaining_s`` the time left to its deadline
    (None: the client gave none). ``headroom`` is the share of that time
    kept as slack for estimates that are a gossip period old. ``gateway``
    says whether a gateway could take the request instead; only then is a
    request without a deadline judged, by ``default_s`` (None: not at all):
    the mesh keeps it if it would finish within that, else the gateway is
    the better place. Without a gateway it stays, bounded only by
    ``queue_cap``: it has no deadline to miss.
    """
    if not holders:
        return Placement(
            offload=True, no_holder=True, reason=f"no node in the mesh serves model '{model}'"
        )
    if queued >= queue_cap:
        return Placement(
            offload=True,
            reason=(
                f"{queued} requests are already queued on this node "
                f"(its cap is {queue_cap}, set by --queue-cap)"
            ),
        )
    budget_s = remaining_s
    if budget_s is None and gateway:
        budget_s = default_s
    if budget_s is None:
        # No deadline to miss, or nowhere better to go: it waits its turn.
        return STAY
    finish = finish_s(holders, ahead)
    if finish > budget_s * (1.0 - headroom):
        nodes = "1 node serves" if len(holders) == 1 else f"{len(holders)} nodes serve"
        return Placement(
            offload=True,
            finish_s=finish,
            reason=(
                f"the mesh would finish it in about {finish * 1000:.0f} ms ({nodes} "
                f"'{model}'), {_limit(budget_s, headroom, default=remaining_s is None)}"
            ),
        )
    return Placement(offload=False, finish_s=finish)


def _limit(budget_s: float, headroom: float, *, default: bool) -> str:
    """The limit a too-late finish broke, in words, headroom included."""
    deadline = (
        f"the default {budget_s * 1000:.0f} ms deadline of a request that gives none"
        if default
        else f"its {budget_s * 1000:.0f} ms deadline"
    )
    if headroom == 0:
        return f"later than {deadline}"
    return (
        f"later than {(1.0 - headroom) * 100:.0f}% of {deadline} ({headroom * 100:.0f}% is "
        "kept as headroom, as load estimates may be out of date)"
    )


def finish_s(holders: Sequence[Capacity], ahead: int) -> float:
    """When a request queued behind ``ahead`` others would be done, in seconds.

    The holders drain the ``ahead`` requests together, each from when it is
    free, at its own rate: that is when ours can start. It then takes a
    whole service time on one holder (not a share of every holder's, as a
    fluid would say), on whichever is free by then and quickest to finish.
    """
    start = water_level([(h.free_in_s, h.rate) for h in holders], ahead)
    return min(max(start, h.free_in_s) + h.service_s for h in holders)


def water_level(participants: Sequence[tuple[float, float]], jobs: float) -> float:
    """The time T at which ``jobs`` fill every participant up to T.

    Each participant is (busy until, jobs per second); one busy until ``w``
    with rate ``r`` takes ``(T - w) * r`` jobs when ``T > w``.
    """
    ordered = sorted(participants)
    rate = 0.0
    filled = 0.0  # jobs taken below the current level
    level = ordered[0][0]
    for index, (wait, r) in enumerate(ordered):
        if index:
            # Raise the level to this participant's start, if the jobs last.
            step = (wait - level) * rate
            if filled + step >= jobs:
                return level + (jobs - filled) / rate
            filled += step
            level = wait
        rate += r
    return level + (jobs - filled) / rate

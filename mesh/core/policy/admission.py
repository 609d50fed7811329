"""What the gateway admits: a request it could not finish in time is refused at once.

The gateway (``edgemesh gateway``) runs requests on a fixed number of
slots with a bounded queue behind them. :func:`admit` is its door: a
request that finds every slot taken and the queue at its cap is refused,
and so is one that, by the per-call service time the gateway knows (the
emulated device's, or the runtime's measured average), would finish past
its deadline. Telling a node "busy" now lets it look elsewhere while the
request can still make it; answering late helps nobody.

Pure: the gateway passes the counts it keeps and the time left to the
request's deadline, and raises :class:`~mesh.errors.Overloaded` with the
reason when the answer is no.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.policy.capacity import Capacity, finish_s

__all__ = ["ADMIT", "Admission", "GatewayLoad", "admit"]


@dataclass(frozen=True, slots=True)
class GatewayLoad:
    """The gateway's slots and queue when a request arrives."""

    name: str
    slots: int
    queue_cap: int
    # Requests holding a slot, and requests waiting for one.
    running: int
    waiting: int
    # Whether a newcomer would have to wait: every slot is taken or already
    # promised to a waiter (the slot's semaphore knows; the counts lag it
    # for the moment a slot passes from one request to the next).
    full: bool


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether the gateway takes a request and, if not, what to tell the caller."""

    admitted: bool
    # Why it is refused ("" when admitted): the message of the Overloaded.
    reason: str = ""
    # The estimated finish in seconds from now (None: not estimated).
    finish_s: float | None = None


ADMIT = Admission(admitted=True)


def admit(load: GatewayLoad, *, service_s: float | None, remaining_s: float | None) -> Admission:
    """Whether the gateway admits a request that has ``remaining_s`` left to its deadline.

    ``service_s`` is how long one call of the request's model keeps a
    slot busy (None: not known yet, before its first call). A request with
    no deadline, or for a model not yet timed, is refused only when the
    queue is full.
    """
    if load.full and load.waiting >= load.queue_cap:
        return Admission(
            admitted=False,
            reason=(
                f"gateway {load.name} is full: {load.slots} requests running and "
                f"{load.waiting} waiting (queue cap {load.queue_cap})"
            ),
        )
    if remaining_s is None or service_s is None:
        return ADMIT
    # The same arithmetic as a node's fallback rule: the slots drain the
    # queue from when they are free (a busy one is half done, on average),
    # then the request takes a whole service time.
    busy = load.running >= load.slots
    here = Capacity(
        name=load.name,
        free_in_s=service_s / 2 if busy else 0.0,
        slots=load.slots,
        service_s=service_s,
    )
    finish = finish_s([here], ahead=load.waiting)
    if finish > remaining_s:
        return Admission(
            admitted=False,
            finish_s=finish,
            reason=(
                f"gateway {load.name} would finish it in about {finish * 1000:.0f} ms "
                f"({load.running} running, {load.waiting} waiting), past its deadline of "
                f"{remaining_s * 1000:.0f} ms"
            ),
        )
    return Admission(admitted=True, finish_s=finish)

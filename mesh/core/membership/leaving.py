"""The ``leaving`` notification: a node that drained says goodbye to its peers.

``[2, "leaving", [{"name": ..., "id": ..., "incarnation": ...}]]``, sent by a
node over each of its links just before it exits. A peer that gets it
treats the member as gone at once (dead, with the reason "left the mesh"),
not as suspect: it need not wait ``suspect_after_s + dead_after_s`` to take
back what the member held, nor keep counting it as a holder of its models.
Only the same process may say it leaves: the id and incarnation must be the
ones the peer knows, so a stale or forged goodbye cannot remove a live
restart of the member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh.core.membership.gossip import MAX_TEXT
from mesh.errors import BadRequest

__all__ = ["LEAVING", "Leaving", "parse_leaving"]

LEAVING = "leaving"
_MAX_INCARNATION = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Leaving:
    """Who leaves: the member's name, and the identity of the process that leaves."""

    name: str
    id: str
    incarnation: int

    def to_wire(self) -> list[Any]:
        """The notification's params."""
        return [{"name": self.name, "id": self.id, "incarnation": self.incarnation}]


def parse_leaving(params: list[Any]) -> Leaving:
    """A ``leaving`` notification's params, checked; BadRequest names what is wrong."""
    if not isinstance(params, (list, tuple)) or len(params) != 1 or not isinstance(params[0], dict):
        raise BadRequest("leaving takes one parameter, a map with name, id and incarnation")
    body = params[0]
    texts = {}
    for key in ("name", "id"):
        value = body.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT or not value.isprintable():
            raise BadRequest(
                f"leaving: {key} must be a printable string of 1..{MAX_TEXT} characters, "
                f"got {value!r:.60}"
            )
        texts[key] = value
    incarnation = body.get("incarnation")
    if (
        isinstance(incarnation, bool)
        or not isinstance(incarnation, int)
        or not 0 <= incarnation <= _MAX_INCARNATION
    ):
        raise BadRequest(
            f"leaving: incarnation must be an integer 0..{_MAX_INCARNATION}, "
            f"got {incarnation!r:.60}"
        )
    return Leaving(name=texts["name"], id=texts["id"], incarnation=incarnation)

"""The SDK's choice of node, as tables: scores, ranking, whom to dial after a failure, giving up."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from mesh.core.policy.node_choice import (
    DOWN_MEMORY_S,
    NodeChoice,
    deadline_left_s,
    give_up,
    rank,
    score_s,
    tried_text,
)
from mesh.errors import AuthError, MeshError, PeerUnavailable, ProtocolError

A, B, C = "10.0.0.1:7700", "10.0.0.2:7700", "10.0.0.3:7700"


@pytest.mark.parametrize(
    ("status", "score"),
    [
        ({"scheduler": {"wait_ms": 250}}, 0.26),
        ({"scheduler": {"wait_ms": 0.5}}, 0.0105),
        ({"scheduler": {"wait_ms": 0}}, 0.01),
        # A node that does not say is taken as idle: its round trip alone.
        ({"scheduler": {}}, 0.01),
        ({}, 0.01),
        ({"scheduler": {"wait_ms": -5}}, 0.01),
        ({"scheduler": {"wait_ms": True}}, 0.01),
        ({"scheduler": {"wait_ms": "250"}}, 0.01),
        ({"scheduler": [250]}, 0.01),
        (None, 0.01),
        ([1, 2], 0.01),
        # A draining node takes no work: last among the live, whatever its wait.
        ({"draining": True, "scheduler": {"wait_ms": 0}}, math.inf),
        ({"draining": False, "scheduler": {"wait_ms": 0}}, 0.01),
        ({"draining": "yes", "scheduler": {"wait_ms": 0}}, 0.01),
    ],
)
def test_score_is_the_node_s_wait_plus_the_round_trip(status: object, score: float) -> None:
    assert score_s(status, rtt_s=0.01) == pytest.approx(score)


@dataclass(frozen=True)
class Seen:
    address: str
    live: bool
    score: float = math.inf


@pytest.mark.parametrize(
    ("found", "order"),
    [
        ([Seen(A, True, 0.3), Seen(B, True, 0.1), Seen(C, True, 0.2)], [B, C, A]),
        # Live first, however good a dead one's score.
        ([Seen(A, False, 0.0), Seen(B, True, 5.0)], [B, A]),
        # Unknown load (inf) ranks after any known one, before the dead.
        ([Seen(A, True), Seen(B, False), Seen(C, True, 9.0)], [C, A, B]),
        # Ties keep the given order, whichever it is.
        ([Seen(A, True), Seen(B, True), Seen(C, True)], [A, B, C]),
        ([Seen(C, True, 0.1), Seen(A, True, 0.1), Seen(B, True, 0.1)], [C, A, B]),
        ([], []),
    ],
)
def test_rank(found: list[Seen], order: list[str]) -> None:
    assert [seen.address for seen in rank(found)] == order


@dataclass(frozen=True)
class DialCase:
    # (address, when found down, why), recorded in this order
    down: list[tuple[str, float, str]]
    # Addresses that answered a probe since, in this order after `down`.
    live: list[str]
    tried: dict[str, str]
    now: float
    connecting: bool
    dial: list[str]
    skipped: list[tuple[str, str]]


DIAL_CASES: dict[str, DialCase] = {
    "a fresh client dials everyone": DialCase([], [], {}, 0.0, True, [A, B, C], []),
    "a failover skips the nodes this call tried": DialCase(
        [], [], {A: "lost"}, 0.0, False, [B, C], []
    ),
    "a node found down a moment ago is skipped, with why": DialCase(
        [(B, 10.0, "refused")], [], {A: "lost"}, 10.5, False, [C], [(B, "refused")]
    ),
    "after the memory it is dialled again": DialCase(
        [(B, 10.0, "refused")], [], {A: "lost"}, 10.0 + DOWN_MEMORY_S, False, [B, C], []
    ),
    "connecting on purpose dials even a node found down": DialCase(
        [(B, 10.0, "refused")], [], {}, 10.1, True, [A, B, C], []
    ),
    "a node that answered since is not down": DialCase(
        [(B, 10.0, "refused")], [B], {}, 10.1, False, [A, B, C], []
    ),
    "the latest time it was found down counts": DialCase(
        [(C, 1.0, "old"), (C, 10.0, "reset")], [], {}, 10.9, False, [A, B], [(C, "reset")]
    ),
    "a tried node is not also reported as skipped": DialCase(
        [(A, 10.0, "refused")], [], {A: "lost"}, 10.1, False, [B, C], []
    ),
    "everyone tried or down: nothing to dial": DialCase(
        [(C, 10.0, "timeout")],
        [],
        {A: "lost", B: "lost"},
        10.1,
        False,
        [],
        [(C, "timeout")],
    ),
}


@pytest.mark.parametrize("name", list(DIAL_CASES))
def test_dial(name: str) -> None:
    case = DIAL_CASES[name]
    choice = NodeChoice([A, B, C])
    for address, at, why in case.down:
        choice.found_down(address, at, why)
    for address in case.live:
        choice.found_live(address)
    dial = choice.dial(case.tried, case.now, connecting=case.connecting)
    assert list(dial.addresses) == case.dial, name
    assert list(dial.skipped) == case.skipped, name


def test_a_failover_tries_each_node_once_then_gives_up() -> None:
    # Three calls' worth of failovers over one client: each loss is
    # remembered for the other calls, and a call never goes back.
    choice = NodeChoice([A, B, C], down_memory_s=1.0)
    tried: dict[str, str] = {}
    order = []
    now = 0.0
    while dial := choice.dial(tried, now, connecting=False).addresses:
        node = dial[0]
        order.append(node)
        tried[node] = "lost"
        choice.found_down(node, now, "lost")
        now += 0.1
    assert order == [A, B, C]
    # Another call a moment later skips all three, saying why.
    later = choice.dial({}, now, connecting=False)
    assert later.addresses == ()
    assert later.skipped == ((A, "lost"), (B, "lost"), (C, "lost"))


@pytest.mark.parametrize(
    ("deadline", "elapsed", "attempt", "left"),
    [
        (0.5, 0.0, 0, 0.5),
        # The first send carries the whole deadline, however long it took to find a node.
        (0.5, 0.7, 0, 0.5),
        (0.5, 0.2, 1, 0.3),
        (0.5, 0.45, 3, 0.05),
        (0.5, 0.5, 1, None),
        (0.5, 0.9, 2, None),
    ],
)
def test_deadline_left(deadline: float, elapsed: float, attempt: int, left: float | None) -> None:
    got = deadline_left_s(deadline, elapsed, attempt)
    if left is None:
        assert got is None
    else:
        assert got == pytest.approx(left)


REFUSED = AuthError("bad key")
GONE = PeerUnavailable("connection refused")
GARBLED = ProtocolError("not msgpack")


@pytest.mark.parametrize(
    ("errors", "connecting", "candidates", "kind", "text"),
    [
        # Connecting to one node: its own error, as it came.
        ([GONE], True, 1, PeerUnavailable, "connection refused"),
        ([REFUSED], True, 1, AuthError, "bad key"),
        ([GARBLED], True, 1, ProtocolError, "not msgpack"),
        # Several: refused for our key says so, else unreachable.
        ([GONE, REFUSED], True, 2, AuthError, "the edgemesh nodes refused us: "),
        ([GONE, GONE], True, 2, PeerUnavailable, "no edgemesh node could be reached: "),
        # A failover is always PeerUnavailable, naming what was tried.
        ([REFUSED], False, 1, PeerUnavailable, "no edgemesh node could be reached: "),
        ([REFUSED, GONE], False, 2, PeerUnavailable, "no edgemesh node could be reached: "),
        # No node answered in time (no error known): unreachable.
        ([], True, 1, PeerUnavailable, "no edgemesh node could be reached"),
    ],
)
def test_give_up(
    errors: list[MeshError],
    connecting: bool,
    candidates: int,
    kind: type[MeshError],
    text: str,
) -> None:
    tried = {A: "first", B: "second"}
    error = give_up(errors, tried, connecting=connecting, candidates=candidates)
    assert type(error) is kind
    assert text in error.message
    if error not in errors:
        assert error.message.endswith(f"{A} (first); {B} (second)")
    else:
        assert error is errors[0]


def test_tried_text() -> None:
    assert tried_text({}) == ""
    assert tried_text({A: "refused"}) == f": {A} (refused)"

"""A member that answers stays alive: Membership.heard, with an explicit clock (issue 18).

After a partition heals, a node may be too busy to gossip on time while its
results, answers and steal calls still arrive. Any message over an
authenticated connection is a sign of life: it keeps an ALIVE member alive,
refutes a SUSPECT one, and never brings back a DEAD one (only its gossip
does) or speaks for another process of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mesh.core.membership.peers import (
    Gossip,
    Load,
    MemberRefuted,
    Membership,
    MembershipConfig,
    MemberState,
)

ALIVE, SUSPECT, DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD
LOAD = Load(models=(), service_s={}, queued_s=0.0, free_slots=1, role="node")
CONFIG = MembershipConfig(suspect_after_s=0.8, dead_after_s=0.6)


def view_with_b(*, gossip_at: float = 0.0) -> Membership:
    view = Membership(self_name="a", self_id="id-a", config=CONFIG)
    gossip = Gossip(
        name="b",
        id="id-b",
        incarnation=1,
        host=None,
        rpc_port=7701,
        http_port=None,
        mesh_id="open",
        load=LOAD,
    )
    view.heard_from(gossip, peer_host="127.0.0.1", now=gossip_at)
    return view


@dataclass(frozen=True)
class Case:
    before: list[tuple[str, float]]  # ("tick", t) or ("lost", t): what happened first
    heard: tuple[str, float, float]  # id, at, now
    events: list[type]
    then: MemberState
    tick_at: float  # a later tick ...
    after: MemberState  # ... and the state it leaves


CASES: dict[str, Case] = {
    "alive and answering: still alive past the gossip silence": Case(
        before=[],
        heard=("id-b", 0.7, 0.7),
        events=[],
        then=ALIVE,
        tick_at=1.2,  # 1.2 s after its last gossip, 0.5 s after its last answer
        after=ALIVE,
    ),
    "alive, silent and not answering: suspect as before": Case(
        before=[],
        heard=("id-b", 0.0, 0.1),  # nothing newer than its gossip
        events=[],
        then=ALIVE,
        tick_at=0.85,
        after=SUSPECT,
    ),
    "suspect (its link dropped), then answers: refuted": Case(
        before=[("lost", 0.3)],
        heard=("id-b", 0.4, 0.4),
        events=[MemberRefuted],
        then=ALIVE,
        tick_at=1.0,
        after=ALIVE,
    ),
    "suspect, and the message predates the suspicion: no news": Case(
        before=[("lost", 0.3)],
        heard=("id-b", 0.2, 0.4),
        events=[],
        then=SUSPECT,
        tick_at=0.95,
        after=DEAD,
    ),
    "dead: a message does not bring it back (its gossip will)": Case(
        before=[("tick", 0.8), ("tick", 1.4)],
        heard=("id-b", 1.5, 1.5),
        events=[],
        then=DEAD,
        tick_at=1.6,
        after=DEAD,
    ),
    "another process of that name speaks for nobody": Case(
        before=[("lost", 0.3)],
        heard=("id-other", 0.4, 0.4),
        events=[],
        then=SUSPECT,
        tick_at=0.95,
        after=DEAD,
    ),
    "a time from the future is ignored": Case(
        before=[],
        heard=("id-b", 5.0, 0.5),
        events=[],
        then=ALIVE,
        tick_at=0.85,
        after=SUSPECT,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_member_that_answers_stays_alive(case: Case) -> None:
    view = view_with_b()
    for what, when in case.before:
        if what == "lost":
            view.connection_lost("b", now=when)
        else:
            view.tick(when)
    id_, at, now = case.heard
    events = view.heard("b", id_, at=at, now=now)
    assert [type(e) for e in events] == case.events
    member = view.get("b")
    assert member is not None and member.state is case.then
    view.tick(case.tick_at)
    member = view.get("b")
    assert member is not None and member.state is case.after


def test_an_unknown_name_is_not_made_a_member() -> None:
    view = view_with_b()
    assert view.heard("c", "id-c", at=0.1, now=0.1) == []
    assert view.get("c") is None


def test_answers_move_the_next_deadline() -> None:
    view = view_with_b()
    assert view.next_deadline() == pytest.approx(0.8)
    view.heard("b", "id-b", at=0.5, now=0.5)
    assert view.next_deadline() == pytest.approx(1.3)

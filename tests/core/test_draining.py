"""Draining, as pure rules: what a leaving node does with each job, and when it is done.

The scheduler in drain mode (mesh.core.scheduling.draining), driven by hand
with an explicit clock as in test_scheduler.py: refuse new requests, give
others' queued jobs back, hand all queued work of our own to thieves,
steal nothing, nudge every holder, finish what runs, and, past the timeout,
answer what is left with Draining. Also the two messages a drain adds
(``giveback``, ``leaving``) and the membership rule for a member that left.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from mesh.core.membership.gossip import Gossip, Load, MemberState, ModelHolding
from mesh.core.membership.leaving import LEAVING, Leaving, parse_leaving
from mesh.core.membership.peers import MemberDied, Membership
from mesh.core.scheduling.draining import DrainClock, drain_complete
from mesh.core.scheduling.jobs import (
    Abort,
    Action,
    Cancel,
    GiveBack,
    Job,
    Nudge,
    Reply,
    RunLocal,
    SchedulerConfig,
    SendResult,
    Steal,
)
from mesh.core.scheduling.scheduler import Scheduler
from mesh.core.wire.handover import GIVE_BACK, parse_giveback
from mesh.errors import BadRequest, ConfigError, Draining, PeerUnavailable

M = "digits-small"
SHA = "ab" * 32
SERVICE = 0.01
A = TypeVar("A")


def node(name: str, *, slots: int = 1, **config: Any) -> Scheduler[int]:
    config.setdefault("solo_depth", slots)
    s: Scheduler[int] = Scheduler(
        node_id=f"id-{name}",
        name=name,
        models={M: frozenset({SHA})},
        config=SchedulerConfig(slots=slots, **config),
        rng=random.Random(0),
    )
    s.observe_service(M, SERVICE)
    return s


def mesh(*names: str) -> list[Scheduler[int]]:
    """Idle nodes that know each other from gossip."""
    nodes = [node(name) for name in names]
    for to in nodes:
        for peer in nodes:
            if peer is not to:
                to.peer_update(peer.name, peer.load_summary(0.0), 0.0)
    return nodes


def submit(s: Scheduler[int], count: int, now: float = 0.0) -> tuple[list[int], list[Action]]:
    seqs, actions = [], []
    for i in range(count):
        seq, more = s.submit(
            model=M, payload=i, size_bytes=1000, deadline=None, request_id=f"r{i}", now=now
        )
        seqs.append(seq)
        actions += more
    return seqs, actions


def only(actions: Iterable[Action], kind: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


def steal(thief: Scheduler[int], victim: Scheduler[int], now: float = 0.0) -> list[Job[int]]:
    """``victim`` nudges idle ``thief``, which asks; the jobs arrive (as copies) at the thief."""
    return steal_and_run(thief, victim, now)[0]


def steal_and_run(
    thief: Scheduler[int], victim: Scheduler[int], now: float = 0.0
) -> tuple[list[Job[int]], list[Job[int]]]:
    """:func:`steal`, and the jobs the thief starts running at once."""
    (action,) = only(thief.nudged(victim.name, now), Steal)
    jobs, _ = victim.grant(action.ask, now)
    actions = thief.granted(
        victim.name,
        [replace(job) for job in jobs],
        victim.load_summary(now),
        took_s=0.002,
        reply_bytes=1000 * len(jobs),
        now=now,
    )
    return jobs, [run.job for run in only(actions, RunLocal)]


# --- new requests and stealing -------------------------------------------------------


def test_a_draining_node_refuses_new_requests_with_a_peer_unavailable() -> None:
    (a,) = mesh("a")
    a.start_drain(10.0, now=0.0)
    with pytest.raises(Draining, match="node a is draining") as refused:
        submit(a, 1)
    # The branch every client already fails over on.
    assert isinstance(refused.value, PeerUnavailable)
    assert refused.value.code == "Draining"


def test_an_idle_drain_is_complete_at_once() -> None:
    (a,) = mesh("a")
    assert not a.drained()  # not draining yet
    a.start_drain(10.0, now=0.0)
    assert a.drained()
    assert a.start_drain(10.0, now=1.0) == []  # a second ask changes nothing


def test_a_draining_node_steals_nothing() -> None:
    a, b = mesh("a", "b")
    submit(b, 5)
    a.start_drain(10.0, now=0.0)
    assert a.nudged("b", 0.0) == []
    assert only(a.peer_update("b", b.load_summary(0.0), 0.0), Steal) == []


GRANTS = {
    # Alone with one thief, all queued work goes: the leaver's speed does not count.
    "one thief takes it all": (("b",), 9, {"b": 8}),
    # Two idle thieves of the same speed split it (water-filling among them only).
    "two thieves share it": (("b", "c"), 9, {"b": 4}),
}


@pytest.mark.parametrize(("thieves", "submitted", "taken"), GRANTS.values(), ids=GRANTS.keys())
def test_a_draining_node_grants_its_queued_work_to_thieves(
    thieves: Sequence[str], submitted: int, taken: dict[str, int]
) -> None:
    a, *others = mesh("a", *thieves)
    submit(a, submitted)  # one runs, the rest is queued
    a.start_drain(10.0, now=0.0)
    jobs = steal(others[0], a)
    assert len(jobs) == taken[others[0].name]
    assert all(job.key[0] == "id-a" for job in jobs)  # its own: it still owns them


def test_not_draining_the_same_thief_takes_only_what_it_finishes_sooner() -> None:
    """The contrast: the ordinary rule splits the queue between victim and thief."""
    a, b = mesh("a", "b")
    submit(a, 9)
    assert len(steal(b, a)) < 8


def test_a_draining_node_nudges_every_holder_of_queued_work_busy_or_not() -> None:
    a, b, c = mesh("a", "b", "c")
    submit(a, 5)
    submit(b, 3)  # busy: still nudged, which ends its back-off from a
    actions = a.start_drain(10.0, now=1.0)
    assert sorted(n.peer for n in only(actions, Nudge)) == ["b", "c"]
    # Not again within the nudge interval...
    assert only(a.tick(1.001), Nudge) == []
    assert only(a.peer_update("c", c.load_summary(1.001), 1.001), Nudge) == []
    # ...but after it, while work is still queued.
    later = 1.0 + a.config.nudge_interval_s
    again = only(a.peer_update("c", c.load_summary(later), later), Nudge)
    assert sorted(n.peer for n in again) == ["b", "c"]


# --- what it holds for others --------------------------------------------------------


class HeldByB:
    """a owns 6: it runs ``a_running`` and queues some; b stole ``jobs``, runs
    ``b_running`` (one of them) and queues the others."""

    def __init__(self) -> None:
        self.a, self.b = mesh("a", "b")
        _, actions = submit(self.a, 6)
        self.a_running = [run.job for run in only(actions, RunLocal)]
        self.jobs, self.b_running = steal_and_run(self.b, self.a)
        assert len(self.jobs) >= 2 and len(self.b_running) == 1


def held_by_b() -> tuple[Scheduler[int], Scheduler[int], list[Job[int]]]:
    held = HeldByB()
    return held.a, held.b, held.jobs


def test_queued_jobs_held_for_others_are_given_back_at_once_and_requeued_there() -> None:
    held = HeldByB()
    a, b, jobs = held.a, held.b, held.jobs
    running = {job.key for job in held.b_running}  # what b runs stays
    actions = b.start_drain(10.0, now=0.1)
    back = only(actions, GiveBack)
    assert {(g.owner, g.seq) for g in back} == {
        ("a", j.key[1]) for j in jobs if j.key not in running
    }
    assert b.queued() == 0 and b.running() == 1
    # The owner takes each back under a new epoch, queued at the front.
    queued_before = a.queued()
    for give in back:
        a.given_back(give.seq, give.epoch, "b", now=0.1)
    assert a.queued() == queued_before + len(back)
    assert a.counters["requeued"] == len(back)


def test_a_give_back_from_the_wrong_holder_or_epoch_changes_nothing() -> None:
    a, _, jobs = held_by_b()
    seq = jobs[0].key[1]
    assert a.given_back(seq, 0, "c", now=0.1) == []  # c never held it
    assert a.given_back(seq, 1, "b", now=0.1) == []  # no such epoch
    assert a.counters["requeued"] == 0
    a.given_back(seq, 0, "b", now=0.1)
    assert a.counters["requeued"] == 1
    assert a.given_back(seq, 0, "b", now=0.2) == []  # twice: once


def test_running_jobs_for_others_finish_and_their_result_goes_to_the_owner() -> None:
    held = HeldByB()
    b = held.b
    b.start_drain(10.0, now=0.1)
    assert not b.drained()
    (running,) = held.b_running
    actions = b.finished(running, took_s=SERVICE, now=0.11)
    assert [s.job.key for s in only(actions, SendResult)] == [running.key]
    assert b.drained()


def test_a_steal_that_lands_after_the_drain_began_is_given_back() -> None:
    a, b = mesh("a", "b")
    submit(a, 6)
    (action,) = only(b.nudged("a", 0.0), Steal)
    jobs, _ = a.grant(action.ask, 0.0)
    b.start_drain(10.0, now=0.0)  # while the grant is on the wire
    actions = b.granted("a", [replace(j) for j in jobs], None, took_s=0.002, reply_bytes=0, now=0.0)
    assert sorted(g.seq for g in only(actions, GiveBack)) == sorted(j.key[1] for j in jobs)
    assert b.drained()


# --- what it owns ----------------------------------------------------------------------


def test_owned_requests_run_elsewhere_keep_the_drain_open_until_their_results_come() -> None:
    held = HeldByB()
    a, jobs = held.a, held.jobs
    a.start_drain(10.0, now=0.1)
    running = held.a_running
    now = 0.2
    while running:  # what runs here ends; what was queued here runs then
        now += SERVICE
        actions = a.finished(running.pop(), took_s=SERVICE, now=now)
        running += [run.job for run in only(actions, RunLocal)]
    assert a.queued() == 0 and a.running() == 0
    assert not a.drained()  # b still holds some
    for job in jobs:
        assert a.result(job.key[1], job.epoch, now=0.4) == [Reply(job.key[1])]
    assert a.drained()


def test_past_the_timeout_everything_left_gets_a_typed_answer() -> None:
    """Owned: queued here, held by a peer. Held for another owner: running here."""
    a, b = mesh("a", "b")
    c_job: Job[int] = Job(
        key=("id-c", 7),
        owner="c",
        model=M,
        sha256=SHA,
        epoch=2,
        payload=0,
        size_bytes=10,
        deadline=None,
    )
    first = a.granted("c", [c_job], None, took_s=None, reply_bytes=0, now=0.0)
    assert [run.job.key for run in only(first, RunLocal)] == [c_job.key]  # runs at a
    submit(a, 6)  # queued behind it
    jobs = steal(b, a)  # b holds some of them
    assert jobs
    a.start_drain(10.0, now=0.1)
    owned = a.owned()
    assert owned == 6
    actions = a.abandon(now=10.1)
    replies = only(actions, Reply)
    assert len(replies) == owned
    assert all(isinstance(r.error, Draining) for r in replies)
    assert "drain timeout of 10 s" in str(replies[0].error)
    assert {c.key for c in only(actions, Cancel)} == {j.key for j in jobs}  # b's copies
    assert [x.job.key for x in only(actions, Abort)] == [c_job.key]
    assert [(g.owner, g.seq, g.epoch) for g in only(actions, GiveBack)] == [("c", 7, 2)]
    assert not only(actions, RunLocal)
    assert a.drained()
    assert a.counters["abandoned"] == owned


def test_the_timeout_leaves_no_job_running_for_an_answered_request() -> None:
    (a,) = mesh("a")
    _, actions = submit(a, 3)
    a.start_drain(1.0, now=0.0)
    (run,) = only(actions, RunLocal)
    abandon = a.abandon(now=1.0)
    assert [x.job.key for x in only(abandon, Abort)] == [run.job.key]
    # The aborted run's late end is no answer.
    assert a.finished(run.job, took_s=None, now=1.1) == []


# --- the clock and the end ------------------------------------------------------------------

COMPLETE = {
    "nothing left": ((0, 0, 0), True),
    "owes an answer": ((1, 0, 0), False),
    "holds a queued job": ((0, 1, 0), False),
    "runs something": ((0, 0, 1), False),
}


@pytest.mark.parametrize(("counts", "done"), COMPLETE.values(), ids=COMPLETE.keys())
def test_drain_complete(counts: tuple[int, int, int], done: bool) -> None:
    owned, queued, running = counts
    assert drain_complete(owned=owned, queued=queued, running=running) is done


def test_drain_clock() -> None:
    clock = DrainClock(started=5.0, timeout_s=10.0)
    assert clock.deadline == 15.0
    assert not clock.overdue(14.999) and clock.overdue(15.0)
    assert clock.left_s(7.5) == 7.5 and clock.left_s(20.0) == 0.0
    assert DrainClock(0.0, 0.0).overdue(0.0)  # a zero timeout gives up at once
    with pytest.raises(ConfigError, match="drain timeout"):
        DrainClock(0.0, -1.0)


# --- the messages -------------------------------------------------------------------------------


def test_giveback_parses_and_refuses_nonsense() -> None:
    notice = parse_giveback(["id-a", 3, 1, "b"])
    assert (notice.owner_id, notice.seq, notice.epoch, notice.holder) == ("id-a", 3, 1, "b")
    assert GIVE_BACK == "giveback"
    for bad in (["id-a", 3, 1], ["id-a", -1, 1, "b"], ["id-a", 3, True, "b"], ["", 3, 1, "b"]):
        with pytest.raises(BadRequest, match="giveback"):
            parse_giveback(bad)


def test_leaving_round_trips_and_refuses_nonsense() -> None:
    leaving = Leaving("b", "id-b", 1000)
    assert LEAVING == "leaving"
    assert parse_leaving(leaving.to_wire()) == leaving
    for bad in (
        [],
        ["b"],
        [{"name": "b", "id": "id-b"}],
        [{"name": "", "id": "id-b", "incarnation": 1}],
        [{"name": "b", "id": "id-b", "incarnation": -1}],
        [{"name": "b\n", "id": "id-b", "incarnation": 1}],
    ):
        with pytest.raises(BadRequest, match="leaving"):
            parse_leaving(bad)


# --- membership: a member that left -----------------------------------------------------


def joined(view: Membership) -> None:
    load = Load(
        models=(ModelHolding(M, SHA),), service_s={M: 0.004}, queued_s=0, free_slots=1, role="node"
    )
    gossip = Gossip(
        name="b",
        id="id-b",
        incarnation=1000,
        host=None,
        rpc_port=7701,
        http_port=None,
        mesh_id="open",
        load=load,
    )
    view.heard_from(gossip, peer_host="127.0.0.1", now=0.0)


LEFT = {
    "the member itself": (("b", "id-b", 1000), [MemberDied("b", "left the mesh")]),
    "an older incarnation": (("b", "id-b", 999), []),
    "another process of the name": (("b", "id-x", 1000), []),
    "a stranger": (("z", "id-z", 1), []),
}


@pytest.mark.parametrize(("who", "events"), LEFT.values(), ids=LEFT.keys())
def test_a_member_that_says_it_leaves_is_dead_at_once(
    who: tuple[str, str, int], events: list[MemberDied]
) -> None:
    view = Membership(self_name="a", self_id="id-a")
    joined(view)
    name, id_, incarnation = who
    assert view.left(name, id_, incarnation, now=1.0) == events
    member = view.get("b")
    assert member is not None
    if events:
        assert member.state is MemberState.DEAD and member.reason == "left the mesh"
        assert view.left(name, id_, incarnation, now=2.0) == []  # once
    else:
        assert member.state is MemberState.ALIVE


def test_a_drained_peer_leaves_no_orphans_behind() -> None:
    """The owner side of a goodbye: what it still held is taken back at once."""
    a, _, jobs = held_by_b()
    actions = a.peer_lost("b", now=0.2)
    assert a.counters["requeued"] == len(jobs)
    assert not only(actions, Reply)  # nothing failed: it all runs here again

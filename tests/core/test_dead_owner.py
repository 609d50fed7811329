"""When an owner dies: what its peers do with the jobs they hold for it.

The design: the owner alone answers its clients, and nobody else can, so when
membership says it died (``peer_lost`` of the owner) a peer drops every job it
holds for it: queued ones leave the queue unrun, running ones are aborted, and
no result is sent. The client, whose connection to the owner broke, retries
on another node with the same request id (execution is at least once,
delivery exactly once). Each case plays the node's part by hand, with an
explicit clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from mesh.core.scheduling.jobs import (
    Abort,
    Action,
    Cancel,
    Handoff,
    Job,
    PeerLoad,
    Reply,
    RunLocal,
    SchedulerConfig,
    SendResult,
    Steal,
    StealAsk,
)
from mesh.core.scheduling.scheduler import Scheduler

M = "digits-small"
SHA = "ab" * 32
SERVICE = 0.01

A = TypeVar("A")


def node(name: str, *, slots: int = 1, **config: Any) -> Scheduler[int]:
    s: Scheduler[int] = Scheduler(
        node_id=f"id-{name}",
        name=name,
        models={M: frozenset({SHA})},
        config=SchedulerConfig(slots=slots, solo_depth=slots, **config),
        rng=random.Random(0),
    )
    s.observe_service(M, SERVICE)
    return s


def only(actions: Iterable[Action], kind: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


def know(*nodes: Scheduler[int], now: float = 0.0) -> None:
    """Every node hears every other's gossip."""
    for x in nodes:
        for y in nodes:
            if x is not y:
                x.peer_update(y.name, y.load_summary(now), now)


def submit(
    s: Scheduler[int], count: int, *, deadline: float | None = None, now: float = 0.0
) -> list[Action]:
    actions: list[Action] = []
    for i in range(count):
        _, more = s.submit(
            model=M, payload=i, size_bytes=1000, deadline=deadline, request_id=None, now=now
        )
        actions += more
    return actions


def steal(thief: Scheduler[int], victim: Scheduler[int], now: float = 0.0) -> list[Action]:
    """``thief``, nudged by ``victim``, steals from it: the thief's actions.

    The jobs travel as copies with their deadlines on the thief's clock, as
    the wire makes them.
    """
    (action,) = only(thief.nudged(victim.name, now), Steal)
    return carry(thief, victim, action.ask, now)


def carry(thief: Scheduler[int], victim: Scheduler[int], ask: StealAsk, now: float) -> list[Action]:
    """The victim grants what it would for ``ask``; the thief takes it: its actions."""
    jobs, _ = victim.grant(ask, now)
    assert jobs, "the victim granted nothing"
    copies = [replace(job) for job in jobs]
    size = sum(j.size_bytes for j in copies)
    return thief.granted(
        victim.name, copies, victim.load_summary(now), took_s=0.002, reply_bytes=size, now=now
    )


def messages(actions: Iterable[Action]) -> list[Action]:
    """What would leave the node for a peer or a client."""
    return [a for a in actions if isinstance(a, SendResult | Reply | Handoff | Cancel)]


# --- the holder drops what it holds for a dead owner ---------------------------------------------

# (holder's slots, requests at the owner) -> (the holder's jobs running, queued) when it hears
HOLDINGS = {
    "one running, one queued": (1, 4, (1, 1)),
    "one running, nothing queued": (1, 2, (1, 0)),
    "two running, four queued": (2, 9, (2, 4)),
    "a long queue": (1, 30, (1, 14)),
}


@pytest.mark.parametrize(("slots", "requests", "held"), HOLDINGS.values(), ids=HOLDINGS.keys())
def test_a_dead_owners_jobs_are_dropped_where_they_are_held(
    slots: int, requests: int, held: tuple[int, int]
) -> None:
    a, b = node("a"), node("b", slots=slots)
    know(a, b)
    submit(a, requests)
    started = [r.job for r in only(steal(b, a), RunLocal)]
    assert (b.running(), b.queued()) == held

    actions = b.peer_lost("a", 0.001)

    # Running ones are aborted, queued ones never start, nothing is sent anywhere.
    assert {x.job.key for x in only(actions, Abort)} == {j.key for j in started}
    assert only(actions, RunLocal) == [] and messages(actions) == []
    assert (b.running(), b.queued(), b.owned()) == (0, 0, 0)
    assert b.counters["orphaned"] == sum(held)
    # A run the runtime could not stop in time ends without a result for anyone.
    for job in started:
        assert messages(b.finished(job, took_s=SERVICE, now=0.01)) == []
    assert b.counters["stolen_in"] == 0 and b.counters["cancelled"] == 0


def test_a_dead_owners_deadlines_are_forgotten() -> None:
    a, b = node("a"), node("b")
    know(a, b)
    submit(a, 10, deadline=1.0)
    steal(b, a)
    assert b.next_deadline() == pytest.approx(1.0)
    b.peer_lost("a", 0.001)
    assert b.next_deadline() is None
    assert b.tick(2.0) == [] and b.counters["expired"] == 0


def test_only_the_dead_owners_jobs_are_dropped() -> None:
    """b holds jobs of a and of c, and runs a request of its own; a dies."""
    a, b, c = node("a"), node("b", slots=2), node("c")
    know(a, b, c)
    submit(a, 6)
    submit(c, 6)
    running = [r.job for r in only(submit(b, 1), RunLocal)]  # b's own takes a slot
    (action,) = only(b.nudged("a", 0.0), Steal)
    running += [r.job for r in only(carry(b, a, action.ask, 0.0), RunLocal)]  # a's the other
    carry(b, c, action.ask, 0.0)  # and c's queue behind (asked at the same time)
    before = b.queued() + b.running()

    actions = b.peer_lost("a", 0.001)

    dropped = b.counters["orphaned"]
    assert dropped > 0 and b.queued() + b.running() == before - dropped
    aborted = only(actions, Abort)
    assert [x.job.owner for x in aborted] == ["a"]
    running = [j for j in running if j.key != aborted[0].job.key]
    running += [r.job for r in only(actions, RunLocal)]
    # c's jobs and b's own still run, and are sent back or answered.
    done = run_everything(b, running, now=0.002)
    results = only(done, SendResult)
    assert results and {r.job.owner for r in results} == {"c"}
    assert len(only(done, Reply)) == 1  # b's own request
    assert (b.running(), b.queued(), b.owned()) == (0, 0, 0)


def run_everything(s: Scheduler[int], running: list[Job[int]], *, now: float) -> list[Action]:
    """``s`` finishes ``running`` and whatever starts after, one SERVICE each."""
    actions: list[Action] = []
    for step in range(1000):
        if not running:
            return actions
        more = s.finished(running.pop(0), took_s=SERVICE, now=now + step * SERVICE)
        running += [r.job for r in only(more, RunLocal)]
        actions += more
    raise AssertionError("still running after 1000 runs")


def test_a_job_passed_on_is_dropped_by_whoever_holds_it_now() -> None:
    """a's job went a → b → c; when a dies, c drops it and b has nothing left of it."""
    a, b, c = node("a"), node("b"), node("c")
    know(a, b, c)
    submit(a, 10)
    steal(b, a)
    busy_b = b.queued()
    assert busy_b > 0
    handed = [x for x in c.nudged("b", 0.0) if isinstance(x, Steal)]
    assert handed
    jobs, victim_actions = b.grant(handed[0].ask, 0.0)
    assert jobs and {h.owner for h in only(victim_actions, Handoff)} == {"a"}
    c.granted(
        "b", [replace(j) for j in jobs], b.load_summary(0.0), took_s=0.002, reply_bytes=0, now=0.0
    )
    assert c.queued() + c.running() == len(jobs)

    for holder in (b, c):
        actions = holder.peer_lost("a", 0.001)
        assert messages(actions) == []
        assert (holder.queued(), holder.running(), holder.owned()) == (0, 0, 0)
    assert b.counters["orphaned"] + c.counters["orphaned"] == busy_b + 1  # b ran one


def test_a_thief_whose_victim_was_the_dead_owner_steals_elsewhere() -> None:
    a, b, c = node("a"), node("b"), node("c")
    know(a, b, c)
    submit(a, 10)
    (ask_a,) = only(b.nudged("a", 0.0), Steal)  # in flight when a dies
    submit(c, 10)
    know(b, c)
    actions = b.peer_lost("a", 0.001)
    # The steal from a will never be answered; b does not wait for it.
    assert [s.victim for s in only(actions, Steal)] == ["c"]
    assert ask_a.victim == "a"


def test_a_late_grant_of_a_dead_owners_job_runs_once_and_is_sent_only_to_it() -> None:
    """At least once: a job of the dead owner that a third node passes on after
    the thief heard of the death still runs (the thief cannot tell a dead
    owner from one it never heard of); its result is addressed to the owner,
    whom the node no longer has a link to, so nobody answers with it."""
    a, b, c = node("a"), node("b"), node("c")
    know(a, b, c)
    submit(a, 10)
    steal(b, a)
    c.peer_lost("a", 0.001)
    (action,) = only(c.nudged("b", 0.002), Steal)
    jobs, _ = b.grant(action.ask, 0.002)
    runs = only(
        c.granted("b", [replace(j) for j in jobs], None, took_s=0.002, reply_bytes=0, now=0.002),
        RunLocal,
    )
    assert len(runs) == 1
    out = c.finished(runs[0].job, took_s=SERVICE, now=0.012)
    assert [(r.job.owner, r.job.key[0]) for r in only(out, SendResult)] == [("a", "id-a")]
    assert only(out, Reply) == []


def test_an_owner_that_restarts_is_a_new_owner() -> None:
    """A restart is a death then a newcomer with the same name and a new id:
    the old incarnation's jobs are dropped; the new one's are served."""
    a, b = node("a"), node("b")
    know(a, b)
    submit(a, 6)
    steal(b, a)
    b.peer_lost("a", 0.001)
    assert b.counters["orphaned"] > 0
    again = Scheduler[int](
        node_id="id-a-2",
        name="a",
        models={M: frozenset({SHA})},
        config=SchedulerConfig(),
        rng=random.Random(0),
    )
    again.observe_service(M, SERVICE)
    know(again, b, now=0.002)
    submit(again, 6, now=0.002)
    runs = only(steal(b, again, 0.002), RunLocal)
    out = b.finished(runs[0].job, took_s=SERVICE, now=0.012)
    assert [r.job.key[0] for r in only(out, SendResult)] == ["id-a-2"]


def test_owner_death_leaves_the_holders_gossip_clean() -> None:
    """The dead owner is no longer a holder of the model nor someone to nudge."""
    a, b = node("a"), node("b")
    know(a, b)
    assert b.holders(M) == ["a"]
    b.peer_lost("a", 0.001)
    assert b.holders(M) == [] and not b.shares_work()
    assert only(submit(b, 3, now=0.002), RunLocal)  # alone, it runs its own
    load = PeerLoad(
        models={M: frozenset({SHA})}, service_s={M: SERVICE}, queued_s=0.0, free_slots=1
    )
    b.peer_update("a", load, 0.003)  # it came back
    assert b.holders(M) == ["a"]

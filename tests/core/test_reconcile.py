"""Reconciling grants after a partition: what an owner believes a peer holds, against
what the peer reports (mesh.core.scheduling.reconcile), with an explicit clock.

Tables first (the ask numbering, the pure rule), then two schedulers driven
against each other by hand: a grant whose reply is lost, delivered, still in
flight, or whose jobs the thief dropped while it took the owner for dead.
Then the wire: the holding report in gossip, the ask number in a steal ask
and a handoff, all strictly parsed.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import msgpack
import pytest

from mesh.core.membership.gossip import Gossip, Holding, Load, parse_gossip
from mesh.core.scheduling.jobs import (
    Action,
    Job,
    RunLocal,
    SchedulerConfig,
    SendResult,
    Steal,
    StealAsk,
)
from mesh.core.scheduling.ledger import Owned
from mesh.core.scheduling.reconcile import Asks, missing, report
from mesh.core.scheduling.scheduler import Scheduler
from mesh.core.wire.handover import parse_handoff, parse_steal_ask
from mesh.errors import BadRequest

M = "digits-small"
SHA = "ab" * 32


# --- the ask numbering -----------------------------------------------------------------

# Steps: ("open", victim) numbers a new ask; ("settle", victim, number or None).
ASK_CASES: dict[str, tuple[list[tuple[Any, ...]], int]] = {
    "none asked": ([], 0),
    "one open": ([("open", "a")], 0),
    "one answered": ([("open", "a"), ("settle", "a", 1)], 1),
    "answered unnamed: the oldest to that victim": (
        [("open", "a"), ("open", "a"), ("settle", "a", None)],
        1,
    ),
    "an older one still open holds the line": (
        [("open", "a"), ("open", "b"), ("settle", "b", 2)],
        0,
    ),
    "all settled, out of order": (
        [("open", "a"), ("open", "b"), ("settle", "b", 2), ("settle", "a", 1)],
        2,
    ),
    "settling an unknown ask changes nothing": ([("open", "a"), ("settle", "a", 7)], 0),
}


@pytest.mark.parametrize(("steps", "settled"), ASK_CASES.values(), ids=ASK_CASES.keys())
def test_asks_are_settled_up_to_the_oldest_open_one(
    steps: list[tuple[Any, ...]], settled: int
) -> None:
    asks = Asks()
    for step in steps:
        if step[0] == "open":
            asks.open(step[1])
        else:
            asks.settle(step[1], step[2])
    assert asks.settled() == settled


# --- the rule, as a table ----------------------------------------------------------------


def owned(seq: int, epoch: int = 0, ask: int | None = 1) -> Owned[int]:
    job: Job[int] = Job(
        key=("id-a", seq),
        owner="a",
        model=M,
        sha256=SHA,
        epoch=epoch,
        payload=seq,
        size_bytes=1,
        deadline=None,
    )
    return Owned(job, holder="b", lease_until=100.0, ask=ask)


MISSING_CASES: dict[str, tuple[Owned[int], list[tuple[int, int]], int, bool]] = {
    "listed: kept": (owned(1), [(1, 0)], 1, False),
    "not listed, its ask settled: taken back": (owned(1), [], 1, True),
    "not listed, its ask still open (grant in flight): kept": (owned(1, ask=2), [], 1, False),
    "not listed, ask unknown (older peer): left to the lease": (owned(1, ask=None), [], 5, False),
    "listed at an older epoch only: taken back": (owned(1, epoch=2), [(1, 1)], 1, True),
    "another request listed: taken back": (owned(1), [(2, 0)], 1, True),
}


@pytest.mark.parametrize(
    ("record", "listed", "asks", "taken"), MISSING_CASES.values(), ids=MISSING_CASES.keys()
)
def test_what_a_peer_does_not_report_is_taken_back(
    record: Owned[int], listed: list[tuple[int, int]], asks: int, taken: bool
) -> None:
    assert missing([record], listed, asks) == ([record] if taken else [])


def test_a_report_lists_held_jobs_by_owner() -> None:
    jobs = [owned(3).job, owned(1).job, replace(owned(2).job, key=("id-c", 2), epoch=4)]
    assert report(jobs, 7) == Holding(asks=7, jobs={"id-a": ((1, 0), (3, 0)), "id-c": ((2, 4),)})


# --- two schedulers, by hand ---------------------------------------------------------------


def node(name: str) -> Scheduler[int]:
    s: Scheduler[int] = Scheduler(
        node_id=f"id-{name}",
        name=name,
        models={M: frozenset({SHA})},
        config=SchedulerConfig(slots=1, solo_depth=1),
        rng=random.Random(0),
    )
    s.observe_service(M, 0.01)
    return s


def loaded_pair(queued: int = 4) -> tuple[Scheduler[int], Scheduler[int], Steal]:
    """Owner ``a`` with ``queued`` requests waiting behind a running one; idle ``b``
    asks it for work: the numbered Steal."""
    a, b = node("a"), node("b")
    a.peer_update("b", b.load_summary(0.0), 0.0)
    b.peer_update("a", a.load_summary(0.0), 0.0)
    for i in range(queued + 1):
        a.submit(model=M, payload=i, size_bytes=10, deadline=None, request_id=None, now=0.0)
    steals = [x for x in b.nudged("a", 0.0) if isinstance(x, Steal)]
    assert len(steals) == 1
    assert steals[0].ask.ask == 1
    return a, b, steals[0]


def deliver(b: Scheduler[int], jobs: list[Job[int]], steal: Steal) -> list[Action]:
    copies = [replace(job) for job in jobs]
    return b.granted("a", copies, None, took_s=0.002, reply_bytes=10, now=0.01, ask=steal.ask.ask)


def test_a_grant_whose_reply_was_lost_is_taken_back_at_once() -> None:
    a, b, steal = loaded_pair()
    jobs, _ = a.grant(steal.ask, 0.0)
    assert jobs
    b.steal_failed("a", 0.01, ask=steal.ask.ask)  # the reply never came
    actions = a.reconcile("b", b.holding(), 0.02)
    assert a.counters["reclaimed"] == len(jobs)
    # Requeued here under a new epoch, long before any lease (>= 5 s) ran out.
    assert all(a._ledger.current(job.key[1], 1) is not None for job in jobs)
    assert a._ledger.held_by("b") == []
    assert not [x for x in actions if isinstance(x, Steal)]


def test_a_delivered_grant_is_kept() -> None:
    a, b, steal = loaded_pair()
    jobs, _ = a.grant(steal.ask, 0.0)
    deliver(b, jobs, steal)
    assert a.reconcile("b", b.holding(), 0.02) == []
    assert a.counters["reclaimed"] == 0
    assert len(a._ledger.held_by("b")) == len(jobs)


def test_a_grant_still_in_flight_is_kept() -> None:
    a, b, steal = loaded_pair()
    jobs, _ = a.grant(steal.ask, 0.0)
    # b reports before the reply arrived: its ask is still open.
    assert b.holding().asks == 0
    a.reconcile("b", b.holding(), 0.001)
    assert a.counters["reclaimed"] == 0
    deliver(b, jobs, steal)
    a.reconcile("b", b.holding(), 0.02)
    assert a.counters["reclaimed"] == 0


def test_jobs_a_holder_dropped_while_it_took_the_owner_for_dead_come_back() -> None:
    a, b, steal = loaded_pair()
    jobs, _ = a.grant(steal.ask, 0.0)
    deliver(b, jobs, steal)
    b.peer_lost("a", 0.5)  # a partition: b declared a dead and dropped its jobs
    assert b.counters["orphaned"] == len(jobs)
    a.reconcile("b", b.holding(), 2.0)  # healed: b's gossip reaches a again
    assert a.counters["reclaimed"] == len(jobs)


def test_an_answered_request_is_not_taken_back_and_a_late_copy_is_dropped() -> None:
    a, b, steal = loaded_pair(queued=2)
    jobs, _ = a.grant(steal.ask, 0.0)
    started = [x.job for x in deliver(b, jobs, steal) if isinstance(x, RunLocal)]
    assert started
    # b finishes one and sends the result before its next report (same link, in order).
    sent = [x for x in b.finished(started[0], took_s=0.01, now=0.02) if isinstance(x, SendResult)]
    assert len(sent) == 1
    assert a.result(sent[0].job.key[1], sent[0].job.epoch, 0.03)
    a.reconcile("b", b.holding(), 0.04)
    assert a.counters["reclaimed"] == 0
    # The result, delivered twice, is answered once.
    assert a.result(sent[0].job.key[1], sent[0].job.epoch, 0.05) == []
    assert a.counters["served_remote"] == 1


def test_after_a_take_back_the_thiefs_stale_result_is_dropped() -> None:
    a, b, steal = loaded_pair(queued=1)
    jobs, _ = a.grant(steal.ask, 0.0)
    (job,) = jobs
    b.steal_failed("a", 0.01, ask=steal.ask.ask)
    a.reconcile("b", b.holding(), 0.02)
    assert a.counters["reclaimed"] == 1
    # Had the old copy run somewhere after all, its epoch-0 result goes nowhere.
    assert a.result(job.key[1], 0, 0.03) == []
    assert a.counters["late_dropped"] == 1


def test_the_thief_counts_a_job_it_received_twice_once() -> None:
    a, b, steal = loaded_pair(queued=2)
    jobs, _ = a.grant(steal.ask, 0.0)
    first = deliver(b, jobs, steal)
    again = deliver(b, jobs, steal)  # the same grant, delivered again
    assert not [x for x in again if isinstance(x, RunLocal)]
    assert b.counters["late_dropped"] == len(jobs)
    running = [x.job for x in first if isinstance(x, RunLocal)]
    results = 0
    now = 0.02
    while running:
        job = running.pop()
        actions = b.finished(job, took_s=0.01, now=now)
        results += len([x for x in actions if isinstance(x, SendResult)])
        running += [x.job for x in actions if isinstance(x, RunLocal)]
        now += 0.01
    assert results == len(jobs)
    assert b.counters["stolen_in"] == len(jobs)


def test_a_newer_epoch_replaces_the_copy_a_thief_holds() -> None:
    b = node("b")
    old: Job[int] = Job(
        key=("id-a", 9),
        owner="a",
        model=M,
        sha256=SHA,
        epoch=0,
        payload=9,
        size_bytes=1,
        deadline=None,
    )
    b.granted("a", [replace(old)], None, took_s=None, reply_bytes=0, now=0.0)
    b.granted("a", [replace(old, epoch=1)], None, took_s=None, reply_bytes=0, now=0.1)
    assert b.holding().jobs == {"id-a": ((9, 1),)}


# --- the wire ----------------------------------------------------------------------------------

LOAD = Load(models=(), service_s={}, queued_s=0.0, free_slots=1, role="node")


def gossip_wire(**extra: Any) -> list[Any]:
    body = Gossip(
        name="b",
        id="id-b",
        incarnation=1,
        host=None,
        rpc_port=7701,
        http_port=None,
        mesh_id="open",
        load=LOAD,
    ).to_wire()
    body.update(extra)
    # (Lenient on map keys, as a hostile peer could be with another decoder.)
    packed = msgpack.packb([body])
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)  # type: ignore[no-any-return]


def test_a_holding_report_travels_in_gossip() -> None:
    holding = Holding(asks=3, jobs={"id-a": ((1, 0), (4, 2))})
    body = replace(parse_gossip(gossip_wire()), holding=holding).to_wire()
    parsed = parse_gossip(msgpack.unpackb(msgpack.packb([body]), raw=False))
    assert parsed.holding == holding


def test_gossip_without_a_holding_report_is_an_older_node() -> None:
    assert parse_gossip(gossip_wire()).holding is None
    assert parse_gossip(gossip_wire(holding=None)).holding is None


BAD_HOLDINGS: dict[str, tuple[object, str]] = {
    "not a map": ([1], "gossip: holding must be a map"),
    "asks missing": ({"jobs": {}}, "gossip: holding.asks is missing"),
    "asks negative": ({"asks": -1, "jobs": {}}, "gossip: holding.asks must be an integer"),
    "asks bool": ({"asks": True, "jobs": {}}, "gossip: holding.asks must be an integer"),
    "jobs a list": ({"asks": 0, "jobs": []}, "gossip: holding.jobs must be a map"),
    "owner not text": ({"asks": 0, "jobs": {1: []}}, "gossip: holding.jobs key must be"),
    "pairs not a list": ({"asks": 0, "jobs": {"id-a": 3}}, "must be a list"),
    "a pair of three": ({"asks": 0, "jobs": {"id-a": [[1, 2, 3]]}}, "a [seq, epoch] pair"),
    "a seq negative": ({"asks": 0, "jobs": {"id-a": [[-1, 0]]}}, ".seq must be an integer"),
    "an epoch text": ({"asks": 0, "jobs": {"id-a": [[1, "0"]]}}, ".epoch must be an integer"),
    "too many": (
        {"asks": 0, "jobs": {"id-a": [[i, 0] for i in range(65537)]}},
        "at most 65536",
    ),
}


@pytest.mark.parametrize(("holding", "message"), BAD_HOLDINGS.values(), ids=BAD_HOLDINGS.keys())
def test_a_malformed_holding_report_is_refused(holding: object, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_gossip(gossip_wire(holding=holding))
    assert message in caught.value.message


ASK = StealAsk(
    thief="b",
    models={M: frozenset({SHA})},
    slots=1,
    free_slots=1,
    wait_s=0.0,
    service_s={M: 0.01},
    rtt_s=0.002,
    bandwidth_bps=1e8,
)


def test_a_steal_ask_carries_its_number_and_older_ones_none() -> None:
    assert parse_steal_ask([replace(ASK, ask=12).to_wire()]).ask == 12
    assert "ask" not in ASK.to_wire()
    assert parse_steal_ask([ASK.to_wire()]).ask is None
    with pytest.raises(BadRequest, match="steal ask: ask must be an integer"):
        parse_steal_ask([{**ASK.to_wire(), "ask": -3}])


def test_a_handoff_may_carry_the_thiefs_ask_number() -> None:
    assert parse_handoff(["id-a", 7, 1, "c", 5.0, 4]).ask == 4
    assert parse_handoff(["id-a", 7, 1, "c", 5.0]).ask is None
    with pytest.raises(BadRequest, match="handoff: ask must be an integer"):
        parse_handoff(["id-a", 7, 1, "c", 5.0, "4"])
    with pytest.raises(BadRequest, match="handoff takes 5 parameters, got 7"):
        parse_handoff(["id-a", 7, 1, "c", 5.0, 4, 4])

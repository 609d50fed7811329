"""The scheduling rules, driven against each other in memory with an explicit clock.

In the spirit of Dask's ``test_steal.py``: each rule of work stealing is a
small table of cases (move from the larger queue, give to the idler node,
don't over-balance, never steal a running request, no ping-pong), then a
few discrete-event simulations of whole meshes check what the rules add up
to: every node gets its speed-weighted share, and every request is answered
exactly once, peers dying or not.

The tests play the node's part themselves: a :class:`Steal` becomes
``victim.grant`` then ``thief.granted`` with copies of the jobs (as the wire
would make them), a :class:`SendResult` becomes ``owner.result``, and so on.
Nothing here opens a socket, starts an event loop or reads a clock.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pytest

from mesh.core.scheduling.jobs import (
    Abort,
    Action,
    Cancel,
    Handoff,
    Job,
    JobKey,
    Nudge,
    PeerLoad,
    Reply,
    RunLocal,
    SchedulerConfig,
    SendResult,
    Steal,
    StealAsk,
)
from mesh.core.scheduling.scheduler import Scheduler
from mesh.errors import ConfigError, DeadlineExceeded, MeshError, ModelNotFound

M = "digits-small"  # the model every node holds
BIG = "cnn-heavy"  # a model only some hold
SHA = "ab" * 32
SERVICE = 0.01  # seconds per request on a speed-1 device
RTT = 0.002  # the scheduler's rtt estimate before it has measured one

A = TypeVar("A")


# --- nodes, and the node's part played by hand -----------------------------------------------


def node(
    name: str,
    *,
    slots: int = 1,
    models: Sequence[str] = (M,),
    service: float = SERVICE,
    seed: int = 0,
    **config: Any,
) -> Scheduler[int]:
    """A scheduler called ``name`` whose warm-up measured ``service`` for each model.

    Alone, a node hands the runtime ``solo_depth`` calls at once; these tests
    are about queues, so by default a lone node keeps to its slots as well.
    """
    config.setdefault("solo_depth", slots)
    s: Scheduler[int] = Scheduler(
        node_id=f"id-{name}",
        name=name,
        models=dict.fromkeys(models, frozenset({SHA})),
        config=SchedulerConfig(slots=slots, **config),
        rng=random.Random(seed),
    )
    for model in models:
        s.observe_service(model, service)
    return s


def pair(**config: Any) -> tuple[Scheduler[int], Scheduler[int]]:
    """Two idle nodes, ``a`` and ``b``, that know each other from gossip."""
    a, b = node("a", **config), node("b", **config)
    gossip(a, b)
    gossip(b, a)
    return a, b


def load(queued_s: float = 0.0, free_slots: int = 1, models: Sequence[str] = (M,)) -> PeerLoad:
    """A peer's gossiped load, written by hand."""
    return PeerLoad(
        models=dict.fromkeys(models, frozenset({SHA})),
        service_s=dict.fromkeys(models, SERVICE),
        queued_s=queued_s,
        free_slots=free_slots,
    )


def foreign(seq: int, *, moves: int = 0, deadline: float | None = None) -> Job[int]:
    """Request ``seq`` of node ``a``, as a thief holds it after a steal."""
    return Job(
        key=("id-a", seq),
        owner="a",
        model=M,
        sha256=SHA,
        epoch=0,
        payload=seq,
        size_bytes=1000,
        deadline=deadline,
        moves=moves,
    )


def submit(
    s: Scheduler[int],
    count: int,
    *,
    now: float = 0.0,
    model: str = M,
    size: int = 1000,
    deadline: float | None = None,
) -> tuple[list[int], list[Action]]:
    """``count`` requests entering ``s``: their seqs, and every action they caused."""
    seqs: list[int] = []
    actions: list[Action] = []
    for _ in range(count):
        seq, more = s.submit(
            model=model,
            payload=len(seqs),
            size_bytes=size,
            deadline=deadline,
            request_id=None,
            now=now,
        )
        seqs.append(seq)
        actions += more
    return seqs, actions


def only(actions: Iterable[Action], kind: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


def kinds(actions: Iterable[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def started(actions: Iterable[Action]) -> list[tuple[int, int]]:
    """(seq, epoch) of each job a RunLocal starts, in order."""
    return [(r.job.key[1], r.job.epoch) for r in only(actions, RunLocal)]


def gossip(to: Scheduler[int], *peers: Scheduler[int], now: float = 0.0) -> list[Action]:
    """``to`` hears each of ``peers``' load, as membership passes it on."""
    actions: list[Action] = []
    for peer in peers:
        actions += to.peer_update(peer.name, peer.load_summary(now), now)
    return actions


def wire(jobs: Iterable[Job[int]]) -> list[Job[int]]:
    """The jobs as the thief parses them: copies, never the victim's own objects."""
    return [replace(job) for job in jobs]


def ask(thief: Scheduler[int], victim: str, now: float = 0.0) -> StealAsk:
    """The ask a hungry ``thief`` sends ``victim`` when nudged by it."""
    actions = thief.nudged(victim, now)
    assert len(actions) == 1 and isinstance(actions[0], Steal), actions
    return actions[0].ask


def steal(
    thief: Scheduler[int],
    victim: Scheduler[int],
    action: Steal,
    *,
    now: float = 0.0,
) -> tuple[list[Job[int]], list[Action], list[Action]]:
    """Carry one Steal over: the jobs granted, the victim's actions, the thief's actions."""
    assert action.victim == victim.name
    jobs, victim_actions = victim.grant(action.ask, now)
    thief_actions = thief.granted(
        victim.name,
        wire(jobs),
        victim.load_summary(now),
        took_s=RTT,
        reply_bytes=sum(j.size_bytes for j in jobs),
        now=now,
    )
    return jobs, victim_actions, thief_actions


def finish_running(s: Scheduler[int], running: list[Job[int]], now: float) -> list[Action]:
    """Every job in ``running`` ends at ``now``; those started meanwhile replace them."""
    actions: list[Action] = []
    while running:
        actions += s.finished(running.pop(0), took_s=SERVICE, now=now)
    running += [r.job for r in only(actions, RunLocal)]
    return actions


def run_all(s: Scheduler[int], running: list[Job[int]], *, start: float) -> list[Action]:
    """``s`` runs all it has, one SERVICE per round from ``start``: every action on the way."""
    actions: list[Action] = []
    for round_ in range(1000):
        if not running:
            return actions
        actions += finish_running(s, running, start + round_ * SERVICE)
    raise AssertionError("still running after 1000 rounds")


@dataclass
class Stolen:
    """a owns 4 requests: it runs 1 and queues 2; b took 4 and 3, and runs 4."""

    a: Scheduler[int]
    b: Scheduler[int]
    a_running: list[Job[int]]
    b_running: list[Job[int]]


def stolen(**config: Any) -> Stolen:
    a, b = pair(**config)
    _, submitted = submit(a, 4)
    jobs, _, thief_actions = steal(b, a, only(gossip(b, a), Steal)[0])
    assert [j.key[1] for j in jobs] == [4, 3]  # newest first
    return Stolen(
        a,
        b,
        [r.job for r in only(submitted, RunLocal)],
        [r.job for r in only(thief_actions, RunLocal)],
    )


# --- victim choice: the larger queue ------------------------------------------------------------

LARGER: dict[str, tuple[dict[str, float], Counter[str]]] = {
    "first is larger": ({"v1": 0.5, "v2": 0.1}, Counter(v1=20)),
    "second is larger": ({"v1": 0.1, "v2": 0.5}, Counter(v2=20)),
    "a peer with nothing queued is no candidate": ({"v1": 0.0, "v2": 0.2}, Counter(v2=20)),
    # Two sampled of three: the smallest never wins, the largest whenever sampled.
    "of three, never the smallest": ({"v1": 0.3, "v2": 0.2, "v3": 0.1}, Counter(v1=12, v2=8)),
}


@pytest.mark.parametrize(("loads", "chosen"), LARGER.values(), ids=LARGER.keys())
def test_steal_from_the_larger_queue(loads: dict[str, float], chosen: Counter[str]) -> None:
    """Power of two choices on gossiped load, over 20 seeds."""
    victims: Counter[str] = Counter()
    for seed in range(20):
        thief = node("t", seed=seed)
        _, first = submit(thief, 1)  # busy: it hears the gossip without stealing
        running = [r.job for r in only(first, RunLocal)]
        for name, queued_s in loads.items():
            assert thief.peer_update(name, load(queued_s, free_slots=0), 0.0) == []
        (action,) = only(finish_running(thief, running, now=0.01), Steal)
        victims[action.victim] += 1
    assert victims == chosen


# --- who gets the work: the idler node ----------------------------------------------------------

NUDGED: dict[str, tuple[dict[str, PeerLoad], list[str]]] = {
    "the idle one, not the busy one": ({"idle": load(), "busy": load(free_slots=0)}, ["idle"]),
    "not one with a queue of its own": ({"idle": load(), "queued": load(0.05)}, ["idle"]),
    "not one without the model": ({"idle": load(), "other": load(models=[BIG])}, ["idle"]),
    "every idle holder": ({"x": load(), "y": load()}, ["x", "y"]),
    "nobody idle": ({"x": load(free_slots=0), "y": load(0.1, free_slots=0)}, []),
}


@pytest.mark.parametrize(("peers", "nudged"), NUDGED.values(), ids=NUDGED.keys())
def test_queued_work_nudges_idle_holders(peers: dict[str, PeerLoad], nudged: list[str]) -> None:
    a = node("a")
    for name, peer in peers.items():
        a.peer_update(name, peer, 0.0)
    _, actions = submit(a, 5)
    assert kinds(actions) == ["RunLocal"] + ["Nudge"] * len(nudged)
    assert [n.peer for n in only(actions, Nudge)] == nudged
    # Not again within nudge_interval_s (20 ms); again after it.
    assert only(submit(a, 1, now=0.01)[1], Nudge) == []
    assert [n.peer for n in only(submit(a, 1, now=0.02)[1], Nudge)] == nudged


# The thief's own work ahead, in seconds -> jobs it is given of the victim's 9 queued.
IDLER = {"idle": (0.0, 5), "a little busy": (0.03, 3), "busy": (0.05, 2), "busier": (0.1, 0)}


@pytest.mark.parametrize(("wait_s", "given"), IDLER.values(), ids=IDLER.keys())
def test_the_idler_thief_is_given_more(wait_s: float, given: int) -> None:
    a, b = pair()
    submit(a, 10)
    jobs, _ = a.grant(replace(ask(b, "a"), wait_s=wait_s), 0.0)
    assert len(jobs) == given


def test_of_two_thieves_the_idle_one_gets_the_work() -> None:
    a, b, c = node("a"), node("b"), node("c")
    gossip(a, b)
    a.peer_update("c", load(0.2, free_slots=0), 0.0)  # c's gossip: 0.2 s of its own work
    gossip(b, a)
    gossip(c, a)
    submit(a, 10)
    assert a.grant(replace(ask(c, "a"), wait_s=0.2), 0.0) == ([], [])
    jobs, _ = a.grant(ask(b, "a"), 0.0)
    assert len(jobs) == 5  # b and a split the queue; c is no help


# --- how much moves: don't over-balance, speed-weighted shares ----------------------------------

# Requests at the victim (one runs, the rest queue) -> jobs an idle equal thief takes.
HALF = {"1": (1, 0), "2": (2, 1), "3": (3, 1), "4": (4, 2), "11": (11, 5), "100": (100, 50)}


@pytest.mark.parametrize(("requests", "taken"), HALF.values(), ids=HALF.keys())
def test_dont_over_balance(requests: int, taken: int) -> None:
    a, b = pair()
    submit(a, requests)
    actions = gossip(b, a)
    if not taken:
        assert actions == []  # nothing queued at a: b does not even ask
        return
    (action,) = only(actions, Steal)
    jobs, _, _ = steal(b, a, action)
    assert len(jobs) == taken
    # Each has about half, counting the one a is running...
    assert abs((a.queued() + a.running()) - (b.queued() + b.running())) <= 1
    # ...and b, busy now, asks for nothing more.
    assert only(gossip(b, a), Steal) == []


def test_two_thieves_take_a_third_each() -> None:
    a, b, c = node("a"), node("b"), node("c")
    gossip(a, b, c)
    submit(a, 91)  # 1 runs, 90 queue
    # a knows c is idle too, so b's share counts c as a helper (water-filling).
    jobs, _, _ = steal(b, a, only(gossip(b, a), Steal)[0])
    assert len(jobs) == 30
    (second,) = only(gossip(c, a, b), Steal)
    assert second.victim == "a"  # the larger queue
    jobs, _, _ = steal(c, a, second)
    assert len(jobs) == 30
    assert [x.queued() + x.running() for x in (a, b, c)] == [31, 30, 30]


# (victim's service time, thief's) -> the thief's part of the victim's 99 queued jobs.
SPEEDS = {
    "thief 3x faster": (0.03, 0.01, 3 / 4),
    "thief 2x faster": (0.03, 0.015, 2 / 3),
    "equal": (0.01, 0.01, 1 / 2),
    "thief 3x slower": (0.01, 0.03, 1 / 4),
}


@pytest.mark.parametrize(("victim_s", "thief_s", "part"), SPEEDS.values(), ids=SPEEDS.keys())
def test_speed_weighted_shares(victim_s: float, thief_s: float, part: float) -> None:
    a, b = node("a", service=victim_s), node("b", service=thief_s)
    gossip(a, b)
    submit(a, 100)
    jobs, _, _ = steal(b, a, only(gossip(b, a), Steal)[0])
    assert abs(len(jobs) - part * 99) <= 1


# (bytes per request, link bandwidth, service time) -> jobs moved of the victim's 99 queued.
TRANSFER = {
    "10 MB, slow link, cheap compute: stays": (10_000_000, 1e6, 0.001, 0),
    "100 kB, slow link, cheap compute: stays": (100_000, 1e6, 0.001, 0),
    "1 kB, fast link, cheap compute: about half": (1_000, 50e6, 0.001, 48),
    # 10 s to send but 100 s of work queued: it moves, one (max_grant_bytes caps it).
    "10 MB, slow link, costly compute: one moves": (10_000_000, 1e6, 1.0, 1),
}


@pytest.mark.parametrize(
    ("size", "bandwidth", "service", "moved"), TRANSFER.values(), ids=TRANSFER.keys()
)
def test_expensive_transfer_and_cheap_compute_is_not_stolen(
    size: int, bandwidth: float, service: float, moved: int
) -> None:
    a, b = node("a", service=service), node("b", service=service)
    gossip(a, b)
    submit(a, 100, size=size)
    jobs, actions = a.grant(replace(ask(b, "a"), bandwidth_bps=bandwidth), 0.0)
    assert len(jobs) == moved
    if not moved:
        assert actions == [] and a.queued() == 99


# --- what moves: never a running request --------------------------------------------------------

# (slots, requests) at the victim -> jobs an idle thief is granted; min(slots, requests) run.
RUNNING = {
    "1 slot, 1 running": (1, 1, 0),
    "2 slots, both running": (2, 2, 0),
    "2 slots, 2 running, 3 queued": (2, 5, 1),
    "4 slots, 4 running, 8 queued": (4, 12, 2),
}


@pytest.mark.parametrize(("slots", "requests", "granted"), RUNNING.values(), ids=RUNNING.keys())
def test_never_steal_a_running_request(slots: int, requests: int, granted: int) -> None:
    a, b = node("a", slots=slots), node("b")
    gossip(a, b)
    _, actions = submit(a, requests)
    running = {r.job.key for r in only(actions, RunLocal)}
    assert len(running) == min(slots, requests)
    jobs, _ = a.grant(ask(b, "a"), 0.0)
    assert len(jobs) == granted
    assert running.isdisjoint(j.key for j in jobs)
    assert a.running() == len(running)  # all still running here


# --- no ping-pong -------------------------------------------------------------------------------

# b runs a request from 0 to 10 ms and queues another. At `now` an idle a asks:
# b would finish the queued one at 20 ms, a at now + RTT + 10 ms; a move must
# gain at least half a's service time, 5 ms.
HYSTERESIS = {
    "gain of 8 ms: moves": (0.0, 1),
    "gain of 6 ms: moves": (0.002, 1),
    "gain of 4 ms, under the margin: stays": (0.004, 0),
    "no gain: stays": (0.009, 0),
}


@pytest.mark.parametrize(("now", "moved"), HYSTERESIS.values(), ids=HYSTERESIS.keys())
def test_a_small_gain_moves_nothing(now: float, moved: int) -> None:
    a, b = pair()
    submit(b, 2)
    jobs, _ = b.grant(ask(a, "b", now), now)
    assert len(jobs) == moved


# Hysteresis -> whether a request b stole comes back when a, its victim, goes idle.
COME_BACK = {
    "default hysteresis: stays": ({}, 0),
    "no hysteresis: comes back": ({"gain_fraction": 0.0, "min_gain_s": 1e-9}, 1),
}


@pytest.mark.parametrize(("config", "back"), COME_BACK.values(), ids=COME_BACK.keys())
def test_a_moved_job_does_not_come_back(config: dict[str, float], back: int) -> None:
    m = stolen(**config)
    assert len(m.b_running) == 1  # b runs 4; 3 waits behind it
    # a's clients for 1 and 2 go away at 6 ms: a is idle; b has 4 ms to go, then 3.
    idle = m.a.cancel(1, 0.006) + m.a.cancel(2, 0.006)
    (back_steal,) = only(idle, Steal)
    returned, _, _ = steal(m.a, m.b, back_steal, now=0.006)
    assert len(returned) == back


def test_a_job_that_comes_home_is_answered_when_it_runs() -> None:
    """An owner that steals its own request back answers it when it has run it."""
    m = stolen(gain_fraction=0.0, min_gain_s=1e-9)
    idle = m.a.cancel(1, 0.006) + m.a.cancel(2, 0.006)
    returned, victim_actions, thief_actions = steal(m.a, m.b, only(idle, Steal)[0], now=0.006)
    assert [j.key for j in returned] == [("id-a", 3)]
    # b tells the owner where its request went: to the owner itself.
    (handoff,) = only(victim_actions, Handoff)
    assert (handoff.owner, handoff.seq, handoff.holder) == ("a", 3, "a")
    m.a.handoff(handoff.seq, handoff.epoch, handoff.holder, handoff.lease_s, 0.006)
    (run,) = only(thief_actions, RunLocal)
    assert m.a.finished(run.job, took_s=SERVICE, now=0.016)[:1] == [Reply(3)]
    assert m.a.counters["late_dropped"] == 0
    # b's run of 4 still answers 4; nothing is answered twice.
    assert m.a.result(4, 0, 0.02) == [Reply(4)]
    assert m.a.owned() == 0


# (moves a job has made, max_moves) -> whether it may move again.
MAX_MOVES = {
    "fresh, max 2": (0, 2, True),
    "moved once, max 2": (1, 2, True),
    "moved twice, max 2": (2, 2, False),
    "fresh, max 0": (0, 0, False),
    "moved once, max 1": (1, 1, False),
}


@pytest.mark.parametrize(("moves", "max_moves", "again"), MAX_MOVES.values(), ids=MAX_MOVES.keys())
def test_a_job_moves_at_most_max_moves_times(moves: int, max_moves: int, again: bool) -> None:
    b, c = node("b", max_moves=max_moves), node("c", max_moves=max_moves)
    gossip(b, c)
    held = [foreign(seq, moves=moves) for seq in (1, 2, 3)]  # b runs 1; 2 and 3 queue
    b.granted("a", held, None, took_s=None, reply_bytes=0, now=0.0)
    jobs, actions = b.grant(ask(c, "b"), 0.0)
    assert [(j.key[1], j.moves) for j in jobs] == ([(3, moves + 1)] if again else [])
    assert [(h.owner, h.seq, h.holder) for h in only(actions, Handoff)] == (
        [("a", 3, "c")] if again else []
    )


def test_a_chain_of_steals_stops_at_max_moves() -> None:
    a, b, c, d = (node(n) for n in "abcd")
    gossip(a, b)
    gossip(b, c)
    gossip(c, d)
    submit(a, 40)
    hops = []
    for thief, victim in ((b, a), (c, b), (d, c)):
        jobs, _, _ = steal(thief, victim, Steal(victim.name, ask(thief, victim.name)))
        hops.append((len(jobs), {j.moves for j in jobs}))
    # b takes a share of a's, c a share of b's, d nothing: all c holds moved twice.
    assert hops[0][1] == {1} and hops[1][1] == {2}
    assert hops[0][0] > hops[1][0] > 0 and hops[2] == (0, set())


def test_balanced_queues_move_nothing() -> None:
    a, b = pair()
    submit(a, 10)
    submit(b, 10)
    assert only(gossip(a, b) + gossip(b, a), Steal) == []  # neither is hungry
    # Asked by a peer as loaded as itself, a gives nothing.
    equal = replace(ask(node("c"), "a"), thief="b", wait_s=b.wait_s(0.0))
    assert a.grant(equal, 0.0) == ([], [])
    assert a.counters["stolen_out"] == 0


IDLE_PEERS: dict[str, dict[str, PeerLoad]] = {
    "all idle": {"x": load(), "y": load()},
    "busy, nothing queued": {"x": load(free_slots=0), "y": load(free_slots=0)},
    "no peers": {},
}


@pytest.mark.parametrize("peers", IDLE_PEERS.values(), ids=IDLE_PEERS.keys())
def test_a_hungry_node_with_no_loaded_peer_does_not_steal(peers: dict[str, PeerLoad]) -> None:
    a = node("a")
    for name, peer in peers.items():
        assert a.peer_update(name, peer, 0.0) == []
    assert a.tick(1.0) == []
    assert a.counters["steal_requests"] == 0


def test_an_empty_grant_backs_off_until_the_victim_has_work_again() -> None:
    a = node("a")
    # x has work queued, but for a model a lacks: a asks once and hears nothing.
    (action,) = a.peer_update("x", load(0.5, models=[BIG]), 0.0)
    assert isinstance(action, Steal)
    assert a.granted("x", [], load(0.5, models=[BIG]), took_s=RTT, reply_bytes=0, now=0.0) == []
    assert a.next_deadline() == 0.05  # steal_backoff_s
    assert a.tick(0.049) == []
    assert kinds(a.tick(0.05)) == ["Steal"]


# --- ownership: thieves that die, late and duplicate results, leases -----------------------------


def test_a_dead_thiefs_requests_are_requeued_with_a_new_epoch_and_run() -> None:
    m = stolen()
    assert m.a.queued() == 1
    assert m.a.peer_lost("b", 0.005) == []  # a is still busy with 1
    assert m.a.counters["requeued"] == 2 and m.a.queued() == 3
    actions = run_all(m.a, m.a_running, start=0.01)
    # Taken back to the front of the queue under epoch 1; 2 never left.
    assert started(actions) == [(4, 1), (3, 1), (2, 0)]
    assert sorted(r.seq for r in only(actions, Reply)) == [1, 2, 3, 4]
    assert m.a.owned() == 0
    # b's result for 4, epoch 0, comes too late: dropped.
    assert m.a.result(4, 0, 0.05) == []
    assert m.a.counters["late_dropped"] == 1


def test_a_dead_thiefs_requests_can_be_stolen_again() -> None:
    m = stolen()
    c = node("c", service=SERVICE / 10)  # fast enough to take all three
    m.a.peer_lost("b", 0.005)
    jobs, _, _ = steal(c, m.a, only(gossip(c, m.a, now=0.005), Steal)[0], now=0.005)
    # Newest first; the two taken back are old work, so they go last.
    assert [(j.key[1], j.epoch) for j in jobs] == [(2, 0), (3, 1), (4, 1)]
    # c's epoch-1 result answers 3; b's epoch-0 one, arriving after, is dropped.
    assert m.a.result(3, 1, 0.02) == [Reply(3)]
    assert m.a.result(3, 0, 0.03) == []


# Results reaching a in this order: (seq, epoch) -> the replies, and how many dropped.
RESULTS: dict[str, tuple[list[tuple[int, int]], list[Reply], int]] = {
    "current epoch": ([(4, 0)], [Reply(4)], 0),
    "duplicate after the answer": ([(4, 0), (4, 0)], [Reply(4)], 1),
    "an epoch never given out, then the current": ([(4, 1), (4, 0)], [Reply(4)], 1),
    "unknown seq": ([(99, 0)], [], 1),
    "a request the owner has queued itself": ([(2, 0)], [], 1),
}


@pytest.mark.parametrize(("results", "replies", "dropped"), RESULTS.values(), ids=RESULTS.keys())
def test_results_are_answered_exactly_once(
    results: list[tuple[int, int]], replies: list[Reply], dropped: int
) -> None:
    m = stolen()
    got: list[Action] = []
    for seq, epoch in results:
        got += m.a.result(seq, epoch, 0.01)
    assert got == replies
    assert m.a.counters["late_dropped"] == dropped


def test_a_result_of_an_epoch_taken_back_is_dropped() -> None:
    m = stolen()
    m.a.peer_lost("b", 0.005)
    assert m.a.result(4, 0, 0.006) == []
    assert m.a.counters["late_dropped"] == 1
    assert m.a.holds(4)  # still owned: epoch 1 will answer it


def test_an_expired_lease_takes_the_request_back() -> None:
    m = stolen()
    run_all(m.a, m.a_running, start=0.01)  # a answers 1 and 2, then waits on b
    assert m.a.owned() == 2
    # A lease is 5 s + 3 times b's estimated finish: RTT + bytes sent + runs before it.
    lease_4 = 5.0 + 3 * (RTT + 1000 / 50e6 + SERVICE)
    lease_3 = 5.0 + 3 * (RTT + 2000 / 50e6 + 2 * SERVICE)
    assert m.a.next_deadline() == pytest.approx(lease_4)
    assert m.a.tick(lease_4 - 1e-6) == []
    actions = m.a.tick(lease_4)
    assert actions[0] == Cancel("b", ("id-a", 4))
    assert started(actions) == [(4, 1)]  # a is idle: it runs it at once
    assert m.a.next_deadline() == pytest.approx(lease_3)
    assert m.a.tick(lease_3) == [Cancel("b", ("id-a", 3))]  # queued behind 4
    assert m.a.counters["requeued"] == 2
    # b's late result is dropped; b drops what the Cancels name, running or not.
    assert m.a.result(4, 0, lease_3) == []
    aborted = m.b.cancel_foreign(("id-a", 4), lease_3)
    assert aborted[0] == Abort(m.b_running[0]) and started(aborted) == [(3, 0)]
    assert kinds(m.b.cancel_foreign(("id-a", 3), lease_3))[:1] == ["Abort"]
    assert m.b.running() == 0 and m.b.queued() == 0


def test_only_the_holder_answers_or_hands_on_and_only_the_owner_cancels() -> None:
    """Issue 19: the edge passes the name its connection's handshake gave."""
    m = stolen()
    assert m.a.result(4, 0, 0.01, sender="c") == []  # b holds 4, not c
    m.a.handoff(4, 0, "c", 1.0, 0.01, sender="c")  # c cannot take b's request
    assert m.a.result(4, 0, 0.01, sender="c") == []
    assert m.a.holds(4)
    assert m.b.cancel_foreign(("id-a", 4), 0.01, sender="c") == []  # a owns it, not c
    assert m.b.running() + m.b.queued() == 2
    assert m.a.result(4, 0, 0.01, sender="b") == [Reply(4)]


def test_a_handoff_moves_the_lease_to_the_new_holder() -> None:
    m = stolen()
    c = node("c")
    # c steals from b what b has queued (3); b tells a.
    jobs, victim_actions, _ = steal(c, m.b, only(gossip(c, m.b), Steal)[0])
    assert [(j.key, j.moves) for j in jobs] == [(("id-a", 3), 2)]
    (h,) = only(victim_actions, Handoff)
    assert (h.owner, h.owner_id, h.seq, h.epoch, h.holder) == ("a", "id-a", 3, 0, "c")
    m.a.handoff(h.seq, h.epoch, h.holder, h.lease_s, 0.0)
    # Now b dying takes back only 4, and c dying takes back 3.
    m.a.peer_lost("b", 0.001)
    assert m.a.counters["requeued"] == 1
    m.a.peer_lost("c", 0.002)
    assert m.a.counters["requeued"] == 2
    # A handoff of an epoch taken back changes nothing.
    m.a.handoff(3, 0, "d", 1.0, 0.003)
    m.a.peer_lost("d", 0.004)
    assert m.a.counters["requeued"] == 2


# --- deadlines and cancellation -----------------------------------------------------------------


def test_a_queued_request_past_its_deadline_is_answered_and_never_runs() -> None:
    a = node("a")
    _, first = submit(a, 1)
    (late,), _ = submit(a, 1, deadline=0.005)
    assert a.next_deadline() == 0.005
    assert a.tick(0.004) == []
    (reply,) = a.tick(0.005)
    assert isinstance(reply, Reply) and reply.seq == late
    assert isinstance(reply.error, DeadlineExceeded)
    assert "missed its deadline of 5 ms (queued when it passed)" in reply.error.message
    after = run_all(a, [r.job for r in only(first, RunLocal)], start=0.01)
    assert started(after) == [] and only(after, Reply) == [Reply(1)]
    assert a.counters["expired"] == 1 and a.owned() == 0


def test_a_request_past_its_deadline_never_starts_even_before_the_tick() -> None:
    """A slot frees after the deadline but before the node's timer has fired."""
    a = node("a")
    _, first = submit(a, 1)
    (late,), _ = submit(a, 1, deadline=0.005)
    (run,) = only(first, RunLocal)
    actions = a.finished(run.job, took_s=SERVICE, now=0.01)
    assert started(actions) == []
    assert [r.seq for r in only(actions, Reply)] == [1, late]
    assert isinstance(only(actions, Reply)[1].error, DeadlineExceeded)
    assert a.tick(0.01) == [] and a.owned() == 0


def test_requests_past_their_deadline_are_answered_wherever_they_are() -> None:
    a, b = pair()
    submit(a, 4, deadline=0.05)
    steal(b, a, only(gossip(b, a), Steal)[0])
    actions = a.tick(0.05)
    replies = sorted(only(actions, Reply), key=lambda r: r.seq)
    assert [r.seq for r in replies] == [1, 2, 3, 4]
    where = [r.error.message.rsplit("(", 1)[1] for r in replies if r.error is not None]
    assert where == [
        "running when it passed)",
        "queued when it passed)",
        "held by b when it passed)",
        "held by b when it passed)",
    ]
    assert sorted(c.key[1] for c in only(actions, Cancel)) == [3, 4]
    assert [x.job.key[1] for x in only(actions, Abort)] == [1]


def test_a_foreign_job_past_its_deadline_is_dropped_at_the_thief() -> None:
    b = node("b")
    held = [foreign(seq, deadline=0.05) for seq in (1, 2, 3)]
    (run,) = only(b.granted("a", held, None, took_s=None, reply_bytes=0, now=0.0), RunLocal)
    assert b.tick(0.05) == []  # 2 and 3 go, sending nothing; 1 runs on
    assert b.queued() == 0 and b.counters["expired"] == 2
    # The owner decides what a late result is worth.
    assert kinds(b.finished(run.job, took_s=SERVICE, now=0.06)) == ["SendResult"]


def test_a_request_past_its_deadline_is_not_granted() -> None:
    a, b = pair()
    submit(a, 3, deadline=0.05)
    assert a.grant(ask(b, "a", 0.05), 0.05) == ([], [])


def test_a_cancelled_queued_request_never_runs() -> None:
    a = node("a")
    _, first = submit(a, 3)
    assert a.cancel(2, 0.001) == []
    assert a.cancel(2, 0.002) == []  # twice: nothing more
    after = run_all(a, [r.job for r in only(first, RunLocal)], start=0.01)
    assert started(after) == [(3, 0)]
    assert only(after, Reply) == [Reply(1), Reply(3)]
    assert a.counters["cancelled"] == 1


def test_a_cancelled_running_request_is_aborted() -> None:
    a = node("a")
    _, first = submit(a, 2)
    (run,) = only(first, RunLocal)
    actions = a.cancel(1, 0.001)
    assert actions[0] == Abort(run.job) and started(actions) == [(2, 0)]
    # The abort raced with the end of the run: nothing is answered.
    assert a.finished(run.job, took_s=SERVICE, now=0.002) == []


def test_a_cancelled_request_held_by_a_thief_is_cancelled_there() -> None:
    m = stolen()
    assert m.a.cancel(3, 0.001) == [Cancel("b", ("id-a", 3))]
    assert m.b.cancel_foreign(("id-a", 3), 0.002) == []  # it was queued at b: it goes
    assert m.b.queued() == 0 and m.b.running() == 1
    assert m.a.result(3, 0, 0.02) == [] and m.a.counters["late_dropped"] == 1


# --- models: where a request can run at all -----------------------------------------------------


def test_a_request_for_a_model_only_a_peer_holds_waits_for_it_and_nudges_it() -> None:
    a, b = node("a"), node("b", models=[BIG])
    gossip(a, b)
    gossip(b, a)
    (seq,), actions = submit(a, 1, model=BIG)
    assert actions == [Nudge("b")]  # nothing runs at a
    assert a.queued() == 1 and a.running() == 0
    (action,) = b.nudged("a", 0.0)
    assert isinstance(action, Steal) and action.victim == "a"
    jobs, _, thief_actions = steal(b, a, action)
    assert [j.key for j in jobs] == [("id-a", seq)]
    assert jobs[0].sha256 is None  # a does not hold it: any holder of the name will do
    (run,) = only(thief_actions, RunLocal)
    (sent,) = only(b.finished(run.job, took_s=SERVICE, now=0.01), SendResult)
    assert sent.job.owner == "a"
    assert a.result(seq, sent.job.epoch, 0.011) == [Reply(seq)]


def test_a_request_for_a_model_nobody_holds_is_refused() -> None:
    a, b = node("a"), node("b", models=[BIG])
    gossip(a, b)
    with pytest.raises(ModelNotFound) as caught:
        a.submit(model="nope", payload=0, size_bytes=1, deadline=None, request_id=None, now=0.0)
    assert caught.value.message == (
        "no node in the mesh serves model 'nope'; available models: 'cnn-heavy', 'digits-small'"
    )
    assert a.owned() == 0


# steal -> what a request for a model only a peer holds gets (None: ModelNotFound).
NO_STEAL = {"stealing": (True, ["Nudge"]), "not stealing": (False, None)}


@pytest.mark.parametrize(("steal_on", "remote"), NO_STEAL.values(), ids=NO_STEAL.keys())
def test_without_stealing_only_local_models_are_served(
    steal_on: bool, remote: list[str] | None
) -> None:
    a = node("a", steal=steal_on)
    a.peer_update("b", load(models=[BIG]), 0.0)
    assert kinds(submit(a, 1)[1]) == ["RunLocal"]  # a local model runs either way
    if remote is None:
        with pytest.raises(ModelNotFound):
            submit(a, 1, model=BIG)
    else:
        assert kinds(submit(a, 1, model=BIG)[1]) == remote


def test_a_peer_that_dies_with_the_only_copy_fails_what_waits_for_it() -> None:
    a, b = node("a", max_grant_jobs=2), node("b", models=[BIG])
    gossip(a, b)
    seqs, _ = submit(a, 3, model=BIG)
    jobs, _, _ = steal(b, a, Steal("a", ask(b, "a")))
    assert len(jobs) == 2  # one waits at a, two at b
    (own,), _ = submit(a, 1)  # for a model a holds: unaffected
    replies = only(a.peer_lost("b", 0.001), Reply)
    assert sorted(r.seq for r in replies) == seqs
    assert all(isinstance(r.error, ModelNotFound) for r in replies)
    assert a.counters["failed"] == 3 and a.owned() == 1 and a.holds(own)


def test_a_peer_that_dies_with_one_of_two_copies_fails_nothing() -> None:
    a, b, c = node("a"), node("b", models=[BIG]), node("c", models=[BIG])
    gossip(a, b, c)
    submit(a, 3, model=BIG)
    jobs, _, _ = steal(b, a, Steal("a", ask(b, "a")))
    assert jobs
    assert only(a.peer_lost("b", 0.001), Reply) == []
    assert a.queued() == 3  # all back at a, for c to take


# --- configuration ------------------------------------------------------------------------------

BAD_CONFIG = {
    "no slots": {"slots": 0},
    "negative moves": {"max_moves": -1},
    "zero service": {"default_service_s": 0.0},
    "zero rtt": {"default_rtt_s": 0.0},
    "negative bandwidth": {"default_bandwidth_bps": -1.0},
}


@pytest.mark.parametrize("config", BAD_CONFIG.values(), ids=BAD_CONFIG.keys())
def test_bad_config_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(config))):
        SchedulerConfig(**config)


# --- a small discrete-event mesh ----------------------------------------------------------------

Handler = Callable[[Scheduler[int]], list[Action]]


@dataclass
class Mesh:
    """Schedulers wired to each other by messages that take ``latency_s``.

    A node of speed ``f`` runs a request in ``SERVICE / f`` seconds; gossip
    carries every node's load to every other every ``gossip_s``; a dead
    node's messages go nowhere, and the others learn of its death
    ``detect_s`` later. Only the events' clock moves: a run is deterministic.
    """

    speeds: dict[str, float]
    latency_s: float = 0.0005
    gossip_s: float = 0.05
    detect_s: float = 0.1
    now: float = 0.0
    nodes: dict[str, Scheduler[int]] = field(init=False)
    dead: set[str] = field(default_factory=set)
    submitted: list[tuple[str, int]] = field(default_factory=list)
    replies: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: dict[tuple[str, int], MeshError] = field(default_factory=dict)
    ran: Counter[str] = field(default_factory=Counter)  # runs completed, per node
    moves: Counter[JobKey] = field(default_factory=Counter)  # grants, per request
    _events: list[tuple[float, int, str, Callable[[], None]]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _running: set[tuple[str, JobKey, int]] = field(default_factory=set)
    _arrivals: int = 0  # submissions scheduled, not made yet

    def __post_init__(self) -> None:
        self.nodes = {
            name: node(name, service=SERVICE / speed, seed=i)
            for i, (name, speed) in enumerate(self.speeds.items())
        }
        self._gossip()

    # --- what a test does

    def submit(self, at: str, count: int = 1, *, when: float = 0.0) -> None:
        """``count`` requests entering ``at`` at ``when``."""
        self._arrivals += 1

        def arrive() -> None:
            self._arrivals -= 1
            seqs, actions = submit(self.nodes[at], count, now=self.now)
            self.submitted += [(at, seq) for seq in seqs]
            self.do(at, actions)

        self._at(when, at, arrive)

    def kill(self, name: str, when: float) -> None:
        """``name`` dies at ``when``; the others hear of it ``detect_s`` later."""

        def die() -> None:
            self.dead.add(name)
            for other in self.alive():
                self._at(self.now + self.detect_s, other, self._lost(other, name))

        self._at(when, name, die)

    def run(self, *, max_events: int = 100_000) -> None:
        """Until every request submitted is answered; bounded in events."""
        for _ in range(max_events):
            if not self._arrivals and all(self.replies[k] for k in self.submitted):
                return
            self._step()
        raise AssertionError(f"not settled after {max_events} events, at t={self.now:.3f}")

    def alive(self) -> list[str]:
        return [n for n in self.nodes if n not in self.dead]

    def counter(self, name: str) -> int:
        return sum(s.counters[name] for s in self.nodes.values())

    # --- the node's part

    def do(self, name: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, RunLocal):
                self._run(name, action.job)
            elif isinstance(action, Reply):
                self.replies[(name, action.seq)] += 1
                if action.error is not None:
                    self.errors[(name, action.seq)] = action.error
            elif isinstance(action, SendResult):
                self._send(action.job.owner, self._on_result(action.job))
            elif isinstance(action, Steal):
                self._send(action.victim, self._on_steal(name, action.ask), thief=name)
            elif isinstance(action, Nudge):
                self._send(action.peer, self._on_nudge(name))
            elif isinstance(action, Handoff):
                self._send(action.owner, self._on_handoff(action))
            elif isinstance(action, Cancel):
                self._send(action.holder, self._on_cancel(action.key))
            elif isinstance(action, Abort):
                self._running.discard((name, action.job.key, action.job.epoch))
            else:  # pragma: no cover - an action this harness does not know
                raise TypeError(f"unknown action {action!r}")

    # --- messages, as each is handled where it arrives

    def _on_steal(self, thief: str, ask: StealAsk) -> Handler:
        def handle(victim: Scheduler[int]) -> list[Action]:
            jobs, actions = victim.grant(ask, self.now)
            summary, copies = victim.load_summary(self.now), wire(jobs)
            self.moves.update(j.key for j in jobs)
            self._send(thief, self._on_grant(victim.name, copies, summary))
            return actions

        return handle

    def _on_grant(self, victim: str, jobs: list[Job[int]], summary: PeerLoad) -> Handler:
        def handle(thief: Scheduler[int]) -> list[Action]:
            size = sum(j.size_bytes for j in jobs)
            took = 2 * self.latency_s
            return thief.granted(victim, jobs, summary, took_s=took, reply_bytes=size, now=self.now)

        return handle

    def _on_result(self, job: Job[int]) -> Handler:
        return lambda owner: owner.result(job.key[1], job.epoch, self.now)

    def _on_nudge(self, by: str) -> Handler:
        return lambda peer: peer.nudged(by, self.now)

    def _on_cancel(self, key: JobKey) -> Handler:
        return lambda holder: holder.cancel_foreign(key, self.now)

    def _on_handoff(self, h: Handoff) -> Handler:
        def handle(owner: Scheduler[int]) -> list[Action]:
            owner.handoff(h.seq, h.epoch, h.holder, h.lease_s, self.now)
            return []

        return handle

    # --- the clock

    def _at(self, when: float, name: str, event: Callable[[], None]) -> None:
        """``event`` at ``when``, unless ``name`` is dead by then ("" is nobody)."""
        heapq.heappush(self._events, (when, next(self._order), name, event))

    def _send(self, to: str, handle: Handler, *, thief: str | None = None) -> None:
        """A message to ``to``; a steal sent to a dead victim fails at the thief."""

        def arrive() -> None:
            if to not in self.dead:
                self.do(to, handle(self.nodes[to]))
            elif thief is not None and thief not in self.dead:
                self.do(thief, self.nodes[thief].steal_failed(to, self.now))

        self._at(self.now + self.latency_s, "", arrive)

    def _run(self, name: str, job: Job[int]) -> None:
        token = (name, job.key, job.epoch)
        self._running.add(token)
        took = SERVICE / self.speeds[name]

        def done() -> None:
            if token in self._running:  # else aborted meanwhile
                self._running.discard(token)
                self.ran[name] += 1
                self.do(name, self.nodes[name].finished(job, took_s=took, now=self.now))

        self._at(self.now + took, name, done)

    def _lost(self, name: str, gone: str) -> Callable[[], None]:
        return lambda: self.do(name, self.nodes[name].peer_lost(gone, self.now))

    def _gossip(self) -> None:
        for a, b in itertools.permutations(self.alive(), 2):
            self.do(b, self.nodes[b].peer_update(a, self.nodes[a].load_summary(self.now), self.now))
        self._at(self.now + self.gossip_s, "", self._gossip)

    def _step(self) -> None:
        """The next event or the next scheduler timer, whichever comes first."""
        timers = [(s.next_deadline(), n) for n, s in self.nodes.items() if n not in self.dead]
        when, name = min(((w, n) for w, n in timers if w is not None), default=(1e9, ""))
        if self._events[0][0] < when:  # gossip is always ahead
            when, _, target, event = heapq.heappop(self._events)
            self.now = max(self.now, when)
            if target not in self.dead:
                event()
        else:
            self.now = max(self.now, when)
            self.do(name, self.nodes[name].tick(self.now))


# --- whole meshes, simulated --------------------------------------------------------------------


def test_a_burst_is_split_by_water_filling_in_one_round() -> None:
    """160 requests at one node, 15 idle peers known by gossip: each thief takes 1/16."""
    nodes = [node(f"n{i:02d}") for i in range(16)]
    for x in nodes:
        gossip(x, *(y for y in nodes if y is not x))
    hot = nodes[0]
    submit(hot, 160)  # 1 runs, 159 queue
    taken = []
    for thief in nodes[1:]:
        (action,) = only(gossip(thief, hot), Steal)
        jobs, _, _ = steal(thief, hot, action)
        taken.append(len(jobs))
    # Each share counts every other idle helper: not a half, then a quarter...
    assert taken == [10] * 15
    assert hot.queued() + hot.running() == 10


def test_a_burst_ends_evenly_spread() -> None:
    mesh = Mesh({f"n{i:02d}": 1.0 for i in range(16)})
    mesh.submit("n00", 160)
    mesh.run()
    assert all(abs(mesh.ran[n] - 10) <= 2 for n in mesh.nodes), mesh.ran
    assert mesh.now == pytest.approx(160 * SERVICE / 16, rel=0.1)  # the ideal makespan
    assert set(mesh.moves.values()) == {1}  # a request moves once, if at all
    assert mesh.replies == Counter(dict.fromkeys(mesh.submitted, 1))


TWICE = {f"{n}{i}": f for i in (0, 1) for n, f in zip("abcd", (1.0, 1.0, 2.0, 4.0), strict=True)}
# Node speeds -> requests in a burst at the first node.
MIXED = {
    "1,1,2,4": ({"a": 1.0, "b": 1.0, "c": 2.0, "d": 4.0}, 400),
    "4,2,1,1 (the fast one owns)": ({"a": 4.0, "b": 2.0, "c": 1.0, "d": 1.0}, 400),
    "1,1,2,4 twice": (TWICE, 800),
}


@pytest.mark.parametrize(("speeds", "requests"), MIXED.values(), ids=MIXED.keys())
def test_mixed_speeds_get_speed_weighted_shares(speeds: dict[str, float], requests: int) -> None:
    mesh = Mesh(speeds)
    mesh.submit(next(iter(speeds)), requests)
    mesh.run()
    total = sum(speeds.values())
    for name, speed in speeds.items():
        ideal = requests * speed / total
        assert abs(mesh.ran[name] - ideal) <= 0.1 * ideal, (name, mesh.ran)
    assert mesh.replies == Counter(dict.fromkeys(mesh.submitted, 1))
    assert not mesh.errors
    assert max(mesh.moves.values()) <= 2


def test_balanced_arrivals_cause_no_steals() -> None:
    """Round-robin arrivals at 70 % of capacity: every node keeps up on its own."""
    mesh = Mesh(dict.fromkeys("abcd", 1.0))
    gap = SERVICE / 0.7 / 4
    for i in range(200):
        mesh.submit("abcd"[i % 4], when=i * gap)
    mesh.run()
    assert mesh.counter("steal_requests") == 0 and not mesh.moves
    assert mesh.ran == Counter(dict.fromkeys("abcd", 50))


# (seed, how many peers die) -> every request answered exactly once, none lost.
DEATHS = {f"seed {seed}, {dying} dying": (seed, dying) for seed in range(4) for dying in (1, 3)}


@pytest.mark.parametrize(("seed", "dying"), DEATHS.values(), ids=DEATHS.keys())
def test_every_request_is_answered_exactly_once_as_peers_die(seed: int, dying: int) -> None:
    rng = random.Random(seed)
    mesh = Mesh({name: rng.choice([1.0, 2.0]) for name in "abcdefgh"}, detect_s=0.05)
    for _ in range(300):  # bursts and trickles into two owners, which live
        mesh.submit(rng.choice("ab"), rng.randint(1, 5), when=rng.uniform(0.0, 0.2))
    for name in rng.sample("cdefgh", dying):
        mesh.kill(name, when=rng.uniform(0.01, 0.3))
    mesh.run()
    assert mesh.replies == Counter(dict.fromkeys(mesh.submitted, 1))
    assert not mesh.errors
    assert len(mesh.submitted) > 600 and len(mesh.dead) == dying
    assert mesh.counter("requeued") > 0  # some died holding requests


def test_a_node_nobody_could_help_hands_the_runtime_more_at_once() -> None:
    alone = node("a", slots=2, solo_depth=8)
    runs = only(submit(alone, 10)[1], RunLocal)
    assert len(runs) == 8  # no peer could steal: the runtime gets a deep queue
    assert alone.queued() == 2
    helped = node("b", slots=2, solo_depth=8)
    gossip(helped, node("c"))
    assert len(only(submit(helped, 10)[1], RunLocal)) == 2  # the rest stays stealable


def test_calls_started_beyond_the_slots_do_not_count_as_service_time() -> None:
    alone = node("a", slots=1, solo_depth=4, service=0.01)
    jobs = [r.job for r in only(submit(alone, 4)[1], RunLocal)]
    # The last waited behind three others inside the runtime: 40 ms is not its speed.
    alone.finished(jobs[0], took_s=0.01, now=0.01)
    alone.finished(jobs[3], took_s=0.04, now=0.04)
    assert alone.service_s(M) == pytest.approx(0.01)

"""The stealing rules on their own: whom a thief asks, how it backs off, and
what a victim may hand over. The whole-mesh behaviour is in test_scheduler."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mesh.core.scheduling.jobs import Job, PeerLoad, SchedulerConfig, StealAsk
from mesh.core.scheduling.stealing import Peers, margin_s, movable, observe_link

M, BIG = "digits-small", "cnn-heavy"
SHA = "ab" * 32
CONFIG = SchedulerConfig()


def load(queued_s: float, models: tuple[str, ...] = (M,)) -> PeerLoad:
    return PeerLoad(
        models=dict.fromkeys(models, frozenset({SHA})),
        service_s=dict.fromkeys(models, 0.01),
        queued_s=queued_s,
        free_slots=0,
    )


def peers(loads: dict[str, float], seed: int = 0) -> Peers:
    table = Peers(CONFIG, random.Random(seed))
    for name, queued_s in loads.items():
        table.update(name, load(queued_s), 0.0)
    return table


# Gossiped queues -> how often each is asked, over 30 seeds (wait 0, jobs of 10 ms:
# a queue is worth asking below 0.002 rtt + 0.01 + 0.005 margin = 17 ms).
VICTIMS = {
    "the larger of two": ({"v1": 0.5, "v2": 0.1}, Counter(v1=30)),
    "a queue too short to be worth it": ({"v1": 0.016, "v2": 0.018}, Counter(v2=30)),
    "nobody worth asking": ({"v1": 0.0, "v2": 0.01}, Counter()),
    "of three, never the smallest": ({"v1": 0.3, "v2": 0.2, "v3": 0.1}, Counter(v1=20, v2=10)),
}


@pytest.mark.parametrize(("loads", "asked"), VICTIMS.values(), ids=VICTIMS.keys())
def test_power_of_two_choices(loads: dict[str, float], asked: Counter[str]) -> None:
    victims: Counter[str] = Counter()
    for seed in range(30):
        victim = peers(loads, seed).pick_victim(wait_s=0.0, service_s=0.01, now=0.0)
        if victim is not None:
            victims[victim] += 1
    assert victims == asked


def test_one_steal_at_a_time() -> None:
    table = peers({"v1": 0.5})
    steal = table.steal("v1", "t", load(0.0))
    assert (steal.victim, steal.ask.thief, steal.ask.rtt_s) == ("v1", "t", CONFIG.default_rtt_s)
    assert table.pick_victim(0.0, 0.01, 0.0) is None
    table.lost("v1")
    assert table.stealing_from is None


# Empty answers in a row -> the back-off after the last (steal_backoff_s = 50 ms).
BACKOFF = {"one": (1, 0.05), "two": (2, 0.1), "three": (3, 0.2), "capped at 16x": (9, 0.8)}


@pytest.mark.parametrize(("empties", "backoff_s"), BACKOFF.values(), ids=BACKOFF.keys())
def test_empty_answers_double_the_back_off(empties: int, backoff_s: float) -> None:
    table = peers({"v1": 0.5})
    until = None
    for _ in range(empties):
        until = table.answered("v1", 0, None, took_s=None, reply_bytes=0, now=1.0)
    assert until == pytest.approx(1.0 + backoff_s)
    assert table.pick_victim(0.0, 0.01, now=1.0) is None  # left alone meanwhile
    assert table.backoff_live("v1", until or 0.0)
    table.nudged("v1")  # it says it has work: the back-off is over
    assert not table.backoff_live("v1", until or 0.0)
    assert table.pick_victim(0.0, 0.01, now=1.0) == "v1"


def test_a_full_answer_resets_the_streak() -> None:
    table = peers({"v1": 0.5})
    table.answered("v1", 0, None, took_s=None, reply_bytes=0, now=0.0)
    assert table.answered("v1", 3, None, took_s=None, reply_bytes=0, now=1.0) is None
    until = table.answered("v1", 0, None, took_s=None, reply_bytes=0, now=2.0)
    assert until == pytest.approx(2.0 + CONFIG.steal_backoff_s)


def test_small_replies_measure_rtt_and_big_ones_bandwidth() -> None:
    table = peers({"v1": 0.5})
    peer = table.get("v1")
    assert peer is not None
    observe_link(peer, reply_bytes=100, took_s=0.004)
    assert (peer.rtt_s, peer.bandwidth_bps) == (0.004, None)
    observe_link(peer, reply_bytes=1_000_000, took_s=0.104)
    assert peer.rtt_s == 0.004
    assert peer.bandwidth_bps == pytest.approx(1e7)


# Service time -> the least gain for which a job moves (2 ms floor, half the service time).
MARGINS = {"tiny job": (0.001, 0.002), "10 ms job": (0.01, 0.005), "1 s job": (1.0, 0.5)}


@pytest.mark.parametrize(("service_s", "margin"), MARGINS.values(), ids=MARGINS.keys())
def test_hysteresis_margin(service_s: float, margin: float) -> None:
    assert margin_s(CONFIG, service_s) == margin


def ask(models: dict[str, str]) -> StealAsk:
    return StealAsk(
        thief="t",
        models={name: frozenset({sha}) for name, sha in models.items()},
        slots=1,
        free_slots=1,
        wait_s=0.0,
        service_s={},
        rtt_s=0.002,
        bandwidth_bps=1e6,
    )


def queued(
    *, model: str = M, sha: str | None = SHA, moves: int = 0, deadline: float | None = None
) -> Job[int]:
    return Job(
        key=("id-a", 1),
        owner="a",
        model=model,
        sha256=sha,
        epoch=0,
        payload=1,
        size_bytes=10,
        deadline=deadline,
        moves=moves,
    )


MOVABLE = {
    "same model and sha": (queued(), True),
    "any holder will do": (queued(sha=None), True),
    "moved too often": (queued(moves=CONFIG.max_moves), False),
    "another model": (queued(model=BIG), False),
    "another version": (queued(sha="cd" * 32), False),
    "past its deadline": (queued(deadline=1.0), False),
    "before its deadline": (queued(deadline=1.5), True),
}


@pytest.mark.parametrize(("job", "moves"), MOVABLE.values(), ids=MOVABLE.keys())
def test_which_jobs_may_move(job: Job[int], moves: bool) -> None:
    assert movable(job, ask({M: SHA}), CONFIG, now=1.0) is moves

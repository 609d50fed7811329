"""The scheduling rules, driven against each other in memory with an explicit clock.

In the spirit of Dask's ``test_steal.py``: each rule of work stealing is one
small table of cases (move from the larger queue, give to the idler node,
don't over-balance, never steal a running request, no ping-pong), then a
few discrete-event simulations of whole meshes check what the rules add up
to: every node gets its speed-weighted share, and every request is answered
exactly once, peers dying or not.

The tests play the node's part themselves: a :class:`Steal` becomes
``victim.grant`` then ``thief.granted`` with copies of the jobs (as the wire
would make), a :class:`SendResult` becomes ``owner.result``, and so on.
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

from mesh.core.scheduler import (
    Abort,
    Action,
    Cancel,
    Handoff,
    Job,
    Nudge,
    PeerLoad,
    Reply,
    RunLocal,
    Scheduler,
    SchedulerConfig,
    SendResult,
    Steal,
    StealAsk,
)
from mesh.errors import ConfigError, DeadlineExceeded, MeshError, ModelNotFound

M = "digits-small"  # the model everybody holds
BIG = "cnn-heavy"  # a model only some hold
SHA = "ab" * 32
SERVICE = 0.01  # seconds per request on a speed-1 device
RTT = 0.002  # the scheduler's default rtt estimate

A = TypeVar("A")


# --- one node, and the node's part played by hand ------------------------------------------------


def node(
    name: str,
    *,
    slots: int = 1,
    models: Sequence[str] = (M,),
    service: float = SERVICE,
    seed: int = 0,
    **config: Any,
) -> Scheduler[int]:
    """A scheduler called ``name`` whose warm-up measured ``service`` for each model."""
    s: Scheduler[int] = Scheduler(
        node_id=f"id-{name}",
        name=name,
        models={m: SHA for m in models},
        config=SchedulerConfig(slots=slots, **config),
        rng=random.Random(seed),
    )
    for model in models:
        s.observe_service(model, service)
    return s


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


def gossip(to: Scheduler[int], *peers: Scheduler[int], now: float = 0.0) -> list[Action]:
    """``to`` hears each of ``peers``' load, as membership would pass it on."""
    actions: list[Action] = []
    for peer in peers:
        actions += to.peer_update(peer.name, peer.load_summary(), now)
    return actions


def load(queued_s: float = 0.0, free_slots: int = 1, models: Sequence[str] = (M,)) -> PeerLoad:
    """A peer's gossiped load, written by hand."""
    return PeerLoad(
        models={m: SHA for m in models},
        service_s=dict.fromkeys(models, SERVICE),
        queued_s=queued_s,
        free_slots=free_slots,
    )


def wire(jobs: Iterable[Job[int]]) -> list[Job[int]]:
    """The jobs as the thief parses them: copies, never the victim's own objects."""
    return [replace(job) for job in jobs]


def steal(
    thief: Scheduler[int],
    victim: Scheduler[int],
    action: Steal,
    *,
    now: float = 0.0,
    took_s: float = RTT,
) -> tuple[list[Job[int]], list[Action], list[Action]]:
    """Carry one Steal over: the jobs granted, the victim's actions, the thief's actions."""
    assert action.victim == victim.name
    jobs, victim_actions = victim.grant(action.ask, now)
    thief_actions = thief.granted(
        victim.name,
        wire(jobs),
        victim.load_summary(),
        took_s=took_s,
        reply_bytes=sum(j.size_bytes for j in jobs),
        now=now,
    )
    return jobs, victim_actions, thief_actions


def ask(thief: Scheduler[int], victim: str, now: float = 0.0) -> StealAsk:
    """The ask ``thief`` would send ``victim`` (it must be hungry)."""
    actions = thief.nudged(victim, now)
    assert len(actions) == 1 and isinstance(actions[0], Steal), actions
    return actions[0].ask


def finish_running(s: Scheduler[int], running: list[Job[int]], now: float) -> list[Action]:
    """Every job in ``running`` ends at ``now``; new RunLocals join ``running``."""
    actions: list[Action] = []
    while running:
        actions += s.finished(running.pop(0), took_s=SERVICE, now=now)
    running += [a.job for a in only(actions, RunLocal)]
    return actions

"""Versions in the scheduler and on its wire: work moves only to a holder of its sha256.

Two schedulers with the real steal wire between them (as in test_handover),
an explicit clock, and model ``m`` in two versions, V1 and V2.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from mesh.core.membership.gossip import parse_gossip
from mesh.core.scheduling.jobs import (
    ModelShas,
    Nudge,
    PeerLoad,
    RunLocal,
    SchedulerConfig,
    Steal,
    models_to_wire,
)
from mesh.core.scheduling.scheduler import Scheduler
from mesh.core.wire.handover import (
    Tensors,
    encode_grant,
    parse_grant,
    parse_steal_ask,
)
from mesh.errors import BadRequest, ModelNotFound

M = "m"
V1, V2 = "a1" * 32, "b2" * 32
INPUTS: Tensors = {"x": np.zeros((1, 4), dtype=np.float32)}


def over_the_wire(obj: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


def node(name: str, models: ModelShas) -> Scheduler[Tensors]:
    s: Scheduler[Tensors] = Scheduler(
        node_id=f"id-{name}", name=name, models=models, config=SchedulerConfig()
    )
    s.observe_service(M, 0.01)
    return s


def submit(s: Scheduler[Tensors], sha256: str | None, now: float = 0.0) -> list[Any]:
    _, actions = s.submit(
        model=M,
        payload=INPUTS,
        size_bytes=16,
        deadline=None,
        request_id=None,
        now=now,
        sha256=sha256,
    )
    return actions


def steal_round(
    victim: Scheduler[Tensors], thief: Scheduler[Tensors], sent: list[Any]
) -> list[str | None]:
    """The thief hears the victim's gossip, and its nudge if ``sent`` (the
    victim's actions) has one, and steals; the shas of what moved to it."""
    actions = thief.peer_update(victim.name, victim.load_summary(0.0), 0.0)
    if any(isinstance(x, Nudge) and x.peer == thief.name for x in sent):
        actions += thief.nudged(victim.name, 0.0)
    steals = [a for a in actions if isinstance(a, Steal)]
    if not steals:
        return []
    ask = parse_steal_ask([over_the_wire(steals[0].ask.to_wire())])
    granted, _ = victim.grant(ask, 0.0)
    jobs, load = parse_grant(
        over_the_wire(encode_grant(granted, victim.load_summary(0.0), 0.0)), 0.0
    )
    ran = thief.granted(victim.name, jobs, load, took_s=0.002, reply_bytes=64, now=0.0)
    return [a.job.sha256 for a in ran if isinstance(a, RunLocal)]


def meet(*nodes: Scheduler[Tensors]) -> None:
    for s in nodes:
        for other in nodes:
            if other is not s:
                s.peer_update(other.name, other.load_summary(0.0), 0.0)


def test_a_job_for_a_version_held_only_by_a_peer_waits_for_that_peer() -> None:
    a, b = node("a", {M: frozenset({V1})}), node("b", {M: frozenset({V2})})
    meet(a, b)
    # a holds m, but not V2: it must not run it, and b takes it.
    sent = submit(a, V2)
    assert not [x for x in sent if isinstance(x, RunLocal)]
    assert a.queued() == 1
    assert steal_round(a, b, sent) == [V2]


def test_a_thief_with_another_version_takes_nothing() -> None:
    a, b = node("a", {M: frozenset({V1, V2})}), node("b", {M: frozenset({V1})})
    meet(a, b)
    sent = [x for _ in range(6) for x in submit(a, V2)]  # the first runs at a; the rest queue
    assert a.queued() == 5
    assert not [x for x in sent if isinstance(x, Nudge)]  # b could not help
    assert steal_round(a, b, sent) == []
    assert a.queued() == 5


def test_a_thief_takes_only_the_jobs_of_its_version() -> None:
    a, b = node("a", {M: frozenset({V1, V2})}), node("b", {M: frozenset({V1})})
    meet(a, b)
    sent = [x for sha in (V2, V1, V2, V1, V1, V2) for x in submit(a, sha)]
    moved = steal_round(a, b, sent)
    assert moved and set(moved) == {V1}


def test_submit_without_a_holder_of_the_version_is_model_not_found() -> None:
    a = node("a", {M: frozenset({V1})})
    with pytest.raises(ModelNotFound, match="no node in the mesh serves model 'm'"):
        submit(a, V2)


def test_retired_versions_still_run_what_was_queued_but_are_not_advertised() -> None:
    a = node("a", {M: frozenset({V1})})
    for _ in range(3):
        submit(a, V1)
    a.set_models({M: frozenset({V2})}, retiring={M: frozenset({V1})})
    assert a.load_summary(0.0).models == {M: frozenset({V2})}
    assert a.uses(M, V1) and not a.uses(M, V2)
    a.set_models({M: frozenset({V2})})  # V1 freed: nothing of it would run now
    assert a.models == {M: frozenset({V2})}


WIRE = {
    "one version: a string, as before": ({M: frozenset({V1})}, {M: V1}),
    "several: a sorted list": ({M: frozenset({V2, V1})}, {M: [V1, V2]}),
}


@pytest.mark.parametrize(("models", "wire"), WIRE.values(), ids=WIRE.keys())
def test_models_on_the_wire(models: ModelShas, wire: dict[str, Any]) -> None:
    assert models_to_wire(models) == wire
    load = PeerLoad(models=models, service_s={}, queued_s=0.0, free_slots=1)
    _, parsed = parse_grant(over_the_wire(encode_grant([], load, 0.0)), 0.0)
    assert parsed.models == models


def gossip_with(models: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "b",
        "id": "id-b",
        "incarnation": 1,
        "host": None,
        "rpc_port": 7700,
        "http_port": None,
        "mesh_id": "open",
        "load": {
            "models": models,
            "service_s": {},
            "queued_s": 0.0,
            "free_slots": 1,
            "role": "node",
        },
        "members": [],
    }


def test_gossip_carries_each_version() -> None:
    two = [
        {"name": M, "sha256": V1, "version": "1"},
        {"name": M, "sha256": V2, "version": "2"},
        {"name": "old", "sha256": V1},  # an older peer says no version
    ]
    message = parse_gossip([over_the_wire(gossip_with(two))])
    holdings = message.load.models
    assert [(h.name, h.version) for h in holdings] == [(M, "1"), (M, "2"), ("old", None)]
    assert [h.to_wire() for h in holdings] == two


@pytest.mark.parametrize(
    ("models", "fragment"),
    [
        ([{"name": M, "sha256": V1}, {"name": M, "sha256": V1}], "names 'm' twice"),
        ([{"name": M, "sha256": V1, "version": "../1"}], "load.models[0].version"),
        ([{"name": M, "sha256": V1, "version": 2}], "load.models[0].version"),
    ],
)
def test_bad_version_gossip_is_refused(models: list[dict[str, Any]], fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_gossip([over_the_wire(gossip_with(models))])
    assert fragment in caught.value.message

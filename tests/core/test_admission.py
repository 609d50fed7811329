"""The gateway's door as a table: what it admits, and what it refuses with which reason."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mesh.core.policy.admission import GatewayLoad, admit


def load(
    *, slots: int = 1, queue_cap: int = 4, running: int = 0, waiting: int = 0, full: bool = False
) -> GatewayLoad:
    return GatewayLoad(
        name="gw", slots=slots, queue_cap=queue_cap, running=running, waiting=waiting, full=full
    )


@dataclass(frozen=True)
class Case:
    load: GatewayLoad
    service_s: float | None
    remaining_s: float | None
    admitted: bool
    finish_s: float | None = None
    # A piece of the reason a refusal gives.
    reason: str = ""


CASES: dict[str, Case] = {
    "idle, no deadline": Case(load(), 0.05, None, True),
    "idle, fits its deadline": Case(load(), 0.05, 0.1, True, finish_s=0.05),
    "idle, a deadline exactly its service time": Case(load(), 0.05, 0.05, True, finish_s=0.05),
    "idle, shorter than one call": Case(
        load(), 0.05, 0.04, False, finish_s=0.05, reason="finish it in about 50 ms"
    ),
    "full queue, no deadline": Case(
        load(running=1, waiting=4, full=True), None, None, False, reason="queue cap 4"
    ),
    "full queue wins over a generous deadline": Case(
        load(running=1, waiting=4, full=True), 0.05, 60.0, False, reason="is full"
    ),
    "a queue at its cap with a slot coming free still admits": Case(
        load(running=0, waiting=4, full=False), None, None, True
    ),
    "a cap of zero refuses whenever every slot is taken": Case(
        load(queue_cap=0, running=1, full=True), None, None, False, reason="queue cap 0"
    ),
    "model not timed yet: only the queue counts": Case(
        load(running=1, full=True), None, 0.001, True
    ),
    # A busy slot is half done on average: 25 ms, then the two waiting
    # (100 ms), then ours (50 ms).
    "behind a busy slot and a queue, in time": Case(
        load(running=1, waiting=2, full=True), 0.05, 0.2, True, finish_s=0.175
    ),
    "behind a busy slot and a queue, too late": Case(
        load(running=1, waiting=2, full=True),
        0.05,
        0.17,
        False,
        finish_s=0.175,
        reason="past its deadline of 170 ms",
    ),
    # Two slots drain the queue twice as fast: 25 + 50 + 50 ms.
    "two busy slots share the queue": Case(
        load(slots=2, running=2, waiting=2, full=True), 0.05, 0.13, True, finish_s=0.125
    ),
    "a free slot starts at once": Case(
        load(slots=2, running=1, waiting=0), 0.05, 0.05, True, finish_s=0.05
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_admission(name: str) -> None:
    case = CASES[name]
    got = admit(case.load, service_s=case.service_s, remaining_s=case.remaining_s)
    assert got.admitted is case.admitted, name
    if case.finish_s is None:
        assert got.finish_s is None, name
    else:
        assert got.finish_s == pytest.approx(case.finish_s), name
    if case.admitted:
        assert got.reason == "", name
    else:
        assert case.reason in got.reason, (name, got.reason)
        assert got.reason.startswith("gateway gw "), got.reason


def test_a_refusal_says_what_the_gateway_was_doing() -> None:
    got = admit(load(running=1, waiting=3, full=True), service_s=0.1, remaining_s=0.2)
    assert got.reason == (
        "gateway gw would finish it in about 450 ms (1 running, 3 waiting), "
        "past its deadline of 200 ms"
    )
    full = admit(load(slots=2, running=2, waiting=4, full=True), service_s=0.1, remaining_s=None)
    assert full.reason == "gateway gw is full: 2 requests running and 4 waiting (queue cap 4)"

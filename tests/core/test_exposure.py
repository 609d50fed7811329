"""The stranger gate and the byte budget: table-driven, explicit clock."""

from __future__ import annotations

import pytest

from mesh.core.policy.exposure import (
    AUTH_FAILURES,
    TOO_MANY_WAITING,
    ByteBudget,
    ExposureLimits,
    StrangerGate,
)

LIMITS = ExposureLimits(
    max_unauthenticated=5,
    max_unauthenticated_per_source=2,
    auth_failure_burst=3,
    auth_failures_per_s=0.5,
    max_sources=8,
)


def test_connections_waiting_are_capped_per_source_and_in_all() -> None:
    gate = StrangerGate(LIMITS)
    assert gate.admit("a", 0) is None
    assert gate.admit("a", 0) is None
    refusal = gate.admit("a", 0)
    assert refusal is not None and refusal.kind == TOO_MANY_WAITING
    assert "from a" in refusal.reason
    for source in ("b", "b", "c"):
        assert gate.admit(source, 0) is None
    refusal = gate.admit("d", 0)
    assert refusal is not None and refusal.kind == TOO_MANY_WAITING
    assert gate.waiting == 5
    # One authenticates: room for another.
    gate.settled("b", failed=False, now=1)
    assert gate.waiting == 4
    assert gate.admit("d", 1) is None


def test_failures_empty_the_bucket_and_time_refills_it() -> None:
    gate = StrangerGate(LIMITS)
    for moment in (0.0, 0.1, 0.2):
        assert gate.admit("x", moment) is None
        gate.settled("x", failed=True, now=moment)
    refusal = gate.admit("x", 0.3)
    assert refusal is not None and refusal.kind == AUTH_FAILURES
    assert "try again in" in refusal.reason
    # Another address is not held up by x's failures.
    assert gate.admit("y", 0.3) is None
    # 0.5 tokens a second: one whole token two seconds after the last failure.
    assert gate.admit("x", 1.5) is not None
    assert gate.admit("x", 2.3) is None
    gate.settled("x", failed=True, now=2.4)
    assert gate.admit("x", 2.5) is not None


@pytest.mark.parametrize(
    ("failures", "refused"),
    [(0, False), (2, False), (3, True)],
)
def test_the_burst(failures: int, refused: bool) -> None:
    gate = StrangerGate(LIMITS)
    for _ in range(failures):
        assert gate.admit("x", 0) is None
        gate.settled("x", failed=True, now=0)
    assert (gate.admit("x", 0) is not None) is refused


def test_sources_are_remembered_within_a_bound() -> None:
    gate = StrangerGate(LIMITS)
    for index in range(100):
        source = f"10.0.0.{index}"
        assert gate.admit(source, 0) is None
        gate.settled(source, failed=True, now=0)
    assert len(gate._sources) <= LIMITS.max_sources


def test_a_clean_source_is_forgotten() -> None:
    gate = StrangerGate(LIMITS)
    assert gate.admit("x", 0) is None
    gate.settled("x", failed=False, now=0)
    assert gate._sources == {}
    # Settling a source never admitted changes nothing.
    gate.settled("nobody", failed=True, now=0)
    assert gate.waiting == 0


def test_the_byte_budget() -> None:
    budget = ByteBudget(100)
    assert budget.take(60)
    assert not budget.take(41)
    assert budget.used == 60
    assert "budget of 100" in budget.refusal(41)
    assert budget.take(40)
    budget.give_back(100)
    assert budget.used == 0
    budget.give_back(5)
    assert budget.used == 0
    with pytest.raises(ValueError, match="positive"):
        ByteBudget(0)

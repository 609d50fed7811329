"""A node's request counters keep requests = served + failed + in_flight."""

from __future__ import annotations

import pytest

from mesh.errors import DeadlineExceeded, InvalidInput, Overloaded
from mesh.node.counters import ROUTING_COUNTERS, WORK_COUNTERS, RequestCounters


def identity_holds(counters: RequestCounters) -> bool:
    return counters.requests == counters.served + counters.failed + counters.in_flight


def test_every_outcome_counts_once_and_the_identity_holds() -> None:
    counters = RequestCounters()
    with counters.routing():
        assert (counters.requests, counters.in_flight) == (1, 1)
        assert identity_holds(counters)
    with pytest.raises(Overloaded), counters.routing():
        raise Overloaded("full")
    counters.refused(InvalidInput("bad"))
    with pytest.raises(DeadlineExceeded), counters.routing():
        raise DeadlineExceeded("late")
    assert (counters.requests, counters.served, counters.failed, counters.in_flight) == (4, 1, 3, 0)
    assert counters.errors == {"Overloaded": 1, "InvalidInput": 1, "DeadlineExceeded": 1}
    assert identity_holds(counters)


def test_a_bug_inside_routing_counts_as_an_internal_error() -> None:
    counters = RequestCounters()
    with pytest.raises(KeyError), counters.routing():
        raise KeyError("bug")
    assert (counters.requests, counters.served, counters.failed, counters.in_flight) == (1, 0, 1, 0)
    assert counters.errors == {"InternalError": 1}
    assert identity_holds(counters)


def test_status_shows_every_named_counter_even_at_zero() -> None:
    status = RequestCounters().to_status({"stolen_in": 2}, {})
    assert status["stolen_in"] == 2
    assert all(
        status[name] == 0 for name in (*WORK_COUNTERS, *ROUTING_COUNTERS) if name != "stolen_in"
    )

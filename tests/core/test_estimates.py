"""Time estimates on their own: which service time prices a queue, and what a
node's queued and running work adds up to in seconds."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from mesh.core.scheduling.estimates import Estimates, ewma
from mesh.core.scheduling.jobs import Job

M, BIG = "digits-small", "cnn-heavy"


def estimates(
    *,
    queued: Mapping[str, int] | None = None,
    running: list[Job[int]] | None = None,
    gossiped: list[dict[str, float]] | None = None,
    slots: int = 1,
) -> Estimates:
    return Estimates(
        models={M: frozenset({"ab" * 32})},
        slots=slots,
        default_s=0.02,
        queued=lambda: dict(queued or {}),
        running=lambda: running or [],
        gossiped=lambda: iter(gossiped or []),
    )


def running_job(started_at: float | None, model: str = M) -> Job[int]:
    return Job(
        key=("id-a", 1),
        owner="a",
        model=model,
        sha256=None,
        epoch=0,
        payload=1,
        size_bytes=1,
        deadline=None,
        started_at=started_at,
    )


def test_ewma_takes_the_first_sample_whole_then_a_fifth() -> None:
    assert ewma(None, 1.0) == 1.0
    assert ewma(1.0, 2.0) == pytest.approx(1.2)


# (measured here, peers' gossip) -> the estimate for BIG.
ESTIMATE = {
    "measured here wins": (0.5, [{BIG: 0.9}], 0.5),
    "else the first peer that knows": (None, [{M: 0.1}, {BIG: 0.9}, {BIG: 0.7}], 0.9),
    "else the default": (None, [{M: 0.1}], 0.02),
}


@pytest.mark.parametrize(("here", "gossiped", "estimate"), ESTIMATE.values(), ids=ESTIMATE.keys())
def test_which_service_time_prices_a_queue(
    here: float | None, gossiped: list[dict[str, float]], estimate: float
) -> None:
    est = estimates(gossiped=gossiped)
    if here is not None:
        est.observe(BIG, here)
    assert est.estimate(BIG) == estimate


def test_only_models_that_run_here_have_a_service_time_here() -> None:
    est = estimates(gossiped=[{BIG: 0.9}])
    assert est.runs_here_s(M) == 0.02  # not measured yet: the default
    assert est.runs_here_s(BIG) is None
    est.observe(M, 0.01)
    assert est.runs_here_s(M) == 0.01
    assert est.measured() == {M: 0.01}


def test_a_thief_is_priced_by_its_word_else_ours() -> None:
    est = estimates()
    est.observe(M, 0.01)
    assert est.for_thief({M: 0.03}, M) == 0.03
    assert est.for_thief({}, M) == 0.01
    assert est.for_thief({}, BIG) == 0.02


def test_work_in_seconds() -> None:
    # Two slots; 4 queued of M (10 ms) and 2 of BIG (unheld, 100 ms by gossip);
    # one job started at 0.995 with 10 ms to run is 5 ms from done at 1.0.
    est = estimates(
        queued={M: 4, BIG: 2},
        running=[running_job(0.995)],
        gossiped=[{BIG: 0.1}],
        slots=2,
    )
    est.observe(M, 0.01)
    assert est.queued_s() == pytest.approx((0.04 + 0.2) / 2)
    assert est.running_left_s(1.0) == pytest.approx(0.005)
    assert est.wait_s(1.0) == pytest.approx(0.12 + 0.0025)
    assert est.finish_s(1.0) == pytest.approx((0.005 + 0.04) / 2)  # BIG cannot run here
    capacity = est.capacity("a", M, 1.0)
    assert capacity.free_in_s == pytest.approx((0.005 + 0.2) / 2)  # others' work first
    assert (capacity.slots, capacity.service_s) == (2, 0.01)
    assert est.cheapest_s() == 0.01


def test_a_run_past_its_estimate_counts_as_done() -> None:
    assert estimates(running=[running_job(0.0)]).running_left_s(5.0) == 0.0
    assert estimates(running=[running_job(None)]).running_left_s(5.0) == pytest.approx(0.02)

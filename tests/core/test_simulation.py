"""Whole meshes of schedulers on a hostile network, drawn by hypothesis.

Each example is a :class:`~tests.helpers.sim.Scenario`: 2 to 4 nodes of mixed
speeds and slots, each on its own skewed and drifting clock; a network that
loses, duplicates, delays and reorders messages; bursts of requests with and
without deadlines; and owners and holders that die at drawn times, their
clients retrying elsewhere with the same request id. The simulator drives
each scheduler only through its events and actions (see tests/helpers/sim.py)
and checks, along the way and at the end:

* every request is answered exactly once, with its own result or a typed
  error, never both, never twice; one without a deadline never fails;
* nothing is lost while its owner lives: every live node ends idle, having
  answered every request it took;
* a dead owner's requests are answered by nobody else (its clients retry);
* a job never starts after its owner answered it, at the owner; nor at a
  holder once the owner's cancel or the owner's death reached it; nor twice
  under one epoch; nor past its deadline. Execution is at least once: a
  holder the cancel has not reached yet may still start a copy (counted in
  ``runs_after_answer``), and its result is dropped at the owner.

The suite's run is deterministic (derandomized, no example database) and
bounded; ``MESH_SIM_EXAMPLES=5000 pytest --timeout 0 tests/core/test_simulation.py``
soaks with fresh random examples.
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.helpers.sim import Arrival, Death, Network, NodeSpec, Scenario, Sim

_SOAK = os.environ.get("MESH_SIM_EXAMPLES")
SUITE = settings(
    max_examples=int(_SOAK) if _SOAK else 200,
    derandomize=not _SOAK,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

OWNER_DEATHS = settings(SUITE, max_examples=int(_SOAK) if _SOAK else 120)


def spans(low: float, high: float) -> st.SearchStrategy[tuple[float, float]]:
    """A (low, high) pair within [low, high]."""
    point = st.floats(low, high, allow_nan=False)
    return st.tuples(point, point).map(lambda pair: (min(pair), max(pair)))


node_specs = st.builds(
    NodeSpec,
    speed=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    slots=st.integers(1, 2),
    offset_s=st.floats(0.0, 1000.0),
    drift=st.floats(-0.02, 0.02),
)

networks = st.builds(
    Network,
    loss=st.sampled_from([0.0, 0.0, 0.02, 0.1, 0.25]),
    duplicate=st.sampled_from([0.0, 0.05, 0.2]),
    latency_s=spans(0.0001, 0.02),
    detect_s=spans(0.002, 0.2),
    gossip_s=st.floats(0.01, 0.2),
    steal_timeout_s=st.floats(0.01, 1.0),
    service_jitter=st.floats(0.0, 0.5),
    fifo=st.booleans(),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    nodes = tuple(draw(st.lists(node_specs, min_size=2, max_size=4)))
    n = len(nodes)
    arrivals = draw(
        st.lists(
            st.builds(
                Arrival,
                at=st.floats(0.0, 0.1),
                node=st.integers(0, n - 1),
                count=st.integers(1, 30),
                deadline_s=st.none() | st.floats(0.005, 0.5),
            ),
            min_size=1,
            max_size=6,
        )
    )
    dying = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n - 1))
    deaths = tuple(Death(i, draw(st.floats(0.0, 0.15))) for i in dying)
    return Scenario(
        nodes=nodes,
        arrivals=tuple(arrivals),
        deaths=deaths,
        network=draw(networks),
        lease_min_s=draw(st.floats(0.05, 1.0)),
        seed=draw(st.integers(0, 2**16)),
    )


@st.composite
def owner_deaths(draw: st.DrawFn) -> Scenario:
    """A burst at n0, which dies while peers still hold some of it; maybe a holder too."""
    base = draw(scenarios())
    n = len(base.nodes)
    burst = Arrival(0.0, 0, count=draw(st.integers(20, 80)), deadline_s=None)
    deaths = [Death(0, draw(st.floats(0.0, 0.08)))]
    if n > 2 and draw(st.booleans()):
        deaths.append(Death(draw(st.integers(1, n - 1)), draw(st.floats(0.0, 0.15))))
    network = replace(base.network, detect_s=draw(spans(0.001, 0.03)))
    return replace(base, arrivals=(burst, *base.arrivals), deaths=tuple(deaths), network=network)


def run(scenario: Scenario) -> Sim:
    sim = Sim(scenario)
    sim.run()
    broken = sim.violations()
    assert not broken, "\n".join([*broken, "--- last events:", sim.story()])
    return sim


@SUITE
@given(scenarios())
def test_every_request_is_answered_once_whatever_the_network_does(scenario: Scenario) -> None:
    sim = run(scenario)
    # What the examples exercised, shown with --hypothesis-show-statistics.
    event(f"{len(sim.dead)} deaths")
    if sim.counter("orphaned"):
        event("an owner died while peers held its jobs")
    if sim.counter("requeued"):
        event("a holder died or its lease ran out")
    if sim.counter("reclaimed"):
        event("an owner took back a grant its holder did not report")
    if sim.counter("late_dropped"):
        event("a late or duplicate result was dropped")
    if sim.runs_after_answer:
        event("a copy ran after its answer (cancel not there yet)")
    if any(len(r.tried) > 1 for r in sim.requests.values()):
        event("a client retried on another node")


@OWNER_DEATHS
@given(owner_deaths())
def test_an_owner_dying_mid_burst_loses_and_doubles_nothing(scenario: Scenario) -> None:
    sim = run(scenario)
    # n0 answered nothing after it died; its unanswered clients went elsewhere.
    assert all(r.tried[0] != "n0" or len(r.tried) == 1 or r.answers for r in sim.requests.values())
    event("peers held the dead owner's jobs" if sim.counter("orphaned") else "nothing held")


# --- fixed scenarios: each names what it is about -----------------------------------------------

THREE = (NodeSpec(speed=1.0), NodeSpec(speed=2.0), NodeSpec(speed=2.0))
CALM = Network(latency_s=(0.0005, 0.002), detect_s=(0.05, 0.1))


def test_an_owner_that_dies_holding_a_burst_leaves_nothing_behind() -> None:
    """Peers have stolen n0's burst when it dies: they drop what they hold for it,
    and its clients' retries are all answered by n1 and n2."""
    quick = Network(latency_s=(0.0005, 0.002), detect_s=(0.005, 0.01))
    scenario = Scenario(
        nodes=THREE, arrivals=(Arrival(0.0, 0, count=40),), deaths=(Death(0, 0.02),), network=quick
    )
    sim = run(scenario)
    assert sim.counter("orphaned") > 0  # peers held n0's jobs when they heard
    retried = [r for r in sim.requests.values() if len(r.tried) > 1]
    assert retried and all(r.tried[0] == "n0" for r in retried)
    assert all(r.answers == ["ok"] for r in sim.requests.values())
    assert sim.nodes["n0"].counters["requests"] == 40


def test_a_holder_that_dies_has_its_jobs_taken_back() -> None:
    scenario = Scenario(
        nodes=THREE, arrivals=(Arrival(0.0, 0, count=40),), deaths=(Death(1, 0.05),), network=CALM
    )
    sim = run(scenario)
    assert sim.counter("requeued") > 0
    assert all(r.tried == ["n0"] for r in sim.requests.values())


def test_lost_results_are_recovered_by_leases() -> None:
    lossy = Network(loss=0.3, latency_s=(0.0005, 0.01), detect_s=(0.05, 0.1))
    scenario = Scenario(
        nodes=THREE, arrivals=(Arrival(0.0, 0, count=40),), network=lossy, lease_min_s=0.2, seed=3
    )
    sim = run(scenario)
    assert sim.counter("requeued") > 0  # some lease ran out on a lost message
    assert all(r.answers == ["ok"] for r in sim.requests.values())


@pytest.mark.parametrize("seed", range(3))
def test_deadlines_on_drifting_clocks_are_answered_once(seed: int) -> None:
    nodes = (
        NodeSpec(offset_s=500.0, drift=0.02),
        NodeSpec(speed=2.0, offset_s=3.0, drift=-0.02),
        NodeSpec(speed=4.0, slots=2, offset_s=90.0),
    )
    scenario = Scenario(
        nodes=nodes,
        arrivals=(Arrival(0.0, 0, count=60, deadline_s=0.08), Arrival(0.01, 1, count=10)),
        deaths=(Death(2, 0.03),),
        network=Network(loss=0.05, duplicate=0.1, latency_s=(0.0005, 0.01)),
        seed=seed,
    )
    sim = run(scenario)
    codes = {a for r in sim.requests.values() for a in r.answers}
    assert codes <= {"ok", "DeadlineExceeded"} and "ok" in codes

"""The circuit breaker, driven by an explicit clock: each case is a script of events."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mesh.core.policy.breaker import (
    BreakerConfig,
    CircuitBreaker,
    Exchange,
    Outcome,
    Verdict,
    judge,
)
from mesh.errors import ConfigError

CONFIG = BreakerConfig(failure_threshold=3, open_s=1.0, max_open_s=4.0)


@dataclass(frozen=True)
class Step:
    """At ``at``, do ``event``, then expect ``state`` (and ``allow``, ``retry_in``)."""

    at: float
    event: str  # "ok", "fail", "probe", "probe_ok", "probe_fail", "check"
    state: str
    allow: bool | None = None
    retry_in: float | None = None
    due: bool | None = None


CASES: dict[str, list[Step]] = {
    "closed lets requests through": [
        Step(0.0, "check", "closed", allow=True, retry_in=0.0, due=False),
        Step(0.1, "ok", "closed", allow=True),
    ],
    "threshold consecutive failures open it": [
        Step(0.0, "fail", "closed", allow=True),
        Step(0.1, "fail", "closed", allow=True),
        Step(0.2, "fail", "open", allow=False, retry_in=1.0, due=False),
    ],
    "a success resets the count": [
        Step(0.0, "fail", "closed"),
        Step(0.1, "fail", "closed"),
        Step(0.2, "ok", "closed"),
        Step(0.3, "fail", "closed"),
        Step(0.4, "fail", "closed", allow=True),
        Step(0.5, "fail", "open", allow=False),
    ],
    "open refuses until its period is over, then a probe is due": [
        *[Step(0.0, "fail", "closed")] * 2,
        Step(0.0, "fail", "open"),
        Step(0.5, "check", "open", allow=False, retry_in=0.5, due=False),
        Step(1.0, "check", "open", allow=False, retry_in=0.0, due=True),
        Step(5.0, "check", "open", allow=False, retry_in=0.0, due=True),
    ],
    "half open still refuses requests": [
        *[Step(0.0, "fail", "closed")] * 2,
        Step(0.0, "fail", "open"),
        Step(1.0, "probe", "half_open", allow=False, retry_in=0.0, due=False),
    ],
    "a good probe closes it": [
        *[Step(0.0, "fail", "closed")] * 2,
        Step(0.0, "fail", "open"),
        Step(1.0, "probe", "half_open"),
        Step(1.1, "probe_ok", "closed", allow=True, retry_in=0.0),
    ],
    "failed probes double the period up to the cap": [
        *[Step(0.0, "fail", "closed")] * 2,
        Step(0.0, "fail", "open", retry_in=1.0),
        Step(1.0, "probe", "half_open"),
        Step(1.0, "probe_fail", "open", retry_in=2.0),
        Step(3.0, "probe", "half_open"),
        Step(3.0, "probe_fail", "open", retry_in=4.0),
        Step(7.0, "probe", "half_open"),
        Step(7.0, "probe_fail", "open", retry_in=4.0),  # capped at max_open_s
    ],
    "a good probe resets the backoff": [
        *[Step(0.0, "fail", "closed")] * 2,
        Step(0.0, "fail", "open"),
        Step(1.0, "probe", "half_open"),
        Step(1.0, "probe_fail", "open", retry_in=2.0),
        Step(3.0, "probe", "half_open"),
        Step(3.0, "probe_ok", "closed"),
        *[Step(4.0, "fail", "closed")] * 2,
        Step(4.0, "fail", "open", retry_in=1.0),
    ],
    "stragglers do not move an open circuit": [
        *[Step(0.0, "fail", "closed")] * 2,
        Step(0.0, "fail", "open"),
        Step(0.5, "ok", "open", allow=False, retry_in=0.5),
        Step(0.6, "fail", "open", retry_in=0.4),
        Step(1.0, "probe", "half_open"),
        Step(1.1, "ok", "half_open", allow=False),
        Step(1.2, "fail", "half_open", allow=False),
        Step(1.3, "probe_ok", "closed"),
    ],
}


def play(breaker: CircuitBreaker, step: Step) -> None:
    if step.event == "ok":
        breaker.record_success(step.at)
    elif step.event == "fail":
        breaker.record_failure(step.at, f"failure at {step.at}")
    elif step.event == "probe":
        breaker.begin_probe(step.at)
    elif step.event == "probe_ok":
        breaker.probe_succeeded(step.at)
    elif step.event == "probe_fail":
        breaker.probe_failed(step.at, "probe failed")
    else:
        assert step.event == "check"


@pytest.mark.parametrize("name", list(CASES))
def test_breaker_script(name: str) -> None:
    breaker = CircuitBreaker(CONFIG)
    for number, step in enumerate(CASES[name]):
        play(breaker, step)
        where = f"{name}: step {number} ({step})"
        assert breaker.state == step.state, where
        if step.allow is not None:
            assert breaker.allow(step.at) is step.allow, where
        if step.retry_in is not None:
            assert breaker.retry_in(step.at) == pytest.approx(step.retry_in), where
        if step.due is not None:
            assert breaker.probe_due(step.at) is step.due, where


def test_status_counts_and_remembers_why() -> None:
    breaker = CircuitBreaker(CONFIG)
    assert breaker.last_failure is None
    for at in (0.0, 0.1, 0.2):
        breaker.record_failure(at, "connection refused")
    breaker.begin_probe(1.2)
    breaker.probe_failed(1.3, "timed out")
    status = breaker.status(2.3)
    assert status == {
        "state": "open",
        "retry_in_s": 1.0,
        "consecutive_failures": 4,
        "last_failure": "timed out",
        "open_period_s": 2.0,
        "failures": 4,
        "successes": 0,
        "opened": 1,
        "probes": 1,
        "probe_failures": 1,
    }


@pytest.mark.parametrize(
    ("call", "state"),
    [("begin_probe", "closed"), ("probe_succeeded", "closed"), ("probe_failed", "open")],
)
def test_probe_calls_out_of_turn_are_bugs(call: str, state: str) -> None:
    breaker = CircuitBreaker(CONFIG)
    if state == "open":
        for _ in range(3):
            breaker.record_failure(0.0, "x")
    args = (0.0, "x") if call == "probe_failed" else (0.0,)
    with pytest.raises(RuntimeError):
        getattr(breaker, call)(*args)
    # Too early is out of turn as well.
    if state == "open":
        with pytest.raises(RuntimeError, match="no probe is due"):
            breaker.begin_probe(0.5)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (BreakerConfig(failure_threshold=0), "failure_threshold"),
        (BreakerConfig(open_s=0.0), "open_s"),
        (BreakerConfig(open_s=5.0, max_open_s=1.0), "max_open_s"),
    ],
)
def test_bad_config_is_refused(config: BreakerConfig, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CircuitBreaker(config)


# --- what counts: slow versus broken ---------------------------------------------------

ANSWERED_OTHERS = Outcome(error="timeout", answered_others=True)
TIMED_OUT = Outcome(error="timeout")
UNREACHABLE = Outcome(error="unreachable")
GARBLED = Outcome(error="garbled")


def answer(status: int) -> Outcome:
    return Outcome(status=status)


VERDICTS: list[tuple[str, Outcome, Exchange, Verdict]] = [
    # A request: only what says the gateway is not working is a failure.
    ("a parsed answer", answer(200), "request", "works"),
    ("no connection", UNREACHABLE, "request", "failure"),
    ("no answer and no other answers", TIMED_OUT, "request", "failure"),
    ("its deadline ran out while others were answered", ANSWERED_OTHERS, "request", "slow"),
    ("garbage", GARBLED, "request", "failure"),
    ("503 is busy", answer(503), "request", "busy"),
    ("500", answer(500), "request", "failure"),
    ("502", answer(502), "request", "failure"),
    ("504", answer(504), "request", "failure"),
    ("404: it answered", answer(404), "request", "works"),
    ("400: it answered", answer(400), "request", "works"),
    ("401: our token is refused", answer(401), "request", "failure"),
    ("403: our token is refused", answer(403), "request", "failure"),
    ("413: it answered", answer(413), "request", "works"),
    ("422: it answered", answer(422), "request", "works"),
    # Asking which extensions it speaks: a 5xx tells nothing.
    ("negotiation 200", answer(200), "negotiation", "works"),
    ("negotiation 404", answer(404), "negotiation", "works"),
    ("negotiation 401", answer(401), "negotiation", "failure"),
    ("negotiation 500", answer(500), "negotiation", "unknown"),
    ("negotiation 503", answer(503), "negotiation", "unknown"),
    ("negotiation timeout", TIMED_OUT, "negotiation", "failure"),
    ("negotiation slow", ANSWERED_OTHERS, "negotiation", "slow"),
    ("negotiation unreachable", UNREACHABLE, "negotiation", "failure"),
    # A readiness probe passes on 200 only; busy is not ready.
    ("probe 200", answer(200), "probe", "works"),
    ("probe 503", answer(503), "probe", "failure"),
    ("probe 404", answer(404), "probe", "failure"),
    ("probe 500", answer(500), "probe", "failure"),
    ("probe timeout", TIMED_OUT, "probe", "failure"),
    ("probe timeout, others answered", ANSWERED_OTHERS, "probe", "failure"),
    ("probe unreachable", UNREACHABLE, "probe", "failure"),
]


@pytest.mark.parametrize(
    ("outcome", "exchange", "verdict"),
    [case[1:] for case in VERDICTS],
    ids=[case[0] for case in VERDICTS],
)
def test_judge(outcome: Outcome, exchange: Exchange, verdict: Verdict) -> None:
    assert judge(outcome, exchange) == verdict


def test_a_request_is_the_default_exchange() -> None:
    assert judge(answer(502)) == "failure"
    assert judge(ANSWERED_OTHERS) == "slow"


@pytest.mark.parametrize("fields", [{}, {"status": 200, "error": "timeout"}])
def test_an_outcome_is_an_answer_or_an_error(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="a status or an error"):
        Outcome(**fields)  # type: ignore[arg-type]


def test_slow_requests_never_open_the_circuit() -> None:
    # However many run out of time while the gateway answers others, the
    # circuit stays closed; the same count of real timeouts opens it.
    breaker = CircuitBreaker(CONFIG)
    states = []
    for outcome, count in ((ANSWERED_OTHERS, 10), (TIMED_OUT, 3)):
        for at in range(count):
            if judge(outcome) == "failure":
                breaker.record_failure(float(at), "timeout")
        states.append(breaker.state)
    assert states == ["closed", "open"]

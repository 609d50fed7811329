"""The owner's ledger on its own: epochs make stale copies recognisable, and
each request is settled at most once."""

from __future__ import annotations

import pytest

from mesh.core.scheduling.jobs import JobState, SchedulerConfig
from mesh.core.scheduling.ledger import Ledger, lease_s, missed_deadline
from mesh.errors import DeadlineExceeded

M = "digits-small"


def ledger_with(n: int, *, deadline: float | None = None) -> Ledger[int]:
    ledger: Ledger[int] = Ledger("id-a", "a")
    for i in range(n):
        ledger.open(
            model=M,
            sha256=None,
            payload=i,
            size_bytes=10,
            deadline=deadline,
            request_id=f"r{i}",
            now=float(i),
        )
    return ledger


def test_open_gives_fresh_seqs_at_epoch_zero() -> None:
    ledger = ledger_with(2)
    assert len(ledger) == 2 and 1 in ledger and 2 in ledger and 3 not in ledger
    owned = ledger.current(2, 0)
    assert owned is not None
    assert (owned.job.key, owned.job.owner, owned.holder) == (("id-a", 2), "a", None)


# (held by a peer?, epoch the copy carries, settled away-only?) -> settles?
SETTLE = {
    "current, here": (False, 0, False, True),
    "current, held, result from the holder": (True, 0, True, True),
    "result from a holder it was never given to": (False, 0, True, False),
    "an old epoch": (True, -1, True, False),
}


@pytest.mark.parametrize(("held", "epoch", "away", "settles"), SETTLE.values(), ids=SETTLE.keys())
def test_settle_answers_only_the_current_copy(
    held: bool, epoch: int, away: bool, settles: bool
) -> None:
    ledger = ledger_with(1)
    owned = ledger.current(1, 0)
    assert owned is not None
    if held:
        ledger.take_back(owned)  # epoch 1 now
        ledger.hand_to(owned, "b", lease_until=10.0)
    current = owned.job.epoch
    assert ledger.settle(1, current + epoch, away=away) is settles
    assert (1 in ledger) is not settles
    assert ledger.settle(1, current + epoch, away=away) is False  # never twice


def test_take_back_bumps_the_epoch_and_keeps_the_place() -> None:
    ledger = ledger_with(3)
    owned = ledger.current(2, 0)
    assert owned is not None
    old = owned.job
    old.moves = 2
    old.state = JobState.GONE
    ledger.hand_to(owned, "b", lease_until=5.0)
    job = ledger.take_back(owned)
    assert job is not old and owned.job is job
    assert (job.epoch, job.enqueued_at, job.moves, job.state) == (1, 1.0, 0, JobState.QUEUED)
    assert (job.payload, job.request_id) == (old.payload, old.request_id)
    assert (owned.holder, owned.lease_until) == (None, None)
    assert ledger.current(2, 0) is None  # a result of the old epoch is stale


def test_a_stolen_back_copy_comes_home_only_if_current() -> None:
    ledger = ledger_with(1)
    owned = ledger.current(1, 0)
    assert owned is not None
    ledger.hand_to(owned, "b", lease_until=5.0)
    stale = owned.job
    ledger.take_back(owned)
    assert ledger.came_home(stale) is False


def test_lease_runs_out_only_for_a_holder_past_it() -> None:
    ledger = ledger_with(1)
    owned = ledger.current(1, 0)
    assert owned is not None
    assert ledger.lease_ran_out(("id-a", 1), 0, 100.0) is None  # here: no lease
    ledger.hand_to(owned, "b", lease_until=5.0)
    assert ledger.lease_live(("id-a", 1), 0, 5.0)
    assert not ledger.lease_live(("id-a", 1), 0, 4.0)  # an older lease's timer
    assert ledger.lease_ran_out(("id-a", 1), 0, 4.9) is None
    assert ledger.lease_ran_out(("id-a", 1), 0, 5.0) is owned


def test_expired_answers_only_past_the_deadline() -> None:
    ledger = ledger_with(1, deadline=2.0)
    assert ledger.expired(("id-a", 1), 0, 1.9) is None
    owned = ledger.expired(("id-a", 1), 0, 2.0)
    assert owned is not None and len(ledger) == 0
    error = missed_deadline(1, owned)
    assert isinstance(error, DeadlineExceeded)
    assert "r0" in str(error) and "2000 ms" in str(error) and "queued" in str(error)


def test_held_jobs_of_a_dead_owner_are_released() -> None:
    theirs: Ledger[int] = ledger_with(2)
    mine: Ledger[int] = Ledger("id-b", "b")
    jobs = []
    for seq in (1, 2):
        owned = theirs.current(seq, 0)
        assert owned is not None
        mine.hold(owned.job)
        jobs.append(owned.job)
    assert mine.pass_on(jobs[0], "c", 9.0) is False  # another owner's: it must be told
    assert [job.key for job in mine.orphans("a")] == [("id-a", 2)]
    assert mine.orphans("a") == []


def test_unholdable_answers_queued_requests_nobody_runs() -> None:
    ledger = ledger_with(2)
    held = ledger.current(2, 0)
    assert held is not None
    ledger.hand_to(held, "b", lease_until=9.0)
    gone = ledger.unholdable(lambda model, sha256: False)
    assert [seq for seq, _ in gone] == [1]  # the held one is its holder's to run
    assert 1 not in ledger and 2 in ledger


@pytest.mark.parametrize(("finish_s", "lease"), [(0.0, 5.0), (1.0, 8.0)])
def test_a_lease_is_a_floor_plus_a_multiple_of_the_finish(finish_s: float, lease: float) -> None:
    assert lease_s(SchedulerConfig(), finish_s) == lease

"""The per-model queues on their own: lazy deletion, exact counts, and order.

A job that leaves other than by starting is only marked gone; these tests pin
what that must never show: a gone job counted, started, or offered to a thief.
"""

from __future__ import annotations

import pytest

from mesh.core.scheduling.jobs import Job, JobState
from mesh.core.scheduling.queues import Queues
from mesh.errors import InternalError

M, N = "digits-small", "cnn-heavy"
# A model held at some version: runs any job of it whose sha256 is None.
ANY: frozenset[str] = frozenset()
V1, V2 = "a1" * 32, "b2" * 32


def job(seq: int, model: str = M, at: float | None = None, sha256: str | None = None) -> Job[int]:
    return Job(
        key=("id-a", seq),
        owner="a",
        model=model,
        sha256=sha256,
        epoch=0,
        payload=seq,
        size_bytes=10,
        deadline=None,
        enqueued_at=float(seq) if at is None else at,
    )


def filled(*jobs: Job[int]) -> Queues[int]:
    queues: Queues[int] = Queues()
    for j in jobs:
        queues.push(j)
    return queues


# Which of jobs 1..4 (model M) leave early -> what is left, oldest first.
LEFT = {
    "none": ([], [1, 2, 3, 4]),
    "the front": ([1], [2, 3, 4]),
    "the middle": ([2, 3], [1, 4]),
    "the back": ([4], [1, 2, 3]),
    "all": ([1, 2, 3, 4], []),
}


@pytest.mark.parametrize(("leaving", "left"), LEFT.values(), ids=LEFT.keys())
def test_a_job_that_leaves_is_never_counted_started_or_offered(
    leaving: list[int], left: list[int]
) -> None:
    jobs = {seq: job(seq) for seq in (1, 2, 3, 4)}
    queues = filled(*jobs.values())
    for seq in leaving:
        queues.leave(jobs[seq])
        queues.leave(jobs[seq])  # twice is once: the count stays exact
        assert jobs[seq].state is JobState.GONE
    assert queues.count(M) == queues.total() == len(left)
    assert [j.payload for j in queues.newest_first()] == left[::-1]
    started = []
    while (nxt := queues.next_runnable({M: ANY})) is not None:
        queues.start(nxt, now=0.0, slots=8)
        started.append(nxt.payload)
    assert started == left
    assert queues.counts() == {}


def test_newest_first_merges_models_by_arrival() -> None:
    queues = filled(job(1, M), job(2, N), job(3, M), job(4, N, at=3.5))
    assert [j.payload for j in queues.newest_first()] == [4, 3, 2, 1]
    assert queues.counts() == {M: 2, N: 2}
    assert queues.total({N}) == 2


def test_next_runnable_is_the_oldest_of_the_models_that_run_here() -> None:
    jobs = [job(1, N), job(2, M), job(3, N)]
    queues = filled(*jobs)
    assert queues.next_runnable({M: ANY, N: ANY}) is jobs[0]
    assert queues.next_runnable({M: ANY}) is jobs[1]
    assert queues.next_runnable({}) is None


def test_next_runnable_takes_only_a_version_held_here() -> None:
    jobs = [job(1, M, sha256=V1), job(2, N, sha256=V2), job(3, M, sha256=V2)]
    queues = filled(*jobs)
    assert queues.next_runnable({M: frozenset({V2}), N: frozenset({V2})}) is jobs[1]
    # The front of M's queue is a version held elsewhere: M waits for a peer to take it.
    assert queues.next_runnable({M: frozenset({V2})}) is None
    assert queues.next_runnable({M: frozenset({V1, V2})}) is jobs[0]


def test_uses_sees_queued_and_running_jobs_of_a_version() -> None:
    queues = filled(job(1, M, sha256=V1), job(2, M, sha256=V2))
    assert queues.uses(M, V1) and queues.uses(M, V2)
    first = queues.next_runnable({M: frozenset({V1})})
    assert first is not None
    queues.start(first, now=0.0, slots=1)
    assert queues.uses(M, V1)  # running
    queues.finish(first)
    assert not queues.uses(M, V1)
    assert not queues.uses(N, V2)


def test_old_work_coming_back_goes_to_the_front() -> None:
    queues = filled(job(1), job(2))
    back = job(3, at=0.5)
    queues.push(back, front=True)
    assert queues.next_runnable({M: ANY}) is back


def test_only_the_front_of_a_queue_starts() -> None:
    first, second = job(1), job(2)
    queues = filled(first, second)
    with pytest.raises(InternalError):
        queues.start(second, now=0.0, slots=1)
    assert second.state is JobState.QUEUED and queues.count(M) == 2


def test_jobs_beyond_the_slots_start_crowded() -> None:
    jobs = [job(seq) for seq in (1, 2, 3)]
    queues = filled(*jobs)
    for j in jobs:
        queues.start(j, now=1.0, slots=2)
    assert [j.crowded for j in jobs] == [False, False, True]
    assert [j.started_at for j in jobs] == [1.0, 1.0, 1.0]
    assert len(queues.running) == 3


def test_stop_aborts_a_running_job_and_drops_a_queued_one() -> None:
    running, queued = job(1), job(2)
    queues = filled(running, queued)
    queues.start(running, now=0.0, slots=1)
    assert queues.stop(running) is True  # the runtime must abort it
    assert queues.stop(queued) is False
    assert (running.state, queued.state) == (JobState.GONE, JobState.GONE)
    assert len(queues.running) == 0 and queues.total() == 0
    # Its run ends later: already accounted for.
    assert queues.finish(running) is False


def test_finish_ends_a_run_once() -> None:
    j = job(1)
    queues = filled(j)
    queues.start(j, now=0.0, slots=1)
    assert queues.finish(j) is True
    assert j.state is JobState.GONE
    assert queues.finish(j) is False

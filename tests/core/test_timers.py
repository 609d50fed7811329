"""The timer heap on its own: stale entries are skipped, never acted on twice,
and swept before they pile up."""

from __future__ import annotations

import pytest

from mesh.core.scheduling.timers import Timer, TimerKind, Timers


def test_next_deadline_skips_stale_entries() -> None:
    live: set[tuple[str, int]] = {("a", 2), ("a", 3)}
    timers = Timers(lambda t: t.key in live)
    for seq, when in ((1, 1.0), (2, 2.0), (3, 3.0)):
        timers.add(when, TimerKind.DEADLINE, ("a", seq))
    assert timers.next_deadline() == 2.0  # seq 1 was answered: its timer is stale
    live.discard(("a", 2))
    assert timers.next_deadline() == 3.0
    live.clear()
    assert timers.next_deadline() is None
    assert len(timers) == 0


# (when, kind) added in this order -> the order they come due.
ORDER = {
    "by time": (
        [(2.0, TimerKind.DEADLINE), (1.0, TimerKind.LEASE)],
        [(1.0, TimerKind.LEASE), (2.0, TimerKind.DEADLINE)],
    ),
    "same instant, by kind": (
        [(1.0, TimerKind.BACKOFF), (1.0, TimerKind.LEASE), (1.0, TimerKind.DEADLINE)],
        [(1.0, TimerKind.DEADLINE), (1.0, TimerKind.LEASE), (1.0, TimerKind.BACKOFF)],
    ),
}


@pytest.mark.parametrize(("added", "due"), ORDER.values(), ids=ORDER.keys())
def test_due_pops_in_order(
    added: list[tuple[float, TimerKind]], due: list[tuple[float, TimerKind]]
) -> None:
    timers = Timers(lambda t: True)
    for when, kind in added:
        timers.add(when, kind, ("a", 1))
    assert [(t.when, t.kind) for t in timers.due(5.0)] == due
    assert list(timers.due(5.0)) == []  # popped: never fired twice


def test_due_leaves_later_timers_and_sees_ones_added_while_firing() -> None:
    timers = Timers(lambda t: True)
    timers.add(1.0, TimerKind.LEASE, ("a", 1))
    timers.add(9.0, TimerKind.DEADLINE, ("a", 2))
    fired: list[Timer] = []
    for timer in timers.due(5.0):
        fired.append(timer)
        if timer.kind is TimerKind.LEASE:
            # Taking a request back re-arms its deadline, maybe already past.
            timers.add(0.5, TimerKind.DEADLINE, ("a", 1), epoch=1)
    assert [(t.key, t.epoch) for t in fired] == [(("a", 1), 0), (("a", 1), 1)]
    assert timers.next_deadline() == 9.0


def test_stale_entries_are_swept_as_the_heap_grows() -> None:
    live_seq = 0
    timers = Timers(lambda t: t.key[1] == live_seq)
    # Each request is answered before the next arrives: one live timer at a time.
    for seq in range(5000):
        live_seq = seq
        timers.add(100.0 + seq, TimerKind.DEADLINE, ("a", seq))
    assert len(timers) < 2100  # swept, not 5000
    assert timers.next_deadline() == 100.0 + 4999

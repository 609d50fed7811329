"""The emulated device's timeline: exact service times, no drift, and aborted calls."""

from __future__ import annotations

import pytest

from mesh.core.scheduling.emulation import EmulatedDevice


def test_calls_queue_behind_each_other_without_drift() -> None:
    device = EmulatedDevice(service_s=0.02, slots=1)
    # Three calls arrive together: they end 20 ms apart, however late the
    # loop got round to each.
    assert [device.finish_at(0.0) for _ in range(3)] == pytest.approx([0.02, 0.04, 0.06])


def test_idle_time_is_not_made_up() -> None:
    device = EmulatedDevice(service_s=0.02, slots=1)
    device.finish_at(0.0)
    assert device.finish_at(1.0) == pytest.approx(1.02)


def test_slots_run_side_by_side() -> None:
    device = EmulatedDevice(service_s=0.02, slots=2)
    ends = [device.finish_at(0.0) for _ in range(4)]
    assert ends == pytest.approx([0.02, 0.02, 0.04, 0.04])


def test_a_released_call_frees_its_slot_at_once() -> None:
    device = EmulatedDevice(service_s=0.05, slots=1)
    end = device.finish_at(0.0)
    device.release(end, now=0.01)
    # The next call starts when the aborted one stopped, not when it was due.
    assert device.finish_at(0.01) == pytest.approx(0.06)


def test_releasing_an_unknown_end_changes_nothing() -> None:
    device = EmulatedDevice(service_s=0.05, slots=1)
    device.finish_at(0.0)
    device.release(123.0, now=0.01)
    assert device.finish_at(0.0) == pytest.approx(0.10)

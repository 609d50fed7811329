"""When calls end on an emulated device of a given speed.

Two cores cannot show a mesh of sixteen devices, so a node (or the gateway)
may emulate one: it runs the real model, then pads each call to the
device's service time. This is the timeline of such a device, kept pure so
that nodes and the gateway pad the same way.
"""

from __future__ import annotations

import heapq
import math

__all__ = ["EmulatedDevice"]


class EmulatedDevice:
    """When each call on an emulated device ends: ``service_s`` after it starts.

    A device with an exact service time starts a call when both the call
    is there and one of its slots is free, and ends it ``service_s`` later.
    So a call that was waiting here starts when the slot's previous call was
    due to end, not when this loop got round to it: a sleep wakes a little
    late (timer granularity, a busy loop), and that lateness must not add
    up call after call, or the device would run slower than the speed it
    emulates. A call that finds the device idle starts when it arrived, so
    time without work is never made up.
    """

    def __init__(self, service_s: float, slots: int) -> None:
        self._service_s = service_s
        self._slot_ends = [-math.inf] * slots

    def finish_at(self, arrived: float) -> float:
        """Take a slot for a call that arrived at ``arrived``; when it ends."""
        ends = self._slot_ends
        # The slot that came free first is the one this call took.
        start = max(arrived, heapq.heappop(ends))
        end = start + self._service_s
        heapq.heappush(ends, end)
        return end

    def release(self, end: float, now: float) -> None:
        """The call due to end at ``end`` was stopped at ``now``: its slot is free."""
        ends = self._slot_ends
        for index, slot_end in enumerate(ends):
            if slot_end == end:
                ends[index] = min(end, now)
                heapq.heapify(ends)
                return

"""How every benchmark runs: stopped by Ctrl-C or SIGTERM alike, with nothing left behind."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType

__all__ = ["run_stoppable"]


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM (a supervisor, `timeout`) takes the same path as Ctrl-C, so
    # the benchmark's `finally` blocks stop every process it started.
    raise KeyboardInterrupt(f"signal {signum}")


def run_stoppable(run: Callable[[], int]) -> int:
    """``run()``'s exit status, or 130 once it was interrupted and has cleaned up."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run()
    except KeyboardInterrupt:
        print("interrupted; every process this benchmark started was stopped", file=sys.stderr)
        return 130

"""How the demo takes Ctrl-C and SIGTERM: every process it started is stopped,
however and whenever the signal comes, and the demo says so in one line."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "STOP_SIGNALS",
    "StopSignals",
    "ctrl_c_ignored",
    "interrupts_deferred",
    "on_stop_signals",
]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def on_stop_signals(handler: Any) -> Iterator[None]:
    """Ctrl-C and SIGTERM go to ``handler`` inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def ctrl_c_ignored() -> contextlib.AbstractContextManager[None]:
    """A second Ctrl-C (or SIGTERM) must not cut the bounded cleanup short."""
    return on_stop_signals(signal.SIG_IGN)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C while a process is spawned takes effect once it is on the books.

    Raised inside ``Popen``, KeyboardInterrupt would lose a child that
    already runs, and nothing would stop it.
    """
    caught: list[int] = []
    with on_stop_signals(lambda signum, _frame: caught.append(signum)):
        yield
    if caught:
        raise KeyboardInterrupt


@dataclass
class StopSignals:
    """Whether Ctrl-C or SIGTERM came while the demo ran.

    Ctrl-C at a terminal reaches the whole process group: the children stop
    by themselves too, and the demo may see one gone ("exited with 130",
    "cannot connect") before its own KeyboardInterrupt. Such an error is
    the interruption, and is said as one.
    """

    seen: bool = False

    @contextlib.contextmanager
    def raising(self) -> Iterator[None]:
        """Both signals raise KeyboardInterrupt inside the block, and are remembered."""

        def stop(_signum: int, _frame: Any) -> None:
            self.seen = True
            raise KeyboardInterrupt

        with on_stop_signals(stop):
            yield

    @contextlib.contextmanager
    def noted(self) -> Iterator[None]:
        """Both signals are only remembered inside the block: around ``asyncio.run``,
        whose loop takes them over once running, an exception raised while the
        loop is made or closed would leave it half done (and say so on stderr)."""

        def note(_signum: int, _frame: Any) -> None:
            self.seen = True

        with on_stop_signals(note):
            yield

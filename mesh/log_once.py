"""Warnings a long-lived edge logs once per cause, not once per occurrence.

A peer that cannot be reached, or a record on the LAN that keeps coming back
malformed, would otherwise fill the log every round; the first warning says
all there is to say until the cause goes away and comes back. Shared by the
node's edges and mDNS, so it sits beside them rather than inside either.
"""

from __future__ import annotations

import logging

__all__ = ["WarnOnce"]

# Keys remembered at most. Causes can come from the network (any name a
# record on the LAN makes up), so the memory is bounded; forgetting the
# oldest costs at worst one repeated warning.
DEFAULT_LIMIT = 1024


class WarnOnce:
    """Logs a warning under a key only the first time that key is seen."""

    def __init__(self, logger: logging.Logger, *, limit: int = DEFAULT_LIMIT) -> None:
        """Warnings go to ``logger``; at most ``limit`` keys are kept, the oldest dropped first."""
        self._log = logger
        self._limit = limit
        # A dict as an ordered set: the first key is the oldest.
        self._warned: dict[str, None] = {}

    def __call__(self, key: str, message: str, *args: object) -> None:
        """Log ``message % args`` unless a warning under ``key`` was already logged."""
        if key in self._warned:
            return
        if len(self._warned) >= self._limit:
            del self._warned[next(iter(self._warned))]
        self._warned[key] = None
        self._log.warning(message, *args)

    def forget(self, key: str) -> None:
        """The cause behind ``key`` is gone: warn again if it comes back."""
        self._warned.pop(key, None)

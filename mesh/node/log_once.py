"""Warnings a long-lived edge logs once per cause, not once per occurrence.

A peer that cannot be reached, or that keeps sending a bad message, would
otherwise fill the log every gossip round; the first warning says all there
is to say until the cause goes away and comes back.
"""

from __future__ import annotations

import logging

__all__ = ["WarnOnce"]


class WarnOnce:
    """Logs a warning under a key only the first time that key is seen."""

    def __init__(self, logger: logging.Logger) -> None:
        """Warnings go to ``logger``."""
        self._log = logger
        self._warned: set[str] = set()

    def __call__(self, key: str, message: str, *args: object) -> None:
        """Log ``message % args`` unless a warning under ``key`` was already logged."""
        if key in self._warned:
            return
        self._warned.add(key)
        self._log.warning(message, *args)

    def forget(self, key: str) -> None:
        """The cause behind ``key`` is gone: warn again if it comes back."""
        self._warned.discard(key)

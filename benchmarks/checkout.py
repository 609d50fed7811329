"""The checkout a benchmark ran from, as the benchmarks record it beside their figures."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["commit"]

_ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files have uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=_ROOT, capture_output=True, text=True, check=False, timeout=10
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")

"""The demo's burst: every digit sent at once, and what came back.

:class:`Burst` keeps each request's label, where it ran, its latency and
any error by kind; :func:`send_burst` sends the whole burst over one
client, as an app's single client would; :func:`progress_line` and
:func:`show_progress` draw the bar while it runs. Apart from
:mod:`mesh.demo.run`, which starts the processes, drives the acts and
prints the report, because this part is the traffic alone: no processes,
no signals.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesh.demo.joint_act import JointAct
from mesh.errors import MeshError, ProtocolError
from mesh.sdk.client import MeshClient

__all__ = ["Burst", "progress_line", "send_burst", "show_progress"]


@dataclass
class Burst:
    """What came back: a label (or -1), where it ran, and the latency of each request."""

    total: int
    labels: np.ndarray[Any, Any] = field(init=False)
    ran_on: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    elapsed: float = 0.0
    joint: JointAct | None = None

    def __post_init__(self) -> None:
        self.labels = np.full(self.total, -1, dtype=np.int64)

    @property
    def done(self) -> int:
        """How many requests have ended, answered or not."""
        return sum(self.ran_on.values()) + sum(self.errors.values())


async def _infer_one(
    client: MeshClient, model: str, row: np.ndarray[Any, Any], deadline: float
) -> tuple[int, str]:
    """One digit's label and the name of whoever ran it."""
    # The burst shows sharing: the entry's escalation rule is the next act's.
    answer = await client.infer(model, {"X": row}, deadline=deadline, escalate=False)
    label = answer.get("label")
    if label is None or label.shape != (1,):
        raise ProtocolError(f"expected one label, got {None if label is None else label.shape}")
    return int(label[0]), answer.ran_on


async def send_burst(
    client: MeshClient, model: str, pixels: np.ndarray[Any, Any], deadline: float, burst: Burst
) -> None:
    """Send every row of ``pixels`` to ``model`` at once, noting each answer in ``burst``."""

    async def one(index: int) -> None:
        begin = time.perf_counter()
        try:
            burst.labels[index], where = await _infer_one(
                client, model, pixels[index : index + 1], deadline
            )
        except MeshError as exc:
            # The table reports failures by kind; one refusal must not hide the rest.
            burst.errors[exc.code] += 1
            burst.error_examples.setdefault(exc.code, exc.message)
            return
        burst.latencies.append(time.perf_counter() - begin)
        burst.ran_on[where] += 1

    burst.started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for index in range(len(pixels)):
            tasks.create_task(one(index))
    burst.elapsed = time.perf_counter() - burst.started


def progress_line(burst: Burst) -> str:
    """The progress bar: answers so far, their rate, how many the gateway took and failed."""
    width = 30
    done = burst.done
    filled = width * done // burst.total
    rate = done / max(time.perf_counter() - burst.started, 1e-9)
    bar = "#" * filled + "." * (width - filled)
    failed = sum(burst.errors.values())
    return (
        f"  [{bar}] {done}/{burst.total}  {rate:,.0f} req/s  "
        f"gateway {burst.ran_on['gateway']}  failed {failed}"
    )


async def show_progress(burst: Burst) -> None:
    """Redraw the bar until cancelled (on a terminal only: logs get the final line)."""
    while True:
        sys.stderr.write("\r" + progress_line(burst))
        sys.stderr.flush()
        await asyncio.sleep(0.1)

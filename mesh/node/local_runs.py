"""Running jobs on this node: their runtime calls, padded on an emulated device.

:class:`LocalRuns` is the part of :class:`~mesh.node.work_sharing.WorkSharing`
that talks to the runtime. It measures each model's service time before the
node joins (:meth:`LocalRuns.warm_up`), starts the runtime call of a job the
scheduler runs here, holds back the outcome of a call that ended sooner than
the emulated device would have (a pad), aborts what the scheduler stops, and
hands every outcome, once, to its ``done`` callback, which tells the scheduler.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

import numpy as np

from mesh.core.scheduling.emulation import EmulatedDevice
from mesh.core.scheduling.jobs import Job, JobKey
from mesh.core.wire.handover import Outcome, Tensors
from mesh.errors import InternalError, MeshError
from mesh.runtime.runtime import Runtime, RuntimeCall

__all__ = ["LocalRuns"]

# Logged under work sharing's name, as before this part had a module of its own.
log = logging.getLogger("mesh.node.work_sharing")

# Shape used for a dynamic dimension in the warm-up calls, and how many
# there are per model (the first one is cold and not counted).
_WARMUP_DIM = 1
_WARMUP_CALLS = 3


class LocalRuns:
    """The jobs running on this node's runtime; every outcome goes to ``done``."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        device: EmulatedDevice | None,
        done: Callable[[Job[Tensors], Outcome], None],
    ) -> None:
        self._runtime = runtime
        self._device = device
        self._done = done
        self._loop = asyncio.get_running_loop()
        # Jobs running here: their runtime calls, and the pads of those done
        # early on an emulated device.
        self._calls: dict[JobKey, RuntimeCall] = {}
        self._pads: dict[JobKey, asyncio.TimerHandle] = {}

    async def warm_up(self, observe: Callable[[str, float], None]) -> None:
        """Run each model a few times, as a job would run, to measure its service time.

        Peers weigh a node's share by this from its first gossip, so a fast
        device is given more from the start rather than after a few calls.
        The first call is cold (lazy initialisation) and not counted; of the
        others the quickest is, as a device at work runs call after call
        without the pauses a lone call meets. On an emulated device a call
        is measured to when the device ends it, not to when this loop woke.
        Each measured time goes to ``observe(model, seconds)``.
        """
        for spec in self._runtime.specs():
            inputs = {
                t.name: np.zeros(
                    [d if isinstance(d, int) and d > 0 else _WARMUP_DIM for d in t.shape],
                    dtype=t.dtype,
                )
                for t in spec.inputs
            }
            times: list[float] = []
            for _ in range(_WARMUP_CALLS):
                started = self._loop.time()
                try:
                    await self._runtime.infer(spec.name, inputs, version=spec.version)
                except MeshError as exc:
                    log.info("no warm-up for %s: %s", spec.name, exc.message)
                    break
                end = self._emulated_end(started)
                if end is not None:
                    await asyncio.sleep(end - self._loop.time())
                times.append((self._loop.time() if end is None else end) - started)
            if len(times) > 1:
                observe(spec.name, min(times[1:]))

    def start(self, job: Job[Tensors]) -> None:
        """Hand ``job`` to the runtime; :meth:`_ran` takes it from there.

        A done-callback rather than a task per job: a job costs the event
        loop one callback, which matters when a small model takes 20 µs.
        """
        try:
            call = self._runtime.start(job.model, job.payload, job.sha256)
        except MeshError as exc:
            # Not from inside _do's loop: report it on the next turn.
            self._loop.call_soon(self._complete, job, exc)
            return
        self._calls[job.key] = call
        call.future.add_done_callback(functools.partial(self._ran, job, call))

    def _ran(self, job: Job[Tensors], call: RuntimeCall, future: asyncio.Future[Tensors]) -> None:
        if self._calls.get(job.key) is not call or future.cancelled():
            return  # aborted: the scheduler already forgot it
        error = future.exception()
        outcome: Outcome
        if error is None:
            outcome = future.result()
        elif isinstance(error, MeshError):
            outcome = error
        else:
            log.error("model %s failed unexpectedly", job.model, exc_info=error)
            outcome = InternalError(f"model '{job.model}' failed; see the node's log")
        end = self._emulated_end(job.enqueued_at)
        if end is not None:
            self._pads[job.key] = self._loop.call_at(end, self._complete, job, outcome)
            return
        self._complete(job, outcome)

    def _emulated_end(self, arrived: float) -> float | None:
        """When an emulated device would end a call that arrived at ``arrived``;
        None when the node emulates nothing or that time has already come."""
        if self._device is None:
            return None
        end = self._device.finish_at(arrived)
        return end if end > self._loop.time() else None

    def _complete(self, job: Job[Tensors], outcome: Outcome) -> None:
        self._calls.pop(job.key, None)
        self._pads.pop(job.key, None)
        self._done(job, outcome)

    def abort(self, job: Job[Tensors]) -> None:
        """Stop ``job``'s call, or its pad; nothing is reported for it."""
        call = self._calls.pop(job.key, None)
        if call is not None:
            self._runtime.cancel(call)
        pad = self._pads.pop(job.key, None)
        if pad is not None:
            pad.cancel()
            if self._device is not None:
                # An aborted run stops at once (the runtime terminates it),
                # so the emulated device is free now, as the scheduler
                # believes, not when the padded call would have ended.
                self._device.release(pad.when(), self._loop.time())

    def stop_all(self) -> None:
        """Cancel every call and pad (the node stops); nothing is reported."""
        for call in self._calls.values():
            self._runtime.cancel(call)
        for pad in self._pads.values():
            pad.cancel()
        self._calls.clear()
        self._pads.clear()

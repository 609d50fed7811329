"""Running loaded models off the event loop, on one shared pool of worker threads.

Each model has a queue and a limit on how many calls of it run at once; a
slot is held until the worker thread finishes, not merely until the caller
stops waiting. A worker that finishes a call takes the next queued call of
the same model itself, and results go back to the loop in batches, so a busy
model costs one loop wakeup per batch of results rather than a round trip per
call. Each model's service time is averaged here, as the mesh schedules by
time, not by queue length.

Each version of a model has a lane of its own, keyed by (name, sha256).
Lanes come and go while the executor runs: a new version is added, and a
retired one takes no part in new calls from the node but runs what it was
given, and is dropped, with its session, once it is idle.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mesh.core.scheduling.estimates import ewma
from mesh.core.wire.tensors import Tensors
from mesh.errors import InferenceFailed, ModelNotFound
from mesh.runtime.loading import LoadedModel, new_run_options

__all__ = ["Call", "Executor", "LaneKey", "ModelLoad", "lane_key"]

# A lane: one version of one model, as (name, sha256).
LaneKey = tuple[str, str]


def lane_key(model: LoadedModel) -> LaneKey:
    """The lane of ``model``: its name and sha256."""
    return (model.spec.name, model.spec.sha256)


@dataclass(frozen=True)
class ModelLoad:
    """One model's load on this node, as :meth:`Executor.load` reports it."""

    name: str
    queued: int  # calls waiting for a worker (cancelled ones may linger briefly)
    executing: int  # calls running on a thread now
    limit: int  # calls of this model that may run at once
    service_ewma_s: float | None  # average seconds per call; None before the first
    version: str = ""
    sha256: str = ""


@dataclass(eq=False, slots=True)
class Call:
    """One call on its way from an event loop to a worker thread; ``future`` has the outputs."""

    feeds: Tensors
    options: Any  # ort.RunOptions; untyped
    future: asyncio.Future[Tensors]
    inbox: _Inbox
    cancelled: bool = False  # guarded by Executor._lock


@dataclass(eq=False)
class _Lane:
    """One model's queue of calls and its workers; guarded by the executor's lock."""

    model: LoadedModel
    limit: int
    # Calls not yet taken by a worker, oldest first; cancelled ones stay here,
    # flagged, until a worker skips them (removing them would cost O(n) each).
    queue: deque[Call] = field(default_factory=deque)
    # Workers of this model (at most ``limit``), whether running or still
    # waiting in the executor for a thread; they are what the limit counts.
    running: int = 0
    # Of those, the ones still waiting for a thread.
    waiting: int = 0
    # Calls executing on a thread right now.
    executing: int = 0
    # Moving average of one call's service time on this device, in seconds;
    # None until the first call.
    service_ewma_s: float | None = None
    # Retired: dropped (and its session freed) as soon as no worker runs it.
    retired: bool = False


class _Inbox:
    """Outcomes of calls on their way back from worker threads to one event loop.

    Waking a loop from another thread costs a syscall and a loop iteration, a
    large part of a small model's call. So a worker wakes the loop only when
    the inbox was empty; the results that arrive before the loop gets to them
    ride along with the same wakeup.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._outcomes: list[tuple[Call, Tensors | BaseException]] = []
        # Set while a delivery is scheduled and has not yet taken the outcomes.
        # Taking them and clearing it happen under one lock, so every outcome
        # is either taken by the scheduled delivery or schedules the next one.
        self._scheduled = False

    def put(self, call: Call, outcome: Tensors | BaseException) -> None:
        """Hand over one outcome; callable from any thread."""
        with self._lock:
            self._outcomes.append((call, outcome))
            if self._scheduled:
                return
            self._scheduled = True
        # A closed loop raises RuntimeError; nobody is left to take the outcome.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
            self._scheduled = False
        for call, outcome in outcomes:
            future = call.future
            if future.done():  # cancelled: the caller stopped waiting
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


class Executor:
    """Runs calls of ``models`` on ``threads`` worker threads, ``per_model`` at a time each.

    Calls may come from any event loop; each result goes back to the loop
    that made the call.
    """

    def __init__(self, models: Iterable[LoadedModel], *, threads: int, per_model: int) -> None:
        """Start no thread yet: the pool grows as calls arrive."""
        self._per_model = per_model
        self._lanes = {lane_key(model): _Lane(model, per_model) for model in models}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="mesh-infer"
        )
        # Guards _closed, _waiting, and each lane. Held only for a few
        # bookkeeping steps, never while a model runs.
        self._lock = threading.Lock()
        self._closed = False
        # Workers of every model submitted to the pool but not yet on a
        # thread; a worker with more work yields its thread when some of
        # these belong to another model.
        self._waiting = 0
        self._inbox: _Inbox | None = None

    def add(self, model: LoadedModel) -> None:
        """Serve ``model`` in a lane of its own (a no-op if that version has one)."""
        with self._lock:
            lane = self._lanes.get(lane_key(model))
            if lane is None:
                self._lanes[lane_key(model)] = _Lane(model, self._per_model)
            else:
                lane.retired = False

    def retire(self, key: LaneKey) -> None:
        """Drop lane ``key`` (its session with it) once no call of it is queued or running."""
        with self._lock:
            lane = self._lanes.get(key)
            if lane is None:
                return
            lane.retired = True
            if lane.running == 0 and not lane.queue:
                del self._lanes[key]

    def has(self, key: LaneKey) -> bool:
        """Whether lane ``key`` is still here (retired but busy counts)."""
        with self._lock:
            return key in self._lanes

    def start(self, key: LaneKey, feeds: Tensors) -> Call:
        """Queue one call of the version ``key``; call from a loop.

        ``feeds`` must already be validated and must not change while the
        call runs. ModelNotFound if that version has been dropped.
        """
        name = key[0]
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = _Inbox(loop)
        call = Call(feeds, new_run_options(), loop.create_future(), inbox)
        with self._lock:
            if self._closed:
                raise InferenceFailed(f"model '{name}': the runtime is closed")
            lane = self._lanes.get(key)
            if lane is None:
                raise ModelNotFound(
                    f"model '{name}' version with sha256 {key[1][:12]} is no longer served here"
                )
            if lane.running < lane.limit:
                self._start_worker(lane)
            lane.queue.append(call)
        return call

    def cancel(self, call: Call) -> None:
        """Drop ``call`` if still queued, else ask its run to stop; its result is discarded."""
        with self._lock:
            call.cancelled = True  # still queued: the worker skips it
        # Already running: nobody wants the result, so free the CPU early
        # rather than finish. Set either way, as the worker may be taking
        # the call right now; a run that starts terminated stops at once.
        call.options.terminate = True
        call.future.cancel()

    def load(self) -> list[ModelLoad]:
        """How busy each model is now: queued and executing calls, service-time average."""
        with self._lock:
            return [
                ModelLoad(
                    name=name,
                    queued=len(lane.queue),
                    executing=lane.executing,
                    limit=lane.limit,
                    service_ewma_s=lane.service_ewma_s,
                    version=lane.model.spec.version,
                    sha256=sha,
                )
                for (name, sha), lane in sorted(self._lanes.items())
            ]

    def refuse_calls(self) -> None:
        """Refuse new calls and fail the queued ones; running ones finish. Idempotent."""
        dropped: list[tuple[str, Call]] = []
        with self._lock:
            self._closed = True
            for (name, _), lane in self._lanes.items():
                dropped.extend((name, call) for call in lane.queue if not call.cancelled)
                lane.queue.clear()
        for name, call in dropped:
            call.inbox.put(call, InferenceFailed(f"model '{name}': the runtime is closed"))

    def shutdown(self) -> None:
        """:meth:`refuse_calls`, then wait (blocking) for the running calls."""
        self.refuse_calls()
        self._pool.shutdown(wait=True)

    # --- worker side --------------------------------------------------------

    def _start_worker(self, lane: _Lane) -> None:
        """Take a slot of ``lane`` for a new worker; call with the lock held."""
        try:
            self._pool.submit(self._work, lane)
        except RuntimeError as exc:  # the interpreter is shutting down
            raise InferenceFailed(f"model '{lane.model.spec.name}': the runtime is closed") from exc
        lane.running += 1
        lane.waiting += 1
        self._waiting += 1

    def _work(self, lane: _Lane) -> None:
        """Run queued calls of one model on a worker thread until none are left.

        Taking the next call here, rather than returning to the loop for it,
        keeps the thread busy while the loop is busy elsewhere, and costs no
        wakeup.
        """
        with self._lock:
            lane.waiting -= 1
            self._waiting -= 1
        # A worker that has just got its thread runs at least one call before
        # it may yield, or workers could pass the threads around forever.
        call = self._next_call(lane, may_yield=False)
        while call is not None:
            started = time.perf_counter()
            outcome: Tensors | BaseException
            try:
                outcome = lane.model.run(call.feeds, call.options)
            except BaseException as exc:
                # Whatever it is, it is the caller's: raised where it awaits,
                # as concurrent.futures would. Letting it end this loop would
                # strand the model's slot and every call queued behind it.
                outcome = exc
                took_s = None  # a failed call says nothing about service time
            else:
                took_s = time.perf_counter() - started
            # Accounted before the caller hears: whoever reads load() once
            # its answer arrives sees the call finished, and timed.
            self._account(lane, took_s)
            call.inbox.put(call, outcome)
            call = self._next_call(lane, may_yield=True)

    def _account(self, lane: _Lane, took_s: float | None) -> None:
        """A call of ``lane`` ended; ``took_s`` (None: it failed) feeds its average."""
        with self._lock:
            lane.executing -= 1
            if took_s is not None:
                lane.service_ewma_s = ewma(lane.service_ewma_s, took_s)

    def _next_call(self, lane: _Lane, *, may_yield: bool) -> Call | None:
        """The next call this worker should run; None when it should stop."""
        with self._lock:
            queue = lane.queue
            while queue and queue[0].cancelled:
                queue.popleft()
            if not queue:
                lane.running -= 1
                if lane.retired and lane.running == 0:
                    self._drop(lane)
                return None
            if may_yield and self._waiting > lane.waiting:
                # Another model's worker waits for a thread: go to the back of
                # the pool's line rather than keep this thread, so a busy
                # model cannot starve the others. The slot goes along.
                with contextlib.suppress(RuntimeError):  # interpreter shutdown: stay
                    self._pool.submit(self._work, lane)
                    lane.waiting += 1
                    self._waiting += 1
                    return None
            lane.executing += 1
            return queue.popleft()

    def _drop(self, lane: _Lane) -> None:
        """Forget a retired, idle lane; call with the lock held."""
        key = lane_key(lane.model)
        if self._lanes.get(key) is lane:
            del self._lanes[key]

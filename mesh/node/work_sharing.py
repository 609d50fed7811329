"""The work-sharing driver: carries out what :mod:`mesh.core.scheduling.scheduler` decides.

The scheduler holds the rules; this module is the I/O around them. It turns
``infer`` calls into owned requests, runs jobs on the runtime (padded when the
node emulates a device; :mod:`mesh.node.local_runs`), and talks to peers over
the links membership keeps: ``steal`` calls, and ``result``, ``handoff``,
``cancel`` and ``nudge`` notifications (see :mod:`mesh.core.wire.handover`
and docs/PROTOCOL.md); what peers send is checked in :mod:`mesh.node.peer_notices`.

Every decision goes through :meth:`WorkSharing._do`, and every task it starts
lives in the TaskGroup of :meth:`WorkSharing.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from mesh.config import Emulation
from mesh.core.membership.gossip import Holding
from mesh.core.membership.peers import Load
from mesh.core.policy.capacity import Placement
from mesh.core.scheduling.emulation import EmulatedDevice
from mesh.core.scheduling.jobs import (
    Abort,
    Action,
    Cancel,
    GiveBack,
    Handoff,
    Job,
    Nudge,
    PeerLoad,
    Reply,
    RunLocal,
    SchedulerConfig,
    SendResult,
    Steal,
    runs,
)
from mesh.core.scheduling.scheduler import Scheduler, snapshot
from mesh.core.wire.handover import (
    CANCEL,
    GIVE_BACK,
    HANDOFF,
    NUDGE,
    RESULT,
    STEAL,
    Outcome,
    Tensors,
    encode_outcome,
    parse_grant,
)
from mesh.core.wire.requests import InferRequest
from mesh.errors import Draining, InternalError, MeshError
from mesh.log_once import WarnOnce
from mesh.node.early_results import EarlyResults
from mesh.node.local_runs import LocalRuns
from mesh.node.model_store import shas_by_name
from mesh.node.peer_notices import PeerNotices
from mesh.node.versions import MeshVersions
from mesh.rpc import RpcConnection
from mesh.runtime.runtime import Runtime
from mesh.service import Answer

__all__ = ["WorkSharing"]

log = logging.getLogger(__name__)

# A steal is one round trip on a LAN; a victim that takes longer than this
# is treated as having nothing for us (its lease logic covers the rest).
_STEAL_TIMEOUT_S = 5.0


class WorkSharing(PeerNotices):
    """One node's side of work sharing; run :meth:`run` in the node's TaskGroup.

    What peers send (``steal``, ``result``, ``handoff``, ...) is taken by the
    handlers it inherits from :class:`~mesh.node.peer_notices.PeerNotices`.
    """

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        runtime: Runtime,
        config: SchedulerConfig,
        emulation: Emulation | None,
        link: Callable[[str], RpcConnection | None],
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.node_id = node_id
        self._runtime = runtime
        self._runs = LocalRuns(
            runtime=runtime,
            device=None if emulation is None else EmulatedDevice(emulation.service_s, config.slots),
            done=self._complete,
        )
        self._link = link
        models = shas_by_name(runtime.specs())
        # The versions here and on live peers: which one each request gets.
        self.versions = MeshVersions(runtime)
        self.scheduler: Scheduler[Tensors] = Scheduler(
            node_id=node_id, name=name, models=models, config=config, rng=rng
        )
        self._loop = asyncio.get_running_loop()
        self._tasks: asyncio.TaskGroup | None = None
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._wake = asyncio.Event()
        self._sleeping_until: float | None = None
        self._warn_once = WarnOnce(log)
        # Results that beat the hand-off naming their sender (see early_results).
        self._early = EarlyResults()

    # --- lifecycle -------------------------------------------------------------

    async def warm_up(self) -> None:
        """Run each model a few times, as a job would run, to measure its
        service time (see :meth:`LocalRuns.warm_up`)."""
        await self._runs.warm_up(self.scheduler.observe_service)

    async def run(self) -> None:
        """Keep time for the scheduler and own every task work sharing starts."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            try:
                while True:
                    deadline = self.scheduler.next_deadline()
                    self._sleeping_until = deadline
                    self._wake.clear()
                    delay = None if deadline is None else max(0.0, deadline - self._loop.time())
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    self._do(self.scheduler.tick(self._now()))
            finally:
                self._tasks = None
                self._runs.stop_all()
                for future in self._pending.values():
                    if not future.done():
                        # Stopped at once (a second signal): still a typed
                        # answer that clients fail over on, never silence.
                        future.set_exception(
                            Draining(
                                f"node {self.name} stopped before answering; send the "
                                "request again, with the same request id, to another node"
                            )
                        )

    # --- requests entering here --------------------------------------------------

    def placement(
        self, request: InferRequest, *, gateway: bool, default_deadline_ms: float
    ) -> Placement:
        """Whether ``request`` should stay in the mesh (``gateway``: one could
        take it instead; ``default_deadline_ms``: what a request without a
        deadline is then judged by); InvalidInput if its inputs do not fit a
        model that runs here."""
        now = self._now()
        deadline = None if request.deadline_ms is None else now + request.deadline_ms / 1000
        sha = self.resolve(request.model, request.version)
        placement = self.scheduler.placement(
            request.model,
            deadline,
            now,
            gateway=gateway,
            default_s=default_deadline_ms / 1000,
            sha256=sha,
        )
        if runs(self.scheduler.models, request.model, sha) and (
            placement.offload or self.scheduler.shares_work()
        ):
            # Checked at the door, so that a bad request is told so rather
            # than refused, and never travels to a thief or the gateway. One
            # that stays on a lone node is checked once, by the runtime.
            self._runtime.check_inputs(request.model, request.inputs, sha)
        return placement

    def resolve(self, model: str, version: str | None) -> str | None:
        """The sha256 of the version of ``model`` a request gets (see
        :meth:`MeshVersions.resolve`)."""
        return self.versions.resolve(model, version)

    async def infer(self, request: InferRequest) -> Answer:
        """Own ``request`` until it is answered: here, by a thief, or with an error."""
        now = self._now()
        deadline = None if request.deadline_ms is None else now + request.deadline_ms / 1000
        seq, actions = self.scheduler.submit(
            sha256=self.resolve(request.model, request.version),
            model=request.model,
            payload=request.inputs,
            size_bytes=sum(a.nbytes for a in request.inputs.values()),
            deadline=deadline,
            request_id=request.request_id,
            now=now,
        )
        future: asyncio.Future[Answer] = self._loop.create_future()
        self._pending[seq] = future
        self._do(actions)
        try:
            return await future
        except asyncio.CancelledError:
            # The client went away: nobody is left to answer.
            self._pending.pop(seq, None)
            self._do(self.scheduler.cancel(seq, self._now()))
            raise

    # --- draining ------------------------------------------------------------------

    def drain(self, timeout_s: float) -> None:
        """Begin draining (see mesh.core.scheduling.draining); ``scheduler.drained()``
        says when it is done."""
        self._do(self.scheduler.start_drain(timeout_s, self._now()))

    def abandon(self) -> None:
        """The drain timed out: answer, cancel or give back whatever is left."""
        self._do(self.scheduler.abandon(self._now()))

    def on_peer_load(self, name: str, load: Load) -> None:
        """A peer's gossip (from membership)."""
        self.versions.peer(name, load.models)
        peer = PeerLoad(
            models=shas_by_name(load.models),
            service_s=load.service_s,
            queued_s=load.queued_s,
            free_slots=load.free_slots,
            slots=load.slots,
        )
        self._do(self.scheduler.peer_update(name, peer, self._now()))

    def on_peer_holding(self, name: str, holding: Holding) -> None:
        """What a live peer says it holds (from its gossip): reconcile our grants."""
        self._do(self.scheduler.reconcile(name, holding, self._now()))

    def holding(self) -> Holding:
        """What this node holds for other owners, for its gossip."""
        return self.scheduler.holding()

    def on_peer_gone(self, name: str) -> None:
        """A peer died or restarted (from membership)."""
        self.versions.peer_gone(name)
        self._do(self.scheduler.peer_lost(name, self._now()))

    # --- versions coming and going (from the model store) -------------------------------

    def uses(self, model: str, sha256: str) -> bool:
        """Whether work of ``model`` at ``sha256`` still waits or runs here."""
        return self.scheduler.uses(model, sha256)

    def models_changed(self) -> None:
        """The runtime's versions changed: serve, advertise and run what it now has."""
        self.versions.changed()
        self.scheduler.set_models(
            shas_by_name(self._runtime.specs()), shas_by_name(self._runtime.retired())
        )
        # Queued work may have become runnable here (a version arrived).
        self._do(self.scheduler.tick(self._now()))

    # --- what the node reports -------------------------------------------------------

    def load(self) -> PeerLoad:
        """This node's load now, for gossip."""
        return self.scheduler.load_summary(self._now())

    def status(self) -> dict[str, Any]:
        """The scheduler's figures for ``status()`` (emulation is the node's to report)."""
        return snapshot(self.scheduler, self._now())

    # --- carrying out decisions ----------------------------------------------------

    def _do(
        self,
        actions: list[Action],
        *,
        outcome: Outcome | None = None,
        ran_on: str | None = None,
    ) -> None:
        """Carry out ``actions``; ``outcome`` is the result a plain Reply refers to."""
        for action in actions:
            if isinstance(action, RunLocal):
                self._runs.start(action.job)
            elif isinstance(action, Reply):
                self._reply(action, outcome, ran_on)
            elif isinstance(action, SendResult):
                # Only `_finish` produces SendResult, and passes the outcome.
                if outcome is not None:
                    self._send_result(action.job, outcome)
            elif isinstance(action, Steal):
                self._spawn(self._steal(action))
            elif isinstance(action, Nudge):
                self._notify(action.peer, NUDGE, [self.name])
            elif isinstance(action, Handoff):
                params = [action.owner_id, action.seq, action.epoch, action.holder, action.lease_s]
                self._notify(
                    action.owner,
                    HANDOFF,
                    params if action.ask is None else [*params, action.ask],
                )
            elif isinstance(action, Cancel):
                self._notify(action.holder, CANCEL, [action.key[0], action.key[1]])
            elif isinstance(action, Abort):
                self._runs.abort(action.job)
            elif isinstance(action, GiveBack):
                self._notify(
                    action.owner,
                    GIVE_BACK,
                    [action.owner_id, action.seq, action.epoch, self.name],
                )
        self._rearm()

    def _rearm(self) -> None:
        """Wake the clock if the scheduler's next deadline moved earlier."""
        deadline = self.scheduler.next_deadline()
        if deadline is not None and (
            self._sleeping_until is None or deadline < self._sleeping_until
        ):
            self._sleeping_until = deadline
            self._wake.set()

    def _reply(self, action: Reply, outcome: Outcome | None, ran_on: str | None) -> None:
        future = self._pending.pop(action.seq, None)
        if future is None or future.done():
            return
        if action.error is not None:
            future.set_exception(action.error)
        elif isinstance(outcome, MeshError):
            future.set_exception(outcome)
        elif outcome is not None:
            future.set_result(Answer(outcome, ran_on or self.name))
        else:  # a scheduler bug; the client still gets an answer
            future.set_exception(InternalError(f"request {action.seq} finished without a result"))

    def _spawn(self, coroutine: Any) -> None:
        if self._tasks is None:
            coroutine.close()
            return
        self._tasks.create_task(coroutine)

    def _notify(self, peer: str, method: str, params: list[Any]) -> None:
        connection = self._link(peer)
        if connection is None:
            return  # membership will declare it dead; the scheduler recovers then
        with contextlib.suppress(MeshError):
            connection.notify(method, params)

    def _complete(self, job: Job[Tensors], outcome: Outcome) -> None:
        """A local run of ``job`` ended with ``outcome`` (from :class:`LocalRuns`)."""
        now = self._now()
        took = None
        if not isinstance(outcome, MeshError) and job.started_at is not None:
            took = now - job.started_at
        self._do(self.scheduler.finished(job, took_s=took, now=now), outcome=outcome)

    def _send_result(self, job: Job[Tensors], outcome: Outcome) -> None:
        self._notify(
            job.owner,
            RESULT,
            [job.key[0], job.key[1], job.epoch, self.name, encode_outcome(outcome)],
        )

    # --- stealing ------------------------------------------------------------------------

    async def _steal(self, action: Steal) -> None:
        connection = self._link(action.victim)
        number = action.ask.ask
        if connection is None:
            self._do(self.scheduler.steal_failed(action.victim, self._now(), number))
            return
        started = self._loop.time()
        try:
            reply = await connection.call(STEAL, [action.ask.to_wire()], timeout=_STEAL_TIMEOUT_S)
            jobs, load = parse_grant(reply, self._now())
        except MeshError as exc:
            self._warn_once(
                f"steal:{action.victim}", "steal from %s failed: %s", action.victim, exc
            )
            self._do(self.scheduler.steal_failed(action.victim, self._now(), number))
            return
        took = self._loop.time() - started
        size = sum(job.size_bytes for job in jobs)
        self._do(
            self.scheduler.granted(
                action.victim,
                jobs,
                load,
                took_s=took,
                reply_bytes=size,
                now=self._now(),
                ask=number,
            )
        )

    def _now(self) -> float:
        return self._loop.time()
